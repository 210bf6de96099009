"""Image quality metrics (PSNR, SSIM) and a differentiable RGB -> HSV conversion.

The tensor functions take ``(B, C, H, W)`` images and return one value per image, ``(B,)``, so
they serve both evaluation (per-image tables) and training (``.mean()`` of a differentiable
value). :func:`ssim` follows Wang et al. (2004) with the settings of
``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1.0, channel_axis=-1)``, which is how low-light papers
usually report SSIM. The ``*_array`` helpers take ``(H, W, C)`` numpy images of any of the
program's pixel types (uint8, uint16, float in ``[0, 1]``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from lowlight_cli.errors import UsageError

LUMA_BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 4:
        raise UsageError(
            f"metrics need two (B, C, H, W) tensors of the same shape, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}",
            hint="crop or resize the prediction to the reference size first",
        )


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image.

    Args:
        pred: ``(B, C, H, W)``.
        target: ``(B, C, H, W)``, same shape.
        data_range: peak value (1.0 for images in ``[0, 1]``).

    Returns:
        ``(B,)`` PSNR in dB (``inf`` for identical images).
    """
    _check_pair(pred, target)
    mse = (pred.double() - target.double()).pow(2).mean(dim=(1, 2, 3))
    return (10.0 * torch.log10(data_range**2 / mse)).to(pred.dtype)


def _gaussian_window(size: int, sigma: float, *, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    *,
    window_size: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
) -> torch.Tensor:
    """Structural similarity per image, averaged over channels; differentiable.

    Local statistics use a separable Gaussian window (population covariances). Only positions
    where the whole window fits inside the image count, which equals skimage's behaviour of
    filtering with reflection and then cropping ``(window_size - 1) // 2`` pixels per side.

    Args:
        pred: ``(B, C, H, W)``; H and W at least ``window_size``.
        target: ``(B, C, H, W)``, same shape.
        data_range: peak-to-peak range of the data (1.0 for ``[0, 1]``).
        window_size: Gaussian window side (odd).
        sigma: Gaussian standard deviation.

    Returns:
        ``(B,)`` SSIM in ``[-1, 1]``.
    """
    _check_pair(pred, target)
    _, c, h, w = pred.shape
    if h < window_size or w < window_size:
        raise UsageError(
            f"SSIM needs images of at least {window_size}x{window_size} pixels, got {w}x{h}",
            hint="evaluate on larger images or crops",
        )
    dtype = pred.dtype if pred.dtype in (torch.float32, torch.float64) else torch.float32
    x = pred.to(dtype)
    y = target.to(dtype)
    g = _gaussian_window(window_size, sigma, device=x.device, dtype=dtype)
    kx = g.view(1, 1, 1, -1).expand(c, 1, 1, window_size)
    ky = g.view(1, 1, -1, 1).expand(c, 1, window_size, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        # Separable and "valid": two 1-D passes are ~5x cheaper than one 11x11 pass. Never in
        # half precision, even under autocast: the variances below subtract nearly equal
        # numbers, and in bf16 SSIM came out as nan or inf.
        with torch.autocast(device_type=t.device.type, enabled=False):
            return F.conv2d(F.conv2d(t, kx, groups=c), ky, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x * mu_x
    syy = blur(y * y) - mu_y * mu_y
    sxy = blur(x * y) - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)
    return (num / den).mean(dim=(1, 2, 3)).to(pred.dtype)


def rgb_to_hsv(rgb: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Differentiable RGB -> HSV.

    Args:
        rgb: ``(B, 3, H, W)`` in ``[0, 1]``.
        eps: guards the divisions for black and grey pixels.

    Returns:
        ``(B, 3, H, W)``: hue in ``[0, 1)`` (fraction of a full turn, so red is 0 and 1 is
        red again), saturation and value in ``[0, 1]``. Grey pixels get hue 0.
    """
    r, g, b = rgb.unbind(dim=1)
    value, argmax = rgb.max(dim=1)
    delta = value - rgb.min(dim=1).values
    saturation = delta / (value + eps)
    safe = delta + eps
    # Hue sector by which channel is largest; each piece is linear in the channels, so the
    # gradient exists everywhere except on the sector borders (measure zero).
    hue_r = ((g - b) / safe) % 6.0
    hue_g = (b - r) / safe + 2.0
    hue_b = (r - g) / safe + 4.0
    hue = torch.where(argmax == 0, hue_r, torch.where(argmax == 1, hue_g, hue_b)) / 6.0
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue))
    return torch.stack((hue % 1.0, saturation, value), dim=1)


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """uint8/uint16/float image -> float64 in ``[0, 1]`` (floats are taken as already scaled)."""
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float64) / 65535.0
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float64)
    raise UsageError(
        f"unsupported pixel type {image.dtype}", hint="use uint8, uint16 or float images"
    )


def _array_to_tensor(image: np.ndarray) -> torch.Tensor:
    arr = to_unit_float(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]


def psnr_array(pred: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB of two ``(H, W[, C])`` images of the same pixel type, scaled to ``[0, 1]``."""
    value = psnr(_array_to_tensor(pred), _array_to_tensor(target))[0].item()
    return math.inf if math.isinf(value) else float(value)


def ssim_array(pred: np.ndarray, target: np.ndarray) -> float:
    """SSIM of two ``(H, W[, C])`` images of the same pixel type, scaled to ``[0, 1]``."""
    return float(ssim(_array_to_tensor(pred), _array_to_tensor(target))[0].item())


def mean_luma(img: np.ndarray) -> float:
    """The mean BT.601 luma of an ``(H, W, 3)`` image in ``[0, 1]`` (the brightness the "at
    the GT mean" scores match)."""
    return float((img @ LUMA_BT601).mean())
