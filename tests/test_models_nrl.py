"""nrl: shapes, parameter budget, positive adjusting map, lambda (eq. 6), discriminator."""

from __future__ import annotations

import pytest
import torch

from lowlight_cli.errors import UsageError
from lowlight_cli.models.blocks import pooling_context
from lowlight_cli.models.nrl import (
    NRL,
    T_FLOOR,
    NRLDiscriminator,
    estimate_lambda,
    positive_adjusting_map,
)
from lowlight_cli.registry import count_parameters, get_spec


def _randomise_map(model: NRL, std: float, seed: int = 0) -> NRL:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.j2.weight.copy_(torch.randn(model.j2.weight.shape, generator=gen) * std)
    return model


@pytest.mark.parametrize("size", [(13, 17), (1, 1), (7, 32)])
def test_any_size_keeps_shape(size):
    model = NRL().eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_parameter_count_is_about_190k():
    n = count_parameters(get_spec("nrl").build())
    print(f"nrl parameters: {n}")
    assert 170_000 <= n <= 210_000  # the paper: "only 190 x 10^3 parameters"


def test_untrained_map_is_lambda_and_output_is_sane():
    model = NRL().eval()
    model.set_lambda(0.6)
    x = torch.rand(1, 3, 16, 16) * 0.2
    with torch.no_grad():
        x0 = model.fmsb(x)
        t = model.adjusting_map(x0)
        y = model(x)
        residual = model.residual(x0)
    assert torch.allclose(t, torch.full_like(t, 0.6), atol=1e-3)
    assert torch.allclose(y, x / t + residual, atol=1e-6)
    assert residual.abs().max() < 0.5  # default init: a small correction, not a new image


def test_adjusting_map_stays_positive_for_random_weights():
    model = _randomise_map(NRL(), std=5.0).eval()
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        x0 = model.fmsb(x)
        raw = model.lam + model.j2(model.j1(x0))
        t = model.adjusting_map(x0)
        y = model(x)
    assert raw.min() < 0  # the floor is really exercised
    assert t.min() >= T_FLOOR and torch.isfinite(y).all()
    assert y.abs().max() <= x.max() / T_FLOOR + 10


def test_positive_adjusting_map_properties():
    raw = torch.linspace(-2.0, 3.0, 501, requires_grad=True)
    t = positive_adjusting_map(raw)
    assert (t >= T_FLOOR).all()
    assert (t[1:] >= t[:-1]).all()  # monotone
    above = raw.detach() >= 0.1
    assert torch.allclose(t[above], raw[above], atol=1e-3)
    t.sum().backward()
    near = raw.detach() > T_FLOOR - 0.2
    assert (raw.grad[near] > 0).all()  # no dead gradient just below the floor, unlike a clamp


def test_lambda_is_saved_and_validated():
    model = NRL()
    model.set_lambda(0.55)
    state = model.state_dict()
    assert state["lam"].item() == pytest.approx(0.55)
    fresh = NRL()
    fresh.load_state_dict(state)
    assert fresh.lam.item() == pytest.approx(0.55)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(UsageError):
            model.set_lambda(bad)


def test_estimate_lambda_by_hand():
    # Patch means: low 0.1 and 0.3, high 0.5 and 0.8 -> 1 + ((0.1-0.5) + (0.3-0.8)) / 2 = 0.55.
    low = torch.stack([torch.full((3, 2, 2), 0.1), torch.full((3, 2, 2), 0.3)])
    high = torch.stack([torch.full((3, 2, 2), 0.5), torch.full((3, 2, 2), 0.8)])
    assert estimate_lambda(low, high) == pytest.approx(0.55)
    # Streaming single patches gives the same value.
    assert estimate_lambda(iter(low), iter(high)) == pytest.approx(0.55)
    # Patch means, not pixel-weighted: non-constant patches average per patch first.
    low2 = torch.tensor([[[[0.0, 0.2], [0.2, 0.2]]] * 3])  # mean 0.15
    high2 = torch.full((1, 3, 2, 2), 0.45)
    assert estimate_lambda(low2, high2) == pytest.approx(0.7)


def test_estimate_lambda_rejects_bad_input():
    with pytest.raises(UsageError):
        estimate_lambda(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 4, 4))
    with pytest.raises(UsageError):
        estimate_lambda([], [])
    with pytest.raises(UsageError):  # lambda = 1 + (0 - 1) = 0
        estimate_lambda(torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2))


def test_gradients_reach_every_parameter():
    model = _randomise_map(NRL(), std=0.01)
    model.set_lambda(0.7)
    x, target = torch.rand(1, 3, 12, 12), torch.rand(1, 3, 12, 12)
    ((model(x) - target) ** 2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_attention_pools_x0_once_and_replays():
    model = NRL().eval()
    x = torch.rand(1, 3, 10, 10)
    with torch.no_grad(), pooling_context("record") as rec:
        y = model(x)
    assert rec.tensor.shape == (1, 64)  # H0 = GAP(X0), shared by all steps
    with torch.no_grad(), pooling_context("replay", rec.tensor):
        y2 = model(x)
    assert torch.allclose(y, y2, atol=1e-6)
    with torch.no_grad(), pooling_context("replay", rec.tensor + 1.0):
        y3 = model(x)
    assert not torch.allclose(y, y3, atol=1e-6)


def test_recursion_shares_conv_weights():
    base = count_parameters(NRL(steps=1))
    per_step_attention = 64 * 32 + 32 + 32 * 64 + 64
    assert count_parameters(NRL(steps=6)) == base + 5 * per_step_attention


def test_discriminator_gives_one_logit_per_image_and_gradients():
    disc = NRLDiscriminator()
    x = torch.rand(3, 3, 40, 36, requires_grad=True)
    logits = disc(x)
    assert logits.shape == (3,)
    logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_agrees_with_registry_flag(dtype):
    spec = get_spec("nrl")
    safe = spec.bf16_safe if dtype == torch.bfloat16 else spec.fp16_safe
    if not safe:
        pytest.skip(f"{dtype} not claimed safe for nrl")
    model = _randomise_map(NRL(), std=0.05).eval()
    model.set_lambda(0.6)
    x = torch.rand(1, 3, 16, 16) * 0.3
    with torch.no_grad():
        ref = model(x)
        low = model.to(dtype)(x.to(dtype)).float()
    assert (low - ref).abs().max() <= 0.02 * max(1.0, ref.abs().max().item())
