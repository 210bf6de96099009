"""symnet: shapes, exact invertibility, tied encoder/decoder, shared recurrent weights."""

from __future__ import annotations

import pytest
import torch

from lowlight_cli.errors import UsageError
from lowlight_cli.models.blocks import pooling_context
from lowlight_cli.models.symnet import SymNet, exp_sigmoid
from lowlight_cli.registry import count_parameters, get_spec


def _randomise_tails(model: SymNet, std: float, seed: int = 0) -> SymNet:
    """Give every T a non-zero output (zero-initialised tails make every block the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.blocks:
            for t in (block.t1, block.t2, block.t3):
                t.tail.weight.copy_(torch.randn(t.tail.weight.shape, generator=gen) * std)
                t.tail.bias.copy_(torch.randn(t.tail.bias.shape, generator=gen) * std)
    return model


@pytest.mark.parametrize("size", [(13, 17), (8, 8), (1, 5)])
def test_forward_and_inverse_keep_shape_for_any_size(size):
    model = SymNet(num_blocks=2, rounds=1).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = model(x)
        z = model.inverse(x)
    assert y.shape == x.shape and z.shape == x.shape
    assert torch.isfinite(y).all() and torch.isfinite(z).all()


@pytest.mark.parametrize(("num_blocks", "rounds"), [(8, 3), (2, 1)])
def test_inverse_transform_undoes_transform_with_random_weights(num_blocks, rounds):
    model = _randomise_tails(SymNet(num_blocks=num_blocks, rounds=rounds), std=0.005).eval()
    f = torch.randn(1, 64, 8, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        g = model.transform(f)
        back = model.inverse_transform(g)
        g2 = model.inverse_transform(f)
        forth = model.transform(g2)
    assert (g - f).abs().max() > 0.1  # the transform really does something
    assert torch.allclose(back, f, atol=1e-4)
    assert torch.allclose(forth, f, atol=1e-4)


def test_blocks_start_as_identity():
    model = SymNet(num_blocks=2, rounds=2)
    f = torch.randn(1, 64, 6, 7)
    with torch.no_grad():
        assert torch.equal(model.transform(f), f)
    assert exp_sigmoid(torch.zeros(())) == 1.0


def test_decoder_is_the_adjoint_of_the_encoder():
    model = SymNet(num_blocks=1, rounds=1)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 9, 11, generator=gen, dtype=torch.float64)
    f = torch.randn(1, 64, 9, 11, generator=gen, dtype=torch.float64)
    model = model.double()
    lhs = (model.encode(x) * f).sum()
    rhs = (x * model.decode(f)).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-10)


def test_set_vgg_weights_is_frozen_and_saved():
    model = SymNet(num_blocks=1, rounds=1)
    x = torch.rand(1, 3, 8, 8)
    before = model.encode(x)
    w1 = torch.randn(64, 3, 3, 3) * 0.1
    w2 = torch.randn(64, 64, 3, 3) * 0.05
    model.set_vgg_weights(w1, w2)
    after = model.encode(x)
    assert not torch.allclose(before, after)
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith("encoder") for n in names)  # never trained
    state = model.state_dict()
    assert torch.equal(state["encoder_w1"], w1) and torch.equal(state["encoder_w2"], w2)
    fresh = SymNet(num_blocks=1, rounds=1)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.encode(x), after)
    with pytest.raises(UsageError):
        model.set_vgg_weights(w2, w1)


def test_placeholder_encoder_is_deterministic():
    x = torch.rand(1, 3, 6, 6)
    assert torch.equal(SymNet(num_blocks=1).encode(x), SymNet(num_blocks=1).encode(x))


def test_recurrent_rounds_share_weights():
    one = count_parameters(SymNet(num_blocks=1, rounds=1))
    three = count_parameters(SymNet(num_blocks=1, rounds=3))
    assert one == three
    assert count_parameters(SymNet(num_blocks=2, rounds=1)) == 2 * one


def test_gradients_reach_every_trainable_parameter():
    model = _randomise_tails(SymNet(num_blocks=1, rounds=2), std=0.05)
    low, high = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    loss = ((model(low) - high) ** 2).mean() + ((model.inverse(high) - low) ** 2).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_pooling_goes_through_global_avg_pool_and_replays():
    model = _randomise_tails(SymNet(num_blocks=2, rounds=2), std=0.05).eval()
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad(), pooling_context("record") as rec:
        y = model(x)
    # one pooled 64-vector per RSCA call: blocks x 3 Ts x rounds
    assert rec.tensor.shape == (1, 2 * 3 * 2 * 64)
    with torch.no_grad(), pooling_context("replay", rec.tensor):
        y2 = model(x)
    assert torch.allclose(y, y2, atol=1e-6)
    # The replayed statistics are really used: other stats change the features.
    f = model.encode(x)
    with torch.no_grad(), pooling_context("record") as rec_f:
        g = model.transform(f)
    with torch.no_grad(), pooling_context("replay", rec_f.tensor + 1.0):
        g2 = model.transform(f)
    assert (g - g2).abs().max() > 1e-3


def test_registry_builds_the_paper_configuration():
    spec = get_spec("symnet")
    model = spec.build()
    assert len(model.blocks) == 8 and model.blocks[0].t1.rounds == 3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_agrees_with_registry_flag(dtype):
    spec = get_spec("symnet")
    safe = spec.bf16_safe if dtype == torch.bfloat16 else spec.fp16_safe
    if not safe:
        pytest.skip(f"{dtype} not claimed safe for symnet")
    model = _randomise_tails(SymNet(num_blocks=2, rounds=2), std=0.02).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
        low = model.to(dtype)(x.to(dtype)).float()
    assert (low - ref).abs().max() <= 0.02 * max(1.0, ref.abs().max().item())
