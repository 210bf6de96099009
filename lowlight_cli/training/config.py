"""What one training run is given (:class:`TrainConfig`), what it reports, and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowlight_cli.training.recipes import Recipe


@dataclass
class TrainConfig:
    """One training run (the ``lowlight train`` flags).

    Attributes:
        model: registry name.
        dataset: ``lol``, ``pairs`` or ``synthetic``.
        data: dataset folder.
        val: validation pairs folder (``lol``: ``eval15`` by default).
        recipe: the recipe (None: the paper's, :func:`default_recipe`).
        steps: total optimiser steps (milestones scale; see recipes).
        epochs: total epochs instead of steps.
        out: run folder (checkpoints, metrics log and plot, exported weights).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
        precision: ``auto`` (AMP on CUDA: bf16 if supported else fp16; on a CPU with native
            bf16, whichever of fp32 and bf16 autocast measures faster; fp32 elsewhere),
            ``fp32``, ``fp16``, ``bf16``.
        seed: seeds the data sampling and the initial weights.
        resume: checkpoint to continue from (its recipe and schedule are used).
        init: weights to start from (frlie stage 2: a stage-1 checkpoint, exported file, or the
            authors' ``weights_reconstruct.pth``).
        vgg: VGG-16 weights (symnet encoder, nrl perceptual loss).
        workers: image-decoding threads.
        threads: ``torch.set_num_threads`` (None: leave torch's default).
        stop_at: end this invocation after this step (checkpointed), leaving the schedule as is.
        time_limit: end this invocation once this many seconds have passed since ``train`` was
            called: the step under way finishes, is validated (when there is validation data)
            and checkpointed, and the schedule is left as is, so ``--resume`` continues it.
        channels_last: NHWC memory format (faster convolutions on some CPUs and GPUs); None:
            on a CPU, measure both layouts before step 0 and keep the faster (contiguous on
            other devices).
        budget: fit the whole schedule into this many seconds of wall time: after a short
            probe the run's length is set so that the schedule (its decays included) ends when
            the budget does. On ``resume`` the budget is the time still to spend and the
            schedule is refitted to the new end.
        ema_decay: keep an exponential moving average of the weights with this decay for
            validation, checkpoint choice and export (also when resuming: the live weights
            train the same either way); None: the recipe's.
        val_holdout: pairs of the training set held out for validation (evenly spaced in name
            order; used when ``val`` is not given; ``lol`` then leaves eval15 untouched).
        val_split: ``pairs`` (default) or ``scenes``: ``val_holdout`` scenes are held out with
            all their pairs, so no validation scene is also a training scene (set when a run
            starts; a resumed run keeps its split).
        val_every: validate every N steps instead of the recipe's (also when resuming: how often
            a run is validated does not change its training).
        log_every: log every N steps instead of the recipe's (also when resuming).
        identity_data: well-exposed photos for the recipe's ``identity_prob`` share of identity
            pairs (:class:`~lowlight_cli.training.data.IdentityMix`); give it again on resume.
    """

    model: str
    dataset: str = "lol"
    data: Path | None = None
    val: Path | None = None
    recipe: Recipe | None = None
    steps: int | None = None
    epochs: float | None = None
    out: Path = Path("runs")
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    resume: Path | None = None
    init: Path | None = None
    vgg: Path | None = None
    workers: int = 2
    threads: int | None = None
    stop_at: int | None = None
    time_limit: float | None = None
    channels_last: bool | None = False
    budget: float | None = None
    val_holdout: int = 0
    val_split: str = "pairs"
    ema_decay: float | None = None
    val_every: int | None = None
    log_every: int | None = None
    identity_data: Path | None = None


class Reporter:
    """Receives progress events; the CLI prints them, the library stays silent."""

    def start(self, info: dict[str, Any]) -> None:
        """Before step 0 (or the resumed step): recipe, schedule, data, device."""

    def step(self, step: int, total: int, logs: dict[str, float]) -> None:
        """After each optimiser step (``step`` counts completed steps)."""

    def validation(self, step: int, scores: dict[str, float], best: bool) -> None:
        """After each validation."""

    def message(self, text: str) -> None:
        """A one-line note (checkpoint written, interrupted, ...)."""

    def close(self) -> None:
        """The run has ended (normally or not)."""


@dataclass
class TrainResult:
    """What a finished (or stopped) run produced."""

    out: Path
    step: int
    total_steps: int
    best: dict[str, Any] | None
    last_checkpoint: Path
    best_checkpoint: Path | None
    finished: bool
    history: list[dict[str, Any]] = field(default_factory=list)
