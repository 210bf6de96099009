"""frlie and neid losses: terms, weights, hue circularity, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lowlight_cli.training.losses import (
    NEID_W_COLOR,
    circular_hue_distance,
    frlie_stage1_loss,
    frlie_stage2_loss,
    neid_color_loss,
    neid_loss,
)


def _images(seed: int, b: int = 2, h: int = 24, w: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 0.8 + 0.1


def _hsv_pixel(hue_deg: float) -> torch.Tensor:
    """A fully saturated pixel of the given hue, as (1, 3, 1, 1) RGB."""
    import colorsys

    return torch.tensor(colorsys.hsv_to_rgb(hue_deg / 360.0, 1.0, 1.0)).view(1, 3, 1, 1)


def test_stage1_is_mse_and_zero_at_target():
    x, y = _images(0), _images(1)
    assert torch.isclose(frlie_stage1_loss(x, y), ((x - y) ** 2).mean())
    assert frlie_stage1_loss(y, y) == 0


def test_hue_distance_wraps_around_the_circle():
    red_lo, red_hi, cyan = _hsv_pixel(5.0), _hsv_pixel(355.0), _hsv_pixel(185.0)
    near = circular_hue_distance(red_lo, red_hi).item()
    far = circular_hue_distance(red_lo, cyan).item()
    assert abs(near - 10 / 180) < 1e-3  # 10 degrees apart across 0, not 350
    # Opposite hues: the maximum (up to the HSV guard, which damps hue by chroma/(chroma+eps)).
    assert abs(far - 1.0) < 1e-2


def test_stage2_weights_and_terms():
    pred, target = _images(2), _images(3)
    feat_r = torch.randn(2, 8, 6, 6)
    feat_t = torch.randn(2, 8, 6, 6)
    total, parts = frlie_stage2_loss(pred, target, feat_r, feat_t)
    assert set(parts) == {"decode", "feature", "ssim", "hue"}
    expected = (
        100 * parts["decode"] + 0.2 * parts["feature"] + 0.5 * parts["ssim"] + 0.05 * parts["hue"]
    )
    assert torch.isclose(total, expected)
    assert torch.isclose(parts["feature"], (feat_r - feat_t).abs().mean())
    same, same_parts = frlie_stage2_loss(target, target, feat_t, feat_t)
    assert same.abs() < 1e-5 and all(v.abs() < 1e-5 for v in same_parts.values())


def test_stage2_gradients_reach_image_and_features():
    pred = _images(4).requires_grad_(True)
    feat = torch.randn(2, 8, 6, 6, requires_grad=True)
    total, _ = frlie_stage2_loss(pred, _images(5), feat, torch.randn(2, 8, 6, 6))
    total.backward()
    assert pred.grad.abs().sum() > 0 and torch.isfinite(pred.grad).all()
    assert feat.grad.abs().sum() > 0


def test_neid_loss_terms_and_huber_regimes():
    le, dr, gt = _images(6), _images(7), _images(8)
    total, parts = neid_loss(le, dr, gt, huber_delta=0.1)
    assert torch.isclose(total, parts["huber"] + 0.1 * parts["mse"] + 0.1 * parts["color"])
    assert torch.isclose(parts["mse"], ((dr - gt) ** 2).mean())
    # Small errors: quadratic regime, 0.5 a^2; large errors: linear, delta (|a| - delta / 2).
    small = gt + 0.01
    _, p_small = neid_loss(small, dr, gt, huber_delta=0.1)
    assert torch.isclose(p_small["huber"], torch.tensor(0.5 * 0.01**2), rtol=1e-3)
    big = gt + 0.5
    _, p_big = neid_loss(big, dr, gt, huber_delta=0.1)
    assert torch.isclose(p_big["huber"], torch.tensor(0.1 * (0.5 - 0.05)), rtol=1e-3)
    assert torch.isclose(p_big["huber"], F.huber_loss(big, gt, delta=0.1))


def test_neid_color_loss_sees_colour_not_brightness():
    gt = _images(9)
    assert neid_color_loss(gt, gt).abs() < 1e-6
    # Scaling brightness keeps hue and saturation: no colour penalty.
    assert neid_color_loss(gt * 0.5, gt).abs() < 1e-4
    # Swapping channels changes hue: penalised.
    assert neid_color_loss(gt[:, [2, 0, 1]], gt) > 1e-3


def test_neid_loss_backpropagates_to_both_branches():
    le, dr = _images(10).requires_grad_(True), _images(11).requires_grad_(True)
    total, _ = neid_loss(le, dr, _images(12))
    total.backward()
    assert le.grad.abs().sum() > 0 and dr.grad.abs().sum() > 0
    assert torch.isfinite(le.grad).all()


def test_neid_colour_term_cannot_swamp_the_pixel_loss_on_a_black_prediction():
    # An untrained network outputs near-black images; there the colour term's gradient used to
    # be ~1e4 times the Huber term's and training stalled with LE stuck at black.
    target = _images(13) * 0.5 + 0.3
    le = (torch.rand_like(target) * 1e-3).requires_grad_(True)
    total, _ = neid_loss(le, torch.zeros_like(target), target)
    total.backward()
    huber_only = le.detach().clone().requires_grad_(True)
    torch.nn.functional.huber_loss(huber_only, target, delta=0.1).backward()
    assert torch.isfinite(le.grad).all()
    assert le.grad.norm() < 2 * huber_only.grad.norm()


def test_neid_task_takes_the_colour_weight_from_its_recipe():
    """--set color_weight=W reaches eq. 7 (W = 0 leaves Huber + 0.1 MSE)."""
    from lowlight_cli.training.data import Batch
    from lowlight_cli.training.recipes import default_recipe
    from lowlight_cli.training.tasks import NEIDTask

    le, dr, target = _images(20), _images(21), _images(22)

    class Outputs(torch.nn.Module):  # stands in for NEID: fixed LE and DR images
        def forward_train(self, low):
            return le, dr

    batch = Batch(low=target * 0.2, high=target)
    assert default_recipe("neid").color_weight == NEID_W_COLOR  # the paper's lambda_2
    for w in (0.0, 0.1, 1.0):
        task = NEIDTask(Outputs(), default_recipe("neid").override(color_weight=w), None, "cpu")
        total, parts = task.loss(batch)
        expected, _ = neid_loss(le, dr, target, w_color=w)
        assert float(total) == pytest.approx(float(expected), rel=1e-6)
        if w == 0.0:
            assert float(total) == pytest.approx(parts["huber"] + 0.1 * parts["mse"], rel=1e-6)
        else:
            assert float(total) > parts["huber"] + 0.1 * parts["mse"] + 1e-4
