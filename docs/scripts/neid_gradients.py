"""How much of neid's training signal comes from each term of its loss (eq. 7).

For each LOL pair, a 256 px crop (as in training) goes through the given neid weights; the
gradient of each weighted term -- Huber on the LE image, ``lambda_2`` times the colour loss
(eqs. 4-6) -- with respect to the LE image is measured, and the ratio of their norms printed.
A ratio far above 1 means the optimiser mostly follows hue and saturation, which PSNR does not
score. Also printed: the share of the colour gradient's energy on low-saturation pixels
(saturation < 0.1 or value < 0.05), where hue is least defined.

    python docs/scripts/neid_gradients.py --data ../lol/our485 \\
        --weights lowlight_cli/bundled/neid.lol.safetensors --pairs 12

Runs on the CPU in seconds.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

CROP = 256
LOW_SATURATION = 0.1
DARK = 0.05


def _load(path: Path):
    import numpy as np
    import torch

    from lowlight_cli.image_io import read_image

    rgb = np.ascontiguousarray(read_image(path).pixels, dtype=np.float32)
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)


def main() -> None:
    import torch
    import torch.nn.functional as F

    from lowlight_cli.metrics import rgb_to_hsv
    from lowlight_cli.registry import load_model
    from lowlight_cli.training.losses import NEID_HUBER_DELTA, NEID_W_COLOR, neid_color_loss

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with low/ and high/")
    ap.add_argument("--weights", default="neid.lol", help="neid weights id or file")
    ap.add_argument("--pairs", type=int, default=12, help="pairs, evenly spaced by name")
    ap.add_argument("--color-weight", type=float, default=NEID_W_COLOR, help="lambda_2")
    args = ap.parse_args()

    model = load_model("neid", weights=args.weights).eval()
    lows = sorted(p for p in (args.data / "low").iterdir() if p.is_file())
    if not lows:
        raise SystemExit(f"no images in {args.data / 'low'}")
    step = max(1, len(lows) // args.pairs)
    ratios, shares = [], []
    print("pair  |grad huber|  |grad colour|  ratio  low-sat pixels  colour energy there")
    for low_path in lows[::step][: args.pairs]:
        high_path = next((args.data / "high").glob(low_path.stem + ".*"))
        low, high = _load(low_path), _load(high_path)
        top = (low.shape[2] - CROP) // 2
        left = (low.shape[3] - CROP) // 2
        low = low[..., top : top + CROP, left : left + CROP]
        high = high[..., top : top + CROP, left : left + CROP]
        with torch.no_grad():
            out = model(low)
        out.requires_grad_(True)
        (g_huber,) = torch.autograd.grad(F.huber_loss(out, high, delta=NEID_HUBER_DELTA), out)
        (g_color,) = torch.autograd.grad(args.color_weight * neid_color_loss(out, high), out)
        hsv = rgb_to_hsv(out.detach().clamp(0, 1))[0]
        weak = (hsv[1] < LOW_SATURATION) | (hsv[2] < DARK)
        energy = g_color.pow(2).sum(dim=1)[0]
        ratio = float(g_color.norm() / g_huber.norm())
        share = float(energy[weak].sum() / energy.sum())
        ratios.append(ratio)
        shares.append(share)
        print(
            f"{low_path.name:>8}  {float(g_huber.norm()):.2e}  {float(g_color.norm()):.2e}"
            f"  {ratio:6.1f}  {float(weak.float().mean()):6.2f}  {share:6.2f}"
        )
    print(
        f"median ratio {statistics.median(ratios):.1f} (min {min(ratios):.1f}, "
        f"max {max(ratios):.1f}); median colour energy on low-saturation pixels "
        f"{statistics.median(shares):.2f}"
    )


if __name__ == "__main__":
    main()
