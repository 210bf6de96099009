"""neid: modes and shapes, the bicubic x0.5 filter, DR-guided fusion, init, training signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lowlight_cli.models.blocks import pooling_context
from lowlight_cli.models.neid import NEID, bicubic_downsample_x2


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machine's cores are shared: one thread avoids oversubscription stalls.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(**kw) -> NEID:
    return NEID(base_channels=8, depth=2, dr_blocks=1, **kw).eval()


def test_same_size_and_upscale_modes():
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        assert _tiny()(x).shape == (1, 3, 16, 24)
        assert _tiny(upscale=True)(x).shape == (1, 3, 32, 48)


def test_forward_train_returns_le_and_dr_at_twice_the_input():
    model = _tiny()
    le, dr = model.forward_train(torch.rand(2, 3, 8, 12))
    assert le.shape == dr.shape == (2, 3, 16, 24)
    with torch.no_grad():
        # Inference = the LE image of the downsampled input; the DR head is not used.
        x = torch.rand(1, 3, 16, 16)
        le_small, _ = model.forward_train(bicubic_downsample_x2(x))
        assert torch.allclose(model(x), le_small, atol=1e-6)


def test_dr_head_is_training_only():
    model = _tiny()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        for p in list(model.dr_decoder.parameters()) + list(model.dr_up.parameters()):
            p.add_(1.0)
        assert torch.equal(model(x), before)
        # ... while the DR body feeds the fusion and does change the output.
        for p in model.dr_body.parameters():
            p.add_(0.05)
        assert not torch.allclose(model(x), before)


def test_fusion_attention_comes_from_a_global_pool_of_dr_features():
    model = _tiny()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad(), pooling_context("record") as stats:
        model(x)
    # One pooled vector: the DR bottleneck features (8 * 2**2 channels).
    assert stats.tensor.shape == (1, 32)


def test_bicubic_matches_pillow_antialiased_bicubic_inside_the_image():
    rng = np.random.default_rng(0)
    arr = (rng.uniform(0, 1, (24, 32)) * 255).astype(np.float32)
    # Smooth it a little so the comparison is about the filter, not float rounding.
    arr = (arr + np.roll(arr, 1, 0) + np.roll(arr, 1, 1)) / 3
    ours = bicubic_downsample_x2(torch.from_numpy(arr)[None, None])[0, 0].numpy()
    pil = np.asarray(Image.fromarray(arr, mode="F").resize((16, 12), Image.Resampling.BICUBIC))
    inner = (slice(2, -2), slice(2, -2))  # borders differ (symmetric padding vs renormalising)
    assert np.abs(ours[inner] - pil[inner]).max() < 1e-2
    assert ours.shape == (12, 16)


def test_bicubic_keeps_constants_and_averages_fine_detail():
    flat = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(bicubic_downsample_x2(flat), torch.full((1, 3, 4, 4), 0.3), atol=1e-6)
    stripes = torch.zeros(1, 1, 16, 16)
    stripes[..., ::2] = 1.0  # Nyquist pattern: antialiasing must wash it out, not alias it
    out = bicubic_downsample_x2(stripes)[..., 2:-2]  # mirrored borders break the pattern
    assert (out - 0.5).abs().max() < 0.05
    # Plain subsampling aliases the stripes to a flat 1 (or 0) instead of their mean 0.5.
    aliased = F.interpolate(stripes, scale_factor=0.5, mode="nearest")
    assert (aliased - 0.5).abs().min() > 0.4


def test_paper_init_is_normal_002_with_zero_bias():
    model = NEID(base_channels=8, depth=2, dr_blocks=1)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    weights = torch.cat([m.weight.flatten() for m in convs])
    biases = torch.cat([m.bias.flatten() for m in convs])
    assert abs(weights.mean().item()) < 2e-3
    assert abs(weights.std().item() - 0.02) < 2e-3
    assert torch.all(biases == 0)


def test_a_few_training_steps_reduce_the_loss():
    from lowlight_cli.training.losses import neid_loss

    torch.manual_seed(0)
    model = NEID(base_channels=8, depth=2, dr_blocks=1, init_std=0.1)
    gt = torch.rand(2, 3, 32, 32) * 0.5 + 0.25
    low = bicubic_downsample_x2(gt * 0.2)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        le, dr = model.forward_train(low)
        loss, _ = neid_loss(le, dr, gt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
