"""The training loop: resumable, validated, exportable; one process or ``torchrun``.

Exact resume: the batch of step ``k`` is a pure function of ``(seed, k)`` (see
:mod:`lowlight_cli.training.data`) and the learning rate a pure function of ``k``
(:meth:`Schedule.lr_at`), so a checkpoint only has to hold the weights, the optimiser, the AMP
scaler, ``k`` and the RNG states; N steps straight equal N/2 + resume + N/2 bit for bit.

Multi-GPU: under ``torchrun`` (``WORLD_SIZE > 1``) every process takes its share of each global
batch and gradients are averaged before the optimiser step (:mod:`.distributed`). What each model
computes per step lives in :mod:`.tasks`; the run's settings in :mod:`.config`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import torch
from torch import nn

from lowlight_cli.devices import keep_freed_memory
from lowlight_cli.errors import UsageError
from lowlight_cli.training.checkpoint import (
    CHECKPOINT_VERSION,
    atomic_torch_save,
    load_checkpoint,
    rng_state,
    save_fp16_safetensors,
    set_rng_state,
)
from lowlight_cli.training.clock import RunClock
from lowlight_cli.training.config import Reporter, TrainConfig, TrainResult
from lowlight_cli.training.data import Augment, PairedImages, build_run_data
from lowlight_cli.training.distributed import (
    _all_agree,
    _all_agree_max,
    _average_gradients,
    _Dist,
    _init_distributed,
)
from lowlight_cli.training.precision import (
    _Amp,
    cpu_candidates,
    describe_setting,
    resolve_amp,
    resolve_device,
)
from lowlight_cli.training.recipes import RECIPES, Recipe, Schedule, default_recipe
from lowlight_cli.training.tasks import TASKS, Task
from lowlight_cli.weights.state import TRAINING_CHECKPOINT_FORMAT, training_checkpoint_weights

__all__ = [
    "BEST",
    "LAST",
    "METRICS_LOG",
    "METRICS_PLOT",
    "Reporter",
    "TrainConfig",
    "TrainResult",
    "export_checkpoint",
    "plot_metrics",
    "resolve_amp",
    "resolve_device",
    "train",
    "validate",
]

METRICS_LOG = "metrics.jsonl"
METRICS_PLOT = "metrics.png"
LAST = "last.pt"
BEST = "best.pt"


# ---- helpers -----------------------------------------------------------------------------------


def _recipe_from_dict(d: dict[str, Any]) -> Recipe:
    cls = next((c for c in (*RECIPES.values(), Recipe) if c.__name__ == d.get("recipe")), Recipe)
    known = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in known}
    for key in ("betas", "milestones"):
        if key in kwargs and isinstance(kwargs[key], list):
            kwargs[key] = tuple(kwargs[key])
    return cls(**kwargs)


class _Ema:
    """Exponential moving average of the model's floating-point state.

    The decay warms up as ``min(decay, (1 + step) / (10 + step))``: with a fixed 0.999, 200
    steps into a run the average still held 82 % of the initial weights and validated at
    6.8 dB while the live weights scored 15.5 dB (neid, measured).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {
            k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1.0 + step) / (10.0 + step))
        for k, v in model.state_dict().items():
            if k in self.state:
                self.state[k].lerp_(v.detach(), 1.0 - decay)

    def full_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: self.state.get(k, v) for k, v in model.state_dict().items()}


@contextlib.contextmanager
def _graceful_signals(flag: dict[str, bool]) -> Iterator[None]:
    """First Ctrl-C/SIGTERM: finish the step, checkpoint, stop. A second Ctrl-C: stop now."""

    def handler(signum: int, frame: Any) -> None:
        if flag.get("stop") and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        previous = {}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _read_history(path: Path, upto: int | None) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            row = json.loads(line)
            if upto is None or row.get("step", 0) <= upto:
                rows.append(row)
    return rows


