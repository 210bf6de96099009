"""Seamless tiling: plan overlapping tiles, weight them, merge them (pure numpy, no torch).

A tile grid is the product of two 1-D plans. Along one axis every tile has the same length (a
multiple of the model's size multiple, starting at a multiple, so pooling and pixel-shuffle phases
match the whole-image run), consecutive tiles overlap by at least ``overlap + 2 * margin`` pixels,
and each pair of neighbours shares one *seam*: a blend zone of (at most) ``overlap`` pixels in the
middle of their common part. Outside the blend zones exactly one tile owns each pixel; inside, a
raised-cosine ramp fades one tile out while the other fades in (``r(t) + r(1 - t) = 1``), so the
weights of all tiles sum to exactly 1 everywhere and merging needs no weight accumulator. The
``margin`` pixels on both sides of a blend zone are context only: the model sees them, but they
carry weight 0, which hides the zero-padding artefacts at every tile edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Span:
    """One tile's extent along one axis, in padded-image pixels.

    The tile's weight along this axis is 0 before ``fade_in[0]``, rises over
    ``fade_in[0]..fade_in[1]``, is 1 up to ``fade_out[0]``, falls over ``fade_out[0]..fade_out[1]``
    and is 0 from ``fade_out[1]`` on. A tile at the image edge has an empty fade on that side.

    Attributes:
        start: first pixel the model sees.
        stop: one past the last pixel the model sees.
        fade_in: ``(begin, end)`` of the rising ramp, ``start <= begin <= end``.
        fade_out: ``(begin, end)`` of the falling ramp, ``end <= stop``.
    """

    start: int
    stop: int
    fade_in: tuple[int, int]
    fade_out: tuple[int, int]

    @property
    def length(self) -> int:
        """Pixels the model sees along this axis."""
        return self.stop - self.start


@dataclass(frozen=True)
class Tile:
    """One rectangular tile: its rows ``y`` and columns ``x`` (padded-image pixels)."""

    y: Span
    x: Span

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the model input for this tile."""
        return self.y.length, self.x.length


def _ramp(n: int) -> np.ndarray:
    """Raised cosine rising from ~0 to ~1 over ``n`` pixels, sampled at pixel centres.

    Sampling at centres makes ``ramp[k] + ramp[n - 1 - k] == 1`` exactly (up to rounding), so a
    rising and a falling ramp over the same pixels sum to 1.
    """
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    return 0.5 - 0.5 * np.cos(np.pi * t)


