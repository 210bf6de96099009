"""The papers' losses as pure functions. Inputs are ``(B, 3, H, W)`` RGB in ``[0, 1]`` unless
stated otherwise; every function returns a scalar tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lowlight_cli.errors import UsageError
from lowlight_cli.metrics import rgb_to_hsv, ssim

# HSV is singular at black (saturation = chroma / value) and grey (hue = ... / chroma) pixels:
# with a tiny guard, a dark or grey prediction (every untrained network's output) gets colour-
# loss gradients of order 1/eps that swamp the pixel loss and stall training (seen: neid's LE
# branch stuck at black). The colour losses therefore use a guard of about 2.5/255 and score the
# prediction clamped to the displayable range, where hue and saturation mean something.
HSV_LOSS_EPS = 1e-2

if TYPE_CHECKING:  # pragma: no cover
    from lowlight_cli.models.symnet import SymNet

# ---- symnet (owned by the symnet/nrl author) -------------------------------------------------


def symnet_loss(
    model: SymNet,
    low: torch.Tensor,
    high: torch.Tensor,
    *,
    w_forward: float = 1.0,
    w_backward: float = 1.0,
    w_lowfreq: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Two-way L2 of eqs. 12-14: ``w_forward * MSE(model(low), high)`` (low->high) plus
    ``w_backward * MSE(model.inverse(high), low)``, i.e. ``D(IFT^-1(E(high)))`` vs ``low``.

    The paper's weights are ``lambda_H = lambda_L = 1`` and ``w_lowfreq = 0``. Each term is a
    per-pixel mean (the paper's per-image squared norm divided by a constant ``3HW``).

    ``w_lowfreq > 0`` adds, to each direction (scaled by that direction's weight), ``w_lowfreq``
    times the MSE of the two images box-averaged over 4, 8, 16 and 32 px (:func:`lowpass_mse`):
    a preconditioner, not a new target (it vanishes wherever the L2 terms do). The frozen
    decoder passes flat and slowly varying content 10-80x more weakly than fine detail
    (``docs/scripts/symnet_response.py``), so under plain L2 brightness and large-area contrast
    might learn that much more slowly; this term gives their errors more weight. Measured: no
    gain over plain L2 in a controlled 250-step run (``docs/models.md``, 2026-12-06), so the
    recipe keeps the paper's 0.

    Args:
        model: a :class:`~lowlight_cli.models.symnet.SymNet`.
        low: ``(B, 3, H, W)`` underexposed input in ``[0, 1]``.
        high: ``(B, 3, H, W)`` its ground truth in ``[0, 1]``.

    Returns:
        ``(total, {"forward": ..., "backward": ...[, "lowfreq": ...]})``, all scalars.
    """
    enhanced, degraded = model(low), model.inverse(high)
    forward = F.mse_loss(enhanced, high)
    backward = F.mse_loss(degraded, low)
    total = w_forward * forward + w_backward * backward
    parts = {"forward": forward, "backward": backward}
    if w_lowfreq:
        lowfreq = w_forward * lowpass_mse(enhanced, high) + w_backward * lowpass_mse(degraded, low)
        total = total + w_lowfreq * lowfreq
        parts["lowfreq"] = lowfreq
    return total, parts


LOWPASS_SCALES = (4, 8, 16, 32)


def lowpass_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over ``LOWPASS_SCALES`` of the MSE between box-averaged (``s x s``) images; scales
    larger than the image are skipped. A flat error ``e`` gives ``e**2`` at every scale, an error
    that alternates faster than the box almost nothing."""
    size = min(pred.shape[-2:])
    terms = [
        F.mse_loss(F.avg_pool2d(pred, s), F.avg_pool2d(target, s))
        for s in LOWPASS_SCALES
        if s <= size
    ]
    return torch.stack(terms).sum() if terms else pred.new_zeros(())


# ---- nrl ---------------------------------------------------------------------------------------

# Term weights (the paper gives none). With the offline Caffe-scale VGG-16, the dynamic perceptual
# loss of an early LOL prediction is about 150-250 while its MSE is 0.01-0.02: 1e-4 makes the
# two terms comparable at the start. 1e-3 for the adversarial term is SRGAN's choice: a BCE of
# about 0.7 then adds ~7e-4, a small fraction of the content terms.
NRL_W_PERCEPTUAL = 1e-4
NRL_W_ADVERSARIAL = 1e-3


def nrl_content_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel MSE (eq. 3 with the model's output in place of ``lambda I_L + G``)."""
    return F.mse_loss(pred, target)


