"""Quality evaluation end to end: scores agree with scikit-image, padding, benchmark JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_path
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn
from typer.testing import CliRunner

from lowlight_cli.errors import BatchFailedError, UsageError
from lowlight_cli.evaluate import evaluate_pairs, quantize8


def _scene(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(6 * xx + seed), np.cos(5 * yy), xx * yy], axis=-1) * 0.4 + 0.5
    img += rng.normal(0, 0.05, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _pairs(n: int = 3, h: int = 45, w: int = 61) -> list[tuple[str, np.ndarray, np.ndarray]]:
    out = []
    for i in range(n):
        high = _scene(h, w, i)
        out.append((str(i), (high * 0.25).astype(np.uint8), high))
    return out


def _brighten(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0, 1) ** 0.45


def test_scores_match_scikit_image() -> None:
    pairs = _pairs()
    result = evaluate_pairs(_brighten, pairs, name="gamma-ish")
    assert result.n_images == 3 and result.model == "gamma-ish"
    for row, (_, low, high) in zip(result.per_image, pairs, strict=True):
        pred = quantize8(_brighten(low.astype(np.float32) / 255))
        target = high.astype(np.float32) / 255
        ref_ssim = structural_similarity(
            pred,
            target,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=2,
        )
        ref_psnr = peak_signal_noise_ratio(target, pred, data_range=1.0)
        assert row["ssim"] == pytest.approx(ref_ssim, abs=1e-3)
        assert row["psnr"] == pytest.approx(ref_psnr, abs=1e-3)
    assert result.psnr == pytest.approx(np.mean([r["psnr"] for r in result.per_image]))


def test_perfect_output_scores_perfectly_and_worse_scores_lower() -> None:
    pairs = _pairs(2)
    targets = iter([high.astype(np.float32) / 255 for _, _, high in pairs])
    perfect = evaluate_pairs(lambda x: next(targets), pairs)
    assert perfect.ssim == pytest.approx(1.0, abs=1e-6) and perfect.psnr > 60
    identity = evaluate_pairs(lambda x: x, pairs)
    assert identity.psnr < evaluate_pairs(_brighten, pairs).psnr


def test_gt_mean_scores_forgive_exposure_but_not_structure() -> None:
    """A right picture at half the brightness scores badly, and nearly perfectly once matched to
    the target's mean; a blurred one stays poor either way. The matching uses BT.601 luma."""
    pairs = _pairs(2)
    targets = [high.astype(np.float32) / 255 for _, _, high in pairs]
    dim = iter([t * 0.5 for t in targets])
    result = evaluate_pairs(lambda x: next(dim), pairs)
    assert result.psnr < 15 and result.psnr_gt_mean > 40 and result.ssim_gt_mean > 0.99
    assert result.per_image[0]["psnr_gt_mean"] > 40

    import cv2

    blurred = iter([cv2.GaussianBlur(t, (0, 0), 3) * 0.5 for t in targets])
    soft = evaluate_pairs(lambda x: next(blurred), pairs)
    assert soft.psnr_gt_mean < 30 and soft.ssim_gt_mean < 0.9
    assert soft.to_dict()["psnr_gt_mean"] == pytest.approx(soft.psnr_gt_mean, abs=1e-3)


def test_match_mean_uses_luma_and_leaves_black_alone() -> None:
    from lowlight_cli.evaluate import match_mean

    target = np.zeros((4, 4, 3), np.float32)
    target[..., 1] = 0.5  # pure green: luma 0.2935
    pred = np.zeros((4, 4, 3), np.float32)
    pred[..., 2] = 0.1  # pure blue: luma 0.0114
    out = match_mean(pred, target)  # gain 0.2935 / 0.0114 = 25.7, so blue clips at 1
    assert np.allclose(out[..., 2], 1.0) and np.allclose(out[..., :2], 0.0)
    half = match_mean(pred, target * 0.01)  # gain 0.257: no clipping, luma matched exactly
    assert float((half @ np.array([0.299, 0.587, 0.114], np.float32)).mean()) == pytest.approx(
        0.5 * 0.587 * 0.01, rel=1e-4
    )
    black = np.zeros_like(pred)
    assert np.array_equal(match_mean(black, target), black)


class _NeedsMultipleOf8(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"size {tuple(x.shape)} is not a multiple of 8")
        return x * 2.0 + 0.05  # unclamped on purpose


def test_module_path_pads_crops_and_clamps() -> None:
    pairs = _pairs(2, h=30, w=21)
    result = evaluate_pairs(_NeedsMultipleOf8(), pairs, size_multiple=8)
    ref = evaluate_pairs(lambda x: np.clip(x * 2.0 + 0.05, 0, 1), pairs)
    assert result.psnr == pytest.approx(ref.psnr, abs=1e-4)
    assert result.ssim == pytest.approx(ref.ssim, abs=1e-5)