def plan_axis(
    length: int, tile: int, overlap: int, multiple: int, *, margin: int = 0
) -> list[Span]:
    """Split ``[0, length)`` into equal, overlapping spans with blend zones between neighbours.

    Args:
        length: axis length in pixels, a multiple of ``multiple`` (the engine pads first).
        tile: wanted span length; rounded down to a multiple of ``multiple``. ``0`` or anything
            ``>= length`` gives one span over the whole axis.
        overlap: blend-zone width between neighbours (pixels, >= 0).
        multiple: spans start at, and are as long as, multiples of this.
        margin: context-only pixels on each side of a blend zone (weight 0 in the far tile).

    Returns:
        Spans in increasing order; the first starts at 0, the last stops at ``length``.

    Raises:
        ValueError: bad arguments (negative sizes, length not a multiple, tile too small for the
            overlap and margin).
    """
    if multiple < 1 or length < 1 or overlap < 0 or margin < 0 or tile < 0:
        raise ValueError("length and multiple must be >= 1; tile, overlap, margin >= 0")
    if length % multiple:
        raise ValueError(f"length {length} is not a multiple of {multiple}")
    tile = (tile // multiple) * multiple
    if tile == 0 or tile >= length:
        return [Span(0, length, (0, 0), (length, length))]
    units, tile_u = length // multiple, tile // multiple
    # Neighbours must share at least the blend zone plus a margin on each side.
    shared_u = math.ceil((overlap + 2 * margin) / multiple)
    if shared_u >= tile_u:
        raise ValueError(
            f"tile {tile} is too small for overlap {overlap} + 2 x margin {margin} "
            f"(multiple {multiple})"
        )
    count = 1 + math.ceil((units - tile_u) / (tile_u - shared_u))
    # Spread the tiles evenly so every shared part is >= shared_u (spacing <= tile - shared).
    starts = [(i * (units - tile_u)) // (count - 1) * multiple for i in range(count)]
    stops = [s + tile for s in starts]
    # Seam i lies between tile i and i + 1, in the middle of what they share.
    seams = [(starts[i + 1] + stops[i]) // 2 for i in range(count - 1)]
    halves = []
    for i, seam in enumerate(seams):
        room = (stops[i] - starts[i + 1]) // 2 - margin  # stay `margin` away from both edges
        # Blend zones must not touch their neighbours' zones.
        left = (seam - seams[i - 1]) // 2 if i > 0 else room
        right = (seams[i + 1] - seam) // 2 if i + 1 < len(seams) else room
        halves.append(max(0, min(overlap // 2, room, left, right)))
    spans = []
    for i in range(count):
        fade_in = (seams[i - 1] - halves[i - 1], seams[i - 1] + halves[i - 1]) if i else (0, 0)
        if i + 1 < count:
            fade_out = (seams[i] - halves[i], seams[i] + halves[i])
        else:
            fade_out = (length, length)
        spans.append(Span(starts[i], stops[i], fade_in, fade_out))
    return spans


def plan_tiles(
    h: int, w: int, tile: int, overlap: int, multiple: int, *, margin: int = 0
) -> list[Tile]:
    """Cover an ``h x w`` padded image with overlapping tiles (row-major order).

    Args:
        h: padded height, a multiple of ``multiple``.
        w: padded width, a multiple of ``multiple``.
        tile: tile side (rounded down to ``multiple``); 0 means one tile for the whole image.
        overlap: blend-zone width between neighbouring tiles.
        multiple: the model's size multiple.
        margin: extra context on each side of a blend zone (see the module docstring).

    Returns:
        Tiles whose weights (:func:`blend_weights`) sum to 1 at every pixel.
    """
    rows = plan_axis(h, tile, overlap, multiple, margin=margin)
    cols = plan_axis(w, tile, overlap, multiple, margin=margin)
    return [Tile(r, c) for r in rows for c in cols]


def axis_weights(span: Span, scale: int = 1) -> np.ndarray:
    """Weights along one axis for ``span``: ``(span.length * scale,)`` float32 in [0, 1].

    Args:
        span: the tile's extent and fades.
        scale: output pixels per input pixel (2 for an x2 model); ramps are drawn at output
            resolution, so the partition of unity holds there too.
    """
    n = span.length * scale
    weights = np.ones(n, dtype=np.float64)
    a, b = ((v - span.start) * scale for v in span.fade_in)
    weights[:a] = 0.0
    weights[a:b] = _ramp(b - a)
    c, d = ((v - span.start) * scale for v in span.fade_out)
    weights[c:d] = 1.0 - _ramp(d - c)
    weights[d:] = 0.0
    return weights.astype(np.float32)


def blend_weights(tile: Tile, scale: int = 1) -> np.ndarray:
    """Per-pixel weight of ``tile``'s output: ``(h * scale, w * scale)`` float32 in [0, 1]."""
    return np.outer(axis_weights(tile.y, scale), axis_weights(tile.x, scale))


def merge_tile(accumulator: np.ndarray, output: np.ndarray, tile: Tile, *, scale: int = 1) -> None:
    """Add ``output`` weighted by :func:`blend_weights` into ``accumulator`` in place.

    Args:
        accumulator: ``(H_out, W_out, C)`` float array, zero-initialised; may be smaller than the
            padded image (the padding is cropped here, never stored).
        output: the tile's model output, ``(h * scale, w * scale, C)``.
        tile: where the output belongs.
        scale: output pixels per input pixel.
    """
    y0, x0 = tile.y.start * scale, tile.x.start * scale
    y1 = min(tile.y.stop * scale, accumulator.shape[0])
    x1 = min(tile.x.stop * scale, accumulator.shape[1])
    if y1 <= y0 or x1 <= x0:
        return  # the tile lies entirely in the padding
    weights = blend_weights(tile, scale)[: y1 - y0, : x1 - x0]
    part = output[: y1 - y0, : x1 - x0]
    accumulator[y0:y1, x0:x1] += part * weights[..., None]


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


def _axis_index(start: int, stop: int, size: int, padded: int) -> slice | np.ndarray:
    """Source rows/columns for ``[start, stop)`` of an axis padded from ``size`` to ``padded``.

    Reflect padding (no repeated edge pixel), or edge replication when the image is too small to
    reflect (``padded - size >= size``).
    """
    if stop <= size:
        return slice(start, stop)
    index = np.arange(start, stop)
    beyond = index >= size
    if padded - size < size:
        index[beyond] = 2 * (size - 1) - index[beyond]
    else:
        index[beyond] = size - 1
    return index


def extract_tile(image: np.ndarray, tile: Tile, hp: int, wp: int) -> np.ndarray:
    """The tile's pixels from the unpadded ``image`` as ``(1, 3, h, w)`` float32 (a copy)."""
    h, w = image.shape[:2]
    rows = _axis_index(tile.y.start, tile.y.stop, h, hp)
    cols = _axis_index(tile.x.start, tile.x.stop, w, wp)
    part = image[rows] if isinstance(rows, slice) else np.take(image, rows, axis=0)
    part = part[:, cols] if isinstance(cols, slice) else np.take(part, cols, axis=1)
    return np.ascontiguousarray(part.transpose(2, 0, 1)[None], dtype=np.float32)
