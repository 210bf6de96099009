"""Edge-aware upsampling: exact on global transforms, edges kept, seamless row blocks."""

from __future__ import annotations

import numpy as np
import pytest

from lowlight_cli import upsampling
from lowlight_cli.upsampling import (
    UPSAMPLE_EPS,
    UPSAMPLE_RADIUS,
    apply_local_affine,
    fit_local_affine,
    global_affine,
    guided_upsample,
)


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A dark, textured 'photo': smooth shading, a few edges, sensor-like noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 0.08 + 0.05 * np.sin(xx / 23.0)[..., None] * np.cos(yy / 31.0)[..., None]
    base = base * np.array([1.1, 1.0, 0.8], np.float32)
    base[: h // 3, w // 2 :] += np.array([0.10, 0.06, 0.02], np.float32)  # a lit object
    return np.clip(base + 0.01 * rng.standard_normal((h, w, 3), dtype=np.float32), 0, 1)


def _shrink(image: np.ndarray, factor: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    return cv2.resize(image, (w // factor, h // factor), interpolation=cv2.INTER_AREA)


def _tone_curve(x: np.ndarray) -> np.ndarray:
    """A non-linear enhancement with a colour cast: what no single affine map reproduces."""
    return np.sqrt(np.clip(x, 0, None)) * np.array([1.0, 0.95, 0.85], np.float32)


def test_a_global_gain_is_reproduced_exactly() -> None:
    full = _photo(240, 330)
    small = _shrink(full, 3)
    out = guided_upsample(small, 3.5 * small, full, radius=UPSAMPLE_RADIUS, eps=UPSAMPLE_EPS)
    np.testing.assert_allclose(out, 3.5 * full, atol=2e-5)


def test_a_global_colour_matrix_and_offset_are_reproduced_exactly() -> None:
    full = _photo(200, 260, seed=1)
    small = _shrink(full, 4)
    matrix = np.array([[1.6, 0.3, -0.1], [0.2, 2.1, 0.1], [-0.05, 0.4, 1.3]], np.float32)
    offset = np.array([0.02, -0.01, 0.03], np.float32)
    out = guided_upsample(
        small, small @ matrix.T + offset, full, radius=UPSAMPLE_RADIUS, eps=UPSAMPLE_EPS
    )
    np.testing.assert_allclose(out, full @ matrix.T + offset, atol=2e-5)
    np.testing.assert_allclose(global_affine(small, small @ matrix.T + offset)[:, :3], matrix,
                               atol=1e-5)  # fmt: skip


def test_a_grey_image_still_gets_its_global_transform() -> None:
    """R = G = B makes the colour covariance singular; the pseudo-inverse copes."""
    grey = np.repeat(_photo(90, 120, seed=2)[..., :1], 3, axis=2)
    small = _shrink(grey, 3)
    out = guided_upsample(small, 2.0 * small + 0.01, grey, radius=2, eps=UPSAMPLE_EPS)
    np.testing.assert_allclose(out, 2.0 * grey + 0.01, atol=2e-5)


@pytest.mark.parametrize("edge", [204, 203])
def test_a_step_edge_stays_a_step(edge: int) -> None:
    """A dark/bright step through a tone curve, the model at 1/4 size.

    On the grid (204) the step is reproduced exactly. Off the grid (203) one small pixel mixes
    both sides; the curve of the mixture is not the mixture of the curves, so a small error
    (4 % of the step, 3 levels of 255 here) fades out over a few windows beside the edge, but
    the edge itself stays one pixel wide, where enlarging the small output would smear it over
    two small pixels (8 full-size pixels) and miss by 44 % of the step.
    """
    import cv2

    height, width = 64, 400
    image = np.full((height, width, 3), 0.04, np.float32)
    image[:, edge:] = [0.30, 0.25, 0.20]
    small = _shrink(image, 4)
    expected = _tone_curve(image)
    out = guided_upsample(small, _tone_curve(small), image, radius=UPSAMPLE_RADIUS, eps=1e-4)
    error = np.abs(out - expected).max(axis=(0, 2))  # per column
    jump = np.abs(np.diff(out[height // 2], axis=0)).max(axis=1)
    step = np.abs(expected[0, edge] - expected[0, edge - 1]).max()
    # The whole jump happens between two neighbouring pixels...
    assert jump[edge - 1] > 0.9 * step
    assert np.delete(jump, edge - 1).max() < 0.02 * step
    # ...and the levels on both sides are right: exactly on the grid, within 5 % of the step
    # off it; enlarging the small output is off by a third of the step.
    assert error.max() < (1e-3 if edge % 4 == 0 else 0.05 * step)
    plain = cv2.resize(_tone_curve(small), (width, height), interpolation=cv2.INTER_LINEAR)
    assert np.abs(plain - expected).max() > 0.3 * step


def test_local_changes_follow_the_model_not_the_global_fit() -> None:
    """Two halves enhanced differently (a local operator) keep their own transforms.

    The texture is coarser than a working pixel, so every window sees it; detail finer than that
    (sensor noise) is invisible to the fit and takes the global transform (see the module notes).
    """
    import cv2

    rng = np.random.default_rng(3)
    coarse = rng.random((40, 60, 3), dtype=np.float32) * 0.3
    full = cv2.resize(coarse, (240, 160), interpolation=cv2.INTER_CUBIC)
    small = _shrink(full, 4)
    gain = np.ones_like(small)
    gain[:, small.shape[1] // 2 :] = 3.0
    out = guided_upsample(small, small * gain, full, radius=2, eps=UPSAMPLE_EPS)
    left, right = full[:, :100], full[:, 140:]  # away from the boundary between the halves
    np.testing.assert_allclose(out[:, :100], left, atol=0.01)
    np.testing.assert_allclose(out[:, 140:], 3.0 * right, atol=0.03)
    # One transform for the whole image (the global fit) is far off on both halves.
    fit = global_affine(small, small * gain)
    whole = full @ fit[:, :3].T + fit[:, 3]
    assert np.abs(whole[:, :100] - left).mean() > 10 * np.abs(out[:, :100] - left).mean()


def test_a_non_linear_curve_is_carried_closely_and_keeps_full_resolution_detail() -> None:
    """Better than enlarging the small output: the fine texture comes from the full input."""
    import cv2

    full = _photo(240, 360, seed=4)
    small = _shrink(full, 4)
    expected = _tone_curve(full)
    out = guided_upsample(small, _tone_curve(small), full, radius=UPSAMPLE_RADIUS, eps=UPSAMPLE_EPS)
    plain = cv2.resize(_tone_curve(small), (360, 240), interpolation=cv2.INTER_CUBIC)
    guided_mse = np.mean((out - expected) ** 2)
    assert guided_mse < 0.25 * np.mean((plain - expected) ** 2)
    assert 10 * np.log10(1 / guided_mse) > 35.0


def test_row_blocks_are_seamless(monkeypatch: pytest.MonkeyPatch) -> None:
    """Block-wise enlarging matches OpenCV's whole-image bilinear resize of the coefficients."""
    import cv2

    full = _photo(150, 170, seed=5)
    small = _shrink(full, 3)
    coeffs = fit_local_affine(small, _tone_curve(small), radius=2, eps=UPSAMPLE_EPS)
    monkeypatch.setattr(upsampling, "APPLY_ROWS", 7)  # many blocks, uneven last one
    blocked = apply_local_affine(coeffs, full)
    enlarged = cv2.resize(coeffs, (170, 150), interpolation=cv2.INTER_LINEAR).reshape(
        150, 170, 3, 4
    )
    whole = np.einsum("yxck,yxk->yxc", enlarged[..., :3], full) + enlarged[..., 3]
    # warpAffine samples at 1/32 pixel; the coefficients are smooth, so that is invisible.
    np.testing.assert_allclose(blocked, whole, atol=2e-3)


def test_output_may_overwrite_a_buffer_and_has_the_input_size() -> None:
    full = _photo(33, 47, seed=6)
    small = _shrink(full, 5)
    buffer = np.zeros_like(full)
    out = guided_upsample(small, 2 * small, full, radius=1, eps=UPSAMPLE_EPS, out=buffer)
    assert out is buffer and out.shape == full.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, 2 * full, atol=2e-5)