def _write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".jsonl.part")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def plot_metrics(rows: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Loss and validation PSNR/SSIM curves from ``metrics.jsonl`` rows to a PNG (None: no rows)."""
    train = [r for r in rows if r.get("kind") == "train"]
    val = [r for r in rows if r.get("kind") == "val"]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    if train:
        axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
        axes[0].set_yscale("log")
    axes[0].set(title="training loss", xlabel="step")
    for ax, key in ((axes[1], "psnr"), (axes[2], "ssim")):
        if val:
            ax.plot([r["step"] for r in val], [r[key] for r in val], marker="o", ms=3)
        ax.set(title=f"validation {key.upper()}", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".part.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def validate(
    module: nn.Module,
    pairs: PairedImages,
    *,
    size_multiple: int,
    device: torch.device,
    amp: _Amp | None = None,
) -> dict[str, float]:
    """Mean PSNR/SSIM of ``module`` over whole validation images (pad, run, crop, clamp)."""
    from lowlight_cli.evaluate import evaluate_pairs

    was_training = module.training
    module.eval()
    try:
        with amp.autocast() if amp else contextlib.nullcontext():
            result = evaluate_pairs(module, pairs, size_multiple=size_multiple, device=device)
    finally:
        module.train(was_training)
    return {
        "psnr": result.psnr,
        "ssim": result.ssim,
        "psnr_gt_mean": result.psnr_gt_mean,
        "n_images": result.n_images,
    }


# ---- the loop ----------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    *,
    reporter: Reporter | None = None,
    model: nn.Module | None = None,
    size_multiple: int | None = None,
) -> TrainResult:
    """Run (or resume) one training run; see the module docstring.

    Args:
        cfg: the run.
        reporter: progress sink (None: silent).
        model: a ready module to train instead of ``cfg.model`` from the registry (tests); it is
            trained with the generic task unless a task is registered under ``cfg.model``.
        size_multiple: validation padding multiple for ``model`` (default: the registry's).

    Returns:
        The run's :class:`TrainResult`.

    Raises:
        UsageError: bad data, flags or checkpoint.
        ResourceError: device or precision not available.
    """
    dist = _init_distributed(cfg.device)
    try:
        return _train(cfg, dist, reporter, model, size_multiple)
    finally:
        if dist.owned:
            # As torch.distributed asks of every program that starts a group (NCCL warns and
            # can leak otherwise). With gloo this does not by itself stop the worker threads
            # (something in torch 2.13 keeps the group alive); see distributed._all_reduce.
            import torch.distributed

            torch.distributed.destroy_process_group()


def _train(
    cfg: TrainConfig,
    dist: _Dist,
    reporter: Reporter | None,
    model: nn.Module | None,
    size_multiple: int | None,
) -> TrainResult:
    t_start = time.monotonic()
    # Budget and logged hours leave out the stretches the process was stopped (clock.py).
    clock = RunClock()
    if cfg.time_limit is not None and cfg.time_limit <= 0:
        raise UsageError(f"the time limit must be positive, not {cfg.time_limit:g} s")
    reporter = reporter or Reporter()
    device = resolve_device(cfg.device, dist)
    amp = _Amp(resolve_amp(cfg.precision, device), device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cpu":
        # Every step frees and re-allocates the same activation blocks; kept in the heap they
        # are not faulted in afresh each step (neid, 8 x 256 px, fp32: ~1.25x faster).
        keep_freed_memory()

    ckpt = load_checkpoint(cfg.resume) if cfg.resume else None
    if ckpt is not None:
        recipe = _recipe_from_dict(ckpt["recipe"])
        if ckpt["model"] != cfg.model:
            raise UsageError(
                f"{cfg.resume} is a {ckpt['model']} checkpoint, not {cfg.model}",
                hint=f"use --model {ckpt['model']}",
            )
        seed = int(ckpt["seed"])
        done, planned = int(ckpt["step"]), int(ckpt["schedule"]["total_steps"])
        if done >= planned and cfg.steps is None and cfg.epochs is None:
            # Its learning rate has decayed to the end: a budget has nothing left to fit.
            again = f"--init {cfg.resume} --out NEW_FOLDER"
            if cfg.budget is not None:
                raise UsageError(
                    f"{cfg.resume} has finished its schedule (step {done} of {planned}); "
                    "--budget can only fit steps still to come",
                    hint=f"to train on from its weights, start a new run: {again}",
                )
            if dist.main:
                reporter.message(
                    f"{cfg.resume} has finished its schedule (step {done} of {planned}): "
                    f"nothing to train; to train on from its weights, start a new run with {again}"
                )
    else:
        recipe = cfg.recipe or default_recipe(cfg.model)
        seed = cfg.seed
    recipe = recipe.override(
        val_every=cfg.val_every, log_every=cfg.log_every, ema_decay=cfg.ema_decay
    )
    if cfg.data is None:
        raise UsageError("no training data", hint="pass --data PATH")

    holdout = int(ckpt.get("val_holdout", 0)) if ckpt is not None else cfg.val_holdout
    holdout_by = str(ckpt.get("val_split", "pairs")) if ckpt is not None else cfg.val_split
    if cfg.budget is not None and (cfg.steps is not None or cfg.epochs is not None):
        raise UsageError("give --budget or --steps/--epochs, not both")
    if cfg.budget is not None and not cfg.budget > 0:
        raise UsageError(f"the budget must be positive, not {cfg.budget:g} s")
    data = build_run_data(
        cfg.dataset,
        cfg.data,
        val=cfg.val,
        seed=seed,
        workers=cfg.workers,
        normal_only=recipe.model == "frlie" and recipe.stage == 1,
        holdout=holdout,
        holdout_by=holdout_by,
        identity_data=cfg.identity_data,
        identity_prob=recipe.identity_prob,
        scene_exposure=recipe.scene_exposure,
    )
    size = data.train.count(recipe.epoch_unit, recipe.patch, recipe.patch_width)
    if ckpt is not None and cfg.steps is None and cfg.epochs is None:
        schedule = Schedule(
            **{**ckpt["schedule"], "milestones": tuple(ckpt["schedule"]["milestones"])}
        )
    else:
        schedule = recipe.resolve(size, steps=cfg.steps, epochs=cfg.epochs)
    if recipe.batch_size < dist.world:
        raise UsageError(
            f"batch size {recipe.batch_size} is smaller than the {dist.world} processes"
        )

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    import random

    random.seed(seed)

    if model is None:
        from lowlight_cli.registry import create_model, get_spec

        spec = get_spec(cfg.model)
        model = create_model(spec.name, **recipe.model_kwargs)
        size_multiple = size_multiple or spec.size_multiple
    size_multiple = size_multiple or 1
    model = model.to(device).train()
    task = TASKS.get(recipe.model, Task)(model, recipe, cfg, device)
    task.world = dist.world

    out = Path(cfg.out)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    prepared: dict[str, Any] = {}
    start = 0
    best: dict[str, Any] | None = None
    validated: dict[str, Any] | None = None  # the latest validation's step and scores
    if ckpt is None:
        if cfg.init is not None:
            prepared["init"] = _load_init(task, cfg.init)
        prepared.update(task.prepare(data, reporter))
    else:
        model.load_state_dict(ckpt["model_state"])
        task.load_extra_state(ckpt.get("task_state", {}))
        prepared = ckpt.get("prepared", {})
        start = int(ckpt["step"])
        best = ckpt.get("best")
        validated = ckpt.get("validated")
    # Wall seconds the run has trained, over all its invocations (learning curves in hours).
    seconds_before = float(ckpt.get("train_seconds", 0.0)) if ckpt is not None else 0.0

    def trained_seconds() -> float:
        return seconds_before + (clock.now() - t_start)

    def note_stop(seconds: float) -> None:
        if seconds and dist.main:
            reporter.message(
                f"the run was stopped for {seconds / 60:.1f} min: not counted as training time"
            )

    aug = Augment.from_recipe(recipe)
    channels_last = bool(cfg.channels_last)
    if device.type == "cpu":
        amp, channels_last, chosen = _cpu_settings(
            cfg, ckpt, task, data, aug, recipe.batch_size, seed, dist, reporter
        )
        if chosen:
            prepared["cpu_settings"] = chosen
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    params = task.trainable()
    if not params:
        raise UsageError(f"{cfg.model} has nothing to train in this configuration")
    optimizer = torch.optim.Adam(
        params, lr=schedule.lr_at(start), betas=recipe.betas, weight_decay=recipe.weight_decay
    )
    ema = _Ema(model, recipe.ema_decay) if recipe.ema_decay else None
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            amp.scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema"):
            ema.state = {k: v.to(device) for k, v in ckpt["ema"].items()}
        set_rng_state(ckpt["rng"])

    history_path = out / METRICS_LOG
    # A resumed run drops log rows written after its checkpoint (they will be redone).
    history = _read_history(history_path, start) if dist.main and ckpt is not None else []
    total = schedule.total_steps
    stop = min(total, cfg.stop_at) if cfg.stop_at is not None else total
    info = {
        "model": cfg.model,
        "recipe": recipe.to_dict(),
        "schedule": _schedule_dict(schedule),
        "data": data.description,
        "device": str(device),
        "amp": str(amp.dtype).replace("torch.", "") if amp.dtype else "fp32",
        "world_size": dist.world,
        "seed": seed,
        "start_step": start,
        "prepared": prepared,
    }
    if dist.main:
        reporter.start(info)

    def make_checkpoint(step: int) -> dict[str, Any]:
        return {
            "format": TRAINING_CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": cfg.model,
            "model_kwargs": {**_spec_kwargs(cfg.model), **recipe.model_kwargs},
            "recipe": recipe.to_dict(),
            "schedule": _schedule_dict(schedule),
            "step": step,
            "seed": seed,
            "sampler": {"seed": seed, "step": step, "batch_size": recipe.batch_size},
            "data": data.description,
            "dataset": cfg.dataset,
            "val_holdout": holdout,
            "val_split": holdout_by,
            "val_names": list(data.val.names) if data.val is not None else [],
            "prepared": prepared,
            "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "ema": {k: v.cpu() for k, v in ema.state.items()} if ema else None,
            "optimizer": optimizer.state_dict(),
            "scaler": amp.scaler.state_dict() if amp.scaler.is_enabled() else None,
            "task_state": task.extra_state(),
            "rng": rng_state(),
            "best": best,
            "validated": validated,
            "train_seconds": trained_seconds(),
        }

    flag: dict[str, bool] = {}
    timed_out = False
    step = start
    last_path = out / LAST
    best_path = out / BEST
    t_log = time.perf_counter()
    steps_since_log = 0
    # --budget: time steps from the end of the first (warm-up) one, then fit the schedule.
    fit_from: tuple[float, int] | None = None
    fitted = cfg.budget is None
    sec_per_step: float | None = None  # set at the step the schedule is fitted
    try:
        with _graceful_signals(flag):
            while step < stop:
                lr = schedule.lr_at(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                task.lr = lr
                batch = data.train.sample(
                    seed, step, recipe.batch_size, aug, rank=dist.rank, world=dist.world
                ).to(device, channels_last=channels_last)
                with amp.autocast():
                    loss, logs = task.loss(batch)
                if not torch.isfinite(loss):
                    raise UsageError(
                        f"the loss became {float(loss)} at step {step}",
                        hint="lower --lr, or resume from the last good checkpoint",
                    )
                amp.scaler.scale(loss).backward()
                _average_gradients(params, dist.world)
                if recipe.grad_clip:
                    amp.scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
                amp.scaler.step(optimizer)
                amp.scaler.update()
                optimizer.zero_grad(set_to_none=True)
                logs.update(task.aux_step(batch, amp))
                if ema is not None:
                    ema.update(model, step)
                step += 1
                steps_since_log += 1
                note_stop(clock.tick())
                if fit_from is None and not fitted:
                    fit_from = (clock.now(), step)
                elif not fitted and fit_from is not None:
                    elapsed = clock.now() - fit_from[0]
                    ready = step - fit_from[1] >= 3 and elapsed >= min(
                        60.0, 0.02 * (cfg.budget or 0)
                    )
                    # Processes fit at one step (their all-reduces below must pair up).
                    if _all_agree(ready, dist.world, device):
                        fitted = True
                        sec_per_step = elapsed / (step - fit_from[1])
                if cfg.time_limit is not None and step < stop:
                    late = time.monotonic() - t_start >= cfg.time_limit
                    if _all_agree(late, dist.world, device):
                        stop, timed_out = step, True
                if dist.main:
                    logs = {"loss": float(loss.detach()), "lr": lr, **logs}
                    if step % recipe.log_every == 0 or step == total:
                        now = time.perf_counter()
                        logs["sec_per_step"] = (now - t_log) / steps_since_log
                        t_log, steps_since_log = now, 0
                        history.append({"kind": "train", "step": step, **logs})
                    reporter.step(step, total, logs)
                fit_now = sec_per_step is not None
                at_val = (
                    (recipe.val_every and step % recipe.val_every == 0)
                    or step == total
                    or timed_out
                    or (fit_now and bool(recipe.val_every))  # --budget times one validation
                )
                if at_val or step == stop or flag.get("stop") or fit_now:
                    val_seconds = 0.0
                    if dist.main and at_val and data.val is not None:
                        t_val = time.monotonic()
                        scores = _validate_now(
                            task, ema, model, data.val, size_multiple, device, amp
                        )
                        stopped = clock.tick()
                        note_stop(stopped)
                        val_seconds = time.monotonic() - t_val - stopped
                        validated = {"step": step, **scores}
                        is_best = best is None or scores["psnr"] > best["psnr"]
                        if is_best:
                            best = {"step": step, **scores}
                        history.append(
                            {
                                "kind": "val",
                                "step": step,
                                **scores,
                                "wall_hours": round(trained_seconds() / 3600, 4),
                                "threads": torch.get_num_threads(),
                            }
                        )
                        reporter.validation(step, scores, is_best)
                    if fit_now:
                        per_step = sec_per_step + (
                            val_seconds / recipe.val_every if recipe.val_every else 0.0
                        )
                        remaining = (cfg.budget or 0) - (clock.now() - t_start)
                        fit_total = _steps_within(step, per_step, remaining)
                        schedule = recipe.resolve(
                            size, steps=_all_agree_max(fit_total, dist.world, device)
                        )
                        total = schedule.total_steps
                        stop = min(total, cfg.stop_at) if cfg.stop_at is not None else total
                        if dist.main:
                            reporter.message(
                                f"budget: {sec_per_step:.3f} s/step"
                                + (f" + {val_seconds:.1f} s per validation" if val_seconds else "")
                                + f" -> {total} steps in all, lr milestones "
                                f"{list(schedule.milestones)} (lr now {schedule.lr_at(step):.2e})"
                            )
                        sec_per_step = None
                    elif (
                        at_val
                        and cfg.budget is not None
                        and fitted
                        and fit_from is not None
                        and step < stop
                        and not timed_out
                    ):
                        # The first fit rests on a minute of steps; a machine that was busier
                        # (or idler) then than later would end the run far from its budget.
                        # Re-fit on the rate so far, validations included, while that leaves
                        # the learning rate where it is now.
                        # Every process calls the all-reduce, then decides alike.
                        proposed = _all_agree_max(
                            _budget_total(step, fit_from, cfg.budget, t_start, clock.now()),
                            dist.world,
                            device,
                        )
                        refit = _refit_schedule(recipe, size, schedule, step, proposed)
                        if refit is not None:
                            old_total, schedule = total, refit
                            total = schedule.total_steps
                            stop = min(total, cfg.stop_at) if cfg.stop_at is not None else total
                            if dist.main:
                                reporter.message(
                                    f"budget: re-fitted at step {step} on "
                                    f"{(clock.now() - fit_from[0]) / (step - fit_from[1]):.3f}"
                                    f" s/step so far: {old_total} -> {total} steps, lr milestones "
                                    f"{list(schedule.milestones)}"
                                )
                    if dist.main:
                        state = make_checkpoint(step)
                        atomic_torch_save(state, last_path)
                        if data.val is not None and best is not None and best["step"] == step:
                            atomic_torch_save(state, best_path)
                        _write_history(history_path, history)
                        if at_val:
                            plot_metrics(history, out / METRICS_PLOT)
                    t_log = time.perf_counter()
                    steps_since_log = 0
                if flag.get("stop"):
                    if dist.main:
                        reporter.message(f"interrupted: checkpoint at step {step} in {last_path}")
                    raise KeyboardInterrupt
    finally:
        reporter.close()
    if timed_out and dist.main:
        reporter.message(
            f"time limit ({cfg.time_limit:g} s) reached: checkpoint at step {step} of {total} "
            f"in {last_path}; continue with --resume {last_path}"
        )
    if data.val is None and dist.main:
        # No validation: the last weights are the best we know.
        atomic_torch_save(make_checkpoint(step), best_path)
    return TrainResult(
        out=out,
        step=step,
        total_steps=total,
        best=best,
        last_checkpoint=last_path,
        best_checkpoint=best_path if best_path.exists() else None,
        finished=step >= total,
        history=history,
    )


def _budget_total(
    step: int, fit_from: tuple[float, int], budget: float, t_start: float, now: float
) -> int:
    """The run length ``--budget`` allows at the rate measured since ``fit_from`` (0: unknown).

    ``now``, ``t_start`` and ``fit_from``'s time are on one clock (:class:`RunClock`'s).
    """
    if step - fit_from[1] < 1:
        return 0
    rate = (now - fit_from[0]) / (step - fit_from[1])
    remaining = budget - (now - t_start)
    if rate <= 0 or remaining <= 0:
        return 0
    return _steps_within(step, rate, remaining)


def _steps_within(step: int, sec_per_step: float, remaining: float) -> int:
    """The run length that spends ``remaining`` seconds at ``sec_per_step`` (one step at least)."""
    return step + max(1, int(remaining / sec_per_step))


def _refit_schedule(
    recipe: Recipe, size: int, schedule: Schedule, step: int, new_total: int
) -> Schedule | None:
    """``schedule`` re-fitted to ``new_total`` steps, or None to keep it.

    None when the length would change by under 5 %, or when the new schedule would move the
    learning rate at ``step`` (a decay already taken stays taken; one not yet reached is not
    skipped). A pure function of its arguments, so every process decides alike.
    """
    if new_total <= step or abs(new_total - schedule.total_steps) <= 0.05 * schedule.total_steps:
        return None
    candidate = recipe.resolve(size, steps=new_total)
    if not math.isclose(candidate.lr_at(step), schedule.lr_at(step), rel_tol=1e-6):
        return None
    return candidate


def _cpu_settings(
    cfg: TrainConfig,
    ckpt: dict[str, Any] | None,
    task: Task,
    data: Any,
    aug: Augment,
    batch_size: int,
    seed: int,
    dist: _Dist,
    reporter: Reporter,
) -> tuple[_Amp, bool, dict[str, Any] | None]:
    """The autocast dtype and memory format of a CPU run: what was asked, else the faster.

    A resumed run keeps what its first invocation chose. A fresh run with more than one
    candidate (:func:`cpu_candidates`) times a forward and backward pass of each on a small
    batch, then restores every weight and random state it touched, so the probe changes nothing
    but the choice. Under torchrun nothing is timed (the ranks could choose differently): fp32,
    contiguous.
    """
    device = torch.device("cpu")
    saved = (ckpt or {}).get("prepared", {}).get("cpu_settings")
    candidates = cpu_candidates(cfg.precision, cfg.channels_last)
    if saved is not None and cfg.precision == "auto" and cfg.channels_last is None:
        dtype = torch.bfloat16 if saved["precision"] == "bf16" else None
        return _Amp(dtype, device), bool(saved["channels_last"]), saved
    if len(candidates) == 1 or dist.world > 1:
        dtype, channels_last = candidates[0] if len(candidates) == 1 else (None, False)
        return _Amp(dtype, device), channels_last, None
    timings = _time_candidates(task, data, aug, min(batch_size, 2), seed, candidates)
    (dtype, channels_last), _ = min(timings, key=lambda t: t[1])
    chosen = {
        "precision": "bf16" if dtype is not None else "fp32",
        "channels_last": channels_last,
        "seconds": {describe_setting(*c): round(t, 4) for c, t in timings},
    }
    if dist.main:
        reporter.message(
            "CPU settings, seconds per forward+backward of a 2-sample batch: "
            + ", ".join(f"{k} {v:.3f}" for k, v in chosen["seconds"].items())
            + f" -> {describe_setting(dtype, channels_last)}"
        )
    return _Amp(dtype, device), channels_last, chosen


def _time_candidates(
    task: Task,
    data: Any,
    aug: Augment,
    n: int,
    seed: int,
    candidates: list[tuple[torch.dtype | None, bool]],
) -> list[tuple[tuple[torch.dtype | None, bool], float]]:
    modules = [m for m in vars(task).values() if isinstance(m, nn.Module)]
    saved = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]
    rng = rng_state()
    # A sample stream of its own: the probe must not be the first batch of the run.
    batch = data.train.sample(seed + 7_919, 0, n, aug)
    seconds: list[list[float]] = [[] for _ in candidates]
    try:
        # Rounds over all candidates, so a burst of other load hits them alike; the first round
        # pays one-time costs (oneDNN primitives) and is not counted.
        for round_ in range(3):
            for k, (dtype, channels_last) in enumerate(candidates):
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                for m in modules:
                    m.to(memory_format=fmt)
                b = batch.to(torch.device("cpu"), channels_last=channels_last)
                t0 = time.perf_counter()
                with _Amp(dtype, torch.device("cpu")).autocast():
                    loss, _logs = task.loss(b)
                loss.backward()
                if round_:
                    seconds[k].append(time.perf_counter() - t0)
                for m in modules:
                    m.zero_grad(set_to_none=True)
    finally:
        for m, state in zip(modules, saved, strict=True):
            m.load_state_dict(state)
            m.to(memory_format=torch.contiguous_format)
        set_rng_state(rng)
    return [(c, min(t)) for c, t in zip(candidates, seconds, strict=True)]


def _validate_now(
    task: Task,
    ema: _Ema | None,
    model: nn.Module,
    pairs: PairedImages,
    size_multiple: int,
    device: torch.device,
    amp: _Amp,
) -> dict[str, float]:
    live_scores = validate(
        task.eval_module(), pairs, size_multiple=size_multiple, device=device, amp=amp
    )
    if ema is None:
        return live_scores
    # The EMA weights are what is kept and exported; the live weights' scores are logged beside
    # them, so every run with EMA also measures what EMA gives.
    live = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ema.full_state(model))
    try:
        scores = validate(
            task.eval_module(), pairs, size_multiple=size_multiple, device=device, amp=amp
        )
    finally:
        model.load_state_dict(live)
    return {**scores, "psnr_live": live_scores["psnr"], "ssim_live": live_scores["ssim"]}


def _schedule_dict(s: Schedule) -> dict[str, Any]:
    return {
        "total_steps": s.total_steps,
        "steps_per_epoch": s.steps_per_epoch,
        "milestones": list(s.milestones),
        "gamma": s.gamma,
        "base_lr": s.base_lr,
        "warmup_steps": s.warmup_steps,
    }


def _spec_kwargs(name: str) -> dict[str, Any]:
    from lowlight_cli.registry import MODELS

    spec = MODELS.get(name)
    return dict(spec.kwargs) if spec else {}


def _load_init(task: Task, path: Path) -> str:
    """Load starting weights non-strictly: a ``.pt`` checkpoint (the weights its export would
    give), a ``.safetensors`` file, or (frlie) the authors' stage-1 ``weights_reconstruct.pth``."""
    path = Path(path)
    if path.suffix == ".pth" and task.recipe.model == "frlie":
        from lowlight_cli.models.frlie import load_authors_stage1

        load_authors_stage1(task.model, path)
        return str(path)
    if path.suffix == ".pt":  # the weights the checkpoint was validated with: its EMA if kept
        state = training_checkpoint_weights(load_checkpoint(path))
    elif path.suffix == ".safetensors":
        from lowlight_cli.weights import read_state_dict

        state = read_state_dict(path)
    else:
        raise UsageError(f"cannot start from {path}", hint="give a .pt checkpoint or .safetensors")
    _missing, unexpected = task.model.load_state_dict(state, strict=False)
    if unexpected:
        raise UsageError(
            f"{path} does not fit {task.recipe.model}: unexpected keys {unexpected[:3]}"
        )
    return str(path)


# ---- export ------------------------------------------------------------------------------------


def _file_names_only(prepared: dict[str, Any]) -> dict[str, Any]:
    """``prepared`` with every file path (``init``, ``vgg``...) cut to its file name.

    Shipped files must not carry the layout of the machine that trained them.
    """
    out = {}
    for key, value in prepared.items():
        if isinstance(value, str) and ("/" in value or "\\" in value):
            name = PureWindowsPath(value).name  # splits on both separators
            if PurePosixPath(name).suffix:  # a file, not a setting such as "fp32/bf16"
                value = name
        out[key] = value
    return out


def export_checkpoint(
    checkpoint: str | Path,
    dest: str | Path,
    *,
    tag: str | None = None,
    license: str = "MIT",
) -> dict[str, Any]:
    """Write a checkpoint's weights (EMA if present) as fp16 safetensors with metadata.

    The safetensors metadata holds model, kwargs, steps, seed, data, scores, the recipe and what
    was estimated before training (e.g. nrl's lambda).

    Args:
        checkpoint: ``best.pt`` or ``last.pt``.
        dest: output ``.safetensors`` path.
        tag: weights tag (``lol``, ``synthetic``...) of the manifest id (default: the dataset).
        license: license stated in the manifest entry.

    Returns:
        ``{"id": "model.tag", "entry": <manifest entry>, "details": {...}}``: ``entry`` is ready to
        paste into ``weights_manifest.json``; ``details`` has steps, seed, data, validation
        scores and the recipe as separate fields.
    """
    from lowlight_cli.weights import manifest_entry

    ckpt = load_checkpoint(checkpoint)
    state = training_checkpoint_weights(ckpt)
    # The scores of this checkpoint's own weights: its step's validation (older checkpoints
    # have only the run's best, which is this checkpoint's only when it is best.pt).
    own = next(
        (v for v in (ckpt.get("validated"), ckpt.get("best")) if v and v["step"] == ckpt["step"]),
        None,
    )
    tag = tag or ckpt.get("dataset", "custom")
    scores = {}
    if own:
        scores = {"psnr": round(own["psnr"], 4), "ssim": round(own["ssim"], 5)}
    if ckpt.get("val_holdout"):
        split = f"{ckpt.get('dataset', 'train')}_val_holdout"  # pairs held out of training
    else:
        split = "lol_eval15" if ckpt.get("dataset") == "lol" else "validation"
    details = {
        "model": ckpt["model"],
        "kwargs": ckpt["model_kwargs"],
        "steps": ckpt["step"],
        "wall_hours": round(float(ckpt.get("train_seconds", 0.0)) / 3600, 2),
        "seed": ckpt["seed"],
        "data": ckpt["data"],
        "scores": scores,
        "recipe": ckpt["recipe"],
        "prepared": _file_names_only(ckpt.get("prepared", {})),
    }
    sha, size = save_fp16_safetensors(state, dest, details)
    recipe = ckpt["recipe"]
    patch = f"{recipe['patch']}"
    if recipe.get("patch_width") and recipe["patch_width"] != recipe["patch"]:
        patch = f"{recipe['patch_width']}x{recipe['patch']} (width x height)"
    entry = manifest_entry(
        Path(dest).name,
        sha256=sha,
        size=size,
        license=license,
        origin="lowlight train (this repository)",
        training=(
            f"{ckpt['data']}; {recipe['recipe']} {ckpt['step']} steps, batch "
            f"{recipe['batch_size']}, patch {patch}, lr {recipe['lr']}, "
            f"seed {ckpt['seed']}"
        ),
        metrics={split: scores} if scores else {},
    )
    return {"id": f"{ckpt['model']}.{tag}", "entry": entry, "details": details}


def steps_to_epochs(steps: int, schedule: Schedule) -> float:
    """How many epochs ``steps`` make under ``schedule`` (nan for iteration recipes)."""
    return steps / schedule.steps_per_epoch if schedule.steps_per_epoch else math.nan
