"""nrl: non-identical residual learning (Hu & Huang), generator and a small discriminator.

``I_H = I_L / (T + eps) + G(I_L)`` (eqs. 8-9). ``G`` is the attention-aware recursive network:
a fully multi-scale block (FMSB) gives the 64-channel features ``X0``; a recursive block runs
``steps`` residual attentive recursive units (RARU) with one shared convolution function and a
per-step channel attention computed from ``GAP(X0)``; a 3x3 reconstruction conv gives the
residual RGB image. The adjusting map ``T = A + X0 J1 J2`` (eq. 10) starts from the constant
``lambda`` of eq. 6 (buffer ``lam``, estimated from the training set by :func:`estimate_lambda`).

The choices the paper leaves open are recorded in ``docs/models.md`` (nrl section).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lowlight_cli.errors import UsageError
from lowlight_cli.models.blocks import global_avg_pool

T_FLOOR = 0.02  # smallest adjusting-map value: the holistic branch brightens at most 50x
T_SOFTNESS = 50.0  # softplus sharpness: above ~0.1 the floor changes T by < 1e-3
EPS = 1e-6  # the paper's "very small constant" of eq. 8 (T_FLOOR already keeps T > 0)


def positive_adjusting_map(raw: torch.Tensor) -> torch.Tensor:
    """Keep ``T`` positive: ``T_FLOOR + softplus(raw - T_FLOOR)`` with sharpness ``T_SOFTNESS``.

    Equal to ``raw`` (within 1e-3) wherever ``raw >= 0.1``, smoothly floored at ``T_FLOOR``, and
    differentiable everywhere (a clamp would stop the gradient of dark pixels).
    """
    return T_FLOOR + F.softplus(raw - T_FLOOR, beta=T_SOFTNESS)


class FMSB(nn.Module):
    """Fully multi-scale block: ``(B, 3, H, W) -> X0 (B, channels, H, W)``.

    First layer: 1x1, 3x3, 5x5 convs of the input (PReLU). Second layer: 1x1, 3x3, 5x5 convs,
    each taking ALL first-layer outputs (PReLU). A 1x1 conv (PReLU) compresses to ``channels``.
    """

    def __init__(self, *, channels: int, first: int, second: int) -> None:
        super().__init__()
        self.first = nn.ModuleList(nn.Conv2d(3, first, k, padding=k // 2) for k in (1, 3, 5))
        self.first_act = nn.PReLU(3 * first)
        self.second = nn.ModuleList(
            nn.Conv2d(3 * first, second, k, padding=k // 2) for k in (1, 3, 5)
        )
        self.second_act = nn.PReLU(3 * second)
        self.compress = nn.Conv2d(3 * second, channels, 1)
        self.compress_act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, channels, H, W)``."""
        h = self.first_act(torch.cat([conv(x) for conv in self.first], dim=1))
        h = self.second_act(torch.cat([conv(h) for conv in self.second], dim=1))
        return self.compress_act(self.compress(h))


