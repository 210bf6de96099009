"""Training data: paired folders (LOL layout or ``low/`` + ``high/``) and synthetic pairs.

The whole training set is decoded into RAM once as uint8 (LOL's 210 pairs of 600 x 400 are about
300 MB): decoding lossless WebP every step would cost more than a training step on a small CPU.

Sampling is a pure function of ``(seed, step)``: which images a step uses, where it crops, how it
flips, and (synthetic data) how it darkens, are all drawn from generators seeded by
``(seed, step, sample)``. Resuming at step ``k`` therefore needs no sampler state beyond ``k`` and
reproduces an uninterrupted run exactly. Images are visited in epochs: epoch ``e`` is a fresh
permutation of the training set seeded by ``(seed, e)``, so every image is used once per epoch.

Synthetic low-light model (:func:`synthesize_low_light`), applied to a normal-light sRGB crop:

1. decode sRGB to linear light (IEC 61966-2-1 curve);
2. a mild colour cast: per-channel gains in ``[1 - c, 1 + c]`` (white balance error);
3. exposure: multiply by ``e`` drawn log-uniformly from ``[0.03, 0.3]`` (1.7 to 5 stops under);
4. sensor noise in linear light: Poisson shot noise with ``photons_at_white`` drawn log-uniformly
   (``x -> Poisson(x * k) / k``) plus Gaussian read noise of std ``sigma`` drawn uniformly;
5. clip to ``[0, 1]``, encode back to sRGB, then a random tone gamma ``g`` in ``[0.9, 1.1]``
   (``y -> y ** g``: cameras' tone curves differ);
6. with probability ``jpeg_probability``, a JPEG round trip at quality ``[60, 95]``.

The ground truth is the untouched crop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lowlight_cli.errors import ImageError, UsageError
from lowlight_cli.metrics import mean_luma

if TYPE_CHECKING:
    from lowlight_cli.training.recipes import Recipe

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
DATASET_KINDS = ("lol", "pairs", "synthetic")
LOL_TRAIN = "our485"
LOL_VAL = "eval15"
# Synthetic data without --val: every n-th photo (sorted by name) is held out for validation.
SYNTHETIC_HOLDOUT_EVERY = 10
# How a held-out split is drawn: single pairs, or whole scenes (see scene_groups).
HOLDOUT_SPLITS = ("pairs", "scenes")
# Scene grouping: targets shrunk to this size (w, h), divided by their mean, and compared by mean
# squared difference; closer than SCENE_DISTANCE is one scene (two random LOL pairs: ~0.29).
SCENE_THUMB = (48, 32)
SCENE_DISTANCE = 0.05
# Closer than this, two targets are shots of the very scene (``scene_exposure``). LOL's re-shots
# of one scene lie below ~0.03 and different scenes that look alike at this size from ~0.04;
# SCENE_DISTANCE links through such look-alikes (one 25-pair group of white, evenly lit scenes
# in our485), which a validation split may do but an exposure shared by the group may not.
SCENE_EXPOSURE_DISTANCE = 0.03


# ---- files -------------------------------------------------------------------------------------


def _images_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise UsageError(f"no folder {folder}", hint="check --data/--val")
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            if path.stem in out:
                raise UsageError(f"two images named {path.stem} in {folder}")
            out[path.stem] = path
    return out


def _natural_key(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if name.isdigit() else (1, name)


def list_pairs(folder: str | Path) -> list[tuple[str, Path, Path]]:
    """Pairs in ``folder/low`` and ``folder/high`` matched by file stem (any image extension).

    Returns:
        ``(stem, low_path, high_path)`` in natural order of the stems.

    Raises:
        UsageError: missing folders, no pairs, or unmatched files.
    """
    root = Path(folder)
    low = _images_by_stem(root / "low")
    high = _images_by_stem(root / "high")
    missing = sorted(set(low) ^ set(high))
    if missing:
        raise UsageError(
            f"{len(missing)} images in {root} have no partner in low/ or high/: "
            f"{', '.join(missing[:5])}",
            hint="pairs are matched by file name without extension",
        )
    if not low:
        raise UsageError(f"no image pairs in {root}/low and {root}/high")
    return [(s, low[s], high[s]) for s in sorted(low, key=_natural_key)]


def list_images(folder: str | Path) -> list[Path]:
    """Every image file directly in ``folder`` (sorted naturally by stem).

    Raises:
        UsageError: no folder or no images.
    """
    paths = sorted(_images_by_stem(Path(folder)).values(), key=lambda p: _natural_key(p.stem))
    if not paths:
        raise UsageError(f"no images in {folder}")
    return paths


def paired_split(root: str | Path, split: str) -> Path:
    """The folder holding ``low/`` and ``high/`` of a LOL split (``train`` or ``val``).

    Accepts the LOL root (``our485``/``eval15`` inside) or a split folder itself.
    """
    root = Path(root)
    if (root / "low").is_dir() and (root / "high").is_dir():
        return root
    sub = root / (LOL_TRAIN if split == "train" else LOL_VAL)
    if not sub.is_dir():
        raise UsageError(
            f"{root} is not in the LOL layout (no {sub.name}/low and {sub.name}/high)",
            hint="use --dataset pairs for a folder with low/ and high/",
        )
    return sub


def decode_rgb8(path: Path) -> np.ndarray:
    """Decode ``path`` to ``(H, W, 3)`` uint8 RGB, EXIF orientation applied.

    16-bit sources are reduced to 8 bits: training keeps uint8 in RAM and no dataset here is
    deeper than 8 bits.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float32)
                arr = np.clip(arr / 257.0 + 0.5, 0, 255).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2))
            return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
    except OSError as err:
        raise ImageError(f"cannot read training image {path}: {err}") from err


