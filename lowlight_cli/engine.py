"""The Enhancer: (shrink) -> pad -> (context pass) -> tiles -> backend -> merge -> crop ->
(coarse pass) -> strength -> (edge-aware upsampling) -> clamp.

Two paths share the tiler. **Full resolution**: the model sees every pixel of the photo, in tiles
when it does not fit memory. **Working resolution** (the fast path, the default for photos larger
than the working size): the model sees a copy shrunk to the working size (the scale the models
were trained at), and :mod:`lowlight_cli.upsampling` carries its effect to the full-size photo
with local affine colour transforms fitted between the small input and output, so the photo's own
edges and detail are kept.

Memory is kept proportional to one tile plus the output: the input is never copied whole
(padding is done per tile through index maps), tiles are merged straight into a float32 output
of the final size (their weights sum to 1, see :mod:`lowlight_cli.tiling`, so no weight buffer),
and strength and clamping work in place.

A model whose receptive field sees only part of a photo (frlie) also runs on a ~150 x 100 copy
of the whole photo, and that pass's broad brightness is carried to the main pass's output as a
smooth gain (:meth:`Enhancer._coarse_shading`, ``ModelSpec.coarse_pass_mp``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lowlight_cli.backends.base import Backend, OutOfMemory
from lowlight_cli.constants import DEFAULT_TILE_OVERLAP, DEFAULT_WORKING_SIZE_MP
from lowlight_cli.errors import ResourceError, UsageError
from lowlight_cli.registry import (
    ModelSpec,
    check_ensemble,
    check_supersample,
    check_upscale,
    get_spec,
)
from lowlight_cli.tiling import extract_tile, merge_tile, plan_tiles, round_up

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

# The context pass runs on the whole image shrunk so that its long side is at most this...
CONTEXT_LONG_SIDE = 1024
# ...and its area at most max(tile area, this), so it never needs more memory than a tile.
CONTEXT_MIN_AREA = 256 * 256
# On the CPU the fast path's model pass runs whole (tiles would re-run symnet's 132 px margins
# and a context pass: 4x the time at 0.5 MP), within this much memory, so a 12 MP photo stays
# under 2 GB peak in all (decoded photo, float32 input and output: ~0.9 GB with torch). A model
# whose pass at the default working size would need more gets a smaller working size.
CPU_WORKING_PASS_CAP = 900 * 1024**2
# Peak bytes per pixel of one whole pass through the engine (the model plus the engine's
# buffers and the heap it keeps), measured at 632x476 and 848x644 in fresh processes on the CPU,
# fp32, the larger rounded up; nrl's is twice its bare-model figure in BYTES_PER_PIXEL.
WORKING_BYTES_PER_PIXEL: dict[str, int] = {"symnet": 3400, "nrl": 3000, "frlie": 1150, "neid": 550}
# Share of the cap's pixels the photo itself may use: the mirrored border and the padding to
# the size multiple take the rest (a 4:3 photo at 0.27 MP gains 12 % in its frame).
WORKING_AREA_SHARE = 0.85
# Mirrored border (working-size pixels) around the shrunk photo on the fast path: the
# outermost rows of every model's output differ from what it gives with more context (by up to
# 0.2 in the first row, settling within 5-10 rows; docs/usage.md).
WORKING_BORDER = 16
# Blur (Gaussian sigma, in coarse-pass pixels) that keeps only the broad brightness of a
# model's coarse pass (ModelSpec.coarse_pass_mp). Chosen for frlie on the 15 held-out LOL pairs
# at 0.015 MP, first as an additive blend: sigma 1 19.08 dB / SSIM 0.804, 2 19.22 / 0.811, 4
# 19.24 / 0.810; as the luma gain used here, sigma 2: 19.25 / 0.811 (without: 17.94 / 0.804).
COARSE_BLUR = 2.0
# Luma added to both sides of the coarse pass's gain, so black regions do not divide by ~0.
COARSE_EPS = 1e-3
# Below this tile side, out-of-memory is reported instead of retried with smaller tiles.
MIN_TILE = 64
# Auto tiles stop growing here: beyond it a CPU gains nothing and the context pass is exact
# only for whole images anyway.
MAX_AUTO_TILE = 2048
# Share of the available memory the model's activations may use in --tile auto. On the CPU the
# budget is also capped, so a 24-megapixel photo stays under ~3 GB peak RSS in total: with freed
# memory kept in the heap (devices.keep_freed_memory), 1 GiB tiles left nrl at 3.7 GB (blocks of
# one tile's sizes do not fit the next), 512 MiB ones at 2.0 GB and faster (5 m 25 s -> 4 m 33 s).
# A photo small enough to run whole has small whole-image buffers and no next tile, so it may
# use up to 1 GiB (a 600x400 symnet pass, estimated 0.86 GB, stays whole instead of 4 tiles).
MEMORY_FRACTION = {"cuda": 0.6, "mps": 0.3, "cpu": 0.25}
CPU_MEMORY_CAP = 512 * 1024**2
CPU_WHOLE_IMAGE_CAP = 1024**3
# Peak bytes per input pixel of one fp32 forward pass (activations, allocator slack), measured
# with docs/scripts/measure_memory.py on the CPU (NCHW and channels_last, the larger, rounded
# up); unknown models get the conservative default.
BYTES_PER_PIXEL: dict[str, int] = {
    "symnet": 3600,
    "nrl": 1500,
    "frlie": 1300,
    "neid": 700,
    "gamma": 64,
    "clahe": 64,
}
DEFAULT_BYTES_PER_PIXEL = 4096

ProgressCallback = Callable[[int, int], None]

# --ensemble: (quarter turns, mirrored) for the 8 orientations of a photo, the plain one first.
ORIENTATIONS = tuple((turns, mirror) for turns in range(4) for mirror in (False, True))


def parse_working_size(value: str | float | None) -> float | None:
    """Megapixels the model works at: ``"auto"``/None -> None (per device); ``"full"`` or
    ``"0"`` -> 0.0 (full resolution); ``"0.5"`` or ``"0.5mp"`` -> 0.5.

    Raises:
        UsageError: anything else, or a negative size.
    """
    if value is None:
        return None
    hint = "use auto, full (every pixel) or megapixels, e.g. 0.5"
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        text = value.strip().lower()
        if text == "auto":
            return None
        if text in ("full", "full-res"):
            return 0.0
        text = text.removesuffix("mp").strip()
        try:
            number = float(text)
        except ValueError:
            raise UsageError(f"bad working size {value!r}", hint=hint) from None
    if not math.isfinite(number) or number < 0:
        raise UsageError(f"bad working size {value!r}", hint=hint)
    return number


def parse_tile(value: str | int | None) -> int | None:
    """``"auto"``/None -> None (choose from memory); ``"0"`` -> 0 (whole image); ``"512"`` -> 512.

    Raises:
        UsageError: not ``auto`` or a non-negative integer.
    """
    if value is None:
        return None
    if isinstance(value, int):
        number = value
    else:
        text = value.strip().lower()
        if text == "auto":
            return None
        if not text.isdigit():
            raise UsageError(f"bad tile size {value!r}", hint="use auto, 0 (whole image) or N")
        number = int(text)
    if number < 0:
        raise UsageError(f"bad tile size {value!r}", hint="use auto, 0 (whole image) or N")
    return number


class Enhancer:
    """Enhance whole photos of any size with one model.

    Args:
        model: an already-built ``nn.Module`` (wrapped in a torch backend on ``device``); or None
            when ``backend`` is given. For ``upscale=True`` it must be built in its x2 mode.
        spec: the model's registry entry (size multiple, margin, tiling, precisions).
        backend: a ready backend (takes precedence over ``model``).
        device: ``auto|cpu|cuda[:n]|mps`` for ``model``.
        precision: ``fp32|fp16|bf16`` for ``model``.
        tile: tile side in pixels, 0 for the whole image, ``"auto"``/None to choose from memory.
        tile_overlap: width of the blend zone between tiles (pixels).
        strength: 0..1, how much of the enhancement to keep (1 = all of it).
        upscale: the model's true x2 mode (output twice the input size); always full
            resolution, since the point of it is detail the small image does not have.
        supersample: run an x2 model in its x2 mode and average its output back down to the
            input size (2x2 boxes): the model sees every input pixel instead of a bicubic
            half-size copy, so fine detail survives and the x2 decoder's pixel grid averages
            out, at ~4x the model's cost. Exclusive with ``upscale``.
        ensemble: run the model on the photo in its 8 orientations (4 rotations, each also
            mirrored), turn each output back and average them: the errors a model makes
            differently in each orientation (noise, its pixel grid) average out, at 8x the
            cost. Trained models only.
        context_pass: share whole-image pooling statistics between tiles (turn off only to
            measure what it buys).
        coarse_pass: for a model with a ``coarse_pass_mp`` (frlie), also run it on a small copy
            of the whole photo and take the output's broad shading from there (see
            :meth:`_coarse_shading`); off: the plain model, for comparison.
        working_size: megapixels the model works at (photos above it take the fast path),
            ``"full"``/0 for full resolution, ``"auto"``/None for the device's default
            (:data:`~lowlight_cli.constants.DEFAULT_WORKING_SIZE_MP`; classical models, which
            cost little per pixel, run at full resolution).

    Raises:
        UsageError: bad strength, overlap, tile, or ``upscale`` for a model without that mode.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        spec: ModelSpec,
        backend: Backend | None = None,
        device: str = "auto",
        precision: str = "fp32",
        tile: str | int | None = "auto",
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        strength: float = 1.0,
        upscale: bool = False,
        supersample: bool = False,
        ensemble: bool = False,
        context_pass: bool = True,
        coarse_pass: bool = True,
        working_size: str | float | None = "auto",
    ) -> None:
        if not 0.0 <= float(strength) <= 1.0:
            raise UsageError(f"strength must be between 0 and 1, not {strength}")
        if tile_overlap < 0:
            raise UsageError(f"tile overlap must be >= 0, not {tile_overlap}")
        check_upscale(spec, upscale)
        check_supersample(spec, upscale=upscale, supersample=supersample)
        check_ensemble(spec, ensemble)
        self.spec = spec
        self.ensemble = ensemble
        # The model's own scale (tiling, memory); the photo's output scale is 1 when supersampling.
        self.scale = 2 if upscale or supersample else spec.scale
        self.output_scale = 1 if supersample else self.scale
        self.supersample = supersample
        self.tile = parse_tile(tile)
        self.tile_overlap = int(tile_overlap)
        self.strength = float(strength)
        self.upscale = upscale
        self.context_pass = context_pass
        self.coarse_pass = coarse_pass
        self.working_size = parse_working_size(working_size)
        if backend is None:
            if model is None:
                raise UsageError("Enhancer needs a model or a backend")
            from lowlight_cli.backends.torch import TorchBackend
            from lowlight_cli.devices import resolve_device, resolve_precision

            dev = resolve_device(device)
            backend = TorchBackend(
                model, device=dev, dtype=resolve_precision(precision, spec, dev), scale=self.scale
            )
        self.backend = backend
        # What really runs ("auto" resolved by the backend); it sets the memory estimate.
        self.precision = getattr(backend, "precision", None) or precision

    @classmethod
    def create(
        cls,
        model: str,
        *,
        weights: str | Path | None = None,
        device: str = "auto",
        precision: str = "auto",
        backend: str = "torch",
        tile: str | int | None = "auto",
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        strength: float = 1.0,
        upscale: bool = False,
        supersample: bool = False,
        ensemble: bool = False,
        coarse_pass: bool = True,
        working_size: str | float | None = "auto",
    ) -> Enhancer:
        """Build an Enhancer for registry model ``model`` (or a weights id like ``neid.lol``).

        Weights load through :func:`lowlight_cli.registry.load_model`; ``weights`` is a weights
        id, a file path, or None for the model's default.

        Raises:
            UsageError, WeightsError, ResourceError: unknown model/backend/device, missing or
                bad weights, unsupported precision.
        """
        from lowlight_cli.backends import create_backend

        spec = get_spec(model)
        if weights is None and "." in model:
            weights = model  # `--model symnet.fivek` picks that variant's weights
        check_upscale(spec, upscale)
        check_supersample(spec, upscale=upscale, supersample=supersample)
        check_ensemble(spec, ensemble)
        parse_tile(tile)  # fail on bad options before loading weights
        parse_working_size(working_size)
        runner = create_backend(
            backend,
            spec,
            weights=weights,
            device=device,
            precision=precision,
            upscale=upscale or supersample,
        )
        return cls(
            spec=spec,
            backend=runner,
            precision=precision,
            tile=tile,
            tile_overlap=tile_overlap,
            strength=strength,
            upscale=upscale,
            supersample=supersample,
            ensemble=ensemble,
            coarse_pass=coarse_pass,
            working_size=working_size,
        )

    # ------------------------------------------------------------------------------------------

    def enhance(self, pixels: np.ndarray, progress: ProgressCallback | None = None) -> np.ndarray:
        """Enhance one photo (at the working size when it is larger, see :meth:`working_shape`).

        Args:
            pixels: ``(H, W, 3)`` float32 RGB in [0, 1] (not modified).
            progress: called as ``progress(done, total)`` after every tile.

        Returns:
            ``(H * output_scale, W * output_scale, 3)`` float32 RGB in [0, 1].

        Raises:
            UsageError: not an ``(H, W, 3)`` array.
            ResourceError: out of memory even at the smallest tile.
        """
        image = np.asarray(pixels, dtype=np.float32)
        if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise UsageError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
        small_shape = self.working_shape(*image.shape[:2])
        if small_shape is None:
            out = self._photo_pass(image, progress)
            self._coarse_shading(image, out)
            if self.strength < 1.0:
                self._blend_with_input(out, image)
        else:
            from lowlight_cli.upsampling import UPSAMPLE_EPS, UPSAMPLE_RADIUS, guided_upsample

            small, small_out = self._shrunk_pass(image, small_shape, progress)
            self._coarse_shading(small, small_out)
            if self.strength < 1.0:
                # The fit is linear in the output, so blending here equals blending at full size.
                self._blend_with_input(small_out, small)
            out = guided_upsample(small, small_out, image, radius=UPSAMPLE_RADIUS, eps=UPSAMPLE_EPS)
        np.clip(out, 0.0, 1.0, out=out)
        return out

    def _shrunk_pass(
        self, image: np.ndarray, shape: tuple[int, int], progress: ProgressCallback | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``image`` shrunk to ``shape`` and the model's output for it (at the output scale)."""
        import cv2

        # INTER_AREA averages: the small image is what a smaller sensor would have seen.
        small = cv2.resize(image, shape[::-1], interpolation=cv2.INTER_AREA)
        # Models go wrong in their outermost pixels (zero padding inside): harmless at full
        # size, but each small pixel becomes several, so mirror a border in and cut it off.
        b = min(WORKING_BORDER, *(side - 1 for side in shape))
        framed = cv2.copyMakeBorder(small, b, b, b, b, cv2.BORDER_REFLECT_101)
        s = self.output_scale
        out = self._photo_pass(framed, progress)[
            b * s : (b + shape[0]) * s, b * s : (b + shape[1]) * s
        ]
        return small, out

    def _coarse_shading(self, image: np.ndarray, out: np.ndarray) -> None:
        """Give ``out`` (the model's output for ``image``) the broad brightness of a pass over a
        copy of ``image`` shrunk to the spec's ``coarse_pass_mp``, in place.

        A model whose receptive field covers only part of the photo judges each region's
        brightness from too little of the scene; on the small copy it sees the whole scene.
        Both outputs' luma is blurred by :data:`COARSE_BLUR` coarse pixels at the coarse size;
        their ratio, enlarged, multiplies ``out``, which keeps its own detail and colour (a
        gain, not an offset, so dark surroundings of a bright light are not lifted into a halo).
        Nothing happens without a coarse pass or when ``image`` is not larger than its size.
        """
        megapixels = self.spec.coarse_pass_mp if self.coarse_pass else 0.0
        shape = shrunk_shape(*image.shape[:2], megapixels) if megapixels else None
        if shape is None:
            return
        import cv2

        from lowlight_cli.metrics import LUMA_BT601
        from lowlight_cli.upsampling import enlarged_blocks

        _, coarse = self._shrunk_pass(image, shape, None)
        mine = cv2.resize(out, coarse.shape[1::-1], interpolation=cv2.INTER_AREA)
        sigma = COARSE_BLUR * self.output_scale
        wanted = cv2.GaussianBlur(np.clip(coarse, 0.0, 1.0) @ LUMA_BT601, (0, 0), sigma)
        have = cv2.GaussianBlur(np.clip(mine, 0.0, 1.0) @ LUMA_BT601, (0, 0), sigma)
        log_gain = np.log((wanted + COARSE_EPS) / (have + COARSE_EPS)).astype(np.float32)
        for start, stop, rows in enlarged_blocks(log_gain, *out.shape[:2]):
            out[start:stop] *= np.exp(rows)[..., None]

    def working_shape(self, height: int, width: int) -> tuple[int, int] | None:
        """``(h, w)`` the model runs at for an ``height x width`` photo; None: full resolution.

        The photo is shrunk, aspect kept, to the working size's area when it is larger than
        that; ``--upscale`` and a working size of 0 (``full``) always use full resolution.
        """
        if self.upscale:
            return None
        megapixels = self.working_size
        if megapixels is None:
            megapixels = self.default_working_size()
        return shrunk_shape(height, width, megapixels)

    def default_working_size(self) -> float:
        """Megapixels for ``working_size="auto"`` on this backend's device (0: full resolution)."""
        return default_working_size(self.spec, self.backend.device)

    def _photo_pass(self, image: np.ndarray, progress: ProgressCallback | None) -> np.ndarray:
        """The model over ``image`` at the output scale; with ``ensemble``, the mean over the
        image's orientations."""
        if not self.ensemble:
            return self._oriented_pass(image, progress)
        h, w = image.shape[:2]
        s = self.output_scale
        total = np.zeros((h * s, w * s, 3), dtype=np.float32)
        for i, (turns, mirror) in enumerate(ORIENTATIONS):
            view = np.rot90(image, turns)
            view = np.ascontiguousarray(view[:, ::-1] if mirror else view)
            out = self._oriented_pass(view, _progress_share(progress, i, len(ORIENTATIONS)))
            total += np.rot90(out[:, ::-1] if mirror else out, -turns)
            del out
        total /= len(ORIENTATIONS)
        return total

    def _oriented_pass(self, image: np.ndarray, progress: ProgressCallback | None) -> np.ndarray:
        """The model over ``image`` at the output scale (averaged back down when supersampling)."""
        out = self._model_pass(image, progress)
        if self.supersample:
            import cv2

            h, w = image.shape[:2]
            # An exact 1/2 with INTER_AREA is the mean of each 2x2 block.
            out = cv2.resize(out, (w, h), interpolation=cv2.INTER_AREA)
        return out

    def _model_pass(self, image: np.ndarray, progress: ProgressCallback | None) -> np.ndarray:
        """The model over the whole of ``image`` (tiled as needed), unclamped."""
        tile = self.tile if self.tile is not None else self.auto_tile(*image.shape[:2])
        if not self.spec.supports_tiling:
            tile = 0
        while True:
            try:
                return self._run(image, tile, progress)
            except (OutOfMemory, MemoryError) as exc:
                self.backend.free()
                smaller = self._smaller_tile(tile, image.shape[:2])
                if smaller < MIN_TILE or not self.spec.supports_tiling:
                    raise ResourceError(
                        f"out of memory at tile {tile or 'whole image'} on {self.backend.device}"
                        f" ({str(exc).splitlines()[0][:120] if str(exc) else 'no detail'})",
                        hint="close other programs, try --device cpu, --precision bf16/fp16 "
                        "where the model allows it, or a smaller --tile",
                    ) from exc
                tile = smaller

    def auto_tile(self, height: int, width: int) -> int:
        """Tile side for an ``height x width`` photo from free memory (0: whole image fits)."""
        from lowlight_cli.devices import available_memory

        device = self.backend.device
        kind = device.split(":", 1)[0]
        budget = available_memory(_torch_device(device)) * MEMORY_FRACTION.get(kind, 0.25)
        whole_budget = budget
        if kind == "cpu":
            budget = min(budget, CPU_MEMORY_CAP)
            whole_budget = min(whole_budget, CPU_WHOLE_IMAGE_CAP)
        per_pixel = BYTES_PER_PIXEL.get(self.spec.name, DEFAULT_BYTES_PER_PIXEL)
        if self.precision in ("fp16", "bf16"):
            per_pixel //= 2
        # The model sees input pixels; an x2 model's activations grow with its output size.
        per_pixel *= self.scale * self.scale
        m = self.spec.size_multiple
        padded = round_up(height, m) * round_up(width, m)
        if padded * per_pixel <= whole_budget and max(height, width) <= MAX_AUTO_TILE:
            return 0
        pixels = budget / per_pixel
        side = min(math.isqrt(int(pixels)), MAX_AUTO_TILE)
        return max(MIN_TILE, (side // m) * m)

    # ------------------------------------------------------------------------------------------

    def _smaller_tile(self, tile: int, shape: tuple[int, ...]) -> int:
        m = self.spec.size_multiple
        current = tile or max(round_up(shape[0], m), round_up(shape[1], m))
        return ((current // 2) // m) * m

    def _tile_geometry(self, tile: int) -> tuple[int, int]:
        """Overlap and margin that fit ``tile``: shrunk together so they take <= half of it."""
        overlap, margin = self.tile_overlap, self.spec.receptive_margin
        shared = overlap + 2 * margin
        limit = tile // 2 - self.spec.size_multiple
        if tile and shared > limit:
            factor = max(limit, 0) / shared
            overlap, margin = int(overlap * factor), int(margin * factor)
        return overlap, margin

    def _run(self, image: np.ndarray, tile: int, progress: ProgressCallback | None) -> np.ndarray:
        h, w = image.shape[:2]
        m, s = self.spec.size_multiple, self.scale
        hp, wp = round_up(h, m), round_up(w, m)
        overlap, margin = self._tile_geometry(tile)
        tiles = plan_tiles(hp, wp, tile, overlap, m, margin=margin)
        if len(tiles) == 1:
            y = self.backend.run(extract_tile(image, tiles[0], hp, wp))
            if progress is not None:
                progress(1, 1)
            return np.ascontiguousarray(y[0, :, : h * s, : w * s].transpose(1, 2, 0))
        stats = self._context_stats(image, tile) if self.context_pass else None
        out = np.zeros((h * s, w * s, 3), dtype=np.float32)
        for done, t in enumerate(tiles, start=1):
            y = self.backend.run(extract_tile(image, t, hp, wp), stats)
            merge_tile(out, y[0].transpose(1, 2, 0), t, scale=s)
            del y
            if progress is not None:
                progress(done, len(tiles))
        return out

    def _context_stats(self, image: np.ndarray, tile: int) -> np.ndarray | None:
        """Pooled statistics of the whole image, shrunk to a tile's memory (area) at most."""
        import cv2

        h, w = image.shape[:2]
        m = self.spec.size_multiple
        area = max(tile * tile, CONTEXT_MIN_AREA)
        factor = min(1.0, CONTEXT_LONG_SIDE / max(h, w), math.sqrt(area / (h * w)))
        if factor < 1.0:
            size = (max(m, round(w * factor)), max(m, round(h * factor)))
            # INTER_AREA averages, so the small image keeps the big one's means.
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        else:
            small = image
        sh, sw = small.shape[:2]
        hp, wp = round_up(sh, m), round_up(sw, m)
        whole = plan_tiles(hp, wp, 0, 0, m)[0]
        return self.backend.context(extract_tile(small, whole, hp, wp))

    def _blend_with_input(self, out: np.ndarray, image: np.ndarray) -> None:
        """``out = image + strength * (out - image)``, in place (input upscaled for x2 models)."""
        if self.output_scale != 1:
            import cv2

            h, w = out.shape[:2]
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_CUBIC)
        out -= image
        out *= self.strength
        out += image


def _progress_share(
    progress: ProgressCallback | None, index: int, count: int
) -> ProgressCallback | None:
    """``progress`` for pass ``index`` of ``count``: its tiles counted as a share of all."""
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        progress(index * total + done, count * total)

    return report


def default_working_size(spec: ModelSpec, device: str) -> float:
    """Megapixels model ``spec`` works at by default on ``device`` (0: full resolution).

    The device's :data:`~lowlight_cli.constants.DEFAULT_WORKING_SIZE_MP`, on the CPU at most
    what one whole pass fits in :data:`CPU_WORKING_PASS_CAP` (symnet 0.24 MP, nrl 0.27 MP).
    Classical models cost little per pixel, so there is no reason to approximate them.
    """
    if spec.kind != "neural":
        return 0.0
    kind = device.split(":", 1)[0]
    megapixels = DEFAULT_WORKING_SIZE_MP.get(kind, DEFAULT_WORKING_SIZE_MP["cpu"])
    if kind == "cpu":
        per_pixel = WORKING_BYTES_PER_PIXEL.get(spec.name, DEFAULT_BYTES_PER_PIXEL)
        fits = CPU_WORKING_PASS_CAP / per_pixel * WORKING_AREA_SHARE / 1e6
        megapixels = min(megapixels, round(fits, 2))
    return megapixels


def shrunk_shape(height: int, width: int, megapixels: float) -> tuple[int, int] | None:
    """``(h, w)`` with the aspect of ``height x width`` and an area of ``megapixels``; None when
    the photo is not larger than that (or ``megapixels`` is 0: full resolution)."""
    if not megapixels or height * width <= megapixels * 1e6:
        return None
    factor = math.sqrt(megapixels * 1e6 / (height * width))
    return max(1, round(height * factor)), max(1, round(width * factor))


def _torch_device(name: str):  # -> torch.device
    import torch

    return torch.device(name)
