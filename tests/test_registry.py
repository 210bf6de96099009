"""Every model in the registry: builds, honours its spec (size multiple, scale, precisions),
round-trips its hyperparameters, is deterministic, and replays pooled statistics exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lowlight_cli import registry
from lowlight_cli.errors import UsageError
from lowlight_cli.models.blocks import pooling_context

# Small versions of the slow architectures (depth and size multiples unchanged) keep the whole
# file to a few seconds on a shared 2-core CPU.
TINY: dict[str, dict] = {
    "symnet": {"num_blocks": 2, "rounds": 1, "width": 16},
    "nrl": {"channels": 16, "steps": 2},
    "frlie": {"width": 8, "num_blocks": 1},
    "neid": {"base_channels": 8, "dr_blocks": 1},
}
H, W = 41, 61  # odd on purpose: the test pads like the engine does


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machine's cores are shared: one thread avoids oversubscription stalls.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _dark_image(h: int = H, w: int = W) -> torch.Tensor:
    """A smooth, noisy, dark RGB image (1, 3, h, w) in [0, 1]: like the models' real input."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = 0.04 + 0.15 * xx * (1 - yy) + 0.05 * torch.sin(9 * xx)
    img = torch.stack([base, 0.9 * base, 1.2 * base]) + 0.02 * torch.rand(3, h, w, generator=g)
    return img.clamp(0, 1)[None]


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return registry.create_model(name, **TINY.get(name, {}))


def _pad_run_crop(model: torch.nn.Module, spec: registry.ModelSpec, x: torch.Tensor):
    m = spec.size_multiple
    ph, pw = (-x.shape[2]) % m, (-x.shape[3]) % m
    padded = F.pad(x, (0, pw, 0, ph), mode="reflect")
    with torch.inference_mode():
        y = model(padded)
    s = spec.scale
    assert y.shape == (x.shape[0], 3, padded.shape[2] * s, padded.shape[3] * s)
    return y[..., : x.shape[2] * s, : x.shape[3] * s]


