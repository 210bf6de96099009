"""VGG-16 convolutional features (frozen), used by symnet's encoder and nrl's perceptual loss.

Two weight sources exist and use different input conventions:

* the Caffe/Keras ImageNet arrays (the offline ``vgg16_keras_imagenet_conv_oihw_fp16.npz``):
  BGR channel order, 0-255 scale, the ImageNet mean ``(103.939, 116.779, 123.68)`` (BGR)
  subtracted;
* torchvision's ``vgg16-397923af.pth``: RGB in ``[0, 1]``, normalised by the ImageNet mean
  ``(0.485, 0.456, 0.406)`` and std ``(0.229, 0.224, 0.225)``.

:func:`load_vgg16_state` converts both to ONE convention: RGB input in ``[0, 1]``; the network
subtracts the buffer ``input_mean`` (RGB, ``[0, 1]`` units) and then runs the convs. The channel
flip and the input scale (``255`` or ``1 / std``) are folded into ``conv1_1.weight``. The mean is
not folded into ``conv1_1.bias`` because zero padding would then pad with ``-mean`` instead of
zero at the borders; keeping the subtraction explicit makes the converted network equal to the
original one at every pixel.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lowlight_cli.errors import UsageError, WeightsError

# (block, convs per block) of VGG-16's feature stack.
_BLOCKS: tuple[tuple[int, int], ...] = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
_WIDTHS: tuple[int, ...] = (64, 128, 256, 512, 512)
CONV_NAMES: tuple[str, ...] = tuple(f"conv{b}_{c}" for b, n in _BLOCKS for c in range(1, n + 1))

# Indices of the conv layers inside torchvision's ``vgg16().features`` Sequential.
_TORCHVISION_CONV_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)

CAFFE_MEAN_BGR: tuple[float, float, float] = (103.939, 116.779, 123.68)  # 0-255 scale
IMAGENET_MEAN_RGB: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB: tuple[float, float, float] = (0.229, 0.224, 0.225)


class VGG16Features(nn.Module):
    """VGG-16's 13 convs (3x3, pad 1, ReLU) and 5 max-pools, frozen.

    Input: ``(B, 3, H, W)`` RGB in ``[0, 1]`` (H, W >= 32 for five poolings).
    Output: the 5 feature maps after each max-pool: ``(B, 64, H/2, W/2)``, ``(B, 128, H/4, W/4)``,
    ``(B, 256, H/8, W/8)``, ``(B, 512, H/16, W/16)``, ``(B, 512, H/32, W/32)`` (floor division).

    The parameters never train (``requires_grad=False``); gradients still flow to the input, which
    is what a perceptual loss needs. Until :meth:`load_state_dict` is called the weights are random.
    """

    def __init__(self) -> None:
        super().__init__()
        in_ch = 3
        for (block, n), width in zip(_BLOCKS, _WIDTHS, strict=True):
            for c in range(1, n + 1):
                self.add_module(f"conv{block}_{c}", nn.Conv2d(in_ch, width, 3, padding=1))
                in_ch = width
        self.register_buffer("input_mean", torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the five post-pool feature maps of ``x`` (see the class docstring)."""
        h = x - self.input_mean.to(dtype=x.dtype)
        feats: list[torch.Tensor] = []
        for block, n in _BLOCKS:
            for c in range(1, n + 1):
                h = F.relu(getattr(self, f"conv{block}_{c}")(h))
            h = F.max_pool2d(h, 2)
            feats.append(h)
        return feats


