"""Time onnxruntime (CPU EP) against torch (CPU) through the same engine, per model and size.

Both backends run the same untrained registry model (speed does not depend on the weights'
values) inside one :class:`lowlight_cli.engine.Enhancer` configuration (same tiles, same
padding, same context pass), with the same number of threads (physical cores unless
``--threads``), so the ratio is what a user switching ``--backend`` would see. Their runs
alternate (torch, onnx, torch, ...) so that a load changing while measuring hits both alike.

    python docs/scripts/onnx_speed.py     # every exportable model, 600x400 and 2400x1600
    python docs/scripts/onnx_speed.py --models neid --sizes 600x400 --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import numpy as np


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        width, _, height = part.strip().lower().partition("x")
        sizes.append((int(width), int(height)))
    return sizes


def _time_alternating(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per function, runs interleaved, after ``warmup`` untimed runs each
    (onnxruntime plans memory and picks kernels on the first run of a shape)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {label: [] for label in fns}
    for _ in range(repeats):
        for label, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(values) for label, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gamma,neid,frlie,nrl,symnet")
    parser.add_argument("--sizes", default="600x400,2400x1600", help="WIDTHxHEIGHT,...")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed runs first (0 counts a cold first run)"
    )
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--tile", default="auto", help="engine tile option for both backends")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    args = parser.parse_args(argv)

    import torch

    from lowlight_cli.backends.onnx import OnnxBackend
    from lowlight_cli.backends.torch import TorchBackend
    from lowlight_cli.engine import Enhancer
    from lowlight_cli.export import export_onnx, physical_cores
    from lowlight_cli.registry import create_model, get_spec

    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        spec = get_spec(name)
        torch.manual_seed(0)
        model = create_model(name)
        graph, _ = export_onnx(model, spec)
        backends = {
            "torch": TorchBackend(model, device="cpu"),
            "onnx": OnnxBackend(graph, device="cpu", threads=threads),
        }
        for width, height in _parse_sizes(args.sizes):
            image = (rng.random((height, width, 3), dtype=np.float32) * 0.3).astype(np.float32)
            row = {"model": name, "size": f"{width}x{height}", "threads": threads}
            torch_enh = Enhancer(spec=spec, backend=backends["torch"], tile=args.tile)
            # Both backends get the tile the engine picks for torch, so they do the same work.
            tile = (
                torch_enh.tile if torch_enh.tile is not None else torch_enh.auto_tile(height, width)
            )
            row["tile"] = tile
            fns = {}
            for label, backend in backends.items():
                enhancer = Enhancer(spec=spec, backend=backend, tile=tile)
                fns[label] = partial(enhancer.enhance, image)
            for label, median in _time_alternating(fns, args.repeats, args.warmup).items():
                row[f"{label}_s"] = round(median, 4)
            row["speedup"] = round(row["torch_s"] / row["onnx_s"], 3)
            rows.append(row)
            print(
                f"{name:7s} {row['size']:>10s} tile {row['tile']:>5}  torch {row['torch_s']:8.3f} s"
                f"  onnxruntime {row['onnx_s']:8.3f} s  x{row['speedup']:.2f}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
