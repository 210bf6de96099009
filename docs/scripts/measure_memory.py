"""Peak bytes per input pixel of one forward pass, per model (feeds engine.BYTES_PER_PIXEL).

Each measurement runs in a fresh process: build the model (random weights: the memory is the
same as with trained ones), run a small warm-up, then one pass at side S, and read the peak RSS.
The slope between two sides is the per-pixel cost, free of the fixed cost of torch and weights.

    python docs/scripts/measure_memory.py [--sides 256 512] [--models symnet nrl ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_CHILD = r"""
import json, resource, sys, torch
from lowlight_cli.registry import create_model
name, side, cl = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
model = create_model(name)
if cl:
    model = model.to(memory_format=torch.channels_last)
with torch.inference_mode():
    model(torch.rand(1, 3, 64, 64))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    x = torch.rand(1, 3, side, side)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    model(x)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kib": base, "peak_kib": peak}))
"""


def peak_kib(name: str, side: int, channels_last: bool) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, name, str(side), "1" if channels_last else "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_kib"]


def main() -> None:
    from lowlight_cli.registry import MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--sides", nargs=2, type=int, default=[256, 512])
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    small, large = args.sides
    for name in args.models:
        lo = peak_kib(name, small, args.channels_last)
        hi = peak_kib(name, large, args.channels_last)
        per_pixel = (hi - lo) * 1024 / (large * large - small * small)
        print(f"{name:8s} peak {hi / 1024:7.1f} MiB at {large}px  ~{per_pixel:7.0f} bytes/pixel")


if __name__ == "__main__":
    main()
