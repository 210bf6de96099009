"""Training speed on this machine: samples per second, fp32 on one thread vs lowlight's default.

The default is what ``lowlight train`` does on a CPU: all cores, and the precision and memory
format that measure fastest (:func:`lowlight_cli.training.loop._cpu_settings`). A step is the
model's forward, backward and Adam step (nrl: plus its discriminator's), through the same task
code as training, on random crops of LOL. The two settings alternate step by step, so load
changes hit both alike; the median step counts.

    python docs/scripts/train_speed.py --data ../shared/data/lol \\
        --vgg ../shared/data/weights/vgg16_imagenet/vgg16_keras_imagenet_conv_oihw_fp16.npz

``--shapes symnet=4x48,symnet=4x64`` measures other batch sizes and crops instead (for choosing
them: the last column gives the default setting's rate in pixels, which is what a fully
convolutional model learns from).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from lowlight_cli.registry import create_model
from lowlight_cli.training.config import Reporter, TrainConfig
from lowlight_cli.training.data import Augment, build_run_data
from lowlight_cli.training.distributed import _Dist
from lowlight_cli.training.loop import _cpu_settings
from lowlight_cli.training.precision import _Amp, describe_setting
from lowlight_cli.training.recipes import default_recipe
from lowlight_cli.training.tasks import TASKS

# Batch and crop per model: what the CPU runs in docs/models.md use.
SHAPES = {"neid": (8, 128), "nrl": (4, 96), "frlie": (8, 96), "symnet": (2, 64)}


class Quiet(Reporter):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="LOL root")
    parser.add_argument("--vgg", type=Path, required=True, help="VGG-16 weights (nrl, symnet)")
    parser.add_argument("--models", default="neid,nrl,frlie,symnet")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per setting")
    parser.add_argument(
        "--shapes", default="", help="MODEL=BATCHxCROP,... instead of --models (e.g. symnet=4x96)"
    )
    args = parser.parse_args()
    runs = [(name, *SHAPES[name]) for name in args.models.split(",")]
    if args.shapes:
        runs = []
        for item in args.shapes.split(","):
            name, _, shape = item.partition("=")
            batch_text, _, patch_text = shape.partition("x")
            runs.append((name, int(batch_text), int(patch_text)))
    cores = torch.get_num_threads()
    print(
        f"| model | batch x crop | fp32, 1 thread | default ({cores} threads) | speed-up "
        "| default, kpx/s |"
    )
    print("|---|---|---|---|---|---|")
    for name, batch_size, patch in runs:
        recipe = default_recipe(name).override(batch_size=batch_size, patch=patch)
        if name == "frlie":
            recipe = recipe.override(stage=2)
        cfg = TrainConfig(model=name, recipe=recipe, vgg=args.vgg, channels_last=None)
        data = build_run_data("lol", args.data, workers=2, holdout=15)
        model = create_model(name).train()
        task = TASKS[name](model, recipe, cfg, torch.device("cpu"))
        if name in ("symnet", "nrl"):
            task.prepare(data, Quiet())
        aug = Augment.from_recipe(recipe)
        torch.set_num_threads(cores)
        amp, channels_last, _ = _cpu_settings(
            cfg, None, task, data, aug, batch_size, 0, _Dist(), Quiet()
        )
        settings = {
            "base": (1, _Amp(None, torch.device("cpu")), False),
            "default": (cores, amp, channels_last),
        }
        params = task.trainable()
        opt = torch.optim.Adam(params, lr=1e-6)
        times: dict[str, list[float]] = {k: [] for k in settings}
        for step in range(args.steps + 1):
            for key, (threads, run_amp, cl) in settings.items():
                torch.set_num_threads(threads)
                fmt = torch.channels_last if cl else torch.contiguous_format
                model.to(memory_format=fmt)
                batch = data.train.sample(0, step, batch_size, aug).to(
                    torch.device("cpu"), channels_last=cl
                )
                t0 = time.perf_counter()
                with run_amp.autocast():
                    loss, _ = task.loss(batch)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                task.aux_step(batch, run_amp)
                if step:  # the first round pays one-time costs
                    times[key].append(time.perf_counter() - t0)
        base = batch_size / statistics.median(times["base"])
        new = batch_size / statistics.median(times["default"])
        print(
            f"| {name} | {batch_size} x {patch} px | {base:.2f} samples/s | {new:.2f} samples/s "
            f"({describe_setting(amp.dtype, channels_last)}) | {new / base:.2f}x "
            f"| {new * patch * patch / 1000:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
