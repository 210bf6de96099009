"""Before/after gallery of real dark photos: the input, then each model, one row per photo.

Every model runs with its default weights through the engine, exactly as ``lowlight enhance``
does; each photo is shown shrunk to ``--width`` pixels per panel (after enhancing at the photo's
own size), labelled, and the grid is written as one JPEG. Use it to look for what the scores do
not show: embossing, colour blobs, halos, casts.

    python docs/scripts/gallery.py ../shared/data/unpaired/LIME/1.bmp ... \\
        --models nrl neid frlie gamma clahe --out docs/images/gallery/unpaired.jpg

``--candidate neid=runs/neid/neid.lol.safetensors`` adds a panel of weights not landed yet.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

LABEL_HEIGHT = 20
GAP = 4


def _panel(image: np.ndarray, width: int, label: str) -> np.ndarray:
    """``image`` (float RGB in [0, 1]) shrunk to ``width`` wide, with a label strip above."""
    import cv2

    h, w = image.shape[:2]
    height = round(h * width / w)
    small = cv2.resize(np.clip(image, 0, 1), (width, height), interpolation=cv2.INTER_AREA)
    rgb = np.round(small * 255).astype(np.uint8)
    strip = np.full((LABEL_HEIGHT, width, 3), 255, np.uint8)
    cv2.putText(strip, label, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, rgb], axis=0)


def _row(panels: list[np.ndarray]) -> np.ndarray:
    height = max(p.shape[0] for p in panels)
    padded = []
    for panel in panels:
        pad = np.full((height, panel.shape[1] + GAP, 3), 255, np.uint8)
        pad[: panel.shape[0], : panel.shape[1]] = panel
        padded.append(pad)
    return np.concatenate(padded, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path, nargs="+")
    parser.add_argument("--models", nargs="+", default=["nrl", "neid", "frlie", "gamma", "clahe"])
    parser.add_argument("--width", type=int, default=240, help="panel width in pixels")
    parser.add_argument("--out", type=Path, required=True, help="output JPEG")
    parser.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="MODEL=FILE",
        help="also show MODEL with these weights, labelled 'MODEL new' (before landing them)",
    )
    args = parser.parse_args()

    import cv2

    from lowlight_cli.engine import Enhancer
    from lowlight_cli.image_io import read_image

    enhancers = {name: Enhancer.create(name) for name in args.models}
    for item in args.candidate:
        model, _, path = item.partition("=")
        label, n = f"{model} new", 1
        while label in enhancers:  # two candidates of one model: new, new2, ...
            n += 1
            label = f"{model} new{n}"
        enhancers[label] = Enhancer.create(model, weights=path)
    rows = []
    for photo in args.photos:
        pixels = read_image(photo).pixels[..., :3]
        label = f"{photo.parent.name}/{photo.name}"
        panels = [_panel(pixels, args.width, f"input {label}")]
        for name, enhancer in enhancers.items():
            panels.append(_panel(enhancer.enhance(pixels), args.width, name))
        rows.append(_row(panels))
        print(f"{label}: done", flush=True)
    width = max(r.shape[1] for r in rows)
    grid = np.full((sum(r.shape[0] + GAP for r in rows), width, 3), 255, np.uint8)
    y = 0
    for row in rows:
        grid[y : y + row.shape[0], : row.shape[1]] = row
        y += row.shape[0] + GAP
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ok = cv2.imwrite(
        str(args.out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88]
    )
    if not ok:
        raise SystemExit(f"could not write {args.out}")
    print(args.out)


if __name__ == "__main__":
    main()