def test_wrong_output_size_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="target"):
        evaluate_pairs(lambda x: x[::2, ::2], _pairs(1))
    with pytest.raises(UsageError, match="no image pairs"):
        evaluate_pairs(lambda x: x, [])


def _lol_folder(root: Path) -> Path:
    for split in ("our485", "eval15"):
        for side in ("low", "high"):
            (root / split / side).mkdir(parents=True)
    for name, low, high in _pairs(2, h=48, w=64):
        Image.fromarray(low).save(root / "eval15" / "low" / f"{name}.png")
        Image.fromarray(high).save(root / "eval15" / "high" / f"{name}.png")
    return root


def test_benchmark_quality_json_for_classical_models(tmp_path: Path) -> None:
    from lowlight_cli.cli import app

    data = _lol_folder(tmp_path / "lol")
    result = CliRunner().invoke(
        app,
        ["benchmark", "--quality-only", "--data", str(data), "--models", "gamma,clahe", "--json"],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["quality"]
    assert [r["model"] for r in rows] == ["gamma", "clahe"]
    for r in rows:
        assert r["n_images"] == 2 and 0 < r["ssim"] <= 1 and np.isfinite(r["psnr"])
        assert r["psnr_gt_mean"] >= r["psnr"] - 3 and 0 < r["ssim_gt_mean"] <= 1
    # The benchmark scores what the engine delivers: recompute gamma's through the Enhancer.
    from lowlight_cli.engine import Enhancer
    from lowlight_cli.training.data import load_pairs

    enh = Enhancer.create("gamma", device="cpu")
    direct = evaluate_pairs(enh.enhance, load_pairs(data / "eval15"))
    assert rows[0]["psnr"] == pytest.approx(direct.psnr, abs=1e-3)


def test_benchmark_reports_models_it_cannot_load(tmp_path: Path) -> None:
    from lowlight_cli.cli import app
    from lowlight_cli.constants import ExitCode

    data = _lol_folder(tmp_path / "lol")
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "--quality-only",
            "--data",
            str(data),
            "--models",
            "gamma,nrl",
            "--weights",
            f"nrl={tmp_path / 'missing.safetensors'}",
            "--json",
        ],
    )
    # CliRunner bypasses main(), which maps errors to exit codes: check the error itself.
    assert isinstance(result.exception, BatchFailedError), result.output
    assert result.exception.exit_code == ExitCode.BATCH_FAILED
    assert [r["model"] for r in json.loads(result.stdout)["quality"]] == ["gamma"]


def test_benchmark_of_all_models_skips_one_without_default_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --models a model not trained yet is a skipped row; named, it is a failure."""
    from lowlight_cli.cli import app, benchmark
    from lowlight_cli.errors import NoDefaultWeightsError
    from lowlight_cli.registry import load_model

    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"schema_version": 1, "weights": {}}))
    monkeypatch.setenv("LOWLIGHT_MANIFEST", str(manifest))
    monkeypatch.setattr(benchmark, "DEFAULT_MODELS", "gamma,nrl")
    with pytest.raises(NoDefaultWeightsError, match="nrl has no default weights yet"):
        load_model("nrl")

    data = _lol_folder(tmp_path / "lol")
    args = ["benchmark", "--quality-only", "--data", str(data), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    gamma, nrl = report["quality"]
    assert gamma["model"] == "gamma" and gamma["n_images"] == 2 and gamma["psnr"] > 0
    assert nrl["model"] == "nrl" and nrl["psnr"] is None and nrl["n_images"] == 0
    assert nrl["note"].startswith("skipped: nrl has no default weights yet")
    assert any("quality of nrl skipped" in n for n in report["notes"])

    named = CliRunner().invoke(app, [*args, "--models", "gamma,nrl"])
    assert isinstance(named.exception, BatchFailedError), named.output


@pytest.mark.shared
def test_gamma_on_lol_eval15_beats_the_dark_input() -> None:
    from lowlight_cli.engine import Enhancer
    from lowlight_cli.training.data import load_pairs

    pairs = load_pairs(shared_path("lol", "eval15"))
    assert len(pairs) == 15
    few = list(zip(pairs.names, pairs.low, pairs.high, strict=True))[:4]  # keep the test fast
    enhanced = evaluate_pairs(Enhancer.create("gamma", device="cpu").enhance, few, name="gamma")
    dark = evaluate_pairs(lambda x: x, few, name="input")
    assert enhanced.n_images == 4
    assert enhanced.psnr > dark.psnr + 3 and enhanced.ssim > dark.ssim
