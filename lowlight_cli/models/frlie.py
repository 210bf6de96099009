"""FRLIE: low-light enhancement via feature restoration (Yang, Zhang, Guo, ICASSP 2022).

Two stages. Stage 1 trains an image reconstructor ``D(E(I)) ~ I`` on normal-light images: the
encoder ``E`` maps RGB to 128-channel features at 1/4 resolution, the decoder ``D`` maps them
back. Stage 2 freezes ``E`` and ``D`` and trains FRNet, four FR-blocks (a multi-dilation context
block and two residual blocks each) that predict a residual on the dark features:
``F_r = F_d + FRNet(F_d)``. Inference is ``D(F_r)`` with ``F_d = E(I_dark)``.

The layer order of ``E`` and ``D`` (reflection padding, batch norm, ReLU, no activation after
the first 5x5 conv, bilinear x2 upsampling before each decoder up-conv, ``(tanh + 1) / 2``
output) is the one that reproduces the authors' released stage-1 checkpoint; see
:func:`load_authors_stage1` and ``docs/models.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lowlight_cli.errors import WeightsError

__all__ = ["FRLIE", "load_authors_stage1"]


def _conv_bn_relu(in_ch: int, out_ch: int, *, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.ReflectionPad2d(1),
        nn.Conv2d(in_ch, out_ch, 3, stride=stride),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),
    )


class _Upsample(nn.Module):
    """x2 upsampling: bilinear (as in the released checkpoint) or sub-pixel (pixel shuffle)."""

    def __init__(self, in_ch: int, out_ch: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode == "bilinear":
            self.conv = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(in_ch, out_ch, 3))
        elif mode == "pixelshuffle":
            self.conv = nn.Sequential(
                nn.ReflectionPad2d(1), nn.Conv2d(in_ch, 4 * out_ch, 3), nn.PixelShuffle(2)
            )
        else:
            raise ValueError(f"upsample must be 'bilinear' or 'pixelshuffle', not {mode!r}")
        self.norm = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "bilinear":
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.act(self.norm(self.conv(x)))


class Encoder(nn.Module):
    """``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, 4w, H/4, W/4)`` features; H, W multiples of 4."""

    def __init__(self, *, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.ReflectionPad2d(2), nn.Conv2d(3, width, 5))
        self.down1 = _conv_bn_relu(width, 2 * width, stride=2)
        self.mid = _conv_bn_relu(2 * width, 2 * width)
        self.down2 = _conv_bn_relu(2 * width, 4 * width, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down2(self.mid(self.down1(self.stem(x))))


class Decoder(nn.Module):
    """``(B, 4w, h, w)`` features -> ``(B, 3, 4h, 4w)`` image in ``(0, 1)``."""

    def __init__(self, *, width: int = 32, upsample: str = "bilinear") -> None:
        super().__init__()
        self.up1 = _Upsample(4 * width, 2 * width, upsample)
        self.mid = _conv_bn_relu(2 * width, 2 * width)
        self.up2 = _Upsample(2 * width, width, upsample)
        self.head = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(width, 3, 3))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        y = self.head(self.up2(self.mid(self.up1(f))))
        return (torch.tanh(y) + 1.0) / 2.0


class ContextBlock(nn.Module):
    """Parallel 3x3 convs with dilations ``rates`` on a reduced copy, fused back, plus the input.

    The paper cites the context block of SADNet (Chang et al., ECCV 2020): a 1x1 reduction,
    parallel dilated convs (LeakyReLU 0.2), concatenation, a 1x1 fusion conv and a skip.
    """

    def __init__(self, channels: int, *, reduction: int = 4, rates: tuple[int, ...] = (1, 2, 3, 4)):
        super().__init__()
        inner = channels // reduction
        self.reduce = nn.Conv2d(channels, inner, 1)
        self.branches = nn.ModuleList(
            nn.Conv2d(inner, inner, 3, padding=r, dilation=r) for r in rates
        )
        self.fuse = nn.Conv2d(inner * len(rates), channels, 1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.reduce(x)
        return x + self.fuse(torch.cat([self.act(conv(r)) for conv in self.branches], dim=1))


class ResBlock(nn.Module):
    """conv3x3 -> LeakyReLU(0.2) -> conv3x3, plus the input (He et al. 2016, no norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FRBlock(nn.Module):
    """One feature-restoration block: a context block, then two residual blocks."""

    def __init__(self, channels: int, *, rates: tuple[int, ...]) -> None:
        super().__init__()
        self.context = ContextBlock(channels, rates=rates)
        self.res1 = ResBlock(channels)
        self.res2 = ResBlock(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res2(self.res1(self.context(x)))


class FRNet(nn.Module):
    """Feature restoration net: FR-blocks whose output is the residual to add to the features.

    Every FR-block is itself residual, so the stack maps ``f`` to ``f + sum of corrections``;
    FRNet returns only that sum, and ``FRLIE.restore`` adds it back (eq. 2, "predicting the
    residual of each feature").
    """

    def __init__(self, channels: int, *, num_blocks: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(FRBlock(channels, rates=rates) for _ in range(num_blocks)))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.blocks(f) - f


class FRLIE(nn.Module):
    """Feature-restoration low-light enhancer.

    Args:
        width: base width of the reconstructor; features have ``4 * width`` channels
            (the paper's release: 32 -> 128 channels).
        num_blocks: FR-blocks in FRNet (paper: 4).
        dilation_rates: dilations of the context block's parallel convs.
        upsample: decoder upsampling, ``"bilinear"`` (matches the released stage-1 weights) or
            ``"pixelshuffle"`` (the paper's wording; cannot load those weights).
    """

    def __init__(
        self,
        *,
        width: int = 32,
        num_blocks: int = 4,
        dilation_rates: tuple[int, ...] = (1, 2, 3, 4),
        upsample: str = "bilinear",
    ) -> None:
        super().__init__()
        self.width = width
        self.num_blocks = num_blocks
        self.dilation_rates = tuple(dilation_rates)
        self.upsample = upsample
        self.encoder = Encoder(width=width)
        self.decoder = Decoder(width=width, upsample=upsample)
        self.frnet = FRNet(4 * width, num_blocks=num_blocks, rates=self.dilation_rates)
        # FRNet's last conv of every residual path starts at zero, so an untrained FRNet is the
        # identity on features and stage 2 starts from the plain reconstruction.
        for block in self.frnet.blocks:
            for last in (block.context.fuse, block.res1.body[2], block.res2.body[2]):
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]``, H and W multiples of 4 -> ``(B, 4w, H/4, W/4)``."""
        return self.encoder(x)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """``(B, 4w, h, w)`` -> ``(B, 3, 4h, 4w)`` in ``(0, 1)``."""
        return self.decoder(f)

    def restore(self, f: torch.Tensor) -> torch.Tensor:
        """Dark features -> restored features, ``F_r = F_d + FRNet(F_d)``; same shape."""
        return f + self.frnet(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` low-light in ``[0, 1]`` -> ``(B, 3, H, W)`` enhanced."""
        return self.decode(self.restore(self.encode(x)))


# Authors' stage-1 checkpoint (``weights_reconstruct.pth``: {"encoder": sd, "decoder": sd}):
# their Sequential indices -> our module names. Indices 0 (padding / upsampling) hold no weights.
_AUTHORS_ENCODER_MAP = {
    "conv1.1": "stem.1",
    "conv2.1": "down1.1",
    "conv2.2": "down1.2",
    "conv3.1": "mid.1",
    "conv3.2": "mid.2",
    "conv4.1": "down2.1",
    "conv4.2": "down2.2",
}
_AUTHORS_DECODER_MAP = {
    "up1.2": "up1.conv.1",
    "up1.3": "up1.norm",
    "conv1.1": "mid.1",
    "conv1.2": "mid.2",
    "up2.2": "up2.conv.1",
    "up2.3": "up2.norm",
    "conv2.1": "head.1",
}


def _remap(state: Mapping[str, torch.Tensor], table: dict[str, str], what: str) -> dict:
    out = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix not in table:
            raise WeightsError(
                f"unexpected key '{key}' in the authors' {what} weights",
                hint="this loader knows the FRLIE release's weights_reconstruct.pth only",
            )
        out[f"{table[prefix]}.{leaf}"] = value.float() if value.is_floating_point() else value
    return out


def load_authors_stage1(model: FRLIE, path: str | Path) -> FRLIE:
    """Load the authors' stage-1 reconstructor (``weights_reconstruct.pth``) into ``model``.

    Only ``model.encoder`` and ``model.decoder`` change; FRNet is untouched.

    Args:
        model: an :class:`FRLIE` with ``width=32`` and ``upsample="bilinear"``.
        path: the checkpoint, a dict ``{"encoder": state_dict, "decoder": state_dict}``.

    Returns:
        ``model`` (for chaining).

    Raises:
        WeightsError: missing file, unexpected layout, or an incompatible model.
    """
    path = Path(path)
    if model.upsample != "bilinear":
        raise WeightsError(
            "the authors' decoder upsamples bilinearly",
            hint="build FRLIE(upsample='bilinear') to load weights_reconstruct.pth",
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise WeightsError(f"no such file: {path}", hint="check the path") from exc
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise WeightsError(f"cannot read {path}: {exc}", hint="is it a torch checkpoint?") from exc
    if not isinstance(ckpt, Mapping) or not {"encoder", "decoder"} <= set(ckpt):
        raise WeightsError(
            f"{path} has no 'encoder'/'decoder' entries",
            hint="expected the FRLIE release's weights_reconstruct.pth",
        )
    for part, table in (("encoder", _AUTHORS_ENCODER_MAP), ("decoder", _AUTHORS_DECODER_MAP)):
        state = _remap(ckpt[part], table, part)
        try:
            getattr(model, part).load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsError(
                f"the authors' {part} does not fit this FRLIE: {exc}",
                hint="use the default width=32",
            ) from exc
    return model
