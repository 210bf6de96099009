"""Tile planning and blending: exact coverage, partition of unity, seamless merge."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowlight_cli.tiling import axis_weights, blend_weights, merge_tile, plan_axis, plan_tiles


@st.composite
def axis_cases(draw: st.DrawFn) -> tuple[int, int, int, int, int]:
    multiple = draw(st.sampled_from([1, 2, 4, 8, 16]))
    length = multiple * draw(st.integers(1, 400 // multiple + 1))
    overlap = draw(st.integers(0, 48))
    margin = draw(st.integers(0, 24))
    shared = -(-(overlap + 2 * margin) // multiple) * multiple
    tile = draw(st.integers(shared + multiple, shared + 300))
    tile = (tile // multiple) * multiple
    return length, tile, overlap, multiple, margin


@settings(max_examples=300, deadline=None)
@given(axis_cases(), st.sampled_from([1, 2]))
def test_axis_plan_covers_exactly_and_weights_sum_to_one(case, scale) -> None:
    length, tile, overlap, multiple, margin = case
    spans = plan_axis(length, tile, overlap, multiple, margin=margin)
    assert spans[0].start == 0 and spans[-1].stop == length
    coverage = np.zeros(length, dtype=int)
    total = np.zeros(length * scale)
    for prev, span in zip([None, *spans], spans, strict=False):
        assert span.start % multiple == 0 and span.length % multiple == 0
        assert 0 < span.length <= max(tile, multiple) or len(spans) == 1
        assert span.start <= span.fade_in[0] <= span.fade_in[1]
        assert span.fade_in[1] <= span.fade_out[0] <= span.fade_out[1] <= span.stop
        if prev is not None:
            assert prev.start < span.start and prev.stop < span.stop
            assert prev.stop - span.start >= overlap + 2 * margin  # shared part is big enough
            assert prev.fade_out == span.fade_in  # one seam, seen from both sides
            # margin pixels of context stay at weight 0 / 1 on both sides of the seam
            if span.fade_in[1] > span.fade_in[0]:
                assert span.fade_in[0] - span.start >= margin
                assert prev.stop - span.fade_in[1] >= margin
        coverage[span.start : span.stop] += 1
        w = axis_weights(span, scale)
        assert w.min() >= 0.0 and w.max() <= 1.0
        total[span.start * scale : span.stop * scale] += w
    assert coverage.min() >= 1
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.sampled_from([1, 4, 16]),
    st.integers(8, 160),
    st.integers(0, 32),
    st.integers(0, 16),
)
def test_tile_weights_sum_to_one_in_2d(hu, wu, multiple, tile, overlap, margin) -> None:
    h, w = hu * multiple * 3, wu * multiple * 2
    tile = max(tile, -(-(overlap + 2 * margin) // multiple) * multiple + multiple)
    tiles = plan_tiles(h, w, tile, overlap, multiple, margin=margin)
    total = np.zeros((h, w))
    for t in tiles:
        total[t.y.start : t.y.stop, t.x.start : t.x.stop] += blend_weights(t)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_whole_image_when_tile_is_zero_or_large() -> None:
    assert len(plan_tiles(64, 48, 0, 16, 16)) == 1
    assert len(plan_tiles(64, 48, 64, 16, 16)) == 1
    (only,) = plan_tiles(64, 48, 512, 16, 16)
    assert only.shape == (64, 48)
    assert np.all(blend_weights(only) == 1.0)


def test_tiles_have_equal_shape_and_seams_are_smooth() -> None:
    tiles = plan_tiles(400, 304, 128, 32, 16, margin=16)
    assert len({t.shape for t in tiles}) == 1
    w = axis_weights(tiles[0].x)
    steps = np.abs(np.diff(w))
    # a raised cosine over 32 px never jumps by more than pi/64 between neighbours
    assert steps.max() <= np.pi / 64 + 1e-6


def test_merge_reconstructs_a_pointwise_function_exactly() -> None:
    """A pointwise 'model' run tile by tile and merged equals the whole-image result."""
    rng = np.random.default_rng(0)
    h, w = 96, 80  # unpadded size inside a 96 x 96 padded canvas
    image = rng.random((96, 96, 3), dtype=np.float32)
    for scale in (1, 2):
        acc = np.zeros((h * scale, w * scale, 3), np.float32)
        for t in plan_tiles(96, 96, 48, 8, 8, margin=4):
            crop = image[t.y.start : t.y.stop, t.x.start : t.x.stop]
            out = np.repeat(np.repeat(np.sqrt(crop), scale, 0), scale, 1)
            merge_tile(acc, out, t, scale=scale)
        expected = np.repeat(np.repeat(np.sqrt(image), scale, 0), scale, 1)[
            : h * scale, : w * scale
        ]
        np.testing.assert_allclose(acc, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [((100, 64, 8, 16), "multiple"), ((64, 32, 16, 16, 8), "too small"), ((64, -1, 8, 16), ">=")],
)
def test_bad_arguments(args, message) -> None:
    length, tile, overlap, multiple, *margin = args
    with pytest.raises(ValueError, match=message):
        plan_axis(length, tile, overlap, multiple, margin=margin[0] if margin else 0)
