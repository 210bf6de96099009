"""metrics: PSNR/SSIM against scikit-image, differentiability, HSV against colorsys."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from lowlight_cli.errors import UsageError
from lowlight_cli.metrics import psnr, psnr_array, rgb_to_hsv, ssim, ssim_array


def _photo_like(rng: np.random.Generator, h: int = 48, w: int = 64) -> np.ndarray:
    """Smooth structure + edges + noise, (H, W, 3) float in [0, 1]: closer to a photo than noise."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = 0.5 + 0.3 * np.sin(6 * xx + rng.uniform(0, 3)) * np.cos(4 * yy)
    img = np.stack([base, base**1.3, 1 - base], axis=-1)
    img[h // 3 : h // 2, w // 4 : w // 2] += 0.25  # an edge
    img += rng.normal(0, 0.03, img.shape)
    return np.clip(img, 0, 1)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.transpose(2, 0, 1).copy())[None]


def test_ssim_matches_skimage():
    rng = np.random.default_rng(0)
    for _ in range(3):
        ref = _photo_like(rng)
        pred = np.clip(ref * rng.uniform(0.4, 0.9) + rng.normal(0, 0.05, ref.shape), 0, 1)
        expected = structural_similarity(
            pred,
            ref,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=-1,
        )
        got = ssim(_t(pred).float(), _t(ref).float())
        assert got.shape == (1,)
        assert abs(got.item() - expected) < 1e-3
        assert abs(ssim_array(pred, ref) - expected) < 1e-4  # float64 path


def test_psnr_matches_skimage_and_is_per_image():
    rng = np.random.default_rng(1)
    refs = [_photo_like(rng) for _ in range(2)]
    preds = [
        np.clip(r + rng.normal(0, s, r.shape), 0, 1) for r, s in zip(refs, (0.01, 0.1), strict=True)
    ]
    got = psnr(torch.cat([_t(p) for p in preds]), torch.cat([_t(r) for r in refs]))
    assert got.shape == (2,)
    for g, p, r in zip(got, preds, refs, strict=True):
        assert abs(g.item() - peak_signal_noise_ratio(r, p, data_range=1.0)) < 1e-6
    assert got[0] > got[1]  # less noise, higher PSNR


def test_array_helpers_scale_integer_images():
    rng = np.random.default_rng(2)
    ref = _photo_like(rng)
    pred = np.clip(ref + 0.02, 0, 1)
    as8 = psnr_array((pred * 255).round().astype(np.uint8), (ref * 255).round().astype(np.uint8))
    as16 = psnr_array(
        (pred * 65535).round().astype(np.uint16), (ref * 65535).round().astype(np.uint16)
    )
    assert abs(as16 - psnr_array(pred, ref)) < 0.01
    assert abs(as8 - as16) < 0.5  # 8-bit rounding only
    assert psnr_array(ref, ref) == float("inf")


def test_ssim_is_differentiable_and_one_for_identical():
    rng = np.random.default_rng(3)
    ref = _t(_photo_like(rng)).float()
    pred = (ref * 0.7).requires_grad_(True)
    (1 - ssim(pred, ref)).sum().backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() > 0
    assert torch.allclose(ssim(ref, ref), torch.ones(1), atol=1e-6)


def test_bad_inputs_raise_usage_errors():
    with pytest.raises(UsageError):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(UsageError):
        psnr(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17))


def test_rgb_to_hsv_matches_colorsys_and_has_gradients():
    rng = np.random.default_rng(4)
    rgb = rng.uniform(0, 1, (200, 3))
    rgb[:5] = [[0.2, 0.2, 0.2], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.9, 0.1, 0.5]]
    x = torch.from_numpy(rgb.T.copy()).view(1, 3, 200, 1).float().requires_grad_(True)
    hsv = rgb_to_hsv(x)
    expected = np.array([colorsys.rgb_to_hsv(*p) for p in rgb])
    got = hsv.detach()[0, :, :, 0].T.numpy()
    hue_err = np.abs(got[:, 0] - expected[:, 0])
    assert np.all(np.minimum(hue_err, 1 - hue_err) < 1e-5)
    np.testing.assert_allclose(got[:, 1:], expected[:, 1:], atol=1e-5)
    hsv[:, :2].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_ssim_is_computed_in_fp32_under_bf16_autocast():
    """Validation runs the model under autocast; the score must not be computed in bf16
    (the variances subtract nearly equal numbers: bf16 gave nan and inf)."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 48, 48)
    y = (0.8 * x + 0.1 + 0.02 * torch.randn_like(x)).clamp(0, 1)
    plain = ssim(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = ssim(x, y)
    assert under.dtype == torch.float32
    assert torch.allclose(under, plain, atol=1e-6)