class RecursiveBlock(nn.Module):
    """N RARU steps with shared convs and attention along the recursion (eqs. 11-15).

    ``H0 = GAP(X0)``; step i: ``X_wo = X_i + F(X_i)`` with ``F = ReLU(conv(ReLU(conv(.))))``
    (3x3, shared by all steps), ``E_i = tanh(W_E_i H0)`` (c -> c/2),
    ``a_i = softmax(W_R_i E_i)`` over channels (c/2 -> c), ``X_(i+1) = X0 + X_wo * a_i``.
    """

    def __init__(self, *, channels: int, steps: int) -> None:
        super().__init__()
        if steps < 1:
            raise UsageError(f"steps must be >= 1, not {steps}")
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.embed = nn.ModuleList(nn.Conv2d(channels, channels // 2, 1) for _ in range(steps))
        self.rebuild = nn.ModuleList(nn.Conv2d(channels // 2, channels, 1) for _ in range(steps))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        h0 = global_avg_pool(x0)  # (B, C, 1, 1), once: every step's attention looks at X0
        x = x0
        for embed, rebuild in zip(self.embed, self.rebuild, strict=True):
            x_wo = x + F.relu(self.conv2(F.relu(self.conv1(x))))
            attention = torch.softmax(rebuild(torch.tanh(embed(h0))), dim=1)
            x = x0 + x_wo * attention
        return x


class NRL(nn.Module):
    """Non-identical residual learning generator.

    Args:
        channels: feature width of X0 and the recursive block (64 in the paper).
        steps: recursion steps N (6 in the paper).
        fmsb_first: output channels of each first-layer FMSB conv (not in the paper).
        fmsb_second: output channels of each second-layer FMSB conv (not in the paper).
        map_hidden: width between J1 and J2 (96, eq. 10).

    Buffer ``lam`` (scalar) is the lambda of eq. 6; it is part of ``state_dict`` so shipped
    weights carry the value their training set gave. Until :meth:`set_lambda` it is 1, i.e.
    conventional (identical) residual learning.
    """

    def __init__(
        self,
        *,
        channels: int = 64,
        steps: int = 6,
        fmsb_first: int = 24,
        fmsb_second: int = 32,
        map_hidden: int = 96,
    ) -> None:
        super().__init__()
        self.fmsb = FMSB(channels=channels, first=fmsb_first, second=fmsb_second)
        self.recursive = RecursiveBlock(channels=channels, steps=steps)
        self.reconstruct = nn.Conv2d(channels, 3, 3, padding=1)
        # J1, J2 are plain matrices in eq. 10: 1x1 convs without bias or activation.
        self.j1 = nn.Conv2d(channels, map_hidden, 1, bias=False)
        self.j2 = nn.Conv2d(map_hidden, 3, 1, bias=False)
        # Zero J2: an untrained map is exactly A (= lambda), the paper's "standard" for T.
        nn.init.zeros_(self.j2.weight)
        self.register_buffer("lam", torch.tensor(1.0))

    def set_lambda(self, value: float) -> None:
        """Set lambda (eq. 6), the constant the adjusting map starts from; must exceed 0.02."""
        if not math.isfinite(value) or value <= T_FLOOR:
            raise UsageError(
                f"lambda must be a finite number above {T_FLOOR}, not {value}",
                hint="estimate it with estimate_lambda() on paired low/high training patches",
            )
        self.lam.fill_(float(value))

    def adjusting_map(self, x0: torch.Tensor) -> torch.Tensor:
        """``T = A + X0 J1 J2`` kept positive: ``(B, C, H, W) -> (B, 3, H, W)``, ``> 0.02``."""
        raw = self.lam.to(x0.dtype) + self.j2(self.j1(x0))
        return positive_adjusting_map(raw)

    def residual(self, x0: torch.Tensor) -> torch.Tensor:
        """``G``: X0 ``(B, C, H, W)`` -> residual RGB ``(B, 3, H, W)``."""
        return self.reconstruct(self.recursive(x0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Enhance: ``(B, 3, H, W)`` RGB in ``[0, 1]`` -> ``(B, 3, H, W)``, not clamped."""
        x0 = self.fmsb(x)
        return x / (self.adjusting_map(x0) + EPS) + self.residual(x0)


def estimate_lambda(
    low_patches: torch.Tensor | Iterable[torch.Tensor],
    high_patches: torch.Tensor | Iterable[torch.Tensor],
) -> float:
    """Eq. 6: ``lambda = 1 + mean_i(Mean(P_L_i) - Mean(P_H_i))`` over n paired patches.

    Args:
        low_patches: ``(N, 3, h, w)`` in ``[0, 1]``, or an iterable of such batches (or of
            single ``(3, h, w)`` patches) so that a whole training set can be streamed.
        high_patches: the paired normal-light patches, in the same layout.

    Returns:
        lambda, a float (below 1 for low-light data: dark inputs are divided by it).

    Raises:
        UsageError: no patches, unpaired shapes, or a lambda the model cannot use (<= 0.02).
    """
    lows = [low_patches] if isinstance(low_patches, torch.Tensor) else low_patches
    highs = [high_patches] if isinstance(high_patches, torch.Tensor) else high_patches
    total = 0.0
    count = 0
    for low, high in zip(lows, highs, strict=True):
        if low.shape != high.shape:
            raise UsageError(
                f"low and high patches differ in shape: {tuple(low.shape)} vs {tuple(high.shape)}"
            )
        if low.dim() == 3:
            low, high = low.unsqueeze(0), high.unsqueeze(0)
        diff = low.double().flatten(1).mean(1) - high.double().flatten(1).mean(1)
        total += float(diff.sum())
        count += diff.numel()
    if count == 0:
        raise UsageError("no patches to estimate lambda from", hint="check the training data")
    lam = 1.0 + total / count
    if lam <= T_FLOOR:
        raise UsageError(
            f"lambda from eq. 6 is {lam:.4f}; the model needs a value above {T_FLOOR}",
            hint="the 'low' images are much brighter than expected or low/high are swapped",
        )
    return lam


class NRLDiscriminator(nn.Module):
    """A small CNN discriminator (the paper gives none): ``(B, 3, H, W) -> (B,)`` logits.

    Four strided convs (5x5/2 then 3x3/2, LeakyReLU 0.2, no normalisation so batch size does
    not matter) produce patch logits through a 1x1 conv; their average is the image logit.

    Args:
        width: channels of the first conv (doubled twice).
    """

    def __init__(self, *, width: int = 32) -> None:
        super().__init__()
        chans = (3, width, 2 * width, 4 * width, 4 * width)
        layers: list[nn.Module] = []
        for i in range(4):
            k = 5 if i == 0 else 3
            layers += [
                nn.Conv2d(chans[i], chans[i + 1], k, stride=2, padding=k // 2),
                nn.LeakyReLU(0.2),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(chans[-1], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B,)`` real/fake logits."""
        return global_avg_pool(self.head(self.features(x))).flatten()