def _decode_all(paths: Sequence[Path], workers: int) -> list[np.ndarray]:
    # Pillow releases the GIL while decoding, so threads overlap the work.
    if workers <= 1 or len(paths) < 2:
        return [decode_rgb8(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(decode_rgb8, paths))


# ---- image sets --------------------------------------------------------------------------------


@dataclass
class PairedImages:
    """Decoded pairs in RAM.

    Attributes:
        names: file stems.
        low: ``(H, W, 3)`` uint8 RGB per pair.
        high: same size as ``low``.
        source: where they came from (for logs and metadata).
    """

    names: list[str]
    low: list[np.ndarray]
    high: list[np.ndarray]
    source: str = ""

    def __len__(self) -> int:
        return len(self.names)


def load_pairs(folder: str | Path, *, workers: int = 2) -> PairedImages:
    """Decode every pair of ``folder/{low,high}``.

    Raises:
        UsageError: a pair whose two images differ in size.
    """
    pairs = list_pairs(folder)
    images = _decode_all([p for _, lo, hi in pairs for p in (lo, hi)], workers)
    low, high = images[0::2], images[1::2]
    for (name, *_), lo, hi in zip(pairs, low, high, strict=True):
        if lo.shape != hi.shape:
            raise UsageError(f"pair {name} in {folder}: low {lo.shape} and high {hi.shape} differ")
    return PairedImages([n for n, *_ in pairs], low, high, source=dataset_name(folder))


def dataset_name(folder: str | Path) -> str:
    """How a data folder is named in logs, checkpoints and manifests: its last two path parts
    (``lol/our485``), never the absolute path of the machine that trained."""
    parts = Path(folder).resolve().parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else str(folder)


def holdout_indices(n: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(n)`` (first and last included).

    The validation split held out of a training set: chosen by position in name order, not by
    seed, so every run on the same data holds out the same pairs.

    Raises:
        UsageError: nothing would be left to train on.
    """
    if count <= 0:
        return []
    if count >= n:
        raise UsageError(
            f"cannot hold out {count} of {n} pairs for validation and still train",
            hint="use a smaller --val-holdout or give --val",
        )
    if count == 1:
        return [n // 2]
    return sorted({round(k * (n - 1) / (count - 1)) for k in range(count)})


def scene_thumbnail(image: np.ndarray) -> np.ndarray:
    """An image as its scene signature: shrunk to :data:`SCENE_THUMB`, divided by its mean (so
    exposure does not count), flattened."""
    from PIL import Image

    small = (
        Image.fromarray(np.ascontiguousarray(image))
        .convert("RGB")
        .resize(SCENE_THUMB, Image.BILINEAR)
    )
    arr = np.asarray(small, np.float32) / 255.0
    return (arr / max(float(arr.mean()), 1e-6)).ravel()


def scene_groups(targets: Sequence[np.ndarray], distance: float = SCENE_DISTANCE) -> list[int]:
    """A scene number per pair, numbered in order of each scene's first pair.

    Data sets such as LOL photograph a scene several times (other exposures of the dark input,
    sometimes with the very same target); a validation pair whose scene is also in training
    measures memory as much as generalisation. Pairs whose targets' :func:`scene_thumbnail`
    differ by less than ``distance`` (mean squared difference) are one scene, and so is
    everything linked by such pairs.
    """
    n = len(targets)
    if n == 0:
        return []
    x = np.stack([scene_thumbnail(t) for t in targets]).astype(np.float64)
    sq = (x * x).sum(axis=1)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, n, 256):  # rows in blocks: no n x n matrix for a large set
        rows = slice(start, min(start + 256, n))
        dist = (sq[rows, None] + sq[None, :] - 2.0 * x[rows] @ x.T) / x.shape[1]
        for i, j in zip(*np.nonzero(dist < distance), strict=True):
            ri, rj = root(start + int(i)), root(int(j))
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    numbers: dict[int, int] = {}
    return [numbers.setdefault(root(i), len(numbers)) for i in range(n)]


def scene_exposure_targets(
    images: PairedImages, distance: float = SCENE_EXPOSURE_DISTANCE
) -> tuple[PairedImages, dict[str, float]]:
    """``images`` with each target rescaled to its scene's mean exposure (the ``scene_exposure``
    recipe setting).

    LOL's ground truths of one scene (:func:`scene_groups` at ``distance``) are exposed
    differently from shot to shot, and not in step with the dark inputs: over ``our485`` about
    half the variance of the log of a target's mean luma lies within scenes, where it is
    uncorrelated with the input's.
    A model trained on such pairs learns that noise as each training pair's exposure and carries
    it to new shots of the scene. Here every target of a scene with more than one pair is scaled
    (in sRGB, clipped, like the "at the GT mean" scores) so that its mean BT.601 luma is the
    geometric mean of the scene's; targets of single-pair scenes are kept. Inputs are kept.

    Returns:
        The rescaled pairs, and a summary: ``scenes`` (with more than one pair), ``pairs``
        rescaled, ``gain_min`` / ``gain_max`` and the share of target values ``clipped``.
    """
    lumas = np.array([mean_luma(h.astype(np.float32) / 255.0) for h in images.high])
    scenes = scene_groups(images.high, distance)
    members: dict[int, list[int]] = {}
    for i, s in enumerate(scenes):
        members.setdefault(s, []).append(i)
    high = list(images.high)
    gains: list[float] = []
    clipped = total = 0
    for idx in members.values():
        if len(idx) < 2:
            continue
        mean = float(np.exp(np.mean(np.log(np.maximum(lumas[idx], 1e-4)))))
        for i in idx:
            gain = mean / max(float(lumas[i]), 1e-4)
            scaled = images.high[i].astype(np.float32) * gain
            clipped += int((scaled > 255.0).sum())
            total += scaled.size
            high[i] = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
            gains.append(gain)
    summary = {
        "scenes": float(sum(len(v) > 1 for v in members.values())),
        "pairs": float(len(gains)),
        "gain_min": min(gains, default=1.0),
        "gain_max": max(gains, default=1.0),
        "clipped": clipped / total if total else 0.0,
    }
    return PairedImages(images.names, images.low, high, images.source), summary


def holdout_scene_indices(scenes: Sequence[int], count: int) -> list[int]:
    """Every pair of ``count`` scenes spread evenly over the scenes (:func:`scene_groups`).

    Raises:
        UsageError: nothing would be left to train on.
    """
    n_scenes = len(set(scenes))
    if count >= n_scenes:
        raise UsageError(
            f"cannot hold out {count} of {n_scenes} scenes for validation and still train",
            hint="use a smaller --val-holdout or give --val",
        )
    picked = set(holdout_indices(n_scenes, count))
    return [i for i, s in enumerate(scenes) if s in picked]


def _check_split(by: str) -> None:
    if by not in HOLDOUT_SPLITS:
        raise UsageError(f"unknown validation split '{by}'", hint=" or ".join(HOLDOUT_SPLITS))


def split_pairs(
    images: PairedImages, count: int, by: str = "pairs"
) -> tuple[PairedImages, PairedImages]:
    """``(train, validation)``: ``count`` pairs held out by :func:`holdout_indices`, or with
    ``by="scenes"`` every pair of ``count`` scenes (:func:`holdout_scene_indices`)."""
    _check_split(by)
    if by == "scenes":
        held = set(holdout_scene_indices(scene_groups(images.high), count))
    else:
        held = set(holdout_indices(len(images), count))

    def pick(keep: bool) -> PairedImages:
        idx = [i for i in range(len(images)) if (i in held) != keep]
        return PairedImages(
            [images.names[i] for i in idx],
            [images.low[i] for i in idx],
            [images.high[i] for i in idx],
            source=images.source,
        )

    return pick(True), pick(False)


# ---- synthetic degradation ---------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticParams:
    """Ranges of the synthetic low-light model (see the module docstring)."""

    exposure: tuple[float, float] = (0.03, 0.3)
    photons_at_white: tuple[float, float] = (200.0, 5000.0)
    read_noise: tuple[float, float] = (0.0005, 0.005)
    colour_cast: float = 0.08
    tone_gamma: tuple[float, float] = (0.9, 1.1)
    jpeg_probability: float = 0.2
    jpeg_quality: tuple[int, int] = (60, 95)


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 decoding; ``x`` in ``[0, 1]``."""
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 encoding; ``x`` in ``[0, 1]``."""
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def synthesize_low_light(
    high: np.ndarray,
    rng: np.random.Generator,
    params: SyntheticParams = SyntheticParams(),
) -> np.ndarray:
    """Make a low-light version of a normal-light sRGB image (deterministic given ``rng``).

    Args:
        high: ``(H, W, 3)`` float32 sRGB in ``[0, 1]``.
        rng: the generator every random choice is drawn from.
        params: ranges of the model.

    Returns:
        ``(H, W, 3)`` float32 sRGB in ``[0, 1]``.
    """
    lin = srgb_to_linear(high.astype(np.float32))
    gains = 1.0 + rng.uniform(-params.colour_cast, params.colour_cast, size=3)
    exposure = _log_uniform(rng, *params.exposure)
    lin = lin * (gains * exposure).astype(np.float32)
    photons = _log_uniform(rng, *params.photons_at_white)
    sigma = rng.uniform(*params.read_noise)
    lin = rng.poisson(np.clip(lin, 0, None) * photons).astype(np.float32) / photons
    lin = lin + rng.normal(0.0, sigma, size=lin.shape).astype(np.float32)
    out = linear_to_srgb(np.clip(lin, 0.0, 1.0))
    out = np.power(out, rng.uniform(*params.tone_gamma)).astype(np.float32)
    if rng.uniform() < params.jpeg_probability:
        import cv2

        quality = int(rng.integers(params.jpeg_quality[0], params.jpeg_quality[1] + 1))
        bgr = (out[..., ::-1] * 255.0 + 0.5).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0
    return np.ascontiguousarray(out, dtype=np.float32)


# ---- sampling ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Augment:
    """Crop and augmentation settings of one training run."""

    patch: int = 128
    patch_width: int = 0
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    input_downscale: int = 1
    exposure_gain: float = 1.0
    exposure_prob: float = 0.5
    exposure_to_target: bool = False

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> Augment:
        """The crop and augmentations ``recipe`` asks for."""
        return cls(
            patch=recipe.patch,
            patch_width=recipe.patch_width,
            hflip=recipe.hflip,
            vflip=recipe.vflip,
            rot90=recipe.rot90,
            input_downscale=int(getattr(recipe, "input_downscale", 1)),
            exposure_gain=float(recipe.exposure_gain),
            exposure_prob=float(recipe.exposure_prob),
            exposure_to_target=bool(recipe.exposure_to_target),
        )

    @property
    def size(self) -> tuple[int, int]:
        """The crop's ``(height, width)`` (``patch_width`` 0: square)."""
        return self.patch, self.patch_width or self.patch


@dataclass
class Batch:
    """One training batch.

    Attributes:
        low: ``(B, 3, h, w)`` float32 in ``[0, 1]`` (``h = patch / input_downscale``).
        high: ``(B, 3, patch, patch_width or patch)`` float32 in ``[0, 1]``.
    """

    low: torch.Tensor
    high: torch.Tensor

    def to(self, device: torch.device, *, channels_last: bool = False) -> Batch:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return Batch(
            self.low.to(device, non_blocking=True, memory_format=fmt),
            self.high.to(device, non_blocking=True, memory_format=fmt),
        )


def sample_indices(n: int, seed: int, step: int, batch_size: int) -> np.ndarray:
    """Dataset indices of the ``batch_size`` samples of ``step`` (epoch-wise permutations)."""
    first = step * batch_size
    out = np.empty(batch_size, dtype=np.int64)
    perm_epoch, perm = -1, None
    for j in range(batch_size):
        epoch, pos = divmod(first + j, n)
        if epoch != perm_epoch:
            perm = np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)
            perm_epoch = epoch
        out[j] = perm[pos]  # type: ignore[index]
    return out


