"""symnet and nrl losses on small hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from lowlight_cli.errors import UsageError
from lowlight_cli.models.nrl import NRLDiscriminator
from lowlight_cli.models.symnet import SymNet
from lowlight_cli.models.vgg import VGG16Features
from lowlight_cli.training.losses import (
    NRL_W_ADVERSARIAL,
    NRL_W_PERCEPTUAL,
    discriminator_adversarial_loss,
    dynamic_perceptual_loss,
    generator_adversarial_loss,
    lowpass_mse,
    nrl_content_loss,
    nrl_loss,
    symnet_loss,
)


def _tiny_symnet() -> SymNet:
    model = SymNet(num_blocks=1, rounds=1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in (model.blocks[0].t1, model.blocks[0].t2, model.blocks[0].t3):
            t.tail.weight.copy_(torch.randn(t.tail.weight.shape, generator=gen) * 0.05)
    return model


def test_symnet_loss_is_two_way_l2_by_hand():
    model = _tiny_symnet()
    low = torch.rand(1, 3, 2, 2)
    high = torch.rand(1, 3, 2, 2)
    total, parts = symnet_loss(model, low, high)
    with torch.no_grad():
        fwd = model(low).numpy()
        bwd = model.inverse(high).numpy()
    expected_f = float(((fwd - high.numpy()) ** 2).sum() / 12)
    expected_b = float(((bwd - low.numpy()) ** 2).sum() / 12)
    assert parts["forward"].item() == pytest.approx(expected_f, rel=1e-5)
    assert parts["backward"].item() == pytest.approx(expected_b, rel=1e-5)
    assert total.item() == pytest.approx(expected_f + expected_b, rel=1e-5)
    # The backward term trains the same weights through the inverse direction.
    model.zero_grad()
    _, parts = symnet_loss(model, low, high)
    parts["backward"].backward()
    assert model.blocks[0].t2.tail.weight.grad.abs().sum() > 0


def test_symnet_loss_weights():
    model = _tiny_symnet()
    low, high = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    total, parts = symnet_loss(model, low, high, w_forward=2.0, w_backward=0.0)
    assert total.item() == pytest.approx(2.0 * parts["forward"].item(), rel=1e-6)


def test_lowpass_mse_weights_flat_errors_and_ignores_fine_ones():
    target = torch.rand(1, 3, 32, 32)
    # A flat error e counts e**2 at each box size that fits (4, 8, 16, 32 px).
    assert lowpass_mse(target + 0.1, target).item() == pytest.approx(4 * 0.01, rel=1e-4)
    assert lowpass_mse(target[..., :8, :8] + 0.1, target[..., :8, :8]).item() == pytest.approx(
        2 * 0.01, rel=1e-4
    )
    # A pixel checkerboard averages out in every box.
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 0.2 - 0.1
    assert lowpass_mse(target + checker, target).item() == pytest.approx(0.0, abs=1e-10)


def test_symnet_lowfreq_term_adds_to_both_directions():
    model = _tiny_symnet()
    low, high = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    plain, parts = symnet_loss(model, low, high)
    assert "lowfreq" not in parts
    total, parts = symnet_loss(model, low, high, w_lowfreq=3.0)
    with torch.no_grad():
        expected = lowpass_mse(model(low), high) + lowpass_mse(model.inverse(high), low)
    assert parts["lowfreq"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert total.item() == pytest.approx(plain.item() + 3.0 * expected.item(), rel=1e-5)


def test_nrl_content_loss_by_hand():
    pred = torch.tensor([[[[0.0, 0.5], [1.0, 0.25]]]])
    target = torch.tensor([[[[0.5, 0.5], [0.0, 0.25]]]])
    assert nrl_content_loss(pred, target).item() == pytest.approx((0.25 + 1.0) / 4)


def test_dynamic_perceptual_loss_by_hand():
    # Level 1: |diff| = 1 everywhere -> z1 = 1. Level 2: |diff| = 2 -> z2 = 2.
    p1 = torch.ones(1, 2, 2, 2, requires_grad=True)
    p2 = torch.zeros(1, 1, 2, 2, requires_grad=True)
    t1 = torch.zeros(1, 2, 2, 2)
    t2 = torch.full((1, 1, 2, 2), 2.0)
    a1 = math.exp(1) / (math.exp(1) + math.exp(2))
    a2 = 1 - a1
    loss = dynamic_perceptual_loss([p1, p2], [t1, t2])
    assert loss.item() == pytest.approx(a1 * 1 + a2 * 2, rel=1e-6)
    loss.backward()
    # The softmax weights carry no gradient: d loss / d p = a_i * sign(p - t) / numel.
    assert torch.allclose(p1.grad, torch.full_like(p1, a1 / 8))
    assert torch.allclose(p2.grad, torch.full_like(p2, -a2 / 4))
    # A large temperature makes the weights uniform.
    flat = dynamic_perceptual_loss([p1, p2], [t1, t2], temperature=1e6)
    assert flat.item() == pytest.approx(1.5, rel=1e-5)
    with pytest.raises(UsageError):
        dynamic_perceptual_loss([p1], [t1, t2])


def test_adversarial_losses_by_hand():
    zero = torch.zeros(4)
    assert generator_adversarial_loss(zero).item() == pytest.approx(math.log(2))
    assert discriminator_adversarial_loss(zero, zero).item() == pytest.approx(math.log(2))
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    expected = 0.5 * (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0)))
    assert discriminator_adversarial_loss(real, fake).item() == pytest.approx(expected)
    # Non-saturating: the generator still gets a gradient when the discriminator is sure.
    confident = torch.tensor([-8.0], requires_grad=True)
    generator_adversarial_loss(confident).backward()
    assert confident.grad.abs().item() > 0.99


def test_nrl_loss_combines_terms_and_reaches_the_prediction():
    torch.manual_seed(0)
    vgg = VGG16Features().eval()
    disc = NRLDiscriminator()
    pred = torch.rand(1, 3, 32, 32, requires_grad=True)
    target = torch.rand(1, 3, 32, 32)
    total, parts = nrl_loss(pred, target, vgg)
    assert parts["adversarial"].item() == 0.0
    expected = parts["mse"] + NRL_W_PERCEPTUAL * parts["perceptual"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total, parts = nrl_loss(pred, target, vgg, disc(pred), w_perceptual=0.5, w_adv=0.25)
    expected = parts["mse"] + 0.5 * parts["perceptual"] + 0.25 * parts["adversarial"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["adversarial"].item() > 0
    total.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in vgg.parameters())  # VGG stays frozen
    assert NRL_W_ADVERSARIAL > 0
