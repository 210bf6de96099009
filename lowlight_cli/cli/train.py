"""``lowlight train``: the papers' recipes on paired or synthetic data, resumable, exportable."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import typer

from lowlight_cli.constants import ENV_DEVICE, ENV_VGG16_PATH
from lowlight_cli.errors import UsageError

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
# "540", or hours, minutes and seconds in that order, each at most once: "2h10m", "1h 30m 20s".
_DURATION = re.compile(
    rf"(?P<bare>{_NUMBER})|(?=\S)(?:(?P<h>{_NUMBER})h)?\s*(?:(?P<m>{_NUMBER})m)?\s*(?:(?P<s>{_NUMBER})s)?"
)
# The share of identity pairs when --identity-data is given without --set identity_prob.
DEFAULT_IDENTITY_PROB = 0.25


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``540``, ``540s``, ``9m``, ``1.5h``, ``2h10m``, ``1h 30m 20s``.

    Raises:
        UsageError: not a positive duration in that form.
    """
    match = _DURATION.fullmatch(text.strip().lower())
    parts = match.groupdict() if match else {}
    seconds = float(parts["bare"]) if parts.get("bare") else 0.0
    for unit, scale in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if parts.get(unit):
            seconds += float(parts[unit]) * scale
    if not seconds > 0 or seconds == float("inf"):
        raise UsageError(f"'{text}' is not a duration", hint="e.g. 540, 540s, 9m, 1.5h or 2h10m")
    return seconds


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``["init=kaiming", "lr=2e-4"]`` -> recipe overrides, each value read as JSON if it is.

    Raises:
        UsageError: an item without ``=``.
    """
    import json

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set '{item}' is not KEY=VALUE", hint="e.g. --set init=kaiming")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
        if isinstance(out[key.strip()], list):
            out[key.strip()] = tuple(out[key.strip()])
    return out


def _make_reporter(log_every: int) -> Any:
    """A rich progress bar on a terminal, plain log lines every ``log_every`` steps otherwise."""
    import json

    from lowlight_cli.cli._common import err_console, progress_enabled
    from lowlight_cli.training.loop import Reporter

    class CliReporter(Reporter):
        def __init__(self) -> None:
            self.progress: Any = None
            self.task_id: Any = None
            self.last_val = "-"
            self.t0 = time.perf_counter()
            self.t_last = self.t0
            self.steps_since = 0

        def start(self, info: dict[str, Any]) -> None:
            err_console.print(
                f"lowlight train: {info['model']} on {info['data']}\n"
                f"  device {info['device']} ({info['amp']}), {info['world_size']} process(es), "
                f"seed {info['seed']}, steps {info['start_step']} -> "
                f"{info['schedule']['total_steps']}\n"
                f"  recipe {json.dumps(info['recipe'])}\n"
                f"  schedule {json.dumps(info['schedule'])}"
                + (f"\n  prepared {json.dumps(info['prepared'])}" if info["prepared"] else ""),
                markup=False,
            )
            if progress_enabled():
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeRemainingColumn,
                )

                self.progress = Progress(
                    TextColumn("train"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeRemainingColumn(),
                    TextColumn("{task.fields[status]}"),
                    console=err_console,
                    transient=False,
                )
                self.progress.start()
                self.task_id = self.progress.add_task(
                    "train",
                    total=info["schedule"]["total_steps"],
                    completed=info["start_step"],
                    status="",
                )

        def step(self, step: int, total: int, logs: dict[str, float]) -> None:
            self.steps_since += 1
            status = f"loss {logs['loss']:.4g} lr {logs['lr']:.2e} val psnr {self.last_val}"
            if self.progress is not None:
                self.progress.update(self.task_id, completed=step, status=status)
            elif step % log_every == 0 or step == total:
                now = time.perf_counter()
                sps = (now - self.t_last) / max(1, self.steps_since)
                self.t_last, self.steps_since = now, 0
                err_console.print(f"step {step}/{total} {status} {sps:.3f} s/step", markup=False)

        def validation(self, step: int, scores: dict[str, float], best: bool) -> None:
            self.last_val = f"{scores['psnr']:.2f}"
            line = (
                f"validation @ {step}: PSNR {scores['psnr']:.3f} dB, SSIM {scores['ssim']:.4f}"
                + (
                    f" (at the targets' mean brightness: {scores['psnr_gt_mean']:.2f} dB)"
                    if "psnr_gt_mean" in scores
                    else ""
                )
                + (" (best)" if best else "")
            )
            if self.progress is not None:
                self.progress.console.print(line, markup=False)
            else:
                err_console.print(line, markup=False)
            # Waiting for validation should not count as step time.
            self.t_last = time.perf_counter()

        def message(self, text: str) -> None:
            err_console.print(text, markup=False)

        def close(self) -> None:
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    return CliReporter()


def train(
    model: str = typer.Option(
        ..., "--model", "-m", help="Model to train (symnet, nrl, frlie, neid)."
    ),
    dataset: str = typer.Option(
        "lol", "--dataset", help="lol (our485 + eval15), pairs (low/ + high/), or synthetic."
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Dataset folder (lol: default lol/ in the user data folder or LOWLIGHT_DATA_DIR).",
    ),
    val: Path | None = typer.Option(
        None, "--val", help="Validation folder with low/ + high/ (lol: eval15 by default)."
    ),
    steps: int | None = typer.Option(
        None, "--steps", help="Total optimiser steps (the schedule's milestones scale to it)."
    ),
    epochs: float | None = typer.Option(None, "--epochs", help="Total epochs instead of steps."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Override the recipe's batch."
    ),
    patch: int | None = typer.Option(None, "--patch", help="Training crop size (ground truth)."),
    lr: float | None = typer.Option(None, "--lr", help="Override the initial learning rate."),
    device: str = typer.Option(
        "auto", "--device", envvar=ENV_DEVICE, help="auto, cpu, cuda[:N], mps."
    ),
    precision: str = typer.Option(
        "auto",
        "--precision",
        help="auto (AMP on CUDA; on a CPU with native bf16 the faster of fp32 and bf16, "
        "measured), fp32, fp16, bf16.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds data sampling and initial weights."),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue from a checkpoint (last.pt)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default runs/MODEL)."),
    export: bool = typer.Option(
        False, "--export", help="At the end, write the best weights as fp16 safetensors."
    ),
    val_every: int | None = typer.Option(None, "--val-every", help="Validate every N steps."),
    log_every: int | None = typer.Option(
        None, "--log-every", help="Log line every N steps when stderr is not a terminal."
    ),
    vgg: Path | None = typer.Option(
        None, "--vgg", envvar=ENV_VGG16_PATH, help="VGG-16 weights (symnet encoder, nrl loss)."
    ),
    stage: int | None = typer.Option(
        None, "--stage", help="frlie: 1 (reconstructor) or 2 (FRNet)."
    ),
    init: Path | None = typer.Option(
        None, "--init", help="Start from these weights (frlie stage 2: the stage-1 run)."
    ),
    workers: int = typer.Option(2, "--workers", help="Image-decoding threads."),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads."),
    tag: str | None = typer.Option(
        None, "--tag", help="Weights tag for --export (default: dataset)."
    ),
    channels_last: bool | None = typer.Option(
        None,
        "--channels-last/--no-channels-last",
        help="NHWC memory format (default: on a CPU, the faster layout, measured; else off).",
    ),
    budget: str | None = typer.Option(
        None,
        "--budget",
        help="Fit the whole schedule, decays included, into this much time (3h, 90m): a short "
        "probe measures s/step. With --resume: the time still to spend. Time the run is "
        "stopped (Ctrl-Z, SIGSTOP) is not counted.",
    ),
    ema: float | None = typer.Option(
        None, "--ema", help="Validate and export an exponential moving average (e.g. 0.999)."
    ),
    val_holdout: int | None = typer.Option(
        None,
        "--val-holdout",
        help="Training pairs held out for validation when --val is not given (lol: 15; "
        "eval15 is then left as the test set). 0: lol validates on eval15.",
    ),
    val_split: str = typer.Option(
        "pairs",
        "--val-split",
        help="pairs: --val-holdout single pairs; scenes: --val-holdout scenes with all their "
        "pairs, so no validation scene is also trained on (LOL photographs most scenes "
        "several times). A resumed run keeps its split.",
    ),
    identity_data: Path | None = typer.Option(
        None,
        "--identity-data",
        help="A folder of well-exposed photos: a share of the crops (--set identity_prob, "
        "default 0.25) is one of them as input and target, so the model leaves lit photos "
        "alone. Give it again with --resume.",
    ),
    settings: list[str] = typer.Option(
        [], "--set", help="Recipe setting KEY=VALUE (repeatable), e.g. --set init=kaiming."
    ),
    time_limit: str | None = typer.Option(
        None,
        "--time-limit",
        help="Stop after this long (540, 9m, 1.5h, 2h10m): validate, checkpoint, export if asked; "
        "--resume continues the schedule.",
    ),
) -> None:
    """Train a model with its paper's recipe; prints the manifest entry with --export."""
    from lowlight_cli.cli._common import err_console, print_json
    from lowlight_cli.datasets import require_data
    from lowlight_cli.registry import get_spec
    from lowlight_cli.training.loop import TrainConfig, export_checkpoint
    from lowlight_cli.training.loop import train as run_training
    from lowlight_cli.training.recipes import default_recipe

    spec = get_spec(model)
    data = require_data(dataset, data)
    if stage is not None and spec.name != "frlie":
        raise UsageError("--stage is only for frlie")
    if stage is not None and stage not in (1, 2):
        raise UsageError("--stage must be 1 or 2")
    overrides = parse_settings(settings)
    if identity_data is not None:
        overrides.setdefault("identity_prob", DEFAULT_IDENTITY_PROB)
    recipe = default_recipe(spec.name).override(
        batch_size=batch_size,
        patch=patch,
        lr=lr,
        val_every=val_every,
        log_every=log_every,
        stage=stage,
        **overrides,
    )
    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise UsageError(f"unknown precision '{precision}'", hint="auto, fp32, fp16, bf16")
    run_dir = out or Path("runs") / (
        spec.name if spec.name != "frlie" else f"frlie-stage{recipe.stage}"
    )
    cfg = TrainConfig(
        model=spec.name,
        dataset=dataset,
        data=data,
        val=val,
        recipe=recipe,
        steps=steps,
        epochs=epochs,
        out=run_dir,
        device=device,
        precision=precision,
        seed=seed,
        resume=resume,
        init=init,
        vgg=vgg,
        workers=workers,
        threads=threads,
        channels_last=channels_last,
        budget=parse_duration(budget) if budget is not None else None,
        ema_decay=ema,
        val_holdout=(15 if dataset == "lol" and val is None else 0)
        if val_holdout is None
        else val_holdout,
        val_split=val_split,
        val_every=val_every,
        log_every=log_every,
        time_limit=parse_duration(time_limit) if time_limit is not None else None,
        identity_data=identity_data,
    )
    result = run_training(cfg, reporter=_make_reporter(recipe.log_every))
    if result.best:
        err_console.print(
            f"best: PSNR {result.best['psnr']:.3f} dB, SSIM {result.best['ssim']:.4f} at step "
            f"{result.best['step']} ({result.best_checkpoint})",
            markup=False,
        )
    err_console.print(f"last checkpoint: {result.last_checkpoint}", markup=False)
    if export and result.best_checkpoint is not None:
        weights_tag = tag or dataset
        if spec.name == "frlie" and recipe.stage == 1:
            weights_tag += "-stage1"
        dest = run_dir / f"{spec.name}.{weights_tag}.safetensors"
        exported = export_checkpoint(result.best_checkpoint, dest, tag=weights_tag)
        err_console.print(f"exported {dest}", markup=False)
        print_json(exported)
    sys.stderr.flush()