def _augment(arrays: list[np.ndarray], rng: np.random.Generator, aug: Augment) -> list[np.ndarray]:
    if aug.hflip and rng.uniform() < 0.5:
        arrays = [a[:, ::-1] for a in arrays]
    if aug.vflip and rng.uniform() < 0.5:
        arrays = [a[::-1] for a in arrays]
    if aug.rot90:
        k = int(rng.integers(0, 4))
        if len(set(aug.size)) == 2:
            k &= 2  # a quarter turn would make a rectangular crop the wrong way round
        if k:
            arrays = [np.rot90(a, k) for a in arrays]
    return arrays


def _expose(
    low: np.ndarray, high: np.ndarray, rng: np.random.Generator, aug: Augment
) -> np.ndarray:
    """The exposure augmentation (see :class:`~lowlight_cli.training.recipes.Recipe`).

    Returns float32 in ``[0, 1]`` whenever the augmentation is on, so every crop of a batch has
    one dtype; draws from ``rng`` only then, so runs without it keep their exact batches.
    """
    if aug.exposure_gain <= 1.0:
        return low
    out = low.astype(np.float32) / 255.0 if low.dtype == np.uint8 else low.astype(np.float32)
    if rng.uniform() < aug.exposure_prob:
        top = aug.exposure_gain
        if aug.exposure_to_target:
            target = high.astype(np.float32).mean() / (255.0 if high.dtype == np.uint8 else 1.0)
            top = min(top, float(target / max(float(out.mean()), 1e-3)))
        if top > 1.0:
            gain = float(np.exp(rng.uniform(0.0, np.log(top))))
            out = np.minimum(out * gain, 1.0)
    return out


