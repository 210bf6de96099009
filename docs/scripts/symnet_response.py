"""Two diagnostics of symnet weights: what its frozen encoder/decoder pass, what flat greys become.

1. **The encoder/decoder's frequency response.** symnet's image is rebuilt by the frozen decoder
   ``D`` (the transposed VGG ``conv1_1``/``conv1_2``) from the features the invertible transform
   outputs, and ``D(E(x))`` is far from the identity: this prints its gain on grey and colour-
   opponent cosines of several spatial frequencies (cycles per pixel; 0 is a flat image). A large
   spread means the transform has to rebuild the flat part of a picture from features many times
   larger than the encoder gives it, while a small feature error at the frequencies ``D`` passes
   best shows up as drawn edges.
2. **Flat greys in, greys out.** Each flat grey level through the whole model (forward
   direction), the output's mean and spread away from the borders. A model that maps every level
   to about the same grey flattens the contrast of real photos (a washed-out, pastel look);
   one that keeps bright levels bright leaves lit scenes alone.

    python docs/scripts/symnet_response.py \\
        --weights lowlight_cli/bundled/symnet.lol-cpu.safetensors --weights runs/symnet/best.pt

Weights files carry the encoder kernels, so no VGG file is needed. Runs on the CPU in seconds.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

FREQUENCIES = (0.0, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)
GREYS = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95)
SIZE = 128
BORDER = 32


def _cosine(freq: float, colour: tuple[float, float, float]):
    import torch

    xx = torch.arange(SIZE, dtype=torch.float32).expand(SIZE, SIZE)
    wave = torch.cos(2 * math.pi * freq * xx)
    return torch.stack([c * wave for c in colour]).unsqueeze(0)


def _gain(model, freq: float, colour: tuple[float, float, float]) -> float:
    x = _cosine(freq, colour)
    out = model.decode(model.encode(x))
    inner = (slice(None), slice(None), slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    a, b = out[inner], x[inner]
    return float((a * b).sum() / (b * b).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, action="append", required=True, metavar="FILE")
    args = parser.parse_args()

    import torch

    from lowlight_cli.registry import load_model

    torch.set_num_threads(1)
    for path in args.weights:
        model = load_model("symnet", path).eval()
        print(f"== {path}")
        with torch.no_grad():
            for name, colour in (("grey", (1.0, 1.0, 1.0)), ("red-blue", (1.0, 0.0, -1.0))):
                gains = [_gain(model, f, colour) for f in FREQUENCIES]
                pairs = zip(FREQUENCIES, gains, strict=True)
                cells = "  ".join(f"{f:.4f}: {g:.4f}" for f, g in pairs)
                print(f"D(E(x)) gain, {name} cosines (cycles/px: gain)  {cells}")
                print(f"  largest / flat gain: {max(gains) / max(abs(gains[0]), 1e-12):.1f}x")
            rows = []
            for level in GREYS:
                out = model(torch.full((1, 3, SIZE, SIZE), level))
                inner = out[..., BORDER:-BORDER, BORDER:-BORDER]
                rows.append(f"{level:.2f} -> {inner.mean():.3f} (sd {inner.std():.3f})")
            print("flat grey in -> out: " + ", ".join(rows))


if __name__ == "__main__":
    main()
