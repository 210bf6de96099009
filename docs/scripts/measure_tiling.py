"""How seamless is tiled inference? Tiled vs whole-image output, per model.

For each model: enhance one photo (default: the dim museum scene in ../shared/data/photos,
area-resized to 2048x1536) once as a whole (--tile 0) and once in tiles (default 512) with the
context pass, and once in tiles without it (naive); report PSNR of tiled vs whole, and the max and
mean absolute difference within --band pixels of a seam vs elsewhere (outputs before clamping).
Uses the shipped/cached weights when they load, random weights otherwise (says which).

    python docs/scripts/measure_tiling.py [--models nrl neid] [--size 2048x1536] [--tile 512]
        [--photo PATH] [--random] [--weights symnet=symnet.lol-cpu] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PHOTO = REPO.parent / "shared/data/photos/exif-samples_42_IndexError_4032x3024.jpg"


def _load_module(name: str, random: bool, weights: str | None = None):
    import torch

    from lowlight_cli.errors import LowlightError
    from lowlight_cli.registry import create_model, get_spec, load_model

    if get_spec(name).kind == "classical":
        return create_model(name), "none needed"
    if not random:
        try:
            return load_model(name, weights), weights or "trained"
        except LowlightError as err:
            print(f"  {name}: no trained weights ({err.message}); using random weights")
    torch.manual_seed(0)
    model = create_model(name)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1 and not p.any():
                p.normal_(0.0, 0.02)  # zero-initialised output convs would hide the pooling path
    return model, "random"


def _seam_mask(h: int, w: int, enhancer, tile: int, band: int) -> np.ndarray:
    """True within ``band`` px of a seam (the centre of a blend zone) along either axis."""
    from lowlight_cli.tiling import plan_axis

    overlap, margin = enhancer._tile_geometry(tile)
    m = enhancer.spec.size_multiple
    mask = np.zeros((h, w), dtype=bool)
    for axis, length in ((0, h), (1, w)):
        padded = -(-length // m) * m
        spans = plan_axis(padded, tile, overlap, m, margin=margin)
        for span in spans[1:]:
            centre = (span.fade_in[0] + span.fade_in[1]) // 2
            lo, hi = max(0, centre - band), min(length, centre + band)
            if axis == 0:
                mask[lo:hi, :] = True
            else:
                mask[:, lo:hi] = True
    return mask


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _snr(a: np.ndarray, reference: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - reference) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(float(reference.var()) / mse)


def measure(
    name: str,
    image: np.ndarray,
    tile: int,
    band: int,
    random: bool,
    weights: str | None = None,
    naive: bool = True,
) -> dict:
    """Whole vs tiled (with and without the context pass) for one model."""
    from lowlight_cli.engine import Enhancer
    from lowlight_cli.registry import get_spec

    module, weights = _load_module(name, random, weights)
    spec = get_spec(name)
    runs = {}
    passes = [("whole", {"tile": 0}), ("tiled", {"tile": tile})]
    if naive:
        passes.append(("naive", {"tile": tile, "context_pass": False}))
    for label, kwargs in passes:
        enhancer = Enhancer(module, spec=spec, device="cpu", **kwargs)
        started = time.perf_counter()
        # Unclamped: random weights often land outside [0, 1], where clamping hides differences.
        tile_used = 0 if not spec.supports_tiling else kwargs["tile"]
        runs[label] = enhancer._run(image, tile_used, None)
        runs[label + "_seconds"] = time.perf_counter() - started
    mask = _seam_mask(*image.shape[:2], Enhancer(module, spec=spec, device="cpu"), tile, band)
    diff = np.abs(runs["tiled"] - runs["whole"]).max(axis=2)
    runs.setdefault("naive", runs["tiled"] * np.nan)  # --no-naive: reported as NaN
    naive = np.abs(runs["naive"] - runs["whole"]).max(axis=2)
    return {
        "model": name,
        "weights": weights,
        "psnr_tiled_vs_whole": round(_psnr(runs["tiled"], runs["whole"]), 2),
        "psnr_naive_vs_whole": round(_psnr(runs["naive"], runs["whole"]), 2),
        # scale-free: output variance over the tiling error (random outputs are nearly flat)
        "snr_tiled_db": round(_snr(runs["tiled"], runs["whole"]), 2),
        "snr_naive_db": round(_snr(runs["naive"], runs["whole"]), 2),
        "near_seams_max": float(diff[mask].max()) if mask.any() else 0.0,
        "near_seams_mean": float(diff[mask].mean()) if mask.any() else 0.0,
        "elsewhere_max": float(diff[~mask].max()),
        "elsewhere_mean": float(diff[~mask].mean()),
        "naive_near_seams_mean": float(naive[mask].mean()) if mask.any() else 0.0,
        "seconds_whole": round(runs["whole_seconds"], 1),
        "seconds_tiled": round(runs["tiled_seconds"], 1),
    }


def main() -> None:
    import cv2

    from lowlight_cli.image_io import read_image
    from lowlight_cli.registry import MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO)
    parser.add_argument("--size", default="2048x1536", help="WxH after an area resize")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--band", type=int, default=16, help="pixels each side of a seam")
    parser.add_argument(
        "--random", action="store_true", help="random weights even if trained exist"
    )
    parser.add_argument(
        "--weights", action="append", default=[], help="MODEL=ID_OR_PATH (repeatable)"
    )
    parser.add_argument(
        "--no-naive", action="store_true", help="skip the naive pass (saves a third of the time)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    chosen = dict(item.split("=", 1) for item in args.weights)
    width, height = (int(v) for v in args.size.lower().split("x"))
    pixels = read_image(args.photo).pixels
    image = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)
    print(f"{args.photo.name} -> {width}x{height}, tile {args.tile}, seam band {args.band} px")
    header = (
        "model   weights  PSNR tiled  PSNR naive  SNR tiled/naive  seam max/mean"
        "      elsewhere max/mean"
    )
    print(header)
    rows = []
    for name in args.models:
        r = measure(
            name, image, args.tile, args.band, args.random, chosen.get(name), not args.no_naive
        )
        rows.append(r)
        print(
            f"{name:7s} {r['weights']:8s} {r['psnr_tiled_vs_whole']:9.2f}  "
            f"{r['psnr_naive_vs_whole']:9.2f}  {r['snr_tiled_db']:6.1f}/{r['snr_naive_db']:6.1f}"
            f"   {r['near_seams_max']:.4f}/{r['near_seams_mean']:.5f}"
            f"    {r['elsewhere_max']:.4f}/{r['elsewhere_mean']:.5f}"
            f"   ({r['seconds_whole']} s whole, {r['seconds_tiled']} s tiled)",
            flush=True,
        )
    if args.json:
        args.json.write_text(
            json.dumps({"size": args.size, "tile": args.tile, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
