"""The papers' losses as pure functions. Inputs are ``(B, 3, H, W)`` RGB in ``[0, 1]`` unless
stated otherwise; every function returns a scalar tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowlight_cli.metrics import rgb_to_hsv, ssim

# ---- symnet (owned by the symnet/nrl author) -------------------------------------------------

# ---- nrl ---------------------------------------------------------------------------------------

# ---- frlie (owned by the frlie/neid author) ----------------------------------------------------

# Stage-2 term weights, eq. 7: lambda_D, lambda_FM, lambda_SSIM, lambda_Hue.
FRLIE_W_DECODE = 100.0
FRLIE_W_FEATURE = 0.2
FRLIE_W_SSIM = 0.5
FRLIE_W_HUE = 0.05


def frlie_stage1_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Reconstructor loss, eq. 1: per-pixel mean of ``(D(E(I_h)) - I_h)^2``."""
    return F.mse_loss(recon, target)


def circular_hue_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel hue distance on the colour circle, normalised to ``[0, 1]`` (1 = opposite).

    Equals ``(180 - |180 - |H_p - H_t||) / 180`` with hue in degrees, our reading of the
    printed (garbled) eq. 6 of the FRLIE paper (see docs/models.md).

    Args:
        pred: ``(B, 3, H, W)`` RGB in ``[0, 1]``.
        target: ``(B, 3, H, W)`` RGB in ``[0, 1]``.

    Returns:
        ``(B, H, W)``.
    """
    diff = (rgb_to_hsv(pred)[:, 0] - rgb_to_hsv(target)[:, 0]).abs()  # in turns, [0, 1)
    return 2.0 * torch.minimum(diff, 1.0 - diff)


def frlie_stage2_loss(
    pred_img: torch.Tensor,
    target_img: torch.Tensor,
    restored_feat: torch.Tensor,
    target_feat: torch.Tensor,
    *,
    w_decode: float = FRLIE_W_DECODE,
    w_feature: float = FRLIE_W_FEATURE,
    w_ssim: float = FRLIE_W_SSIM,
    w_hue: float = FRLIE_W_HUE,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Feature-restoration loss, eq. 7: ``100 L_D + 0.2 L_FM + 0.5 L_ssim + 0.05 L_hue``.

    Args:
        pred_img: ``(B, 3, H, W)`` ``D(F_r)``.
        target_img: ``(B, 3, H, W)`` ``I_h`` in ``[0, 1]``.
        restored_feat: ``(B, C, h, w)`` ``F_r``.
        target_feat: ``(B, C, h, w)`` ``E(I_h)`` (no gradient needed).

    Returns:
        ``(total, {"decode", "feature", "ssim", "hue"})``, the unweighted terms as scalars.
    """
    decode = F.mse_loss(pred_img, target_img)  # eq. 4
    feature = F.l1_loss(restored_feat, target_feat)  # eq. 3
    structure = 1.0 - ssim(pred_img, target_img).mean()  # eq. 5
    hue = circular_hue_distance(pred_img, target_img).mean()  # eq. 6
    total = w_decode * decode + w_feature * feature + w_ssim * structure + w_hue * hue
    return total, {"decode": decode, "feature": feature, "ssim": structure, "hue": hue}


# ---- neid --------------------------------------------------------------------------------------

# Huber delta: not given in the paper. 0.1 on [0, 1] images makes both of the paper's regimes
# matter: linear (robust) for large early errors, quadratic near convergence. TensorFlow's
# default (1.0) would make it 0.5 * MSE everywhere on [0, 1] data (see docs/models.md).
NEID_HUBER_DELTA = 0.1
NEID_W_MSE = 0.1  # lambda_1
NEID_W_COLOR = 0.1  # lambda_2


def neid_color_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Colour loss, eqs. 4-6: ``(1 - cos(H_p, H_gt)) + (1 - cos(S_p, S_gt))``.

    Cosine similarity of each image's hue (saturation) channel taken as one vector over all
    pixels, as the paper writes it; averaged over the batch.

    Args:
        pred: ``(B, 3, H, W)`` RGB.
        target: ``(B, 3, H, W)`` RGB in ``[0, 1]``.
    """
    hsv_p = rgb_to_hsv(pred).flatten(2)
    hsv_t = rgb_to_hsv(target).flatten(2)
    cos_h = F.cosine_similarity(hsv_p[:, 0], hsv_t[:, 0], dim=1, eps=1e-8)
    cos_s = F.cosine_similarity(hsv_p[:, 1], hsv_t[:, 1], dim=1, eps=1e-8)
    return ((1.0 - cos_h) + (1.0 - cos_s)).mean()


def neid_loss(
    le: torch.Tensor,
    dr: torch.Tensor,
    target: torch.Tensor,
    *,
    huber_delta: float = NEID_HUBER_DELTA,
    w_mse: float = NEID_W_MSE,
    w_color: float = NEID_W_COLOR,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """NEID total loss, eq. 7: ``Huber(I_LE, GT) + 0.1 MSE(I_DR, GT) + 0.1 L_color(I_LE, GT)``.

    The colour loss is applied to the LE output, the image the network delivers.

    Args:
        le: ``(B, 3, H, W)`` LE branch output.
        dr: ``(B, 3, H, W)`` DR head output.
        target: ``(B, 3, H, W)`` ground truth in ``[0, 1]``.
        huber_delta: Huber threshold (eq. 1's delta).

    Returns:
        ``(total, {"huber", "mse", "color"})``, unweighted terms as scalars.
    """
    huber = F.huber_loss(le, target, delta=huber_delta)
    mse = F.mse_loss(dr, target)
    color = neid_color_loss(le, target)
    total = huber + w_mse * mse + w_color * color
    return total, {"huber": huber, "mse": mse, "color": color}
