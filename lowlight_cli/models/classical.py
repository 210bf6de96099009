"""Classical baselines as parameter-free modules: adaptive gamma, and gamma + CLAHE.

They follow the neural models' contract (``(B, 3, H, W)`` RGB in ``[0, 1]`` in, same shape out,
no clamping of the output) so the engine, benchmark and CLI treat every model alike.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch import nn

from lowlight_cli.models.blocks import GlobalAvgPool

__all__ = ["AdaptiveGamma", "Clahe", "adaptive_gamma"]

# Rec. 709 / sRGB luma weights; lightness perception is what the gamma should equalise.
_LUMA = (0.2126, 0.7152, 0.0722)


def adaptive_gamma(
    x: torch.Tensor,
    pool: nn.Module,
    *,
    target: float = 0.5,
    min_gamma: float = 0.2,
    max_gamma: float = 2.0,
) -> torch.Tensor:
    """Per-image global gamma that maps the mean luminance to ``target``.

    ``gamma = log(target) / log(mean_luma)``, clamped to ``[min_gamma, max_gamma]`` so that
    near-black or blown-out frames are not pushed to extremes.

    Args:
        x: ``(B, 3, H, W)`` in ``[0, 1]``.
        pool: global average pooling module (a :class:`GlobalAvgPool`, so tiles share the
            whole image's mean).
        target: desired mean luminance.
        min_gamma: strongest brightening allowed.
        max_gamma: strongest darkening allowed.

    Returns:
        ``(B, 3, H, W)``, ``x ** gamma`` per image.
    """
    weights = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    luma = (x * weights).sum(dim=1, keepdim=True)
    # The pow/log run in float32 even for half inputs: log of a small mean loses most of its
    # digits in fp16/bf16.
    mean = pool(luma).float().clamp(1e-4, 1.0 - 1e-4)
    gamma = (math.log(target) / torch.log(mean)).clamp(min_gamma, max_gamma)
    return x.float().clamp_min(0.0).pow(gamma).to(x.dtype)


class AdaptiveGamma(nn.Module):
    """Global gamma so the mean luminance becomes about 0.5.

    Args:
        target: desired mean luminance.
        min_gamma: lower clamp of the exponent (strongest brightening).
        max_gamma: upper clamp of the exponent (strongest darkening).
    """

    def __init__(self, *, target: float = 0.5, min_gamma: float = 0.2, max_gamma: float = 2.0):
        super().__init__()
        self.target = target
        self.min_gamma = min_gamma
        self.max_gamma = max_gamma
        self.pool = GlobalAvgPool()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> same shape."""
        return adaptive_gamma(
            x, self.pool, target=self.target, min_gamma=self.min_gamma, max_gamma=self.max_gamma
        )


class Clahe(nn.Module):
    """Adaptive gamma, then OpenCV CLAHE on the lightness channel of CIE Lab.

    Runs on the CPU through NumPy/OpenCV (results return to the input's device and dtype):
    not differentiable and not exportable to ONNX. Lightness is quantised to 16 bits for
    OpenCV's CLAHE, so 16-bit photos keep their precision. CLAHE's grid is relative to the
    image, so tiles would not agree: the registry marks it as not tileable.

    Args:
        clip_limit: CLAHE contrast limit (OpenCV's ``clipLimit``).
        grid: tiles per side (OpenCV's ``tileGridSize``).
        gamma_target: mean luminance targeted by the gamma step.
    """

    def __init__(self, *, clip_limit: float = 2.0, grid: int = 8, gamma_target: float = 0.5):
        super().__init__()
        self.clip_limit = clip_limit
        self.grid = grid
        self.gamma_target = gamma_target
        self.pool = GlobalAvgPool()

    def _equalize(self, rgb: np.ndarray) -> np.ndarray:
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)  # float32 input: L in [0, 100]
        lightness = np.clip(lab[..., 0] / 100.0 * 65535.0 + 0.5, 0, 65535).astype(np.uint16)
        clahe = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=(self.grid, self.grid))
        lab[..., 0] = clahe.apply(lightness).astype(np.float32) * (100.0 / 65535.0)
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> same shape, same dtype and device."""
        bright = adaptive_gamma(x, self.pool, target=self.gamma_target).float().clamp(0.0, 1.0)
        frames = bright.detach().cpu().numpy().transpose(0, 2, 3, 1)
        out = np.stack([self._equalize(np.ascontiguousarray(f)) for f in frames])
        return torch.from_numpy(out.transpose(0, 3, 1, 2).copy()).to(x.device, x.dtype)
