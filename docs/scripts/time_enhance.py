"""Time the whole ``lowlight enhance`` command (start-up, decode, model, encode) per model and path.

Each configuration runs as its own process, ``python -m lowlight_cli enhance PHOTO -m MODEL -o
OUT``, plus ``--full-res`` for the full-resolution path; this script measures its wall time and
peak resident memory (``wait4``'s ``ru_maxrss``, the whole process) and reads the ``--json``
record (path, working size, precision). Configurations alternate within each repeat, so the
ratios between paths come from the same run. Run it with the machine otherwise idle.

    python docs/scripts/time_enhance.py PHOTO [--models nrl neid frlie] [--paths fast full-res]
        [--weights symnet=symnet.lol-cpu] [--repeats 2] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(photo: Path, model: str, path: str, weights: str | None, out_dir: Path) -> dict:
    """One ``enhance`` process: seconds, peak RSS (MB) and its JSON record."""
    out = out_dir / f"{model}-{path}{photo.suffix}"
    cmd = [sys.executable, "-m", "lowlight_cli", "enhance", str(photo), "-m", model,
           "-o", str(out), "--overwrite", "--json"]  # fmt: skip
    if weights:
        cmd += ["--weights", weights]
    if path == "full-res":
        cmd.append("--full-res")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait4 gives this child's own peak RSS (RUSAGE_CHILDREN would be the max over all of them).
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {stderr[-500:]}")
    record = json.loads(stdout)["files"][0]
    rss_kb = usage.ru_maxrss / (1024 if sys.platform == "darwin" else 1)  # macOS: bytes
    return {
        "model": model,
        "weights": weights or "default",
        "path": record["path"],
        "working_size": record["working_size"],
        "precision": record["precision"],
        "size": record["size"],
        "seconds": round(seconds, 2),
        "enhance_seconds": record["seconds"],
        "peak_rss_mb": round(rss_kb / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", type=Path)
    parser.add_argument("--models", nargs="+", default=["nrl", "neid", "frlie"])
    parser.add_argument("--paths", nargs="+", default=["fast"], choices=["fast", "full-res"])
    parser.add_argument("--weights", nargs="*", default=[], help="MODEL=ID_OR_PATH")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    weights = dict(w.split("=", 1) for w in args.weights)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for model in args.models:
                for path in args.paths:
                    row = run_once(args.photo, model, path, weights.get(model), Path(tmp))
                    row["repeat"] = repeat
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
