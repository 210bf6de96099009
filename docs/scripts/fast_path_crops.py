"""100% crops of a photo enhanced at full resolution beside the fast path (the default).

For each region, the full-resolution output (``--full-res``; cached as a PNG, since it takes
minutes on a CPU) and the default output are cut at 100% and put side by side, one row per
region, labelled. Look for halos and seams at edges, and for lost detail.

    python docs/scripts/fast_path_crops.py PHOTO --model nrl --out docs/images/x.png
        --regions 1160,0,200,150 60,440,200,150 [--full-res-cache DIR] [--weights ID]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

LABEL_HEIGHT = 18
GAP = 4


def _full_res(photo: Path, model: str, weights: str | None, cache: Path) -> np.ndarray:
    import cv2

    from lowlight_cli.engine import Enhancer
    from lowlight_cli.image_io import read_image

    path = cache / f"{photo.stem}-{model}-full-res.png"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        enh = Enhancer.create(model, weights=weights, working_size="full")
        out = enh.enhance(read_image(photo).pixels)
        rgb = np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", type=Path)
    parser.add_argument("--model", default="nrl")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--regions", nargs="+", required=True, help="X,Y,W,H at full size")
    parser.add_argument("--full-res-cache", type=Path, default=Path("full-res-cache"))
    args = parser.parse_args()

    from PIL import Image, ImageDraw

    from lowlight_cli.engine import Enhancer
    from lowlight_cli.image_io import read_image

    full = _full_res(args.photo, args.model, args.weights, args.full_res_cache)
    enh = Enhancer.create(args.model, weights=args.weights)
    pixels = read_image(args.photo).pixels
    small = enh.working_shape(*pixels.shape[:2])
    fast = np.round(np.clip(enh.enhance(pixels), 0, 1) * 255).astype(np.uint8)
    fast_label = f"fast ({small[1]}x{small[0]})" if small else "fast (= full-res)"
    labels = (f"{args.model} full-res", f"{args.model} {fast_label}")

    rows = []
    for region in args.regions:
        x, y, w, h = (int(v) for v in region.split(","))
        rows.append([full[y : y + h, x : x + w], fast[y : y + h, x : x + w]])
    width = max(sum(p.shape[1] for p in row) + GAP for row in rows)
    height = LABEL_HEIGHT + sum(row[0].shape[0] + GAP for row in rows)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), labels[0], fill=(0, 0, 0))
    draw.text((rows[0][0].shape[1] + GAP + 4, 3), labels[1], fill=(0, 0, 0))
    top = LABEL_HEIGHT
    for row in rows:
        left = 0
        for panel in row:
            canvas.paste(Image.fromarray(panel), (left, top))
            left += panel.shape[1] + GAP
        top += row[0].shape[0] + GAP
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out, optimize=True)
    print(f"{args.out}: {args.out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
