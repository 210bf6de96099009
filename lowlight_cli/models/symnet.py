"""symnet: Deep Symmetric Network for underexposed image enhancement (Zhao et al., ICCV 2021).

An image is encoded by two frozen, bias-free 3x3 convolutions (VGG-16 ``conv1_1``/``conv1_2``),
its 64-channel features pass through the invertible feature transformer (IFT, 8 coupling blocks
whose sub-networks are recurrent residual-attention modules, RRAM) and are decoded by the
transposed convolutions with the same two kernels. Low->high runs the IFT forward (eq. 3),
high->low runs its exact inverse (eq. 4); both directions share every weight.

The choices the paper leaves open are recorded in ``docs/models.md`` (symnet section).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowlight_cli.errors import UsageError
from lowlight_cli.models.blocks import global_avg_pool
from lowlight_cli.models.vgg import conv_operator_norm

FEATURE_CHANNELS = 64  # VGG-16 conv1_x width; the IFT splits it 32/32
_INIT_SEED = 20210901  # the encoder's deterministic placeholder until VGG weights are set


def exp_sigmoid(u: torch.Tensor) -> torch.Tensor:
    """ES of eq. 3: ``exp(sigmoid(u) - 1/2)``, in ``(e^-0.5, e^0.5)``.

    The paper's ES is ``exp(sigmoid(u))``; dividing it by the constant ``e^0.5`` makes ES(0) = 1,
    so a block whose sub-networks output zero is exactly the identity.
    """
    return torch.exp(torch.sigmoid(u) - 0.5)


class RSCA(nn.Module):
    """Residual soft channel attention (eqs. 7-9): ``x_h * M_o + x``.

    ``x_h = conv(PReLU(conv(x)))`` (3x3), ``M_o = sigmoid(conv1x1(PReLU(conv1x1(GAP(x_h)))))``.

    Args:
        channels: feature width C.
        reduction: channel squeeze of the attention map (C -> C/reduction -> C).
    """

    def __init__(self, *, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.squeeze = nn.Conv2d(channels, hidden, 1)
        self.squeeze_act = nn.PReLU(hidden)
        self.excite = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        x_h = self.conv2(self.act(self.conv1(x)))
        m_o = torch.sigmoid(self.excite(self.squeeze_act(self.squeeze(global_avg_pool(x_h)))))
        return x_h * m_o + x


class RRAM(nn.Module):
    """Recurrent residual-attention module, one T of an invertible block (eqs. 5, 6, 10, 11).

    ``x_fi = PReLU(conv3x3(x_in))`` widens C to ``width``; then ``rounds`` recurrences of ONE
    RSCA (the paper: "without increasing network parameters") with hidden state ``h1 = 0``,
    ``h_t = h_(t-1) + x_fo^(t-1)`` and input ``h_t + x_fi`` (W_h = W_x = 1); finally
    ``conv3x3(x_fo^t)`` narrows back to C. The output conv is zero-initialised so that every
    T starts as the zero map and every block as the identity.

    Args:
        channels: input/output width (half the feature channels, 32).
        width: inner width (twice ``channels`` in the paper, 64).
        rounds: recurrences t (3 in the paper).
        reduction: RSCA channel squeeze.
    """

    def __init__(self, *, channels: int, width: int, rounds: int, reduction: int) -> None:
        super().__init__()
        if rounds < 1:
            raise UsageError(f"rounds must be >= 1, not {rounds}")
        self.rounds = rounds
        self.head = nn.Conv2d(channels, width, 3, padding=1)
        self.head_act = nn.PReLU(width)
        self.rsca = RSCA(channels=width, reduction=reduction)
        self.tail = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, channels, H, W) -> (B, channels, H, W)``."""
        x_fi = self.head_act(self.head(x))
        hidden = torch.zeros_like(x_fi)
        x_fo = x_fi
        for _ in range(self.rounds):
            x_fo = self.rsca(hidden + x_fi)
            hidden = hidden + x_fo
        return self.tail(x_fo)


