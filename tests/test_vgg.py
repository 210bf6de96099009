"""VGG-16 features: key layouts, convention conversion, symnet's encoder kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared_path

from lowlight_cli.errors import UsageError, WeightsError
from lowlight_cli.models.vgg import (
    CAFFE_MEAN_BGR,
    CONV_NAMES,
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    VGG16Features,
    boost_flat_luminance,
    conv_operator_norm,
    encoder_operator_norm,
    load_vgg16_features,
    load_vgg16_state,
    vgg16_conv1_for_symnet,
)

_TV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_POOL_AFTER = {"conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"}


def _random_stack(seed: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Random VGG-16-shaped (name, weight, bias), scaled so activations stay O(1)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = VGG16Features().state_dict()
    out = []
    for name in CONV_NAMES:
        w_shape = shapes[f"{name}.weight"].shape
        fan_in = w_shape[1] * 9
        w = torch.randn(w_shape, generator=gen) * (2.0 / fan_in) ** 0.5
        b = torch.randn(w_shape[0], generator=gen) * 0.1
        out.append((name, w, b))
    return out


def _reference_forward(
    stack: list[tuple[str, torch.Tensor, torch.Tensor]], x: torch.Tensor
) -> list[torch.Tensor]:
    """Plain VGG on an input already in the weights' own convention."""
    feats = []
    h = x
    for name, w, b in stack:
        h = F.relu(F.conv2d(h, w, b, padding=1))
        if name in _POOL_AFTER:
            h = F.max_pool2d(h, 2)
            feats.append(h)
    return feats


def test_features_shapes_frozen_and_input_gradient():
    vgg = VGG16Features()
    x = torch.rand(2, 3, 64, 96, requires_grad=True)
    feats = vgg(x)
    assert [tuple(f.shape) for f in feats] == [
        (2, 64, 32, 48),
        (2, 128, 16, 24),
        (2, 256, 8, 12),
        (2, 512, 4, 6),
        (2, 512, 2, 3),
    ]
    assert all(not p.requires_grad for p in vgg.parameters())
    sum(f.mean() for f in feats).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_caffe_npz_conversion_matches_bgr_255_mean_convention(tmp_path):
    stack = _random_stack(0)
    arrays = {}
    for name, w, b in stack:
        arrays[f"{name}.weight"] = w.numpy().astype(np.float16)
        arrays[f"{name}.bias"] = b.numpy().astype(np.float16)
    path = tmp_path / "vgg.npz"
    np.savez(path, **arrays)
    # The reference must see the same fp16-rounded arrays as the loader.
    stack16 = [
        (
            n,
            torch.from_numpy(arrays[f"{n}.weight"].astype(np.float32)),
            torch.from_numpy(arrays[f"{n}.bias"].astype(np.float32)),
        )
        for n, _, _ in stack
    ]
    x = torch.rand(1, 3, 32, 32)
    caffe_input = x.flip(1) * 255.0 - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    # Rescale so 0-255 inputs give O(1) activations: divide conv1_1 by 255 in both paths.
    expected = _reference_forward(stack16, caffe_input)
    got = load_vgg16_features(path)(x)
    for e, g in zip(expected, got, strict=True):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-3 * e.abs().max().item())


def test_torchvision_pth_conversion_matches_mean_std_convention(tmp_path):
    stack = _random_stack(1)
    raw = {}
    for (_, w, b), idx in zip(stack, _TV_INDICES, strict=True):
        raw[f"features.{idx}.weight"] = w
        raw[f"features.{idx}.bias"] = b
    raw["classifier.0.weight"] = torch.zeros(2, 2)  # ignored, as in the real file
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(raw, path)
    x = torch.rand(2, 3, 32, 40)
    mean = torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD_RGB).view(1, 3, 1, 1)
    expected = _reference_forward(stack, (x - mean) / std)
    got = load_vgg16_features(path)(x)
    for e, g in zip(expected, got, strict=True):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-5 * max(1.0, e.abs().max().item()))


def test_bad_files_raise_weights_error(tmp_path):
    with pytest.raises(WeightsError):
        load_vgg16_state(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, something=np.zeros(3))
    with pytest.raises(WeightsError):
        load_vgg16_state(bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError):
        load_vgg16_state(garbage)


def test_conv_operator_norm_matches_dense_matrix():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(8, 3, 3, 3, generator=gen, dtype=torch.float64)
    size = 8
    # The circular convolution as a dense matrix: apply it to every basis image.
    basis = torch.eye(3 * size * size, dtype=torch.float64).view(-1, 3, size, size)
    columns = F.conv2d(F.pad(basis, (1, 1, 1, 1), mode="circular"), w)
    dense = columns.flatten(1).T  # (8*size*size, 3*size*size)
    sigma = float(torch.linalg.matrix_norm(dense, ord=2))
    assert conv_operator_norm(w, size=size) == pytest.approx(sigma, rel=1e-9)


