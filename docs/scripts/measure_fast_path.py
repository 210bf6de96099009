"""Quality of the fast path against full-resolution inference, on LOL eval15 enlarged 4x.

Both halves of each eval15 pair are enlarged 4x (bicubic, 600x400 -> 2400x1600), so a model at
full resolution sees every feature 4x larger than in training, like a 12-24 MP photo does. For
each model this scores, against the enlarged ground truth (8-bit, as `lowlight benchmark` does):

* ``full-res``: the model on every pixel (``--full-res --precision fp32``, tiled as usual);
* ``default``: what ``lowlight enhance`` does by default (working size and precision ``auto``);
* optionally the fast path at other working sizes (``--working-sizes 0.24 1.0``).

Full-resolution outputs are slow (symnet: ~15 min per image on a 2-core CPU), so they are cached
as 8-bit PNGs under ``--cache`` and reused; ``--limit MODEL=N`` scores the first N pairs only.

    python docs/scripts/measure_fast_path.py --data ../shared/data/lol/eval15 --cache CACHE
        [--models nrl neid frlie symnet] [--weights symnet=symnet.lol-cpu] [--limit symnet=3]
        [--working-sizes 0.24 1.0] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

FACTOR = 4


def _enlarge(image: np.ndarray) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    return cv2.resize(image, (w * FACTOR, h * FACTOR), interpolation=cv2.INTER_CUBIC)


def _full_res(model: str, weights: str | None, name: str, low: np.ndarray, cache: Path):
    """The cached full-resolution output of one enlarged frame (computed when missing)."""
    import cv2

    from lowlight_cli.engine import Enhancer
    from lowlight_cli.evaluate import quantize8

    path = cache / model / f"{name}.png"
    if not path.exists():
        enh = Enhancer.create(model, weights=weights, precision="fp32", working_size="full")
        start = time.perf_counter()
        out = quantize8(enh.enhance(low))
        print(f"  {model} {name}: full-res in {time.perf_counter() - start:.0f} s", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        rgb = np.round(out * 255).astype(np.uint8)
        cv2.imwrite(str(path.with_suffix(".tmp.png")), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        path.with_suffix(".tmp.png").rename(path)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="LOL eval15 (low/, high/)")
    parser.add_argument("--cache", type=Path, required=True, help="full-res outputs (PNG)")
    parser.add_argument("--models", nargs="+", default=["nrl", "neid", "frlie", "symnet"])
    parser.add_argument("--weights", nargs="*", default=[], help="MODEL=ID_OR_PATH")
    parser.add_argument("--limit", nargs="*", default=[], help="MODEL=N: first N pairs")
    parser.add_argument("--working-sizes", nargs="*", type=float, default=[])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from lowlight_cli.engine import Enhancer
    from lowlight_cli.evaluate import quantize8, score_pair
    from lowlight_cli.training.data import load_pairs, paired_split

    weights = dict(w.split("=", 1) for w in args.weights)
    limits = {k: int(v) for k, v in (w.split("=", 1) for w in args.limit)}
    pairs = load_pairs(paired_split(args.data, "val"))
    rows = []
    for model in args.models:
        paths: dict[str, Enhancer | None] = {"full-res": None}
        paths["default"] = Enhancer.create(model, weights=weights.get(model))
        for size in args.working_sizes:
            paths[f"{size:g} MP"] = Enhancer.create(
                model, weights=weights.get(model), working_size=size
            )
        scores: dict[str, list[tuple[float, float]]] = {p: [] for p in paths}
        count = limits.get(model, len(pairs.names))
        for name, low8, high8 in list(zip(pairs.names, pairs.low, pairs.high, strict=True))[:count]:
            low = _enlarge(low8).astype(np.float32) / 255
            high = _enlarge(high8).astype(np.float32) / 255
            for label, enh in paths.items():
                if enh is None:
                    out = _full_res(model, weights.get(model), name, low, args.cache)
                else:
                    out = quantize8(enh.enhance(low))
                scores[label].append(score_pair(out, high))
        for label, values in scores.items():
            enh = paths[label]
            small = None if enh is None else enh.working_shape(*low.shape[:2])
            row = {
                "model": model,
                "path": label,
                "precision": "fp32" if enh is None else enh.precision,
                "working_size": None if small is None else [small[1], small[0]],
                "psnr": round(float(np.mean([v[0] for v in values])), 3),
                "ssim": round(float(np.mean([v[1] for v in values])), 4),
                "images": len(values),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
