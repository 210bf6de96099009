"""The engine: padding and cropping, seamless tiles with a shared context, memory fallbacks."""

from __future__ import annotations

import dataclasses
import importlib
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from lowlight_cli import engine as engine_module
from lowlight_cli.backends.base import Backend, OutOfMemory, is_out_of_memory
from lowlight_cli.devices import resolve_device, resolve_precision
from lowlight_cli.engine import Enhancer, parse_tile
from lowlight_cli.errors import ResourceError, UsageError
from lowlight_cli.models.blocks import global_avg_pool
from lowlight_cli.registry import MODELS, NEURAL_MODELS, ModelSpec, create_model, get_spec
from lowlight_cli.tiling import extract_tile, plan_tiles


class PoolingNet(nn.Module):
    """Small fully convolutional net with two global poolings and a stride-2 stage.

    Its receptive field (about 12 px each side) is below the margin used with it, so tiles with a
    replayed context must match the whole-image result to float precision.
    """

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.up = nn.ConvTranspose2d(8, 3, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.inp(x))
        f = f * torch.sigmoid(4 * global_avg_pool(f))
        f = torch.relu(self.down(f))
        f = f - global_avg_pool(f)
        return x + 0.5 * self.up(f)


TOY = ModelSpec(name="toy", builder="tests:PoolingNet", size_multiple=4, receptive_margin=16)


def _toy() -> nn.Module:
    torch.manual_seed(0)
    return PoolingNet().eval()


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth 'photo' plus noise: random weights on white noise would be an unrealistic test."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 0.25 + 0.2 * np.sin(xx / 17.0)[..., None] * np.cos(yy / 23.0)[..., None]
    tint = np.array([0.9, 1.0, 1.1], np.float32)
    return np.clip(base * tint + 0.05 * rng.random((h, w, 3), dtype=np.float32), 0, 1)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