class InvertibleBlock(nn.Module):
    """One IFT block: the coupling of eq. 3 and its exact inverse, eq. 4.

    Forward: ``y1 = (x1 - T3(x2)) / ES(T1(x2))``, ``y2 = x2 - T2(y1)``.
    Inverse: ``x2 = y2 + T2(y1)``, ``x1 = y1 * ES(T1(x2)) + T3(x2)``.
    """

    def __init__(self, *, channels: int, width: int, rounds: int, reduction: int) -> None:
        super().__init__()
        if channels % 2:
            raise UsageError(f"channels must be even, not {channels}")
        half = channels // 2
        kw = {"channels": half, "width": width, "rounds": rounds, "reduction": reduction}
        self.t1 = RRAM(**kw)
        self.t2 = RRAM(**kw)
        self.t3 = RRAM(**kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 3, ``(B, C, H, W) -> (B, C, H, W)``."""
        x1, x2 = x.chunk(2, dim=1)
        y1 = (x1 - self.t3(x2)) / exp_sigmoid(self.t1(x2))
        y2 = x2 - self.t2(y1)
        return torch.cat((y1, y2), dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Eq. 4, the exact inverse of :meth:`forward`."""
        y1, y2 = y.chunk(2, dim=1)
        x2 = y2 + self.t2(y1)
        x1 = y1 * exp_sigmoid(self.t1(x2)) + self.t3(x2)
        return torch.cat((x1, x2), dim=1)


def _placeholder_kernel(out_ch: int, in_ch: int, generator: torch.Generator) -> torch.Tensor:
    w = torch.randn(out_ch, in_ch, 3, 3, generator=generator)
    # Same normalisation as vgg16_conv1_for_symnet (unit operator norm); a coarse grid is
    # plenty for a placeholder and keeps construction fast.
    return w / conv_operator_norm(w, size=8)


class SymNet(nn.Module):
    """The symmetric network: frozen VGG encoder/decoder around an invertible transformer.

    Args:
        num_blocks: invertible blocks in the IFT (8 in the paper).
        rounds: recurrences per RRAM (3 in the paper).
        width: RRAM inner width (64: "double" the 32 split channels).
        reduction: RSCA channel-attention squeeze (16, as in SENet; the paper gives none).

    The encoder kernels are buffers (frozen, saved in ``state_dict``); until
    :meth:`set_vgg_weights` is called they hold a fixed-seed random placeholder, so an untrained
    model is deterministic and usable in tests.
    """

    def __init__(
        self, *, num_blocks: int = 8, rounds: int = 3, width: int = 64, reduction: int = 16
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(_INIT_SEED)
        self.register_buffer("encoder_w1", _placeholder_kernel(FEATURE_CHANNELS, 3, gen))
        self.register_buffer(
            "encoder_w2", _placeholder_kernel(FEATURE_CHANNELS, FEATURE_CHANNELS, gen)
        )
        self.blocks = nn.ModuleList(
            InvertibleBlock(
                channels=FEATURE_CHANNELS, width=width, rounds=rounds, reduction=reduction
            )
            for _ in range(num_blocks)
        )

    def set_vgg_weights(self, conv1_1_weight: torch.Tensor, conv1_2_weight: torch.Tensor) -> None:
        """Install the frozen encoder kernels.

        Args:
            conv1_1_weight: ``(64, 3, 3, 3)``, for RGB input in ``[0, 1]`` (see
                :func:`lowlight_cli.models.vgg.vgg16_conv1_for_symnet`).
            conv1_2_weight: ``(64, 64, 3, 3)``.
        """
        for name, value in (("encoder_w1", conv1_1_weight), ("encoder_w2", conv1_2_weight)):
            buf = getattr(self, name)
            if tuple(value.shape) != tuple(buf.shape):
                raise UsageError(f"{name} must have shape {tuple(buf.shape)}, not {value.shape}")
            buf.copy_(value.detach().to(dtype=buf.dtype, device=buf.device))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """E: ``(B, 3, H, W)`` RGB in ``[0, 1]`` -> ``(B, 64, H, W)`` features (linear)."""
        w1 = self.encoder_w1.to(x.dtype)
        w2 = self.encoder_w2.to(x.dtype)
        return F.conv2d(F.conv2d(x, w1, padding=1), w2, padding=1)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """D: E's kernels transposed, in reverse order: ``(B, 64, H, W) -> (B, 3, H, W)``."""
        w1 = self.encoder_w1.to(f.dtype)
        w2 = self.encoder_w2.to(f.dtype)
        return F.conv_transpose2d(F.conv_transpose2d(f, w2, padding=1), w1, padding=1)

    def transform(self, f: torch.Tensor) -> torch.Tensor:
        """IFT forward (low -> high features), ``(B, 64, H, W) -> (B, 64, H, W)``."""
        for block in self.blocks:
            f = block(f)
        return f

    def inverse_transform(self, f: torch.Tensor) -> torch.Tensor:
        """IFT inverse (high -> low features): the exact inverse of :meth:`transform`."""
        for block in reversed(self.blocks):
            f = block.inverse(f)
        return f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Enhance: ``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, 3, H, W)``, not clamped."""
        return self.decode(self.transform(self.encode(x)))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Degrade (the backward direction): ``D(IFT^-1(E(y)))``, ``(B, 3, H, W)``, not clamped."""
        return self.decode(self.inverse_transform(self.encode(y)))
