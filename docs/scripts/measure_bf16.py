"""Does bf16 keep a model's output, and is it faster? bf16 against fp32, per model.

For each model: enhance LOL eval15 frames (600x400, the training scale) with fp32 and with bf16
through the engine and report the mean and the worst PSNR of the bf16 output against the fp32
one (clamped to [0, 1], not rounded); then time both, alternating, on an input of the fast
path's working size (``--time-size``, default 848x644: 0.5 MP of a 4:3 photo plus the engine's
mirrored border), median of ``--repeats`` after one warm-up each, in the same process. A model
may take bf16 under ``--precision auto`` (``ModelSpec.bf16_auto``) when its worst frame stays at
or above 40 dB *and* bf16 is faster. Run with the machine otherwise idle for the timings.

    python docs/scripts/measure_bf16.py --data ../shared/data/lol/eval15 [--models nrl neid]
        [--weights symnet=symnet.lol-cpu] [--limit 5] [--time-size 848x644] [--repeats 3]
        [--json results.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

THRESHOLD_DB = 40.0


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def measure(
    model: str,
    weights: str | None,
    frames: list[np.ndarray],
    time_size: tuple[int, int],
    repeats: int,
) -> dict:
    from lowlight_cli.engine import Enhancer
    from lowlight_cli.registry import get_spec, load_model

    # Measured whether or not the registry declares bf16 safe (that is what is being decided).
    spec = dataclasses.replace(get_spec(model), bf16_safe=True)
    enhancers = {
        p: Enhancer(
            load_model(model, weights),
            spec=spec,
            device="cpu",
            precision=p,
            tile=0,
            working_size="full",
        )
        for p in ("fp32", "bf16")
    }
    scores = []
    for frame in frames:
        outputs = {p: enh.enhance(frame) for p, enh in enhancers.items()}
        scores.append(_psnr(outputs["bf16"], outputs["fp32"]))
    width, height = time_size
    rng = np.random.default_rng(0)
    timed = rng.random((height, width, 3), dtype=np.float32) * 0.25
    seconds: dict[str, list[float]] = {p: [] for p in enhancers}
    for enh in enhancers.values():
        enh.enhance(timed)  # warm-up: kernel selection, allocator
    for _ in range(repeats):
        for precision, enh in enhancers.items():
            start = time.perf_counter()
            enh.enhance(timed)
            seconds[precision].append(time.perf_counter() - start)
    fp32_s, bf16_s = (float(np.median(seconds[p])) for p in ("fp32", "bf16"))
    return {
        "model": model,
        "weights": weights or "default",
        "frames": len(frames),
        "mean_db": round(float(np.mean(scores)), 2),
        "worst_db": round(float(np.min(scores)), 2),
        "time_size": f"{width}x{height}",
        "fp32_s": round(fp32_s, 3),
        "bf16_s": round(bf16_s, 3),
        "bf16_auto": bool(min(scores) >= THRESHOLD_DB and bf16_s < fp32_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="LOL eval15 (low/ inside)")
    parser.add_argument("--models", nargs="+", default=["nrl", "neid", "frlie"])
    parser.add_argument("--weights", nargs="*", default=[], help="MODEL=ID_OR_PATH")
    parser.add_argument("--limit", type=int, default=None, help="first N frames only")
    parser.add_argument("--time-size", default="848x644", help="WIDTHxHEIGHT timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from lowlight_cli.image_io import read_image
    from lowlight_cli.training.data import list_pairs, paired_split

    weights = dict(w.split("=", 1) for w in args.weights)
    pairs = list_pairs(paired_split(args.data, "val"))[: args.limit]
    frames = [read_image(low).pixels for _, low, _ in pairs]
    rows = []
    for model in args.models:
        w, h = (int(v) for v in args.time_size.lower().split("x"))
        row = measure(model, weights.get(model), frames, (w, h), args.repeats)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
