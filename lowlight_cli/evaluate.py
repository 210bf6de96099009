"""Paired-folder quality evaluation (PSNR, SSIM), shared by ``train`` and ``benchmark``.

Scores are computed on what a user gets: the enhanced image is clamped to ``[0, 1]`` and rounded
to 8 bits (the ground truth is 8-bit) before PSNR and SSIM (:mod:`lowlight_cli.metrics`) are taken
on the full image, channel-wise RGB.

Each score also comes "at the ground truth's mean" (``psnr_gt_mean``, ``ssim_gt_mean``): the
output is first scaled so that its mean luma (BT.601) equals the target's, as several low-light
papers report. Exposure on LOL is partly a matter of taste (the targets' brightness varies from
pair to pair); the gap between the two scores says how much of a model's error is its overall
brightness rather than its structure, colour and noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowlight_cli.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from lowlight_cli.training.data import PairedImages

EnhanceFn = Callable[[np.ndarray], np.ndarray]
"""``(H, W, 3)`` float32 RGB in ``[0, 1]`` -> enhanced ``(H, W, 3)`` float32."""


@dataclass
class QualityResult:
    """Mean quality of one model on one set of pairs.

    Attributes:
        model: the model's name (or a label).
        psnr: mean PSNR in dB.
        ssim: mean SSIM.
        n_images: number of pairs.
        per_image: ``{"name", "psnr", "ssim", "psnr_gt_mean", "ssim_gt_mean"}`` per pair.
        psnr_gt_mean: mean PSNR after scaling each output to its target's mean luma.
        ssim_gt_mean: mean SSIM after the same scaling.
    """

    model: str
    psnr: float
    ssim: float
    n_images: int
    per_image: list[dict[str, Any]] = field(default_factory=list)
    psnr_gt_mean: float = float("nan")
    ssim_gt_mean: float = float("nan")

    def to_dict(self, *, per_image: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "psnr": round(self.psnr, 4),
            "ssim": round(self.ssim, 5),
            "psnr_gt_mean": round(self.psnr_gt_mean, 4),
            "ssim_gt_mean": round(self.ssim_gt_mean, 5),
            "n_images": self.n_images,
        }
        if per_image:
            out["per_image"] = self.per_image
        return out


def _pad_mode(h: int, w: int, pad_h: int, pad_w: int) -> str:
    # Reflection needs the pad to be smaller than the side; tiny images fall back to replicate.
    return "reflect" if pad_h < h and pad_w < w else "replicate"


def module_enhance_fn(
    model: nn.Module,
    *,
    size_multiple: int = 1,
    scale: int = 1,
    device: torch.device | str = "cpu",
) -> EnhanceFn:
    """Wrap a bare model as an :data:`EnhanceFn`: pad to ``size_multiple``, run, crop, clamp.

    Used where the engine's tiling is not wanted (validation inside training: whole images).
    """
    import torch

    def run(pixels: np.ndarray) -> np.ndarray:
        h, w = pixels.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].to(device)
        pad_h, pad_w = (-h) % size_multiple, (-w) % size_multiple
        if pad_h or pad_w:
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=_pad_mode(h, w, pad_h, pad_w))
        with torch.inference_mode():
            y = model(x.float())
        y = y[..., : h * scale, : w * scale].clamp(0.0, 1.0)
        return y[0].permute(1, 2, 0).float().cpu().numpy()

    return run


def _as_triples(
    pairs: PairedImages | Sequence[tuple[str, np.ndarray, np.ndarray]],
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if hasattr(pairs, "names"):
        return list(zip(pairs.names, pairs.low, pairs.high, strict=True))  # type: ignore[union-attr]
    return list(pairs)  # type: ignore[arg-type]


def _to_float(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    return img.astype(np.float32)


def quantize8(img: np.ndarray) -> np.ndarray:
    """Clamp to ``[0, 1]`` and round to the nearest 8-bit level (as a saved PNG would)."""
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.float32) / 255.0


def match_mean(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``pred`` scaled so its mean BT.601 luma equals ``target``'s, clamped to ``[0, 1]``.

    A black prediction has no brightness to scale and is returned unchanged.
    """
    from lowlight_cli.metrics import mean_luma

    have = mean_luma(pred)
    want = mean_luma(target)
    if have <= 0.0:
        return pred
    return np.clip(pred * (want / have), 0.0, 1.0)


