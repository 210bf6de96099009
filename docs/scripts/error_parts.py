"""Where a model's error on LOL pairs lies: global exposure and colour, broad shading, fine detail.

Each output is scored against its ground truth as it is, then after taking away, one at a time
and cumulatively, what a simple correction can remove:

- ``channel gain``: each RGB channel scaled so its mean equals the target's (global exposure
  and colour cast);
- ``channel affine``: each channel given the least-squares gain and offset (also global
  contrast);
- ``broad only``: the affine-corrected output and the target both blurred (Gaussian, sigma 4 px)
  before scoring: what is left of the error in broad shading;
- ``fine only``: the affine-corrected output with its blurred part replaced by the target's:
  what is left of the error in detail and noise.

    python docs/scripts/error_parts.py --model neid --data ../data/lol/eval15
    python docs/scripts/error_parts.py --model neid --weights FILE --data DIR --names 2,39,64

``--data`` is a folder with ``low/`` and ``high/``; ``--names`` picks pairs by file stem (for
example the held-out pairs listed in the manifest), otherwise all pairs are used. Mean PSNR over
the pairs, full resolution, no tiling.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

BLUR_SIGMA = 4.0


def _load(path: Path) -> np.ndarray:
    from lowlight_cli.image_io import read_image

    return np.ascontiguousarray(read_image(path).pixels, dtype=np.float32)


def parts(out: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """PSNR of ``out`` against ``target`` as it is and after each correction."""
    import cv2

    from lowlight_cli.metrics import psnr_array

    def score(a: np.ndarray, b: np.ndarray = target) -> float:
        return psnr_array(np.clip(a, 0.0, 1.0), b)

    gain = out * (target.mean(axis=(0, 1)) / np.maximum(out.mean(axis=(0, 1)), 1e-6))
    affine = np.empty_like(out)
    for c in range(3):
        x = out[..., c].ravel().astype(np.float64)
        design = np.stack([x, np.ones_like(x)], axis=1)
        (k, b), *_ = np.linalg.lstsq(design, target[..., c].ravel(), rcond=None)
        affine[..., c] = out[..., c] * k + b

    def blur(a: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(a, (0, 0), BLUR_SIGMA)

    return {
        "as is": score(out),
        "channel gain": score(gain),
        "channel affine": score(affine),
        "broad only": score(blur(affine), np.clip(blur(target), 0.0, 1.0)),
        "fine only": score(affine - blur(affine) + blur(target)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--weights", default=None, help="weights (default: the shipped)")
    parser.add_argument("--data", type=Path, required=True, help="folder with low/ and high/")
    parser.add_argument("--names", default=None, help="comma-separated pair stems")
    args = parser.parse_args()

    from lowlight_cli.engine import Enhancer

    enhancer = Enhancer.create(args.model, weights=args.weights, tile=0, working_size="full")
    lows = sorted(p for p in (args.data / "low").iterdir() if p.is_file())
    if args.names:
        wanted = set(args.names.split(","))
        lows = [p for p in lows if p.stem in wanted]
    rows = []
    for low_path in lows:
        (high_path,) = (args.data / "high").glob(low_path.stem + ".*")
        rows.append(parts(enhancer.enhance(_load(low_path)), _load(high_path)))
    print(f"{args.model}: mean PSNR (dB) over {len(rows)} pairs in {args.data}")
    for key in rows[0]:
        print(f"  {key:15s} {statistics.fmean(r[key] for r in rows):6.2f}")


if __name__ == "__main__":
    main()
