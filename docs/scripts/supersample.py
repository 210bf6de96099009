"""neid's same-size path against ``--supersample``: quality on LOL pairs, time on one photo.

neid (like its paper) enhances a photo by shrinking it x2 (bicubic) and enlarging the result x2
inside the network, so half the photo's resolution never reaches the model. ``--supersample``
runs the x2 mode on every input pixel and averages each 2x2 block of its output. This script
scores both on a folder of LOL-style pairs (``low/`` and ``high/``, full resolution, no tiling)
and, with ``--time``, times both on one photo through the engine a user gets (median of runs,
both modes measured in the same process, alternating).

    python docs/scripts/supersample.py --data ../data/lol/eval15 \\
        --sample 1.png --sample 22.png --out supersample.png --time photo.jpg

``--out`` writes the listed pairs side by side (same-size path left, supersampled right).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def _load(path: Path):
    import numpy as np

    from lowlight_cli.image_io import read_image

    return np.ascontiguousarray(read_image(path).pixels, dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with low/ and high/")
    parser.add_argument("--weights", default=None, help="neid weights (default: the shipped)")
    parser.add_argument("--sample", action="append", default=[], help="pair name to draw")
    parser.add_argument("--out", type=Path, default=None, help="side-by-side PNG of --sample")
    parser.add_argument("--time", type=Path, default=None, help="photo to time both modes on")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    from PIL import Image

    from lowlight_cli.engine import Enhancer
    from lowlight_cli.metrics import psnr_array, ssim_array

    modes = {
        "same-size": {"working_size": "full"},
        "supersample": {"working_size": "full", "supersample": True},
    }
    enhancers = {
        k: Enhancer.create("neid", weights=args.weights, tile=0, **kw) for k, kw in modes.items()
    }
    scores: dict[str, list[tuple[float, float]]] = {k: [] for k in modes}
    drawn = []
    lows = sorted(p for p in (args.data / "low").iterdir() if p.is_file())
    for low_path in lows:
        low = _load(low_path)
        high = _load(args.data / "high" / low_path.name)
        outs = {k: e.enhance(low) for k, e in enhancers.items()}
        for k, out in outs.items():
            scores[k].append((psnr_array(out, high), ssim_array(out, high)))
        if low_path.name in args.sample:
            drawn.append(np.concatenate(list(outs.values()), axis=1))
    print(f"{'mode':12s} {'PSNR':>7s} {'SSIM':>7s}  ({len(lows)} pairs in {args.data})")
    for k, rows in scores.items():
        psnr = statistics.fmean(r[0] for r in rows)
        ssim = statistics.fmean(r[1] for r in rows)
        print(f"{k:12s} {psnr:7.2f} {ssim:7.4f}")
    if args.out is not None and drawn:
        pixels = np.concatenate(drawn, axis=0)
        Image.fromarray((pixels * 255.0 + 0.5).clip(0, 255).astype(np.uint8)).save(args.out)
        print(f"wrote {args.out}")

    if args.time is not None:
        photo = _load(args.time)
        timed = {
            k: Enhancer.create("neid", weights=args.weights, supersample=(k == "supersample"))
            for k in modes
        }
        seconds: dict[str, list[float]] = {k: [] for k in modes}
        for _ in range(args.runs):
            for k, enh in timed.items():
                start = time.perf_counter()
                enh.enhance(photo)
                seconds[k].append(time.perf_counter() - start)
        h, w = photo.shape[:2]
        base = statistics.median(seconds["same-size"])
        print(f"time on {args.time.name} ({w}x{h}), default working size, median of {args.runs}:")
        for k, runs in seconds.items():
            med = statistics.median(runs)
            print(f"{k:12s} {med:7.2f} s  ({med / base:.2f}x)")


if __name__ == "__main__":
    main()