def _from_caffe(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name in CONV_NAMES:
        state[f"{name}.weight"] = torch.from_numpy(np.asarray(arrays[f"{name}.weight"], np.float32))
        state[f"{name}.bias"] = torch.from_numpy(np.asarray(arrays[f"{name}.bias"], np.float32))
    # BGR -> RGB input channels, and 0-255 -> [0, 1] scale.
    state["conv1_1.weight"] = state["conv1_1.weight"].flip(1) * 255.0
    mean_rgb = torch.tensor(CAFFE_MEAN_BGR[::-1], dtype=torch.float32) / 255.0
    state["input_mean"] = mean_rgb.view(1, 3, 1, 1)
    return state


def _from_torchvision(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name, idx in zip(CONV_NAMES, _TORCHVISION_CONV_INDICES, strict=True):
        state[f"{name}.weight"] = raw[f"features.{idx}.weight"].detach().float().clone()
        state[f"{name}.bias"] = raw[f"features.{idx}.bias"].detach().float().clone()
    # (x - mean) / std with the 1/std folded into conv1_1: exact, since zero padding of
    # (x - mean) scaled by 1/std is still zero.
    std = torch.tensor(IMAGENET_STD_RGB, dtype=torch.float32).view(1, 3, 1, 1)
    state["conv1_1.weight"] = state["conv1_1.weight"] / std
    state["input_mean"] = torch.tensor(IMAGENET_MEAN_RGB, dtype=torch.float32).view(1, 3, 1, 1)
    return state


def load_vgg16_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read VGG-16 conv weights and convert them to the RGB ``[0, 1]`` convention.

    Args:
        path: the Caffe/Keras ``.npz`` (keys ``conv1_1.weight`` ..., OIHW, BGR, 0-255, mean
            subtracted) or torchvision's ``vgg16-397923af.pth`` (keys ``features.0.weight`` ...).

    Returns:
        A float32 state dict for :class:`VGG16Features` (``conv1_1.weight`` ... ``conv5_3.bias``
        and ``input_mean``).

    Raises:
        WeightsError: the file is missing, unreadable, or has neither key layout.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"VGG-16 weights not found: {path}",
            hint="pass the path of vgg16-397923af.pth or the Keras/Caffe .npz",
        )
    try:
        if path.suffix == ".npz":
            with np.load(path) as npz:
                arrays = {k: npz[k] for k in npz.files}
        elif path.suffix == ".safetensors":
            # weights.resolve_vgg16's cached subset: torchvision's features.* keys only.
            from safetensors.torch import load_file

            arrays = load_file(str(path), device="cpu")
        else:
            arrays = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        raise WeightsError(
            f"cannot read VGG-16 weights {path}: {exc}",
            hint="the file may be truncated; download it again",
        ) from exc
    if not isinstance(arrays, dict):
        raise WeightsError(f"{path} does not hold a state dict", hint="use a VGG-16 state dict")
    if "conv1_1.weight" in arrays:
        convert = _from_caffe
    elif "features.0.weight" in arrays:
        convert = _from_torchvision
    else:
        raise WeightsError(
            f"{path} has neither the Caffe/Keras nor the torchvision VGG-16 key layout",
            hint="expected keys like 'conv1_1.weight' or 'features.0.weight'",
        )
    try:
        state = convert(arrays)
    except KeyError as exc:
        raise WeightsError(
            f"{path} lacks the VGG-16 array {exc}", hint="is this a VGG-19 or truncated file?"
        ) from exc
    expected = VGG16Features().state_dict()
    for key, value in expected.items():
        if state[key].shape != value.shape:
            raise WeightsError(
                f"{path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)}",
                hint="the file is not VGG-16",
            )
    return state


def load_vgg16_features(path: str | Path) -> VGG16Features:
    """A frozen :class:`VGG16Features` in eval mode with the weights at ``path``."""
    model = VGG16Features()
    model.load_state_dict(load_vgg16_state(path))
    return model.eval()


def conv_operator_norm(weight: torch.Tensor, size: int = 32) -> float:
    """Largest singular value of a stride-1 'same' convolution, as a linear map on images.

    Computed exactly for circular padding on a ``size`` x ``size`` grid (the Fourier transform
    block-diagonalises the convolution); zero padding can only lower it, and for 3x3 kernels a
    32-point grid is within 0.2% of the continuous maximum.

    Args:
        weight: ``(out, in, k, k)`` real kernel.
        size: grid size of the frequency sampling.
    """
    w = weight.detach().double()
    # A real kernel has a conjugate-symmetric spectrum: half of the frequencies suffice.
    spectrum = torch.fft.rfft2(w, s=(size, size))  # (out, in, size, size // 2 + 1)
    mats = spectrum.permute(2, 3, 0, 1)  # one (out, in) matrix per frequency
    return float(torch.linalg.matrix_norm(mats, ord=2).max())


def encoder_operator_norm(w1: torch.Tensor, w2: torch.Tensor, size: int = 32) -> float:
    """Largest singular value of ``conv(conv(x, w1), w2)`` (stride 1, 'same'), as for
    :func:`conv_operator_norm`: the two kernels' spectra are multiplied per frequency."""
    # contiguous(): a batched complex matmul on the permuted views is ~1000x slower.
    s1 = torch.fft.rfft2(w1.detach().double(), s=(size, size)).permute(2, 3, 0, 1).contiguous()
    s2 = torch.fft.rfft2(w2.detach().double(), s=(size, size)).permute(2, 3, 0, 1).contiguous()
    composite = s2 @ s1  # (size, size // 2 + 1, out, in)
    # The squared norm is the largest eigenvalue of the small (in, in) Gram matrices.
    gram = composite.mH @ composite
    return float(torch.linalg.eigvalsh(gram).max().clamp_min(0.0).sqrt())


def boost_flat_luminance(w1: torch.Tensor, w2: torch.Tensor, gain: float) -> torch.Tensor:
    """``w2`` with the encoder's response to flat grey multiplied by ``gain``.

    ``E(x) = conv(conv(x, w1), w2)`` maps a flat grey image to the feature vector
    ``u = W2(0) W1(0) 1`` at every pixel (``W(0)``: a kernel summed over its taps). The returned
    kernel is ``A w2`` with ``A = I + (gain - 1) u u^T / |u|^2`` (a fixed channel mixing after
    conv1_2, folded into its kernel), rescaled so that the encoder's operator norm is unchanged.
    Directions orthogonal to ``u`` keep VGG's filters; ``D`` stays ``E``'s adjoint.
    """
    if gain <= 0:
        raise UsageError(f"the luminance gain must be > 0, not {gain}")
    w1d, w2d = w1.detach().double(), w2.detach().double()
    u = w2d.sum((2, 3)) @ (w1d.sum((2, 3)) @ torch.ones(w1d.shape[1], dtype=torch.float64))
    u = u / u.norm()
    mix = torch.eye(u.numel(), dtype=torch.float64) + (gain - 1.0) * torch.outer(u, u)
    boosted = torch.einsum("oj,jiab->oiab", mix, w2d)
    boosted = boosted * (encoder_operator_norm(w1d, w2d) / encoder_operator_norm(w1d, boosted))
    return boosted.to(w2.dtype)


def vgg16_conv1_for_symnet(
    state: dict[str, torch.Tensor], *, luma_gain: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """conv1_1 / conv1_2 kernels for symnet's bias-free, activation-free encoder.

    The paper's encoder is two bare convolutions whose weights are VGG-16's first two layers.
    A bare (linear) encoder cannot use VGG's biases, its ReLU or its mean subtraction, so all three
    are dropped: the encoder applies the ``[0, 1]``-RGB kernels from :func:`load_vgg16_state` to the
    raw image. Each kernel is then divided by its operator norm (:func:`conv_operator_norm`): the
    two VGG sources differ in input scale by a factor of about 60 (0-255 vs ``1/std``), and the
    scale of a linear encoder is arbitrary, so normalising makes ``D(E(x))`` non-expanding and
    keeps the features in the same numeric range whichever source was used. Filter shapes and
    their relative weights are VGG's, unchanged.

    Args:
        state: output of :func:`load_vgg16_state`.
        luma_gain: 1 (default) keeps VGG's filters. Otherwise the encoder's response to flat
            grey is multiplied by it (:func:`boost_flat_luminance`): VGG's pair passes flat
            brightness ~90x weaker than its best-passed pattern (docs/models.md).

    Returns:
        ``(w1, w2)``: ``(64, 3, 3, 3)`` and ``(64, 64, 3, 3)`` float32 kernels.
    """
    w1 = state["conv1_1.weight"].detach().float()
    w2 = state["conv1_2.weight"].detach().float()
    w1, w2 = w1 / conv_operator_norm(w1), w2 / conv_operator_norm(w2)
    if luma_gain != 1.0:
        w2 = boost_flat_luminance(w1, w2, luma_gain)
    return w1, w2
