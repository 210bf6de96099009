"""NEID: light enhancement + detail refinement with feature fusing (Jiang, Liu et al.).

Two streams share one U-Net encoder:

* **LE** (light enhancement): the U-Net's expansive path, then a sub-pixel x2 upsampler, so a
  ``h x w`` input gives a ``2h x 2w`` enhanced image.
* **DR** (detail refinement): a residual body on the shared bottleneck whose features feed the
  fusion, plus a training-only super-resolution head (its own expansive path with the encoder's
  skips and a sub-pixel x2 upsampler) supervised by the ground truth.
* **FF** (feature fusing): a channel-attention vector computed from the global average of the
  DR features weights the LE (encoder) and DR features, ``a * F_le + (1 - a) * F_dr``, before
  the LE decoder.

The paper evaluates at the original size by first downsampling the input x2 (bicubic); that is
the default mode here. ``upscale=True`` is the true x2 mode. Widths, depth and the DR body are
not given in the paper; the choices are recorded in ``docs/models.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowlight_cli.models.blocks import GlobalAvgPool

__all__ = ["NEID", "bicubic_downsample_x2"]


def _cubic(t: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    t = t.abs()
    near = (a + 2) * t**3 - (a + 3) * t**2 + 1
    far = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def _bicubic_taps() -> torch.Tensor:
    # Antialiased bicubic (Keys, a = -0.5) for a factor-2 reduction: the kernel is stretched x2,
    # so each output pixel averages 8 input pixels at offsets -3.5 .. 3.5 from its centre.
    offsets = torch.arange(8, dtype=torch.float64) - 3.5
    w = _cubic(offsets / 2.0)
    return (w / w.sum()).float()


def bicubic_downsample_x2(x: torch.Tensor) -> torch.Tensor:
    """Antialiased bicubic x0.5 resize (MATLAB ``imresize`` style, symmetric borders).

    Written as a fixed depthwise strided convolution so it behaves the same in every backend
    (ONNX included) and in training data preparation, which must use this same function.

    Args:
        x: ``(B, C, H, W)``, H and W even.

    Returns:
        ``(B, C, H/2, W/2)``.
    """
    b, c, h, w = x.shape
    taps = _bicubic_taps().to(device=x.device, dtype=x.dtype)
    # Symmetric (edge-repeating) padding of 3, as MATLAB's imresize does.
    x = torch.cat([x[..., :3].flip(-1), x, x[..., -3:].flip(-1)], dim=-1)
    x = torch.cat([x[..., :3, :].flip(-2), x, x[..., -3:, :].flip(-2)], dim=-2)
    x = F.conv2d(x.reshape(b * c, 1, h + 6, w + 6), taps.view(1, 1, 1, 8), stride=(1, 2))
    x = F.conv2d(x, taps.view(1, 1, 8, 1), stride=(2, 1))
    return x.reshape(b, c, h // 2, w // 2)


def _double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(out_ch, out_ch, 3, padding=1),
        nn.ReLU(),
    )


class _UpConv(nn.Module):
    """U-Net up step: x2 upsampling, a 2x2 conv that halves the channels, ReLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        # A 2x2 kernel needs one extra row/column to keep the size; on the bottom/right.
        return F.relu(self.conv(F.pad(x, (0, 1, 0, 1), mode="replicate")))