def _relative_psnr(a: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR of ``a`` against ``ref`` with the reference's own value range as the peak: untrained
    models have arbitrary output scales, so an absolute tolerance would mean nothing."""
    peak = (ref.max() - ref.min()).clamp_min(1e-6)
    mse = (a.double() - ref.double()).pow(2).mean().clamp_min(1e-30)
    return float(10 * torch.log10(peak.double() ** 2 / mse))


ALL = list(registry.MODELS)


def test_registry_lists_the_four_papers_and_two_baselines():
    assert set(registry.NEURAL_MODELS) == {"symnet", "nrl", "frlie", "neid"}
    assert {"gamma", "clahe"} <= set(registry.MODELS)
    for name, spec in registry.MODELS.items():
        assert spec.name == name
        assert spec.kind in ("neural", "classical")
        assert (spec.default_weights is None) == (spec.kind == "classical")
        assert spec.size_multiple >= 1 and spec.scale >= 1 and spec.receptive_margin >= 0
    assert registry.get_spec("neid.lol") is registry.MODELS["neid"]
    with pytest.raises(UsageError):
        registry.get_spec("nosuchmodel")


@pytest.mark.parametrize("name", ALL)
def test_odd_size_after_padding_gives_the_right_shape_and_dtype(name):
    spec = registry.get_spec(name)
    model = _build(name)
    assert not model.training  # create_model returns eval mode
    y = _pad_run_crop(model, spec, _dark_image())
    assert y.shape == (1, 3, H * spec.scale, W * spec.scale)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ALL)
def test_hyperparameters_round_trip(name):
    spec = registry.get_spec(name)
    a, b = spec.build(), spec.build(**spec.kwargs)
    for key, value in spec.kwargs.items():
        if hasattr(a, key):
            got = getattr(a, key)
            assert (tuple(got) if isinstance(got, list | tuple) else got) == (
                tuple(value) if isinstance(value, list | tuple) else value
            )
    shapes_a = {k: tuple(v.shape) for k, v in a.state_dict().items()}
    shapes_b = {k: tuple(v.shape) for k, v in b.state_dict().items()}
    assert shapes_a == shapes_b
    # The state_dict is loadable into a fresh build: what weight files rely on.
    b.load_state_dict(a.state_dict(), strict=True)


@pytest.mark.parametrize("name", ALL)
def test_deterministic(name):
    spec = registry.get_spec(name)
    model = _build(name)
    x = _dark_image()
    assert torch.equal(_pad_run_crop(model, spec, x), _pad_run_crop(model, spec, x.clone()))


@pytest.mark.parametrize("name", ALL)
def test_pooling_record_and_replay_match_a_plain_pass(name):
    spec = registry.get_spec(name)
    model = _build(name)
    m = spec.size_multiple
    x = _dark_image(2 * m if m > 8 else 24, 3 * m if m > 8 else 40)
    with torch.inference_mode():
        plain = model(x)
        with pooling_context("record") as stats:
            recorded = model(x)
        assert torch.equal(recorded, plain)
        try:
            pooled = stats.tensor
        except RuntimeError:
            return  # this model has no global pooling: nothing to replay
        assert pooled.shape[0] == 1
        with pooling_context("replay", pooled):
            replayed = model(x)
    assert torch.allclose(replayed, plain, atol=1e-6)


PRECISIONS = [
    # (dtype, spec flag, minimum relative PSNR in dB). fp16 keeps 11 significant bits, so
    # a ~20-layer net stays well above the 48 dB of 8-bit quantisation noise; 40 dB leaves
    # margin. bf16 keeps 8 bits: about 1/256 relative per op, so ~30 dB is what "safe" can mean.
    (torch.float16, "fp16_safe", 40.0),
    (torch.bfloat16, "bf16_safe", 30.0),
]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(("dtype", "flag", "min_db"), PRECISIONS)
def test_declared_half_precisions_stay_close_to_fp32(name, dtype, flag, min_db):
    spec = registry.get_spec(name)
    if not getattr(spec, flag):
        pytest.skip(f"{name} does not declare {flag}")
    model = _build(name)
    m = spec.size_multiple
    x = _dark_image(2 * m if m > 8 else 24, 2 * m if m > 8 else 32)
    with torch.inference_mode():
        ref = model(x)
        if ref.std() < 1e-3:
            # A small-std paper init (neid: N(0, 0.02)) gives near-zero untrained outputs that
            # only test denormals; He init gives activations of the size trained nets have.
            for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
                torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            ref = model(x)
        try:
            half = model.to(dtype)(x.to(dtype))
        except RuntimeError as exc:  # an op without a CPU kernel in this dtype
            pytest.skip(f"{dtype} not runnable on this CPU build: {exc}")
    assert half.dtype == dtype
    assert _relative_psnr(half.float(), ref) >= min_db


def _shipped_model(name: str) -> torch.nn.Module:
    """The model with its default weights, or its bundled preview while it has none."""
    from pathlib import Path

    from lowlight_cli.errors import NoDefaultWeightsError

    try:
        return registry.load_model(name)
    except NoDefaultWeightsError:
        bundled = Path(registry.__file__).parent / "bundled"
        previews = sorted(bundled.glob(f"{name}.*.safetensors"))
        if not previews:
            pytest.skip(f"{name} has neither default nor bundled weights")
        return registry.load_model(name, previews[0].name.removesuffix(".safetensors"))


@pytest.mark.shared
@pytest.mark.parametrize("name", [n for n, s in registry.MODELS.items() if s.bf16_auto])
def test_models_that_may_pick_bf16_stay_within_40_db_of_fp32(name):
    """--precision auto may run these in bf16: with their shipped weights, on a real LOL frame,
    bf16 must stay within 40 dB of fp32 (new weights that break it must clear bf16_auto)."""
    import cv2
    from conftest import shared_path

    from lowlight_cli.image_io import read_image

    frame = read_image(shared_path("lol", "eval15", "low", "1.png")).pixels
    small = cv2.resize(frame, (150, 100), interpolation=cv2.INTER_AREA)  # a few seconds each
    spec = registry.get_spec(name)
    assert spec.bf16_safe
    model = _shipped_model(name)
    x = torch.from_numpy(small).permute(2, 0, 1)[None].contiguous()
    with torch.inference_mode():
        ref = _pad_run_crop(model, spec, x).clamp(0, 1)
        half = _pad_run_crop(model.to(torch.bfloat16), spec, x.to(torch.bfloat16))
    mse = (half.float().clamp(0, 1) - ref).pow(2).mean().item()
    assert 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item() >= 40.0


@pytest.mark.shared
def test_the_baselines_scores_shown_by_lowlight_models_are_what_they_score():
    """`lowlight models` shows gamma's and clahe's LOL eval15 scores beside the trained
    models'; they must be what the benchmark measures now."""
    from conftest import shared_path

    from lowlight_cli.evaluate import evaluate_models
    from lowlight_cli.training.data import load_pairs

    pairs = load_pairs(shared_path("lol", "eval15"), workers=1)
    names = [n for n, s in registry.MODELS.items() if s.lol_eval15]
    assert names, "no classical model carries a score"
    for result in evaluate_models(names, pairs, device="cpu"):
        psnr, ssim = registry.get_spec(result.model).lol_eval15
        assert result.psnr == pytest.approx(psnr, abs=0.005), result.model
        assert result.ssim == pytest.approx(ssim, abs=0.0005), result.model