@pytest.mark.parametrize(("h", "w"), [(1, 1), (3, 2), (37, 53), (64, 64), (101, 7)])
def test_output_size_equals_input_size(h: int, w: int) -> None:
    enh = Enhancer(_toy(), spec=TOY, device="cpu", tile=0)
    out = enh.enhance(_image(h, w))
    assert out.shape == (h, w, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_padding_reflects_and_falls_back_to_replicate() -> None:
    image = _image(37, 5)
    (whole,) = plan_tiles(48, 16, 0, 0, 16)
    got = extract_tile(image, whole, 48, 16)[0].transpose(1, 2, 0)
    rows = np.pad(image, ((0, 11), (0, 0), (0, 0)), mode="reflect")  # 11 < 37: reflect
    expected = np.pad(rows, ((0, 0), (0, 11), (0, 0)), mode="edge")  # 11 >= 5: replicate
    np.testing.assert_array_equal(got, expected)


def test_tiles_with_context_match_whole_image_and_beat_naive_tiles() -> None:
    model, image = _toy(), _image(190, 161)
    whole = Enhancer(model, spec=TOY, device="cpu", tile=0).enhance(image)
    shared = Enhancer(model, spec=TOY, device="cpu", tile=64, tile_overlap=8).enhance(image)
    naive = Enhancer(model, spec=TOY, device="cpu", tile=64, tile_overlap=8, context_pass=False)
    naive_out = naive.enhance(image)
    assert np.abs(shared - whole).max() < 1e-5  # receptive field < margin: exact up to rounding
    assert _psnr(naive_out, whole) < _psnr(shared, whole)
    assert np.abs(naive_out - whole).max() > 1e-4  # the context pass really changes something


# Smaller variants of the heaviest architectures keep this file fast; the code paths (pooling,
# padding, size multiples) are the same as with the default kwargs.
_SMALL_KWARGS: dict[str, dict] = {
    "symnet": {"num_blocks": 2, "rounds": 1},
    "nrl": {"steps": 2},
    "frlie": {"num_blocks": 1},
}
# Their exact receptive radii (the registry's margins are for the default kwargs): symnet with
# 2 blocks of 1 round has 2 + 2 blocks x 2 couplings x 4 convs + 2 = 20 px.
_SMALL_MARGINS: dict[str, int] = {"symnet": 20}


def _registry_model(name: str, **overrides) -> nn.Module:
    spec = get_spec(name)
    module_name = spec.builder.split(":", 1)[0]
    try:
        importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            pytest.skip(f"{module_name} is not in this checkout yet")
        raise
    torch.manual_seed(0)
    model = create_model(name, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1 and not p.any():
                p.normal_(0.0, 0.02)  # zero-initialised output convs would hide the pooling path
    return model


@pytest.mark.parametrize("name", NEURAL_MODELS)
def test_random_weight_models_tile_seamlessly(name: str) -> None:
    """128 x 96 in 64-px tiles (every tile touches a seam) vs one whole-image pass.

    Compared before clamping, since random weights often land outside [0, 1]. Random outputs are
    nearly flat, so PSNR would flatter them; the signal-to-tiling-error ratio (output variance
    over mean squared difference) is scale-free instead. 30 dB means the tiling error carries at
    most 0.1 % of the output's variation; with the context replayed it must also be no worse than
    naive tiles that pool on their own.
    """
    model, spec = _registry_model(name, **_SMALL_KWARGS.get(name, {})), get_spec(name)
    if name in _SMALL_MARGINS:
        spec = dataclasses.replace(spec, receptive_margin=_SMALL_MARGINS[name])
    image = _image(128, 96, seed=1)
    whole = Enhancer(model, spec=spec, device="cpu", tile=0)._run(image, 0, None)
    enh = Enhancer(model, spec=spec, device="cpu", tile=64, tile_overlap=16)
    tiled = enh._run(image, 64, None)
    enh.context_pass = False
    naive = enh._run(image, 64, None)
    assert tiled.shape == whole.shape == image.shape
    error, naive_error = np.mean((tiled - whole) ** 2), np.mean((naive - whole) ** 2)
    assert 10 * np.log10(whole.var() / max(error, 1e-30)) >= 30.0
    assert error <= naive_error * (1 + 1e-3) + 1e-12


class _LimitedBackend(Backend):
    """Wraps a backend and runs out of memory above ``max_pixels`` per call."""

    def __init__(self, inner: Backend, max_pixels: int) -> None:
        self.inner, self.max_pixels = inner, max_pixels
        self.device, self.scale, self.sizes, self.freed = inner.device, inner.scale, [], 0

    def run(self, x: np.ndarray, stats: np.ndarray | None = None) -> np.ndarray:
        self.sizes.append(x.shape[2] * x.shape[3])
        if x.shape[2] * x.shape[3] > self.max_pixels:
            raise OutOfMemory("CUDA out of memory (simulated)")
        return self.inner.run(x, stats)

    def context(self, x: np.ndarray) -> np.ndarray | None:
        return self.inner.context(x)

    def free(self) -> None:
        self.freed += 1


def test_out_of_memory_halves_the_tile_and_retries() -> None:
    inner = Enhancer(_toy(), spec=TOY, device="cpu", tile=0).backend
    limited = _LimitedBackend(inner, max_pixels=120 * 120)
    image = _image(260, 240)
    out = Enhancer(spec=TOY, backend=limited, tile=0).enhance(image)
    reference = Enhancer(_toy(), spec=TOY, device="cpu", tile=0).enhance(image)
    assert limited.freed >= 1 and limited.sizes[-1] <= 120 * 120
    assert _psnr(out, reference) > 60


def test_out_of_memory_below_the_minimum_tile_is_a_resource_error() -> None:
    inner = Enhancer(_toy(), spec=TOY, device="cpu", tile=0).backend
    enh = Enhancer(spec=TOY, backend=_LimitedBackend(inner, max_pixels=10), tile=256)
    with pytest.raises(ResourceError, match="out of memory") as info:
        enh.enhance(_image(300, 300))
    assert info.value.hint and "--tile" in info.value.hint
    assert info.value.exit_code == 5


def test_recognises_out_of_memory_errors() -> None:
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp] not enough memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_strength_blends_with_the_input() -> None:
    image = _image(40, 48)
    full = Enhancer(_toy(), spec=TOY, device="cpu", tile=0).enhance(image)
    none = Enhancer(_toy(), spec=TOY, device="cpu", tile=0, strength=0.0).enhance(image)
    half = Enhancer(_toy(), spec=TOY, device="cpu", tile=0, strength=0.5).enhance(image)
    np.testing.assert_allclose(none, image, atol=1e-6)
    inside = (full > 0) & (full < 1)  # clamping makes the blend non-linear at the limits
    np.testing.assert_allclose(half[inside], ((image + full) / 2)[inside], atol=1e-5)
    with pytest.raises(UsageError):
        Enhancer(_toy(), spec=TOY, device="cpu", strength=1.5)


def test_auto_tile_follows_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    enh = Enhancer(_toy(), spec=TOY, device="cpu")
    monkeypatch.setattr("lowlight_cli.devices.available_memory", lambda device: 8 * 1024**3)
    assert enh.auto_tile(400, 600) == 0  # fits: one pass, no seams at all
    big = enh.auto_tile(6000, 4000)
    monkeypatch.setattr("lowlight_cli.devices.available_memory", lambda device: 256 * 1024**2)
    small = enh.auto_tile(6000, 4000)
    assert engine_module.MIN_TILE <= small < big and small % TOY.size_multiple == 0


def test_cpu_runs_a_small_photo_whole_but_keeps_tiles_of_a_large_one_small(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 600x400 symnet pass (0.86 GB) stays whole; a 24 MP photo's tiles keep to the tile cap."""
    monkeypatch.setattr("lowlight_cli.devices.available_memory", lambda device: 64 * 1024**3)
    spec = get_spec("symnet")
    enh = Enhancer(_toy(), spec=spec, device="cpu")
    per_pixel = engine_module.BYTES_PER_PIXEL["symnet"]
    assert 600 * 400 * per_pixel > engine_module.CPU_MEMORY_CAP  # would be tiled by the tile cap
    assert enh.auto_tile(400, 600) == 0
    tile = enh.auto_tile(4000, 6000)
    assert tile > 0 and tile * tile * per_pixel <= engine_module.CPU_MEMORY_CAP
    assert tile % spec.size_multiple == 0


def test_parse_tile() -> None:
    assert parse_tile("auto") is None and parse_tile("0") == 0 and parse_tile(" 512 ") == 512
    for bad in ("-3", "big", "1.5"):
        with pytest.raises(UsageError):
            parse_tile(bad)


def test_devices_and_precisions() -> None:
    cpu = resolve_device("cpu")
    assert cpu.type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    for bad in ("tpu", "cuda:x"):
        with pytest.raises(UsageError):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="not available"):
            resolve_device("cuda:0")
    assert resolve_precision("fp32", TOY, cpu) == torch.float32
    with pytest.raises(ResourceError, match="not validated"):
        resolve_precision("bf16", TOY, cpu)  # the spec does not declare bf16 safe
    safe = ModelSpec(name="safe", builder="x:y", fp16_safe=True, bf16_safe=True)
    assert resolve_precision("bf16", safe, cpu) == torch.bfloat16
    with pytest.raises(ResourceError, match="CPU"):
        resolve_precision("fp16", safe, cpu)
    with pytest.raises(UsageError):
        resolve_precision("fp8", safe, cpu)


def test_bf16_on_cpu_runs_close_to_fp32() -> None:
    safe = ModelSpec(name="toy", builder="x:y", size_multiple=4, bf16_safe=True)
    image = _image(48, 40)
    ref = Enhancer(_toy(), spec=safe, device="cpu", tile=0).enhance(image)
    low = Enhancer(_toy(), spec=safe, device="cpu", tile=0, precision="bf16").enhance(image)
    assert _psnr(low, ref) > 30  # bf16 has 8 mantissa bits: about 3 decimal digits


def test_upscale_only_for_models_that_have_it() -> None:
    with pytest.raises(UsageError, match="no x2 mode"):
        Enhancer(_toy(), spec=TOY, device="cpu", upscale=True)
    with pytest.raises(UsageError, match="no x2 mode"):
        Enhancer.create("gamma", upscale=True)


def test_create_rejects_unknown_backend_and_model() -> None:
    with pytest.raises(UsageError):
        Enhancer.create("nope")
    with pytest.raises(UsageError, match="backend"):
        Enhancer.create("gamma", backend="tensorrt")


@pytest.mark.parametrize("name", [n for n, s in MODELS.items() if s.kind == "classical"])
def test_classical_models_through_create(name: str) -> None:
    _registry_model(name)  # skips while the module is not in the checkout
    enh = Enhancer.create(name, device="cpu", tile=0)
    dark = _image(50, 70) * 0.2
    out = enh.enhance(dark)
    assert out.shape == dark.shape
    assert out.mean() > dark.mean() + 0.05  # a dark photo comes out brighter


# A CPU backend (which tunes the heap) and a 200 MB block allocated and freed by touch().
_TUNED_HEAP_SCRIPT = """
import resource, torch
from torch import nn
from lowlight_cli.backends.torch import TorchBackend
TorchBackend(nn.Conv2d(3, 3, 1), device="cpu")
def touch():
    torch.empty(50_000_000, dtype=torch.float32).fill_(1.0)  # 200 MB, freed at once
"""

_FAULTS_SCRIPT = (
    _TUNED_HEAP_SCRIPT
    + """
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touch()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""
)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the heap tuning is for glibc's malloc",
)
def test_cpu_backend_reuses_freed_memory_instead_of_faulting_it_in_again() -> None:
    """Freed 200 MB blocks are reused tile after tile (no page faults); opt-out restores mmap.

    Not from the first repeat: torch asks for 64-byte aligned memory, and glibc (2.36 at least)
    serves an aligned request only from a free block a little larger than the request, so the
    heap takes up to four blocks before the sizes settle (18 runs here: every repeat from the 6th
    on was reused). The last three of eight repeats must all be reused.
    """

    def faults(**env: str) -> list[int]:
        done = subprocess.run(
            [sys.executable, "-c", _FAULTS_SCRIPT],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        return [int(n) for n in done.stdout.split()[-8:]]

    pages = 200_000_000 // 4096
    untuned = faults(LOWLIGHT_HEAP_TUNING="0")
    tuned = faults()
    assert all(n > 0.5 * pages for n in untuned), untuned  # mmapped anew: every page faults
    assert sum(tuned[-3:]) < 0.05 * pages, (tuned, untuned)


_RELEASE_SCRIPT = (
    _TUNED_HEAP_SCRIPT
    + """
from lowlight_cli.devices import release_freed_memory
def rss_kb():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
touch()
kept = rss_kb()
released = release_freed_memory()
print(int(released), kept - rss_kb())
"""
)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the heap tuning is for glibc's malloc",
)
def test_freed_memory_kept_by_the_heap_tuning_is_released_between_photos() -> None:
    """What the tuning keeps after a photo goes back to the kernel when batch asks for it."""
    done = subprocess.run(
        [sys.executable, "-c", _RELEASE_SCRIPT], capture_output=True, text=True, check=True
    )
    released, drop_kb = map(int, done.stdout.split()[-2:])
    assert released == 1
    assert drop_kb > 150_000, drop_kb  # the 200 MB block left the process


# --------------------------------------------------------------------------------------------
# Working resolution (the fast path)


class ColourMatrixNet(nn.Module):
    """A global colour transform (1x1 convolution): what the fast path must reproduce exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.mix.weight.copy_(
                torch.tensor([[1.8, 0.2, 0.0], [0.1, 2.2, 0.1], [0.0, 0.3, 1.5]])[..., None, None]
            )
            self.mix.bias.copy_(torch.tensor([0.02, 0.01, -0.01]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x)


class _RecordingBackend(Backend):
    """Wraps a backend and records the input size of every call."""

    def __init__(self, inner: Backend) -> None:
        self.inner, self.device, self.scale, self.shapes = inner, inner.device, inner.scale, []

    def run(self, x: np.ndarray, stats: np.ndarray | None = None) -> np.ndarray:
        self.shapes.append(x.shape[2:])
        return self.inner.run(x, stats)

    def context(self, x: np.ndarray) -> np.ndarray | None:
        return self.inner.context(x)


def test_parse_working_size() -> None:
    assert engine_module.parse_working_size("auto") is None
    assert engine_module.parse_working_size(None) is None
    assert engine_module.parse_working_size("full") == engine_module.parse_working_size("0") == 0
    assert engine_module.parse_working_size(" 0.5 ") == engine_module.parse_working_size("0.5MP")
    assert engine_module.parse_working_size(2) == 2.0
    for bad in ("-1", "big", "nan", "inf", "0.5 px"):
        with pytest.raises(UsageError):
            engine_module.parse_working_size(bad)


def test_the_model_sees_the_photo_shrunk_to_the_working_size() -> None:
    inner = Enhancer(_toy(), spec=TOY, device="cpu", tile=0).backend
    recorder = _RecordingBackend(inner)
    enh = Enhancer(spec=TOY, backend=recorder, tile=0, working_size=0.012)
    image = _image(240, 200)  # 0.048 MP: shrunk by 2 on each side
    assert enh.working_shape(240, 200) == (120, 100)
    out = enh.enhance(image)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    # One pass over the shrunk photo in a mirrored frame (a multiple of 4 already).
    border = engine_module.WORKING_BORDER
    assert recorder.shapes == [(120 + 2 * border, 100 + 2 * border)]


@pytest.mark.parametrize("working_size", ["full", 0.048, 1.0])
def test_a_working_size_of_the_whole_photo_is_the_plain_model(working_size) -> None:
    """At (or above) the photo's size, or 'full', the result is the plain model's, bit for bit."""
    model, image = _toy(), _image(240, 200)  # exactly 0.048 MP
    plain = Enhancer(model, spec=TOY, device="cpu", tile=0, working_size="full").enhance(image)
    enh = Enhancer(model, spec=TOY, device="cpu", tile=0, working_size=working_size)
    assert enh.working_shape(240, 200) is None
    np.testing.assert_array_equal(enh.enhance(image), plain)


def test_fast_path_reproduces_a_global_colour_transform_exactly() -> None:
    spec = dataclasses.replace(TOY, receptive_margin=0)
    model, image = ColourMatrixNet().eval(), _image(300, 400) * 0.4
    full = Enhancer(model, spec=spec, device="cpu", tile=0, working_size="full").enhance(image)
    fast = Enhancer(model, spec=spec, device="cpu", tile=0, working_size=0.01).enhance(image)
    np.testing.assert_allclose(fast, full, atol=3e-5)


def test_fast_path_strength_blends_like_the_full_path() -> None:
    image = _image(160, 200)
    kwargs = {"spec": TOY, "device": "cpu", "tile": 0, "working_size": 0.008}
    whole = Enhancer(_toy(), **kwargs).enhance(image)
    none = Enhancer(_toy(), strength=0.0, **kwargs).enhance(image)
    half = Enhancer(_toy(), strength=0.5, **kwargs).enhance(image)
    np.testing.assert_allclose(none, image, atol=2e-5)  # the identity is a global transform
    inside = (whole > 0) & (whole < 1)
    np.testing.assert_allclose(half[inside], ((image + whole) / 2)[inside], atol=2e-5)


class ShortSightedNet(nn.Module):
    """Brightens each pixel by the inverse of its 9 x 9 neighbourhood's mean: what it makes of a
    region's brightness depends on how much of the scene 9 pixels cover (like frlie's FRNet)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = torch.nn.functional.avg_pool2d(
            x.mean(1, keepdim=True), 9, stride=1, padding=4, count_include_pad=False
        )
        return x * (0.3 / (local + 0.1))


COARSE = dataclasses.replace(TOY, receptive_margin=8, coarse_pass_mp=0.002)


def _striped(h: int, w: int) -> np.ndarray:
    """A smooth photo whose left half has 12 px stripes: a 9 px view sees each stripe, a view
    of the whole scene only their mean."""
    image = _image(h, w)
    stripes = (np.arange(w) // 6) % 2 == 0
    image[:, : w // 2][:, stripes[: w // 2]] *= 0.3
    return image


def _broad_luma(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    from lowlight_cli.metrics import LUMA_BT601

    small = cv2.resize(rgb, shape[::-1], interpolation=cv2.INTER_AREA) @ LUMA_BT601
    return cv2.GaussianBlur(small, (0, 0), engine_module.COARSE_BLUR)


def test_coarse_pass_brings_the_broad_brightness_of_the_small_copy_and_keeps_detail() -> None:
    import cv2

    image = _striped(180, 270)  # 0.0486 MP; the coarse copy is ~0.002 MP
    kw = {"spec": COARSE, "device": "cpu", "tile": 0, "working_size": "full"}
    plain = Enhancer(ShortSightedNet(), coarse_pass=False, **kw).enhance(image)
    out = Enhancer(ShortSightedNet(), **kw).enhance(image)
    shape = engine_module.shrunk_shape(180, 270, COARSE.coarse_pass_mp)
    small = cv2.resize(image, shape[::-1], interpolation=cv2.INTER_AREA)
    coarse = Enhancer(ShortSightedNet(), coarse_pass=False, **kw).enhance(small)
    # Broad brightness: most of the way from the full pass's (~0.011 off) to the coarse pass's
    # (a ratio of blurred lumas, so not exactly: the product of a gain and fine stripes blurs
    # differently from the two blurred apart).
    target = _broad_luma(coarse, shape)
    before = float(np.abs(_broad_luma(plain, shape) - target).mean())
    after = float(np.abs(_broad_luma(out, shape) - target).mean())
    assert before > 0.008 and after < 0.4 * before
    # Detail and colour: the full pass's, times one smooth gain for all three channels.
    gain = out / plain
    np.testing.assert_allclose(gain[..., 1], gain[..., 0], rtol=1e-4)
    np.testing.assert_allclose(gain[..., 2], gain[..., 0], rtol=1e-4)
    assert np.abs(np.diff(gain[..., 0], axis=1)).max() < 0.02 < np.ptp(gain)
    assert (
        _psnr(out - cv2.GaussianBlur(out, (0, 0), 3), plain - cv2.GaussianBlur(plain, (0, 0), 3))
        > 40
    )


def test_coarse_pass_runs_on_the_working_image_and_only_where_a_model_has_one() -> None:
    """The model sees the working image and then its coarse copy, each in a mirrored frame;
    without a coarse pass in the spec, for --no-coarse, or for a photo no larger than the coarse
    size, the result is the plain model's, bit for bit."""
    inner = Enhancer(ShortSightedNet(), spec=COARSE, device="cpu", tile=0).backend
    recorder = _RecordingBackend(inner)
    enh = Enhancer(spec=COARSE, backend=recorder, tile=0, working_size=0.012)
    enh.enhance(_image(240, 200))  # working image 120 x 100; coarse copy 49 x 41, padded to 52 x 44
    border = engine_module.WORKING_BORDER
    assert recorder.shapes == [
        (120 + 2 * border, 100 + 2 * border),
        (52 + 2 * border, 44 + 2 * border),
    ]

    image = _striped(60, 90)
    kw = {"device": "cpu", "tile": 0, "working_size": "full"}
    plain = Enhancer(ShortSightedNet(), spec=COARSE, coarse_pass=False, **kw).enhance(image)
    without = dataclasses.replace(COARSE, coarse_pass_mp=0.0)
    np.testing.assert_array_equal(
        Enhancer(ShortSightedNet(), spec=without, **kw).enhance(image), plain
    )
    large = dataclasses.replace(COARSE, coarse_pass_mp=0.0054)  # exactly the photo's 60 x 90
    np.testing.assert_array_equal(
        Enhancer(ShortSightedNet(), spec=large, **kw).enhance(image), plain
    )
    assert not np.array_equal(Enhancer(ShortSightedNet(), spec=COARSE, **kw).enhance(image), plain)


def test_default_working_size_per_device_and_model_kind() -> None:
    from lowlight_cli.constants import DEFAULT_WORKING_SIZE_MP

    cpu = DEFAULT_WORKING_SIZE_MP["cpu"]
    assert engine_module.default_working_size(get_spec("neid"), "cpu") == cpu > 0
    assert engine_module.default_working_size(TOY, "cuda:1") == DEFAULT_WORKING_SIZE_MP["cuda"]
    assert engine_module.default_working_size(get_spec("gamma"), "cpu") == 0.0  # cheap: full-res
    # On the CPU a model whose whole pass would not fit the cap works smaller, and then fits it
    # (with its mirrored border) as one pass: no tiles at the working size.
    for name in ("nrl", "symnet"):
        spec = get_spec(name)
        megapixels = engine_module.default_working_size(spec, "cpu")
        assert 0.2 < megapixels < cpu
        h, w = engine_module.shrunk_shape(3024, 4032, megapixels)
        border = 2 * engine_module.WORKING_BORDER
        framed = (h + border) * (w + border) * engine_module.WORKING_BYTES_PER_PIXEL[name]
        assert framed <= engine_module.CPU_WORKING_PASS_CAP
    neural = Enhancer(_toy(), spec=TOY, device="cpu")
    assert neural.default_working_size() == engine_module.default_working_size(TOY, "cpu")
    big = int(4 * cpu * 1e6)
    h, w = engine_module.shrunk_shape(big // 1000, 1000, cpu)
    assert abs(h * w - cpu * 1e6) < h + w and w == 500


def test_upscale_always_runs_at_full_resolution() -> None:
    spec = dataclasses.replace(get_spec("neid"), name="neid")
    model = _registry_model("neid", upscale=True)
    enh = Enhancer(model, spec=spec, device="cpu", upscale=True, working_size=0.001)
    assert enh.working_shape(400, 600) is None


def test_supersample_averages_the_x2_output_back_to_the_input_size() -> None:
    spec = get_spec("neid")
    torch.manual_seed(0)
    model = _registry_model("neid", upscale=True)
    with torch.no_grad():  # a non-trivial x2 output: random weights everywhere
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    rng = np.random.default_rng(3)
    image = rng.uniform(0.0, 0.3, size=(40, 56, 3)).astype(np.float32)
    kw = {"spec": spec, "device": "cpu", "tile": 0, "working_size": 0}
    x2 = Enhancer(model, upscale=True, **kw).enhance(image)
    out = Enhancer(model, supersample=True, **kw).enhance(image)
    assert x2.shape == (80, 112, 3) and out.shape == image.shape
    # The x2 output is clipped after the mean, so compare away from the clip limits.
    raw = Enhancer(model, upscale=True, **kw)._model_pass(image, None)
    mean = raw.reshape(40, 2, 56, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(out, np.clip(mean, 0.0, 1.0), atol=1e-5)
    assert np.abs(out - x2[::2, ::2]).max() > 1e-3  # the mean, not a subsample
    # Unlike --upscale it keeps the working size: only the model's view is doubled.
    small = Enhancer(model, supersample=True, **{**kw, "working_size": 0.001})
    assert small.working_shape(400, 600) is not None
    assert small.enhance(image).shape == image.shape
    # Strength blends the (unclipped) mean with the input at the input's size.
    half = Enhancer(model, supersample=True, strength=0.5, **kw).enhance(image)
    np.testing.assert_allclose(half, np.clip(image + 0.5 * (mean - image), 0, 1), atol=1e-5)


def test_supersample_needs_an_x2_mode_and_excludes_upscale() -> None:
    with pytest.raises(UsageError, match="no x2 mode"):
        Enhancer(_toy(), spec=TOY, device="cpu", supersample=True)
    with pytest.raises(UsageError, match="no x2 mode"):
        Enhancer.create("gamma", supersample=True)
    with pytest.raises(UsageError, match="exclude each other"):
        Enhancer.create("neid", upscale=True, supersample=True)


class _RampNet(nn.Module):
    """Halves the image and adds a ramp across its width: not the same in every orientation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(0.0, 0.2, x.shape[-1], dtype=x.dtype).view(1, 1, 1, -1)
        return 0.5 * x + ramp


def test_ensemble_averages_the_eight_orientations_turned_back() -> None:
    rng = np.random.default_rng(5)
    image = rng.uniform(0.0, 0.6, size=(20, 28, 3)).astype(np.float32)
    kw = {"spec": TOY, "device": "cpu", "tile": 0, "working_size": 0}
    plain = Enhancer(_RampNet(), **kw).enhance(image)
    seen: list[tuple[int, int]] = []
    out = Enhancer(_RampNet(), ensemble=True, **kw).enhance(
        image, progress=lambda d, t: seen.append((d, t))
    )
    assert out.shape == image.shape
    # Alone, the ramp runs left to right; over the 8 orientations, each pixel sees it from
    # all four sides (j, W-1-j, i, H-1-i), whose mean is the ramp's middle, 0.1.
    assert np.abs(plain - (0.5 * image + 0.1)).max() > 0.09
    np.testing.assert_allclose(out, 0.5 * image + 0.1, atol=1e-5)
    assert seen[-1] == (8, 8) and len(seen) == 8
    # A model that treats every orientation alike (per pixel) gives the same picture.
    torch.manual_seed(0)
    pointwise = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sigmoid())
    np.testing.assert_allclose(
        Enhancer(pointwise, ensemble=True, **kw).enhance(image),
        Enhancer(pointwise, **kw).enhance(image),
        atol=1e-5,
    )
    # Strength blends the averaged output with the input.
    half = Enhancer(_RampNet(), ensemble=True, strength=0.5, **kw).enhance(image)
    np.testing.assert_allclose(half, image + 0.5 * (0.5 * image + 0.1 - image), atol=1e-5)


def test_ensemble_is_for_trained_models() -> None:
    with pytest.raises(UsageError, match="classical"):
        Enhancer.create("gamma", ensemble=True)


def test_precision_auto_is_bf16_only_where_the_cpu_and_the_model_allow_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lowlight_cli import devices

    cpu = torch.device("cpu")
    chosen = ModelSpec(name="chosen", builder="x:y", bf16_safe=True, bf16_auto=True)
    safe_only = ModelSpec(name="safe", builder="x:y", bf16_safe=True)
    monkeypatch.setattr(devices, "cpu_prefers_bf16", lambda: True)
    assert resolve_precision("auto", chosen, cpu) == torch.bfloat16
    assert resolve_precision("auto", safe_only, cpu) == torch.float32
    assert resolve_precision("auto", chosen, torch.device("cuda")) == torch.float32
    assert resolve_precision("fp32", chosen, cpu) == torch.float32  # an explicit choice wins
    monkeypatch.setattr(devices, "cpu_prefers_bf16", lambda: False)
    assert resolve_precision("auto", chosen, cpu) == torch.float32
    monkeypatch.setattr(devices, "cpu_prefers_bf16", lambda: True)
    enh = Enhancer(_toy(), spec=dataclasses.replace(TOY, bf16_safe=True, bf16_auto=True),
                   device="cpu", precision="auto")  # fmt: skip
    assert enh.precision == enh.backend.precision == "bf16"


def test_every_model_that_picks_bf16_is_declared_bf16_safe() -> None:
    for spec in MODELS.values():
        assert spec.bf16_safe or not spec.bf16_auto, spec.name