def score_pair(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """PSNR and SSIM of one ``(H, W, 3)`` prediction against its ``[0, 1]`` target."""
    import torch

    from lowlight_cli.metrics import psnr, ssim

    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32)).permute(2, 0, 1)[None]
    t = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        return float(psnr(p, t)[0]), float(ssim(p, t)[0])


def evaluate_pairs(
    enhance: EnhanceFn | nn.Module,
    pairs: PairedImages | Sequence[tuple[str, np.ndarray, np.ndarray]],
    *,
    name: str = "",
    size_multiple: int = 1,
    device: torch.device | str = "cpu",
    quantize: bool = True,
) -> QualityResult:
    """Mean PSNR/SSIM of ``enhance`` over ``pairs``.

    Args:
        enhance: an :data:`EnhanceFn` (e.g. ``Enhancer.enhance``) or a bare ``nn.Module``
            (wrapped by :func:`module_enhance_fn` with ``size_multiple`` and ``device``).
        pairs: decoded pairs (uint8, uint16 or float ``(H, W, 3)`` arrays).
        name: label of the result.
        size_multiple: for a bare module, the padding multiple.
        device: for a bare module, where it runs.
        quantize: round the output to 8 bits before scoring (what a saved image holds).

    Raises:
        UsageError: no pairs, or an output whose size differs from its target.
    """
    from torch import nn

    fn: EnhanceFn = (
        module_enhance_fn(enhance, size_multiple=size_multiple, device=device)
        if isinstance(enhance, nn.Module)
        else enhance
    )
    triples = _as_triples(pairs)
    if not triples:
        raise UsageError("no image pairs to evaluate")
    rows = []
    for pair_name, low, high in triples:
        out = np.asarray(fn(_to_float(low)), dtype=np.float32)
        target = _to_float(high)
        if out.shape != target.shape:
            raise UsageError(
                f"{name or 'model'} turned {pair_name} {low.shape} into {out.shape}, "
                f"but its target is {target.shape}",
                hint="evaluate an upscaling model in its same-size mode",
            )
        out = quantize8(out) if quantize else np.clip(out, 0.0, 1.0)
        p, s = score_pair(out, target)
        matched = match_mean(out, target)
        pm, sm = score_pair(quantize8(matched) if quantize else matched, target)
        rows.append(
            {"name": pair_name, "psnr": p, "ssim": s, "psnr_gt_mean": pm, "ssim_gt_mean": sm}
        )
    return QualityResult(
        model=name,
        psnr=float(np.mean([r["psnr"] for r in rows])),
        ssim=float(np.mean([r["ssim"] for r in rows])),
        n_images=len(rows),
        per_image=rows,
        psnr_gt_mean=float(np.mean([r["psnr_gt_mean"] for r in rows])),
        ssim_gt_mean=float(np.mean([r["ssim_gt_mean"] for r in rows])),
    )


def model_enhance_fn(
    model: str,
    *,
    weights: str | Path | None = None,
    device: str = "auto",
    ensemble: bool = False,
    coarse_pass: bool = True,
) -> EnhanceFn:
    """The enhancement a user gets from ``lowlight enhance -m model`` (the engine's Enhancer),
    with ``--ensemble`` when ``ensemble``, ``--no-coarse`` when not ``coarse_pass``."""
    from lowlight_cli.engine import Enhancer

    return Enhancer.create(
        model, weights=weights, device=device, ensemble=ensemble, coarse_pass=coarse_pass
    ).enhance


def evaluate_models(
    models: Sequence[str],
    pairs: PairedImages,
    *,
    weights: dict[str, str] | None = None,
    device: str = "auto",
) -> list[QualityResult]:
    """Evaluate each registry model (with optional per-model weights) on ``pairs``."""
    from lowlight_cli.registry import get_spec

    weights = weights or {}
    results = []
    for model in models:
        spec = get_spec(model)
        fn = model_enhance_fn(spec.name, weights=weights.get(spec.name), device=device)
        results.append(evaluate_pairs(fn, pairs, name=spec.name))
    return results