def dynamic_perceptual_loss(
    feats_pred: Sequence[torch.Tensor],
    feats_target: Sequence[torch.Tensor],
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Dynamic multi-level perceptual loss (DPL, eqs. 16-18).

    ``z_i`` = mean absolute difference of the level-i features; ``a = softmax(z / temperature)``
    computed without gradient (the weights follow the errors, they are not optimised);
    ``L_p = sum_i a_i z_i``. ``temperature=1`` is the paper's formula; the softmax is not
    scale-invariant, so the weights depend on the VGG's feature scale (see docs/models.md).

    Args:
        feats_pred: per-level features of the enhanced image, e.g. the 5 post-pool maps of
            :class:`~lowlight_cli.models.vgg.VGG16Features`.
        feats_target: the same levels for the ground truth.
        temperature: softmax temperature (> 0).

    Returns:
        Scalar loss.
    """
    if len(feats_pred) != len(feats_target) or not feats_pred:
        raise UsageError("feats_pred and feats_target need the same, non-zero number of levels")
    z = torch.stack([(p - t).abs().mean() for p, t in zip(feats_pred, feats_target, strict=True)])
    weights = torch.softmax(z.detach() / temperature, dim=0)
    return (weights * z).sum()


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss of the generator: ``BCE(D(fake), real)``, logits of any shape."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_adversarial_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor
) -> torch.Tensor:
    """Discriminator side: ``(BCE(D(real), 1) + BCE(D(fake), 0)) / 2`` (pass ``fake`` detached)."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return 0.5 * (real + fake)


def nrl_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    vgg: Callable[[torch.Tensor], Sequence[torch.Tensor]],
    disc_logits_fake: torch.Tensor | None = None,
    *,
    w_perceptual: float = NRL_W_PERCEPTUAL,
    w_adv: float = NRL_W_ADVERSARIAL,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Generator loss: ``MSE + w_perceptual * DPL + w_adv * adversarial``.

    Args:
        pred: ``(B, 3, H, W)`` enhanced image (H, W >= 32 for VGG's five poolings).
        target: ``(B, 3, H, W)`` ground truth in ``[0, 1]``.
        vgg: frozen feature extractor returning the per-level features
            (:class:`~lowlight_cli.models.vgg.VGG16Features`).
        disc_logits_fake: the discriminator's logits for ``pred`` (not detached); ``None``
            drops the adversarial term (MSE + DPL only, e.g. for pre-training).

    Returns:
        ``(total, {"mse": ..., "perceptual": ..., "adversarial": ...})``.
    """
    mse = nrl_content_loss(pred, target)
    with torch.no_grad():
        feats_target = vgg(target)
    perceptual = dynamic_perceptual_loss(vgg(pred), feats_target)
    if disc_logits_fake is None:
        adversarial = torch.zeros((), dtype=mse.dtype, device=mse.device)
    else:
        adversarial = generator_adversarial_loss(disc_logits_fake)
    total = mse + w_perceptual * perceptual + w_adv * adversarial
    return total, {"mse": mse, "perceptual": perceptual, "adversarial": adversarial}


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
    hue_p = rgb_to_hsv(pred.clamp(0.0, 1.0), eps=HSV_LOSS_EPS)[:, 0]
    hue_t = rgb_to_hsv(target, eps=HSV_LOSS_EPS)[:, 0]
    diff = (hue_p - hue_t).abs()  # in turns, [0, 1)
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


def _guarded_cosine(pred: torch.Tensor, target: torch.Tensor, floor: float = 0.05) -> torch.Tensor:
    """Cosine similarity of ``(B, N)`` vectors whose norms are floored at ``floor`` RMS.

    The floor only acts on vectors with root-mean-square below ``floor`` (a near-black or grey
    prediction), where a plain cosine's gradient grows like ``1 / |pred|``; above it the value is
    the exact cosine.
    """
    n = pred.shape[1]
    floor_norm = floor * n**0.5
    norm_p = pred.norm(dim=1).clamp_min(floor_norm)
    norm_t = target.norm(dim=1).clamp_min(floor_norm)
    return (pred * target).sum(dim=1) / (norm_p * norm_t)


def neid_color_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Colour loss, eqs. 4-6: ``(1 - cos(H_p, H_gt)) + (1 - cos(S_p, S_gt))``.

    Cosine similarity of each image's hue (saturation) channel taken as one vector over all
    pixels, as the paper writes it; averaged over the batch.

    Args:
        pred: ``(B, 3, H, W)`` RGB.
        target: ``(B, 3, H, W)`` RGB in ``[0, 1]``.
    """
    hsv_p = rgb_to_hsv(pred.clamp(0.0, 1.0), eps=HSV_LOSS_EPS).flatten(2)
    hsv_t = rgb_to_hsv(target, eps=HSV_LOSS_EPS).flatten(2)
    cos_h = _guarded_cosine(hsv_p[:, 0], hsv_t[:, 0])
    cos_s = _guarded_cosine(hsv_p[:, 1], hsv_t[:, 1])
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
    # Hue and saturation are undefined at black, and a cosine is blind to brightness: on the
    # near-black output of an untrained network the colour term's gradient is ~1e4 times the
    # Huber term's and Adam follows it, leaving LE dark (seen in training). The term is
    # therefore weighted by how far the prediction's brightness has come towards the target's
    # (squared, no gradient): 0 at black, the paper's full 0.1 once brightness matches.
    reached = (le.detach().mean() / target.mean().clamp_min(1e-3)).clamp(0.0, 1.0) ** 2
    total = huber + w_mse * mse + w_color * reached * color
    return total, {"huber": huber, "mse": mse, "color": color}
