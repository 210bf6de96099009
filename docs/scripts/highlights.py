"""How often a model darkens what was already bright: the share of bright input pixels it crushes.

An enhancer should leave a photo's well-lit parts (a sky, a lamp, a flame) lit. LOL's training
inputs are dark everywhere, so a model can learn nothing about bright inputs and turn them black;
PSNR on LOL does not see it. For every photo this counts the pixels whose input luma is at least
``--bright`` and whose output luma is below half of it, as a percentage of the bright pixels, and
prints one row per photo and model, then each model's mean and worst photo. ``--kept`` prints
instead how much of their brightness the bright pixels keep on average (output luma over input
luma, capped at 1, in percent): 100 means nothing bright was dimmed, and it shows a sky turned
grey that is not dark enough to count as crushed.

    python docs/scripts/highlights.py ../shared/data/unpaired/*/* --models nrl neid frlie gamma \\
        --weights frlie=runs/frlie/best.pt

Each model runs through the engine with its default settings, as ``lowlight enhance`` does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _bright_lumas(
    before: np.ndarray, after: np.ndarray, bright: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """Input and output luma of the pixels with input luma >= ``bright`` (None: there are none)."""
    y_in = before[..., :3] @ LUMA
    mask = y_in >= bright
    if not mask.any():
        return None
    return y_in[mask], (np.clip(after[..., :3], 0, 1) @ LUMA)[mask]


def crushed_percent(before: np.ndarray, after: np.ndarray, bright: float) -> float | None:
    """Percent of pixels with luma >= ``bright`` in ``before`` below half of it in ``after``.

    None when the photo has no bright pixels.
    """
    lumas = _bright_lumas(before, after, bright)
    return None if lumas is None else float(100.0 * np.mean(lumas[1] < 0.5 * lumas[0]))


def kept_percent(before: np.ndarray, after: np.ndarray, bright: float) -> float | None:
    """Mean of ``min(1, output luma / input luma)`` over the bright pixels, in percent."""
    lumas = _bright_lumas(before, after, bright)
    return None if lumas is None else float(100.0 * np.mean(np.minimum(lumas[1] / lumas[0], 1.0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path, nargs="+")
    parser.add_argument("--models", nargs="+", default=["nrl", "neid", "frlie", "gamma", "clahe"])
    parser.add_argument(
        "--weights", nargs="*", default=[], metavar="MODEL=FILE", help="weights to use instead"
    )
    parser.add_argument("--bright", type=float, default=0.5, help="input luma counted as bright")
    parser.add_argument("--kept", action="store_true", help="print the brightness kept instead")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()

    from lowlight_cli.engine import Enhancer
    from lowlight_cli.image_io import read_image

    weights = dict(w.split("=", 1) for w in args.weights)
    enhancers = {m: Enhancer.create(m, weights=weights.get(m)) for m in args.models}
    rows = []
    measure = kept_percent if args.kept else crushed_percent
    unit = "(% brightness kept)" if args.kept else "(% crushed)"
    print(f"{'photo':32s} " + " ".join(f"{m:>8s}" for m in args.models) + f"  {unit}")
    for photo in args.photos:
        pixels = read_image(photo).pixels[..., :3]
        label = f"{photo.parent.name}/{photo.name}"
        row = {"photo": label}
        for name, enhancer in enhancers.items():
            row[name] = measure(pixels, enhancer.enhance(pixels), args.bright)
        rows.append(row)
        cells = " ".join("       -" if row[m] is None else f"{row[m]:8.2f}" for m in args.models)
        print(f"{label:32s} {cells}", flush=True)
    for what, fn in (("mean", np.mean), ("worst", np.min if args.kept else np.max)):
        cells = []
        for m in args.models:
            values = [r[m] for r in rows if r[m] is not None]
            cells.append(f"{fn(values):8.2f}" if values else "       -")
        print(f"{what:32s} " + " ".join(cells))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