def test_symnet_kernels_are_vgg_directions_with_unit_norm():
    stack = _random_stack(2)
    state = {f"{n}.weight": w for n, w, _ in stack} | {f"{n}.bias": b for n, _, b in stack}
    w1, w2 = vgg16_conv1_for_symnet(state)
    assert conv_operator_norm(w1) == pytest.approx(1.0, rel=1e-5)
    assert conv_operator_norm(w2) == pytest.approx(1.0, rel=1e-5)
    ratio1 = w1 / state["conv1_1.weight"]
    ratio2 = w2 / state["conv1_2.weight"]
    assert torch.allclose(ratio1, ratio1.flatten()[0].expand_as(ratio1), rtol=1e-5)
    assert torch.allclose(ratio2, ratio2.flatten()[0].expand_as(ratio2), rtol=1e-5)


def _encode(w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.conv2d(x, w1, padding=1), w2, padding=1)


def test_encoder_operator_norm_is_the_composite_maps_largest_singular_value():
    gen = torch.Generator().manual_seed(5)
    w1 = torch.randn(6, 3, 3, 3, generator=gen, dtype=torch.float64)
    w2 = torch.randn(5, 6, 3, 3, generator=gen, dtype=torch.float64)
    size = 8
    basis = torch.eye(3 * size * size, dtype=torch.float64).view(-1, 3, size, size)
    inner = F.conv2d(F.pad(basis, (1, 1, 1, 1), mode="circular"), w1)
    columns = F.conv2d(F.pad(inner, (1, 1, 1, 1), mode="circular"), w2)
    sigma = float(torch.linalg.matrix_norm(columns.flatten(1).T, ord=2))
    assert encoder_operator_norm(w1, w2, size=size) == pytest.approx(sigma, rel=1e-9)
    # Not the product of the two kernels' norms in general.
    assert sigma < conv_operator_norm(w1, size=size) * conv_operator_norm(w2, size=size)


def test_boost_flat_luminance_scales_only_the_flat_grey_response():
    stack = _random_stack(4)
    state = {f"{n}.weight": w for n, w, _ in stack} | {f"{n}.bias": b for n, _, b in stack}
    w1, w2 = vgg16_conv1_for_symnet(state)
    w1d, w2d = w1.double(), w2.double()
    boosted = boost_flat_luminance(w1d, w2d, 5.0)
    # The composite operator norm is kept.
    assert encoder_operator_norm(w1d, boosted) == pytest.approx(encoder_operator_norm(w1d, w2d))
    # Away from the borders a flat grey image gives one feature vector u; it is multiplied by 5
    # (times the renormalisation), and a feature orthogonal to u is untouched (same factor only).
    flat = torch.full((1, 3, 12, 12), 0.5, dtype=torch.float64)
    u_old = _encode(w1d, w2d, flat)[0, :, 6, 6]
    u_new = _encode(w1d, boosted, flat)[0, :, 6, 6]
    mix = torch.eye(64, dtype=torch.float64) + 4.0 * torch.outer(u_old, u_old) / u_old.dot(u_old)
    renorm = encoder_operator_norm(w1d, torch.einsum("oj,jiab->oiab", mix, w2d))
    factor = encoder_operator_norm(w1d, w2d) / renorm
    assert torch.allclose(u_new, 5.0 * factor * u_old, rtol=1e-9)
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(1, 3, 12, 12, generator=gen, dtype=torch.float64)
    f_old = _encode(w1d, w2d, x)
    f_new = _encode(w1d, boosted, x)
    unit = u_old / u_old.norm()
    along_old = torch.einsum("c,bchw->bhw", unit, f_old)
    along_new = torch.einsum("c,bchw->bhw", unit, f_new)
    ortho_old = f_old - unit.view(1, -1, 1, 1) * along_old.unsqueeze(1)
    ortho_new = f_new - unit.view(1, -1, 1, 1) * along_new.unsqueeze(1)
    assert torch.allclose(ortho_new, factor * ortho_old, atol=1e-10)
    assert torch.allclose(along_new, 5.0 * factor * along_old, atol=1e-10)
    # gain 1 is VGG's kernel; a non-positive gain is refused.
    assert torch.allclose(boost_flat_luminance(w1d, w2d, 1.0), w2d)
    with pytest.raises(UsageError):
        boost_flat_luminance(w1d, w2d, 0.0)
    assert torch.equal(vgg16_conv1_for_symnet(state, luma_gain=1.0)[1], w2)


@pytest.mark.shared
def test_real_keras_npz_first_layer_matches_caffe_convention():
    path = shared_path("weights", "vgg16_imagenet", "vgg16_keras_imagenet_conv_oihw_fp16.npz")
    raw = np.load(path)
    state = load_vgg16_state(path)
    w_bgr = torch.from_numpy(raw["conv1_1.weight"].astype(np.float32))
    b = torch.from_numpy(raw["conv1_1.bias"].astype(np.float32))
    x = torch.rand(1, 3, 20, 24)
    caffe_input = x.flip(1) * 255.0 - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    expected = F.conv2d(caffe_input, w_bgr, b, padding=1)  # borders included
    got = F.conv2d(
        x - state["input_mean"], state["conv1_1.weight"], state["conv1_1.bias"], padding=1
    )
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-2)
    feats = load_vgg16_features(path)(torch.rand(1, 3, 32, 32))
    assert all(torch.isfinite(f).all() for f in feats)
