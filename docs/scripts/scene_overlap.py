"""Which validation and test pairs show a scene that is also among the training pairs.

LOL photographs most scenes several times (other exposures of the dark input, sometimes the very
same ground truth), so a pair held out by name can have its scene in the training set. This
script compares every held-out pair (the split ``lowlight train --val-holdout N`` makes; the
default one, by pairs) and every test pair with all training pairs: ground truths shrunk to
48 x 32, each divided by its mean (so exposure does not count), mean squared difference
(``scene_thumbnail``, as ``--val-split scenes`` groups pairs). A pair whose nearest training
pair is closer than ``--threshold`` counts as a seen scene (for scale: two random our485 pairs
differ by ~0.29, the closest 1 % by ~0.07). With ``--models`` it scores the shipped weights (or
``--weights MODEL=FILE``) on both groups, full size, no tiling.

    python docs/scripts/scene_overlap.py --train ../data/lol/our485 --holdout 15 \\
        --test ../data/lol/eval15 --models nrl,neid,frlie
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from lowlight_cli.training.data import (
    SCENE_DISTANCE,
    holdout_indices,
    list_pairs,
    scene_thumbnail,
)


def _thumb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return scene_thumbnail(np.asarray(img.convert("RGB")))


def _load(path: Path) -> np.ndarray:
    from lowlight_cli.image_io import read_image

    return np.ascontiguousarray(read_image(path).pixels, dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="training pairs (low/, high/)")
    parser.add_argument("--holdout", type=int, default=15, help="as --val-holdout")
    parser.add_argument("--test", type=Path, default=None, help="test pairs (low/, high/)")
    parser.add_argument("--threshold", type=float, default=SCENE_DISTANCE)
    parser.add_argument("--models", default="", help="comma-separated models to score")
    parser.add_argument("--weights", action="append", default=[], help="MODEL=FILE")
    args = parser.parse_args()

    pairs = list_pairs(args.train)
    held = set(holdout_indices(len(pairs), args.holdout)) if args.holdout else set()
    train = [p for i, p in enumerate(pairs) if i not in held]
    groups = {"held-out": [p for i, p in enumerate(pairs) if i in held]}
    if args.test is not None:
        groups["test"] = list_pairs(args.test)
    bank = np.stack([_thumb(high) for _, _, high in train])

    weights = dict(w.split("=", 1) for w in args.weights)
    enhancers = {}
    if args.models:
        from lowlight_cli.engine import Enhancer

        for name in args.models.split(","):
            enhancers[name] = Enhancer.create(
                name, weights=weights.get(name), tile=0, working_size="full"
            )

    from lowlight_cli.metrics import psnr_array

    for group, members in groups.items():
        print(f"{group}: {len(members)} pairs")
        rows = []
        for stem, low, high in members:
            dist = ((bank - _thumb(high)) ** 2).mean(axis=1)
            j = int(np.argmin(dist))
            seen = float(dist[j]) < args.threshold
            scores = {}
            if enhancers:
                lo, hi = _load(low), _load(high)
                for name, enh in enhancers.items():
                    scores[name] = psnr_array(np.clip(enh.enhance(lo), 0.0, 1.0), hi)
            rows.append((seen, scores))
            cols = "  ".join(f"{k} {v:5.2f}" for k, v in scores.items())
            mark = "seen " if seen else "novel"
            print(f"  {stem:>6s}  nearest {train[j][0]:>6s}  {float(dist[j]):.4f}  {mark}  {cols}")
        for label, want in (("seen scenes", True), ("novel scenes", False)):
            part = [s for seen, s in rows if seen == want]
            means = "  ".join(
                f"{k} {statistics.fmean(s[k] for s in part):5.2f}" for k in enhancers if part
            )
            print(f"  {label}: {len(part)} pairs  {means}")


if __name__ == "__main__":
    main()
