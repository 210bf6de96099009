"""Edge-aware upsampling: carry a small image's enhancement to its full-resolution original.

The model enhances a copy of the photo shrunk to a working size. Between that small input ``p``
and the model's small output ``q`` we fit, in every ``(2r + 1)^2`` window, a local affine colour
transform ``q ~ A p + b`` (a 3x3 matrix and an offset: the colour version of the guided filter,
He et al. 2010, fitted at low resolution as in the fast guided filter, He and Sun 2015). Each
pixel's transform is the mean of the transforms of the windows that cover it; those are smooth,
so they are bilinearly enlarged to the full size and applied to the full-resolution pixels. The
photo's edges and detail come from the full-resolution input itself, never from an enlarged
output, so nothing is blurred; where a window straddles an edge, one affine map fits both sides.

The ridge term pulls each window's matrix towards the best global affine fit (not towards zero,
as the classic guided filter does): flat or noisy windows fall back to the global colour
transform, and an enhancement that *is* a global gain or colour matrix is reproduced exactly.

Detail finer than a working pixel (sensor noise, hairlines) is invisible to the fit: it is
carried with the slope of its window's transform, i.e. with the local contrast the model gives
that neighbourhood. A model that flattens contrast at the working size flattens it here too.

All arrays are ``(H, W, 3)`` float32 RGB, values nominally in ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# Window radius (working-size pixels) and ridge weight of the fast path's fit, chosen on 12 LOL
# training pairs (our485, every 26th) enlarged 4x, the model at 600x400 (docs/usage.md): radius
# 2-8 scored within 0.1 dB of each other; eps decides SSIM. Dark LOL windows have a colour
# variance around 1e-5 (sensor noise), so eps 1e-4 and above hands them to the global gain, which
# amplifies the full-size noise the model would have removed (nrl SSIM 0.728 at 1e-4, 0.757 at
# 1e-5, 0.771 at 1e-6; neid 0.726, 0.780, 0.808), while at 1e-6 the model's own response to that
# noise, seen in the small pair, decides. Lower (1e-7) changed nothing more.
UPSAMPLE_RADIUS = 4
UPSAMPLE_EPS = 1e-6
# Output rows enlarged and applied at a time: bounds the full-size coefficient buffers
# (12 float32 channels x rows x width) to ~50 MB for a 4000-pixel-wide photo.
APPLY_ROWS = 256
# The six entries (i, j), i <= j, of a symmetric 3x3 matrix.
_SYM = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def global_affine(small_in: np.ndarray, small_out: np.ndarray) -> np.ndarray:
    """Least-squares colour transform over the whole image: ``(3, 4)`` float64 ``[A | b]``.

    Rank-deficient inputs (a grey or flat image) get the minimum-norm fit (pseudo-inverse),
    which still reproduces an exactly affine enhancement on the pixels it was fitted to.
    """
    p = small_in.reshape(-1, 3).astype(np.float64)
    q = small_out.reshape(-1, 3).astype(np.float64)
    mean_p, mean_q = p.mean(axis=0), q.mean(axis=0)
    p -= mean_p
    q -= mean_q
    matrix = (q.T @ p) @ np.linalg.pinv(p.T @ p, hermitian=True)
    return np.concatenate([matrix, (mean_q - matrix @ mean_p)[:, None]], axis=1)


def _box(plane: np.ndarray, radius: int) -> np.ndarray:
    import cv2

    size = 2 * radius + 1
    # Mean over the window; at the border the window is mirrored (OpenCV's default, reflect 101).
    return cv2.boxFilter(plane, -1, (size, size), normalize=True)


def fit_local_affine(
    small_in: np.ndarray, small_out: np.ndarray, *, radius: int, eps: float
) -> np.ndarray:
    """Per-pixel affine colour transforms mapping ``small_in`` to ``small_out``.

    Args:
        small_in: ``(h, w, 3)`` the model's input.
        small_out: ``(h, w, 3)`` the model's output.
        radius: window radius in small-image pixels.
        eps: ridge weight pulling each window's matrix towards the global fit (in squared
            pixel-value units: a window whose colour variance is well above ``eps`` follows its
            own pixels, one well below it follows the global transform).

    Returns:
        ``(h, w, 12)`` float32: per pixel the row-major ``3x4`` matrix ``[A | b]``, already
        averaged over the windows covering the pixel.
    """
    prior = global_affine(small_in, small_out)[:, :3]
    # Planes (float64: variances of dark images are differences of nearly equal numbers).
    p = [np.ascontiguousarray(small_in[..., i], dtype=np.float64) for i in range(3)]
    q = [np.ascontiguousarray(small_out[..., i], dtype=np.float64) for i in range(3)]
    mp = [_box(plane, radius) for plane in p]
    mq = [_box(plane, radius) for plane in q]
    # Window covariances; eps on the diagonal of cov(p, p).
    cov = {
        (i, j): _box(p[i] * p[j], radius) - mp[i] * mp[j] + (eps if i == j else 0.0)
        for i, j in _SYM
    }
    a, b, c, d, e, f = (cov[k] for k in _SYM)
    # Inverse of the symmetric 3x3 matrix by cofactors, for all pixels at once; 1/det folded in.
    det = a * (d * f - e * e) + b * (c * e - b * f) + c * (b * e - c * d)
    inv_det = 1.0 / det
    i00, i01, i02 = (d * f - e * e) * inv_det, (c * e - b * f) * inv_det, (b * e - c * d) * inv_det
    i11, i12, i22 = (a * f - c * c) * inv_det, (b * c - a * e) * inv_det, (a * d - b * b) * inv_det
    inverse = ((i00, i01, i02), (i01, i11, i12), (i02, i12, i22))
    coeffs = np.empty((12, *small_in.shape[:2]), dtype=np.float32)
    for row in range(3):
        # A (cov_pp + eps I) = cov_qp + eps A_prior, row by row.
        rhs = [
            _box(q[row] * p[k], radius) - mq[row] * mp[k] + eps * prior[row, k] for k in range(3)
        ]
        offset = mq[row].copy()
        for col in range(3):
            value = rhs[0] * inverse[0][col] + rhs[1] * inverse[1][col] + rhs[2] * inverse[2][col]
            offset -= value * mp[col]
            # Each pixel takes the mean transform of the windows that cover it.
            coeffs[4 * row + col] = _box(value, radius)
        coeffs[4 * row + 3] = _box(offset, radius)
    return np.ascontiguousarray(coeffs.transpose(1, 2, 0))


def apply_local_affine(
    coeffs: np.ndarray, image: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """Enlarge ``coeffs`` to ``image``'s size (bilinear) and apply them: ``A p + b`` per pixel.

    Works in blocks of :data:`APPLY_ROWS` rows, so the full-size coefficients never exist.

    Args:
        coeffs: ``(h, w, 12)`` from :func:`fit_local_affine`.
        image: ``(H, W, 3)`` full-resolution input.
        out: where to write ``(H, W, 3)`` float32 (may be ``image`` itself); new if None.

    Returns:
        ``out``.
    """
    height, width = image.shape[:2]
    if out is None:
        out = np.empty((height, width, 3), dtype=np.float32)
    for start, stop, block in enlarged_blocks(coeffs, height, width):
        block = block.reshape(stop - start, width, 3, 4)
        result = np.einsum("yxck,yxk->yxc", block[..., :3], image[start:stop])
        result += block[..., 3]
        out[start:stop] = result
    return out


def enlarged_blocks(
    small: np.ndarray, height: int, width: int
) -> Iterator[tuple[int, int, np.ndarray]]:
    """``small`` enlarged to ``height x width`` (bilinear, edges replicated, as ``cv2.resize``
    gives it), as ``(start, stop, rows)`` blocks of at most :data:`APPLY_ROWS` rows, so that the
    enlarged copy never exists whole.
    """
    import cv2

    h, w = small.shape[:2]
    sx, sy = w / width, h / height
    for start in range(0, height, APPLY_ROWS):
        stop = min(start + APPLY_ROWS, height)
        # Output pixel (x, y) samples ``small`` at ((x + 0.5) sx - 0.5, (y + 0.5) sy - 0.5),
        # cv2.resize's convention; as an affine warp it works on any block of rows.
        to_small = np.array(
            [[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, (start + 0.5) * sy - 0.5]], dtype=np.float64
        )
        rows = cv2.warpAffine(
            small,
            to_small,
            (width, stop - start),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        yield start, stop, rows


def guided_upsample(
    small_in: np.ndarray,
    small_out: np.ndarray,
    image: np.ndarray,
    *,
    radius: int,
    eps: float,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Carry the change ``small_in -> small_out`` to the full-resolution ``image``.

    Args:
        small_in: ``(h, w, 3)`` ``image`` shrunk to the working size.
        small_out: ``(h, w, 3)`` the model's output for ``small_in``.
        image: ``(H, W, 3)`` the full-resolution photo.
        radius: window radius in small-image pixels.
        eps: ridge weight (see :func:`fit_local_affine`).
        out: see :func:`apply_local_affine`.

    Returns:
        ``(H, W, 3)`` float32, not clamped.
    """
    coeffs = fit_local_affine(small_in, small_out, radius=radius, eps=eps)
    return apply_local_affine(coeffs, image, out)