def _crop(arrays: list[np.ndarray], rng: np.random.Generator, aug: Augment) -> list[np.ndarray]:
    """One random crop of ``aug.size`` at the same place of every array, flipped and turned.

    For a rectangular crop, images that only fit it turned (a portrait photo for a landscape
    crop) are turned a quarter first; that draws nothing, so square crops keep their batches.
    """
    ph, pw = aug.size
    h, w = arrays[0].shape[:2]
    if ph != pw and (h < ph or w < pw) and h >= pw and w >= ph:
        arrays = [np.rot90(a) for a in arrays]
        h, w = w, h
    if h < ph or w < pw:
        size = f"{ph}" if ph == pw else f"{pw}x{ph} (width x height)"
        raise UsageError(
            f"a training image ({w}x{h}) is smaller than the patch ({size})",
            hint="use a smaller --patch" + ("" if ph == pw else " or --set patch_width"),
        )
    y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    return _augment([a[y : y + ph, x : x + pw] for a in arrays], rng, aug)


def downscale_bicubic(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The model input of a ``factor``-times downscaling recipe (neid: 256 crops -> 128 inputs).

    Uses neid's own :func:`~lowlight_cli.models.neid.bicubic_downsample_x2`, the function its
    same-size inference mode applies, so training inputs match what the model sees in use.

    Args:
        x: ``(B, 3, H, W)`` in ``[0, 1]``, H and W even.

    Raises:
        UsageError: a factor other than 1 or 2.
    """
    if factor == 1:
        return x
    if factor != 2:
        raise UsageError(f"input downscale x{factor} is not supported (only x2)")
    from lowlight_cli.models.neid import bicubic_downsample_x2

    return bicubic_downsample_x2(x)


def _to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    if len({a.dtype for a in arrays}) > 1:  # uint8 crops beside float32 ones in [0, 1]
        arrays = [a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a for a in arrays]
    stacked = np.stack([np.ascontiguousarray(a) for a in arrays])
    t = torch.from_numpy(stacked).permute(0, 3, 1, 2)
    return t.float().div_(255.0) if stacked.dtype == np.uint8 else t.float()


class TrainingSet:
    """Base class: ``sample(seed, step, batch_size, aug)`` returns a :class:`Batch`."""

    description: str = ""

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def shapes(self) -> list[tuple[int, ...]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def count(self, unit: str, patch: int, width: int = 0) -> int:
        """Size of the set in ``images`` or in non-overlapping ``patches`` of side ``patch``
        (``patch`` high and ``width`` wide when ``width`` is given)."""
        if unit == "images":
            return len(self)
        if unit == "patches":
            width = width or patch
            return max(1, sum((s[0] // patch) * (s[1] // width) for s in self.shapes()))
        raise UsageError(f"unknown epoch unit '{unit}'", hint="images or patches")

    def sample(
        self, seed: int, step: int, batch_size: int, aug: Augment, *, rank: int = 0, world: int = 1
    ) -> Batch:
        """The batch of ``step``: a pure function of the arguments.

        ``batch_size`` is the global batch; with ``world`` processes, process ``rank`` gets the
        samples ``rank, rank + world, ...`` of it (so the union is the single-process batch).
        """
        idx = sample_indices(len(self), seed, step, batch_size)
        lows, highs = [], []
        for j in range(rank, batch_size, world):
            lo, hi = self._draw(int(idx[j]), (seed, step, j), aug)
            lows.append(lo)
            highs.append(hi)
        low, high = _to_tensor(lows), _to_tensor(highs)
        return Batch(downscale_bicubic(low, aug.input_downscale), high)

    def _draw(
        self, i: int, key: tuple[int, int, int], aug: Augment
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``j`` of step ``step`` (``key = (seed, step, j)``): item ``i``, cropped,
        augmented and exposed with a generator of its own."""
        rng = np.random.default_rng([*key, 0xA06])
        lo, hi = self._sample_one(i, rng, aug)
        return _expose(lo, hi, rng, aug), hi

    def _sample_one(
        self, i: int, rng: np.random.Generator, aug: Augment
    ) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError


class PairedTrainingSet(TrainingSet):
    """Aligned random crops of decoded pairs."""

    def __init__(self, images: PairedImages) -> None:
        self.images = images
        self.description = f"pairs:{images.source} ({len(images)} training pairs)"

    def __len__(self) -> int:
        return len(self.images)

    def shapes(self) -> list[tuple[int, ...]]:
        return [a.shape for a in self.images.high]

    def _sample_one(
        self, i: int, rng: np.random.Generator, aug: Augment
    ) -> tuple[np.ndarray, np.ndarray]:
        lo_c, hi_c = _crop([self.images.low[i], self.images.high[i]], rng, aug)
        return lo_c, hi_c


@dataclass
class SyntheticTrainingSet(TrainingSet):
    """Normal-light photos darkened on the fly by :func:`synthesize_low_light`."""

    images: list[np.ndarray]
    params: SyntheticParams = field(default_factory=SyntheticParams)
    source: str = ""

    def __post_init__(self) -> None:
        self.description = f"synthetic:{self.source} ({len(self.images)} photos)"

    def __len__(self) -> int:
        return len(self.images)

    def shapes(self) -> list[tuple[int, ...]]:
        return [a.shape for a in self.images]

    def _sample_one(
        self, i: int, rng: np.random.Generator, aug: Augment
    ) -> tuple[np.ndarray, np.ndarray]:
        (hi,) = _crop([self.images[i]], rng, aug)
        hi_f = np.ascontiguousarray(hi, dtype=np.float32) / 255.0
        return synthesize_low_light(hi_f, rng, self.params), hi_f


class IdentityMix(TrainingSet):
    """A training set with some samples replaced by identity pairs of well-exposed photos.

    With probability ``prob`` (drawn per sample from a generator of its own, so the other
    samples are exactly the base set's), sample ``j`` of a step is a random crop of a random
    photo, flipped and rotated like any crop, as both input and target: the model learns to
    leave a well-lit picture alone. The exposure augmentation does not touch those crops.
    Epochs, ``len`` and ``shapes`` stay the base set's.
    """

    def __init__(
        self, base: TrainingSet, photos: list[np.ndarray], prob: float, source: str = ""
    ) -> None:
        if not 0.0 < prob <= 1.0:
            raise UsageError(f"identity_prob must be in (0, 1], not {prob:g}")
        if not photos:
            raise UsageError("no identity photos")
        self.base, self.photos, self.prob = base, photos, prob
        self.description = (
            f"{base.description} + identity pairs: {source} ({len(photos)} photos, "
            f"{prob:.0%} of samples)"
        )

    def __len__(self) -> int:
        return len(self.base)

    def shapes(self) -> list[tuple[int, ...]]:
        return self.base.shapes()

    def _draw(
        self, i: int, key: tuple[int, int, int], aug: Augment
    ) -> tuple[np.ndarray, np.ndarray]:
        pick = np.random.default_rng([*key, 0x1D7])
        if pick.uniform() >= self.prob:
            return self.base._draw(i, key, aug)
        photo = self.photos[int(pick.integers(len(self.photos)))]
        (crop,) = _crop([photo], pick, aug)
        crop = np.ascontiguousarray(crop)
        return crop, crop.copy()


def synthetic_pairs(
    images: Sequence[np.ndarray], names: Sequence[str], seed: int, source: str = ""
) -> PairedImages:
    """Fixed synthetic pairs (validation): image ``k`` darkened with generator ``(seed, k)``."""
    lows = []
    for k, img in enumerate(images):
        rng = np.random.default_rng([seed, k, 0x7A1])
        low = synthesize_low_light(img.astype(np.float32) / 255.0, rng)
        lows.append((low * 255.0 + 0.5).astype(np.uint8))
    return PairedImages(list(names), lows, list(images), source=f"synthetic:{source}")


# ---- building the data of a run ----------------------------------------------------------------


@dataclass
class RunData:
    """The training set and the validation pairs (None: no validation) of one run."""

    train: TrainingSet
    val: PairedImages | None
    description: str


def build_run_data(
    kind: str,
    data: str | Path,
    *,
    val: str | Path | None = None,
    seed: int = 0,
    workers: int = 2,
    normal_only: bool = False,
    holdout: int = 0,
    holdout_by: str = "pairs",
    identity_data: str | Path | None = None,
    identity_prob: float = 0.0,
    scene_exposure: bool = False,
) -> RunData:
    """Decode the training (and validation) data of a run.

    Args:
        kind: ``lol`` (``our485`` for training, ``eval15`` for validation unless ``val``),
            ``pairs`` (``data/low`` + ``data/high``), or ``synthetic`` (a folder of photos).
        data: the dataset folder.
        val: a ``low/`` + ``high/`` folder (or LOL root) for validation.
        seed: seeds the synthetic validation pairs.
        workers: decoding threads.
        normal_only: train on normal-light images only (frlie stage 1): both sides of each
            pair are the ground truth.
        holdout: without ``val``, hold this many training pairs out for validation
            (:func:`holdout_indices`); ``lol`` then does not load eval15, which stays a test set.
        holdout_by: ``pairs``, or ``scenes``: ``holdout`` is then a number of scenes, held out
            with all their pairs (:func:`split_pairs`).
        identity_data: a folder of well-exposed photos for :class:`IdentityMix`.
        identity_prob: the share of samples drawn from them (needs ``identity_data``).
        scene_exposure: train on targets rescaled to their scene's mean exposure
            (:func:`scene_exposure_targets`; paired data only, validation pairs untouched).

    Raises:
        UsageError: unknown kind or a folder in the wrong layout.
    """
    if kind not in DATASET_KINDS:
        raise UsageError(
            f"unknown dataset '{kind}'", hint=f"choose one of: {', '.join(DATASET_KINDS)}"
        )
    _check_split(holdout_by)  # also when nothing is held out: a typo is not silently ignored
    data = Path(data)
    if scene_exposure and (kind == "synthetic" or normal_only):
        raise UsageError(
            "scene_exposure rescales the targets of low-light pairs; this run has none",
            hint="drop --set scene_exposure=true",
        )
    val_images: PairedImages | None = None
    scenes_note = ""
    if kind == "synthetic":
        paths = list_images(data)
        photos = _decode_all(paths, workers)
        names = [p.stem for p in paths]
        if val is None and len(paths) >= SYNTHETIC_HOLDOUT_EVERY:
            held = set(range(0, len(paths), SYNTHETIC_HOLDOUT_EVERY))
            val_images = synthetic_pairs(
                [photos[k] for k in sorted(held)], [names[k] for k in sorted(held)], seed, str(data)
            )
            photos = [p for k, p in enumerate(photos) if k not in held]
        train: TrainingSet = SyntheticTrainingSet(photos, source=str(data))
    else:
        split = paired_split(data, "train") if kind == "lol" else data
        images = load_pairs(split, workers=workers)
        if normal_only:
            images = PairedImages(images.names, images.high, images.high, images.source)
        if val is None and holdout > 0:
            images, val_images = split_pairs(images, holdout, holdout_by)
            scenes = f" ({holdout} scenes)" if holdout_by == "scenes" else ""
            val_images.source = f"{images.source} held out{scenes}: {', '.join(val_images.names)}"
        if scene_exposure:
            images, info = scene_exposure_targets(images)
            scenes_note = (
                f"; targets at their scene's mean exposure ({int(info['pairs'])} pairs in "
                f"{int(info['scenes'])} scenes, gains "
                f"{info['gain_min']:.2f}-{info['gain_max']:.2f}, "
                f"{100 * info['clipped']:.2f} % of values clipped)"
            )
        train = PairedTrainingSet(images)
        if val is None and val_images is None and kind == "lol":
            val = data
    if val is not None:
        val_images = load_pairs(paired_split(val, "val"), workers=workers)
        if normal_only:
            val_images = PairedImages(
                val_images.names, val_images.high, val_images.high, val_images.source
            )
    if identity_prob > 0.0:
        if identity_data is None:
            raise UsageError(
                f"identity_prob {identity_prob:g} needs a folder of well-exposed photos",
                hint="pass --identity-data FOLDER, or --set identity_prob=0",
            )
        photos = _decode_all(list_images(identity_data), workers)
        train = IdentityMix(train, photos, identity_prob, dataset_name(identity_data))
    elif identity_data is not None:
        raise UsageError(
            "--identity-data is given but identity_prob is 0",
            hint="set its share with --set identity_prob=0.25 (a run started without "
            "identity pairs resumes without them)",
        )
    desc = (
        train.description
        + scenes_note
        + (f"; val {val_images.source} ({len(val_images)})" if val_images else "")
    )
    return RunData(train, val_images, desc)