class _Expansive(nn.Module):
    """U-Net expansive path: from the bottleneck up to the input resolution, width ``w``."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(depth + 1)]
        self.ups = nn.ModuleList(_UpConv(chans[i + 1], chans[i]) for i in reversed(range(depth)))
        self.convs = nn.ModuleList(
            _double_conv(2 * chans[i], chans[i]) for i in reversed(range(depth))
        )

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for up, conv, skip in zip(self.ups, self.convs, reversed(skips), strict=True):
            x = conv(torch.cat([skip, up(x)], dim=1))
        return x


class _SubPixelUp(nn.Module):
    """Sub-pixel x2 upsampler (Shi et al. / Caballero et al.): conv -> pixel shuffle -> conv."""

    def __init__(self, width: int, out_ch: int = 3) -> None:
        super().__init__()
        self.expand = nn.Conv2d(width, 4 * width, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.out = nn.Conv2d(width, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.shuffle(self.expand(x))))


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FeatureFusing(nn.Module):
    """FF: DR-guided channel attention, ``a * f_le + (1 - a) * f_dr``.

    ``a = sigmoid(W2 relu(W1 GAP(f_dr)))`` (1x1 convs, channel reduction ``reduction``).
    """

    def __init__(self, channels: int, *, reduction: int = 16) -> None:
        super().__init__()
        self.pool = GlobalAvgPool()
        self.attention = nn.Sequential(
            nn.Conv2d(channels, max(channels // reduction, 4), 1),
            nn.ReLU(),
            nn.Conv2d(max(channels // reduction, 4), channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, f_le: torch.Tensor, f_dr: torch.Tensor) -> torch.Tensor:
        a = self.attention(self.pool(f_dr))
        return a * f_le + (1.0 - a) * f_dr


class NEID(nn.Module):
    """Two-stream light enhancement (LE) + detail refinement (DR) network with feature fusing.

    Args:
        upscale: ``False`` (default): same-size mode, the input is first downsampled x2
            (bicubic) and the x2 network restores the original size. ``True``: true x2 output.
        base_channels: width of the first U-Net level; level ``i`` has ``base * 2**i``.
        depth: number of 2x2 max-pool steps in the U-Net encoder.
        dr_blocks: residual blocks in the DR body on the bottleneck.
        init_std: standard deviation of the N(0, std) weight init (paper: 0.02).
    """

    def __init__(
        self,
        *,
        upscale: bool = False,
        base_channels: int = 32,
        depth: int = 3,
        dr_blocks: int = 2,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.upscale = upscale
        self.base_channels = base_channels
        self.depth = depth
        self.dr_blocks = dr_blocks
        self.init_std = init_std
        chans = [base_channels * 2**i for i in range(depth + 1)]
        self.enc = nn.ModuleList(
            _double_conv(3 if i == 0 else chans[i - 1], chans[i]) for i in range(depth)
        )
        self.bottleneck = _double_conv(chans[depth - 1] if depth else 3, chans[depth])
        self.dr_body = nn.Sequential(*(_ResBlock(chans[depth]) for _ in range(dr_blocks)))
        self.fusing = FeatureFusing(chans[depth])
        self.le_decoder = _Expansive(base_channels, depth)
        self.le_up = _SubPixelUp(base_channels)
        # Training-only DR image head; kept out of inference, but part of the state_dict so
        # checkpoints can resume training.
        self.dr_decoder = _Expansive(base_channels, depth)
        self.dr_up = _SubPixelUp(base_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Paper init: conv weights N(0, ``init_std``), biases 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, self.init_std)
                nn.init.zeros_(m.bias)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for level in self.enc:
            x = level(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        return self.bottleneck(x), skips

    def _branches(self, x_small: torch.Tensor, *, with_dr_image: bool):
        f_le, skips = self._encode(x_small)
        f_dr = self.dr_body(f_le)
        le = self.le_up(self.le_decoder(self.fusing(f_le, f_dr), skips))
        dr = self.dr_up(self.dr_decoder(f_dr, skips)) if with_dr_image else None
        return le, dr

    def forward_train(self, x_small: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both training outputs for an already-downsampled input.

        Args:
            x_small: ``(B, 3, h, w)`` in ``[0, 1]``; h, w multiples of ``2**depth``.

        Returns:
            ``(le_image, dr_image)``, each ``(B, 3, 2h, 2w)``, not clamped.
        """
        le, dr = self._branches(x_small, with_dr_image=True)
        assert dr is not None
        return le, dr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Enhance.

        Args:
            x: ``(B, 3, H, W)`` in ``[0, 1]``; H, W multiples of ``2 * 2**depth`` (same-size
                mode) or ``2**depth`` (``upscale=True``).

        Returns:
            ``(B, 3, H, W)``, or ``(B, 3, 2H, 2W)`` with ``upscale=True``; not clamped.
        """
        if not self.upscale:
            x = bicubic_downsample_x2(x)
        le, _ = self._branches(x, with_dr_image=False)
        return le
