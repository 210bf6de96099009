"""How much of frlie's stage-2 training signal comes from each term of its loss (eq. 7).

For each LOL pair, a crop (as in training) goes through the given frlie weights; the gradient
of each weighted term -- ``100 L_D`` (pixel MSE), ``0.2 L_FM`` (L1 to the encoder's features of
the ground truth), ``0.5 (1 - SSIM)`` and ``0.05 L_hue`` -- with respect to FRNet's parameters
(the only part stage 2 trains) is measured. Printed per term: the median gradient norm over the
pairs, its ratio to the pixel term's, and the median cosine between the term's gradient and the
pixel term's (near 0 or negative: the term pulls FRNet somewhere PSNR does not reward).

    python docs/scripts/frlie_gradients.py --data ../lol/our485 \\
        --weights lowlight_cli/bundled/frlie.lol.safetensors --pairs 12

Runs on the CPU in about a minute.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path


def _load(path: Path):
    import numpy as np
    import torch

    from lowlight_cli.image_io import read_image

    rgb = np.ascontiguousarray(read_image(path).pixels, dtype=np.float32)
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)


def main() -> None:
    import torch
    import torch.nn.functional as F

    from lowlight_cli.metrics import ssim
    from lowlight_cli.registry import load_model
    from lowlight_cli.training.losses import (
        FRLIE_W_DECODE,
        FRLIE_W_FEATURE,
        FRLIE_W_HUE,
        FRLIE_W_SSIM,
        circular_hue_distance,
    )

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with low/ and high/")
    ap.add_argument("--weights", default="frlie.lol", help="frlie weights id or file")
    ap.add_argument("--pairs", type=int, default=12, help="pairs, evenly spaced by name")
    ap.add_argument("--crop", type=int, default=256, help="centre crop size in pixels")
    args = ap.parse_args()

    model = load_model("frlie", weights=args.weights).eval()
    params = [p for p in model.frnet.parameters() if p.requires_grad]
    lows = sorted(p for p in (args.data / "low").iterdir() if p.is_file())
    if not lows:
        raise SystemExit(f"no images in {args.data / 'low'}")
    step = max(1, len(lows) // args.pairs)
    terms = ("decode", "feature", "ssim", "hue")
    norms: dict[str, list[float]] = {t: [] for t in terms}
    cosines: dict[str, list[float]] = {t: [] for t in terms}
    for low_path in lows[::step][: args.pairs]:
        high_path = next((args.data / "high").glob(low_path.stem + ".*"))
        low, high = _load(low_path), _load(high_path)
        top = (low.shape[2] - args.crop) // 2
        left = (low.shape[3] - args.crop) // 2
        low = low[..., top : top + args.crop, left : left + args.crop]
        high = high[..., top : top + args.crop, left : left + args.crop]
        with torch.no_grad():
            target_feat = model.encode(high)
        restored = model.restore(model.encode(low))
        pred = model.decode(restored)
        weighted = {
            "decode": FRLIE_W_DECODE * F.mse_loss(pred, high),
            "feature": FRLIE_W_FEATURE * F.l1_loss(restored, target_feat),
            "ssim": FRLIE_W_SSIM * (1.0 - ssim(pred, high).mean()),
            "hue": FRLIE_W_HUE * circular_hue_distance(pred, high).mean(),
        }
        grads = {}
        for name in terms:
            g = torch.autograd.grad(weighted[name], params, retain_graph=True, allow_unused=True)
            grads[name] = torch.cat(
                [
                    (x if x is not None else torch.zeros_like(p)).flatten()
                    for x, p in zip(g, params, strict=True)
                ]
            )
        for name in terms:
            norms[name].append(float(grads[name].norm()))
            cosines[name].append(float(F.cosine_similarity(grads[name], grads["decode"], dim=0)))
        print(
            f"{low_path.name:>8}  "
            + "  ".join(f"{t} {norms[t][-1]:.2e} (cos {cosines[t][-1]:+.2f})" for t in terms)
        )
    base = statistics.median(norms["decode"])
    print("term     median |grad|  ratio to pixel term  median cosine with pixel term")
    for name in terms:
        med = statistics.median(norms[name])
        print(f"{name:8} {med:12.2e}  {med / base:19.2f}  {statistics.median(cosines[name]):+.2f}")


if __name__ == "__main__":
    main()
