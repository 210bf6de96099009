"""Classical baselines: adaptive gamma and gamma + CLAHE."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from lowlight_cli.models.blocks import pooling_context
from lowlight_cli.models.classical import AdaptiveGamma, Clahe

_LUMA = torch.tensor([0.2126, 0.7152, 0.0722]).view(1, 3, 1, 1)


def _dark(seed: int = 0, h: int = 40, w: int = 56) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = 0.05 + 0.08 * xx * yy
    img = torch.stack([base, base * 1.1, base * 0.8]) + 0.01 * torch.rand(3, h, w, generator=g)
    return img[None].clamp(0, 1)


def _mean_luma(x: torch.Tensor) -> torch.Tensor:
    return (x * _LUMA).sum(1).mean(dim=(1, 2))


def test_gamma_brings_mean_luminance_near_half_and_keeps_order():
    x = _dark()
    y = AdaptiveGamma()(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert abs(_mean_luma(y).item() - 0.5) < 0.08  # mean of x**g is close to mean(x)**g
    # A power law is monotonic: darker pixels stay darker.
    flat_x, flat_y = x.flatten(), y.flatten()
    order = torch.argsort(flat_x)
    assert torch.all(torch.diff(flat_y[order]) >= -1e-6)


def test_gamma_is_per_image_and_clamped():
    dark, bright = _dark(1), torch.full((1, 3, 8, 8), 0.999)
    black = torch.zeros(1, 3, 8, 8)
    out = AdaptiveGamma(min_gamma=0.2, max_gamma=2.0)(torch.cat([dark, dark.clone()]))
    assert torch.allclose(out[0], out[1])
    # Nearly white: gamma hits the upper clamp (2.0) instead of a huge exponent.
    assert torch.allclose(AdaptiveGamma()(bright), bright**2.0, atol=1e-6)
    # Black stays finite (log of the clamped mean, 0 ** gamma = 0).
    assert torch.equal(AdaptiveGamma()(black), black)


def test_gamma_tiles_agree_with_the_whole_image_under_replay():
    x = _dark(2)
    model = AdaptiveGamma()
    with pooling_context("record") as stats:
        whole = model(x)
    tile = x[..., 10:30, 20:50]
    with pooling_context("replay", stats.tensor):
        tiled = model(tile)
    assert torch.allclose(tiled, whole[..., 10:30, 20:50], atol=1e-6)
    # Without the replay the tile would use its own (different) mean.
    assert not torch.allclose(model(tile), whole[..., 10:30, 20:50], atol=1e-3)


def test_clahe_raises_local_contrast_and_is_deterministic():
    x = _dark(3, 64, 64)
    model = Clahe()
    y1, y2 = model(x), model(x)
    assert y1.shape == x.shape and y1.dtype == x.dtype
    assert torch.equal(y1, y2)
    gamma_only = AdaptiveGamma()(x)
    lightness = lambda t: cv2.cvtColor(  # noqa: E731
        np.ascontiguousarray(t[0].permute(1, 2, 0).numpy()), cv2.COLOR_RGB2LAB
    )[..., 0]
    assert lightness(y1).std() > 1.2 * lightness(gamma_only).std()
    assert y1.min() >= 0.0 and y1.max() <= 1.0 + 1e-4


def test_clahe_keeps_dtype_and_batch():
    x = torch.cat([_dark(4, 32, 32), _dark(5, 32, 32)]).double()
    y = Clahe()(x)
    assert y.dtype == torch.float64 and y.shape == x.shape
    assert not torch.allclose(y[0], y[1])


@pytest.mark.parametrize("cls", [AdaptiveGamma, Clahe])
def test_no_parameters(cls):
    assert sum(p.numel() for p in cls().parameters()) == 0
