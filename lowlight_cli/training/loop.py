"""The training loop: resumable, validated, exportable; one process or ``torchrun``.

Exact resume: the batch of step ``k`` is a pure function of ``(seed, k)`` (see
:mod:`lowlight_cli.training.data`) and the learning rate a pure function of ``k``
(:meth:`Schedule.lr_at`), so a checkpoint only has to hold the weights, the optimiser, the AMP
scaler, ``k`` and the RNG states; N steps straight equal N/2 + resume + N/2 bit for bit.

Multi-GPU: under ``torchrun`` (``WORLD_SIZE > 1``) every process takes its share of each global
batch and gradients are averaged with ``all_reduce`` before the optimiser step. This is what
DistributedDataParallel does, done by hand because the models train through methods other than
``forward`` (symnet's ``inverse``, neid's ``forward_train``, frlie's ``encode``/``restore``), which
DDP's hooks would not see.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lowlight_cli.errors import ResourceError, UsageError, WeightsError
from lowlight_cli.training.checkpoint import (
    CHECKPOINT_VERSION,
    atomic_torch_save,
    load_checkpoint,
    rng_state,
    save_fp16_safetensors,
    set_rng_state,
)
from lowlight_cli.training.data import Augment, Batch, PairedImages, RunData, build_run_data
from lowlight_cli.training.recipes import RECIPES, Recipe, Schedule, default_recipe

METRICS_LOG = "metrics.jsonl"
METRICS_PLOT = "metrics.png"
LAST = "last.pt"
BEST = "best.pt"


# ---- configuration and reporting ---------------------------------------------------------------


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
        precision: ``auto`` (AMP on CUDA: bf16 if supported else fp16; fp32 elsewhere),
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
        channels_last: NHWC memory format (faster convolutions on some CPUs and GPUs).
        val_every: validate every N steps instead of the recipe's (also when resuming: how often
            a run is validated does not change its training).
        log_every: log every N steps instead of the recipe's (also when resuming).
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
    channels_last: bool = False
    val_every: int | None = None
    log_every: int | None = None


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


# ---- devices, precision, distribution ----------------------------------------------------------


@dataclass(frozen=True)
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    owned: bool = False  # this process group was started by train(), which shuts it down

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_name: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return _Dist(world, rank, local, owned)


def resolve_device(name: str, dist: _Dist | None = None) -> torch.device:
    """``auto`` -> cuda (this process's GPU under torchrun), mps, or cpu.

    Raises:
        ResourceError: the requested device is not available.
    """
    dist = dist or _Dist()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ResourceError("CUDA was requested but is not available", hint="use --device cpu")
        if name == "cuda":
            return torch.device("cuda", dist.local_rank)
    if name == "mps" and not torch.backends.mps.is_available():
        raise ResourceError("MPS was requested but is not available", hint="use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"unknown device '{name}'", hint="auto, cpu, cuda, cuda:N, mps") from err


def resolve_amp(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32).

    Raises:
        ResourceError: half precision asked for where it is not supported.
    """
    if precision in ("auto", "fp32"):
        if precision == "auto" and device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if precision not in ("fp16", "bf16"):
        raise UsageError(f"unknown precision '{precision}'", hint="auto, fp32, fp16, bf16")
    if device.type != "cuda":
        raise ResourceError(
            f"mixed-precision training ({precision}) needs CUDA", hint="use --precision fp32"
        )
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ResourceError("this GPU has no bfloat16", hint="use --precision fp16")
    return torch.bfloat16 if precision == "bf16" else torch.float16


# ---- per-model tasks ---------------------------------------------------------------------------


class Task:
    """How one model trains: setup before step 0, the loss, extra networks, what to validate.

    The generic task trains ``model(low) ~ high`` with the recipe's ``l1``/``l2`` loss; it
    serves models without a paper recipe (e.g. test stand-ins).
    """

    def __init__(self, model: nn.Module, recipe: Recipe, cfg: TrainConfig, device: torch.device):
        self.model = model
        self.recipe = recipe
        self.cfg = cfg
        self.device = device
        # Processes under torchrun: auxiliary optimisers average their gradients over them.
        self.world = 1
        # The schedule's learning rate of the current step (auxiliary optimisers follow it).
        self.lr = recipe.lr

    def prepare(self, data: RunData, reporter: Reporter) -> dict[str, Any]:
        """One-time setup of a fresh run (not on resume: the checkpoint holds its results)."""
        return {}

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        pred = self.model(batch.low)
        if self.recipe.loss == "l1":
            loss = F.l1_loss(pred.float(), batch.high)
        else:
            loss = F.mse_loss(pred.float(), batch.high)
        return loss, {}

    def aux_step(self, batch: Batch, amp: _Amp) -> dict[str, float]:
        """A second optimiser (a discriminator) after the model's step; none by default."""
        return {}

    def eval_module(self) -> nn.Module:
        """The image -> image module validation runs on whole images."""
        return self.model

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""


def _resolve_vgg_path(cfg: TrainConfig) -> Path:
    from lowlight_cli.constants import ENV_VGG16_PATH

    if cfg.vgg is not None:
        return Path(cfg.vgg)
    env = os.environ.get(ENV_VGG16_PATH)
    if env:
        return Path(env)
    try:
        from lowlight_cli.weights import resolve_vgg16
    except ImportError as err:  # weights.py is optional for a training-only checkout
        raise WeightsError(
            "no VGG-16 weights given", hint=f"pass --vgg PATH or set {ENV_VGG16_PATH}"
        ) from err
    return Path(resolve_vgg16())


class SymNetTask(Task):
    """symnet: L2 forward (low->high) + L2 backward (high->low) through the invertible IFT.

    Before step 0 the frozen encoder/decoder kernels are set from VGG-16 ``conv1_1``/``conv1_2``
    (``--vgg``, ``LOWLIGHT_VGG16_PATH``, or the weights cache); they are buffers of the model, so
    checkpoints and exported weights carry them.
    """

    def prepare(self, data: RunData, reporter: Reporter) -> dict[str, Any]:
        from lowlight_cli.models.vgg import load_vgg16_state, vgg16_conv1_for_symnet

        path = _resolve_vgg_path(self.cfg)
        w1, w2 = vgg16_conv1_for_symnet(load_vgg16_state(path))
        self.model.set_vgg_weights(w1.to(self.device), w2.to(self.device))
        return {"vgg": str(path)}

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        from lowlight_cli.training.losses import symnet_loss

        r = self.recipe
        total, parts = symnet_loss(
            self.model,
            batch.low,
            batch.high,
            w_forward=r.forward_weight,  # type: ignore[attr-defined]
            w_backward=r.backward_weight,  # type: ignore[attr-defined]
        )
        return total, {f"l2_{k}": float(v.detach()) for k, v in parts.items()}


class NRLTask(Task):
    """nrl: lambda from the training set (eq. 6), then MSE + DPL + adversarial with a
    discriminator trained alongside (its own Adam, same settings and schedule)."""

    def __init__(self, model: nn.Module, recipe: Recipe, cfg: TrainConfig, device: torch.device):
        super().__init__(model, recipe, cfg, device)
        from lowlight_cli.models.nrl import NRLDiscriminator

        self.disc = NRLDiscriminator().to(device).train()
        self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=recipe.lr, betas=recipe.betas)
        self.disc_scaler: torch.amp.GradScaler | None = None
        self.vgg: nn.Module | None = None
        self._fake: torch.Tensor | None = None

    def _features(self) -> nn.Module:
        if self.vgg is None:
            from lowlight_cli.models.vgg import load_vgg16_features

            self.vgg = load_vgg16_features(_resolve_vgg_path(self.cfg)).to(self.device)
        return self.vgg

    def prepare(self, data: RunData, reporter: Reporter) -> dict[str, Any]:
        from lowlight_cli.models.nrl import estimate_lambda

        r = self.recipe
        n = int(r.lambda_patches)  # type: ignore[attr-defined]
        chunk = 64
        aug = Augment(patch=r.patch, hflip=False, vflip=False, rot90=False)
        # A seed stream of its own, so estimating lambda does not shift the training batches.
        batches = [
            data.train.sample(self.cfg.seed + 104_729, k, min(chunk, n - k * chunk), aug)
            for k in range(math.ceil(n / chunk))
        ]
        lam = estimate_lambda([b.low for b in batches], [b.high for b in batches])
        self.model.set_lambda(lam)
        return {"lambda": lam, "lambda_patches": n, "vgg": str(_resolve_vgg_path(self.cfg))}

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        from lowlight_cli.training.losses import nrl_loss

        r = self.recipe
        pred = self.model(batch.low)
        self.disc.requires_grad_(False)  # the generator's step must not train D
        logits = self.disc(pred) if r.adv_weight else None  # type: ignore[attr-defined]
        self.disc.requires_grad_(True)
        total, parts = nrl_loss(
            pred.float(),
            batch.high,
            self._features(),
            logits,
            w_perceptual=r.dpl_weight,  # type: ignore[attr-defined]
            w_adv=r.adv_weight,  # type: ignore[attr-defined]
        )
        self._fake = pred.detach()
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def aux_step(self, batch: Batch, amp: _Amp) -> dict[str, float]:
        from lowlight_cli.training.losses import discriminator_adversarial_loss

        if not self.recipe.adv_weight or self._fake is None:  # type: ignore[attr-defined]
            return {}
        if self.disc_scaler is None:
            self.disc_scaler = torch.amp.GradScaler("cuda", enabled=amp.scaler.is_enabled())
        for group in self.disc_opt.param_groups:
            group["lr"] = self.lr
        with amp.autocast():
            loss = discriminator_adversarial_loss(self.disc(batch.high), self.disc(self._fake))
        self.disc_opt.zero_grad(set_to_none=True)
        self.disc_scaler.scale(loss).backward()
        _average_gradients(list(self.disc.parameters()), self.world)
        self.disc_scaler.step(self.disc_opt)
        self.disc_scaler.update()
        self._fake = None
        return {"disc": float(loss.detach())}

    def extra_state(self) -> dict[str, Any]:
        return {
            "disc": self.disc.state_dict(),
            "disc_opt": self.disc_opt.state_dict(),
            "disc_scaler": self.disc_scaler.state_dict() if self.disc_scaler else None,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.disc.load_state_dict(state["disc"])
        self.disc_opt.load_state_dict(state["disc_opt"])
        if state.get("disc_scaler"):
            self.disc_scaler = torch.amp.GradScaler("cuda")
            self.disc_scaler.load_state_dict(state["disc_scaler"])


class _Reconstructor(nn.Module):
    """frlie stage 1 as an image -> image module: ``D(E(x))``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.decode(self.model.encode(x))


class FRLIETask(Task):
    """frlie: stage 1 trains E and D to reconstruct normal-light images (L2); stage 2 freezes
    them (BN statistics included) and trains FRNet with the paper's stage-2 loss."""

    def __init__(self, model: nn.Module, recipe: Recipe, cfg: TrainConfig, device: torch.device):
        super().__init__(model, recipe, cfg, device)
        if recipe.stage not in (1, 2):
            raise UsageError(f"frlie has stages 1 and 2, not {recipe.stage}")
        frozen = (model.frnet,) if recipe.stage == 1 else (model.encoder, model.decoder)
        for part in frozen:
            part.requires_grad_(False)

    def prepare(self, data: RunData, reporter: Reporter) -> dict[str, Any]:
        if self.recipe.stage == 2 and self.cfg.init is None:
            raise UsageError(
                "frlie stage 2 needs a trained reconstructor",
                hint="run --stage 1 first and pass --init runs/frlie-stage1/best.pt "
                "(or the authors' weights_reconstruct.pth)",
            )
        return {}

    def _freeze_modes(self) -> None:
        # Frozen parts must also keep their BatchNorm running statistics.
        if self.recipe.stage == 1:
            self.model.frnet.eval()
        else:
            self.model.encoder.eval()
            self.model.decoder.eval()

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        from lowlight_cli.training.losses import frlie_stage1_loss, frlie_stage2_loss

        self._freeze_modes()
        if self.recipe.stage == 1:
            recon = self.model.decode(self.model.encode(batch.high))
            return frlie_stage1_loss(recon.float(), batch.high), {}

        with torch.no_grad():
            target_features = self.model.encode(batch.high)
        restored = self.model.restore(self.model.encode(batch.low))
        pred = self.model.decode(restored)
        total, parts = frlie_stage2_loss(
            pred.float(), batch.high, restored.float(), target_features.float()
        )
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def eval_module(self) -> nn.Module:
        return _Reconstructor(self.model) if self.recipe.stage == 1 else self.model


class NEIDTask(Task):
    """neid: ``forward_train`` on the x2-downsampled input; LE image + DR image + HSV terms."""

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        from lowlight_cli.training.losses import neid_loss

        le, dr = self.model.forward_train(batch.low)
        total, parts = neid_loss(le.float(), dr.float(), batch.high)
        return total, {k: float(v.detach()) for k, v in parts.items()}


TASKS: dict[str, type[Task]] = {
    "symnet": SymNetTask,
    "nrl": NRLTask,
    "frlie": FRLIETask,
    "neid": NEIDTask,
}


# ---- AMP helper --------------------------------------------------------------------------------


class _Amp:
    def __init__(self, dtype: torch.dtype | None, device: torch.device) -> None:
        self.dtype = dtype
        self.device = device
        # GradScaler only for fp16: bf16 has fp32's range.
        self.scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


# ---- helpers -----------------------------------------------------------------------------------


def _recipe_from_dict(d: dict[str, Any]) -> Recipe:
    cls = next((c for c in (*RECIPES.values(), Recipe) if c.__name__ == d.get("recipe")), Recipe)
    known = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in known}
    for key in ("betas", "milestones"):
        if key in kwargs and isinstance(kwargs[key], list):
            kwargs[key] = tuple(kwargs[key])
    return cls(**kwargs)


# How long _all_reduce waits for gloo's worker to let go of a tensor (it takes ~0.1 ms).
_RELEASE_WAIT_S = 1.0


def _all_reduce(tensor: torch.Tensor, *, maximum: bool = False) -> None:
    """``all_reduce`` (sum or max) that returns once the backend holds no reference to ``tensor``.

    gloo wakes the caller before its worker thread drops its own references to the tensor: in
    5-55 % of calls the worker still held them when ``all_reduce`` returned (2 processes,
    2-core CPU), for about 0.1 ms. If Python has let go by then, the worker has to take the
    GIL to free the tensor, and when that happens while the interpreter is shutting down the
    process aborts ("terminate called without an active exception", a SIGABRT after a
    finished run; pytorch/pytorch#190489). Waiting the fraction of a millisecond here means the
    tensor is always freed by Python. CUDA tensors (NCCL) are left to the backend: its watchdog
    frees them, and ``destroy_process_group`` in :func:`train` stops it.
    """
    import torch.distributed as dist

    op = dist.ReduceOp.MAX if maximum else dist.ReduceOp.SUM
    dist.all_reduce(tensor, op=op)
    if tensor.device.type != "cpu" or not hasattr(tensor, "_use_count"):
        return
    deadline = time.monotonic() + _RELEASE_WAIT_S
    while tensor._use_count() > 1 and time.monotonic() < deadline:
        time.sleep(1e-4)


def _average_gradients(params: list[nn.Parameter], world: int) -> None:
    if world <= 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    _all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def _all_agree(local: bool, world: int, device: torch.device) -> bool:
    """True when any process says so (one ``all_reduce``): every rank must stop at one step."""
    if world <= 1:
        return local
    flag = torch.tensor([1.0 if local else 0.0], device=device)
    _all_reduce(flag, maximum=True)
    return bool(flag.item() > 0)


class _Ema:
    """Exponential moving average of the model's floating-point state."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {
            k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k in self.state:
                self.state[k].lerp_(v.detach(), 1.0 - self.decay)

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
    return {"psnr": result.psnr, "ssim": result.ssim, "n_images": result.n_images}


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
            # (something in torch 2.13 keeps the group alive); see _all_reduce for the rest.
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
    if cfg.time_limit is not None and cfg.time_limit <= 0:
        raise UsageError(f"the time limit must be positive, not {cfg.time_limit:g} s")
    reporter = reporter or Reporter()
    device = resolve_device(cfg.device, dist)
    amp = _Amp(resolve_amp(cfg.precision, device), device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    ckpt = load_checkpoint(cfg.resume) if cfg.resume else None
    if ckpt is not None:
        recipe = _recipe_from_dict(ckpt["recipe"])
        if ckpt["model"] != cfg.model:
            raise UsageError(
                f"{cfg.resume} is a {ckpt['model']} checkpoint, not {cfg.model}",
                hint=f"use --model {ckpt['model']}",
            )
        seed = int(ckpt["seed"])
    else:
        recipe = cfg.recipe or default_recipe(cfg.model)
        seed = cfg.seed
    recipe = recipe.override(val_every=cfg.val_every, log_every=cfg.log_every)
    if cfg.data is None:
        raise UsageError("no training data", hint="pass --data PATH")

    data = build_run_data(
        cfg.dataset,
        cfg.data,
        val=cfg.val,
        seed=seed,
        workers=cfg.workers,
        normal_only=recipe.model == "frlie" and recipe.stage == 1,
    )
    if ckpt is not None and cfg.steps is None and cfg.epochs is None:
        schedule = Schedule(
            **{**ckpt["schedule"], "milestones": tuple(ckpt["schedule"]["milestones"])}
        )
    else:
        size = data.train.count(recipe.epoch_unit, recipe.patch)
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
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train()
    task = TASKS.get(recipe.model, Task)(model, recipe, cfg, device)
    task.world = dist.world

    out = Path(cfg.out)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    prepared: dict[str, Any] = {}
    start = 0
    best: dict[str, Any] | None = None
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
    aug = Augment(
        patch=recipe.patch,
        hflip=recipe.hflip,
        vflip=recipe.vflip,
        rot90=recipe.rot90,
        input_downscale=int(getattr(recipe, "input_downscale", 1)),
    )
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
            "format": "lowlight-train",
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
            "prepared": prepared,
            "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "ema": {k: v.cpu() for k, v in ema.state.items()} if ema else None,
            "optimizer": optimizer.state_dict(),
            "scaler": amp.scaler.state_dict() if amp.scaler.is_enabled() else None,
            "task_state": task.extra_state(),
            "rng": rng_state(),
            "best": best,
        }

    flag: dict[str, bool] = {}
    timed_out = False
    step = start
    last_path = out / LAST
    best_path = out / BEST
    t_log = time.perf_counter()
    steps_since_log = 0
    try:
        with _graceful_signals(flag):
            while step < stop:
                lr = schedule.lr_at(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                task.lr = lr
                batch = data.train.sample(
                    seed, step, recipe.batch_size, aug, rank=dist.rank, world=dist.world
                ).to(device, channels_last=cfg.channels_last)
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
                    ema.update(model)
                step += 1
                steps_since_log += 1
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
                at_val = (
                    (recipe.val_every and step % recipe.val_every == 0)
                    or step == total
                    or timed_out
                )
                if at_val or step == stop or flag.get("stop"):
                    if dist.main:
                        if at_val and data.val is not None:
                            scores = _validate_now(
                                task, ema, model, data.val, size_multiple, device, amp
                            )
                            is_best = best is None or scores["psnr"] > best["psnr"]
                            if is_best:
                                best = {"step": step, **scores}
                            history.append({"kind": "val", "step": step, **scores})
                            reporter.validation(step, scores, is_best)
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


def _validate_now(
    task: Task,
    ema: _Ema | None,
    model: nn.Module,
    pairs: PairedImages,
    size_multiple: int,
    device: torch.device,
    amp: _Amp,
) -> dict[str, float]:
    if ema is None:
        return validate(
            task.eval_module(), pairs, size_multiple=size_multiple, device=device, amp=amp
        )
    live = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ema.full_state(model))
    try:
        return validate(
            task.eval_module(), pairs, size_multiple=size_multiple, device=device, amp=amp
        )
    finally:
        model.load_state_dict(live)


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
    """Load starting weights non-strictly: a ``.pt`` checkpoint, a ``.safetensors`` file, or
    (frlie) the authors' stage-1 ``weights_reconstruct.pth``."""
    path = Path(path)
    if path.suffix == ".pth" and task.recipe.model == "frlie":
        from lowlight_cli.models.frlie import load_authors_stage1

        load_authors_stage1(task.model, path)
        return str(path)
    if path.suffix == ".pt":
        state = load_checkpoint(path)["model_state"]
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
    state = {**ckpt["model_state"], **(ckpt.get("ema") or {})}
    best = ckpt.get("best") or {}
    tag = tag or ckpt.get("dataset", "custom")
    scores = {}
    if best:
        scores = {"psnr": round(best["psnr"], 4), "ssim": round(best["ssim"], 5)}
    split = "lol_eval15" if ckpt.get("dataset") == "lol" else "validation"
    details = {
        "model": ckpt["model"],
        "kwargs": ckpt["model_kwargs"],
        "steps": ckpt["step"],
        "seed": ckpt["seed"],
        "data": ckpt["data"],
        "scores": scores,
        "recipe": ckpt["recipe"],
        "prepared": ckpt.get("prepared", {}),
    }
    sha, size = save_fp16_safetensors(state, dest, details)
    recipe = ckpt["recipe"]
    entry = manifest_entry(
        Path(dest).name,
        sha256=sha,
        size=size,
        license=license,
        origin="lowlight train (this repository)",
        training=(
            f"{ckpt['data']}; {recipe['recipe']} {ckpt['step']} steps, batch "
            f"{recipe['batch_size']}, patch {recipe['patch']}, lr {recipe['lr']}, "
            f"seed {ckpt['seed']}"
        ),
        metrics={split: scores} if scores else {},
    )
    return {"id": f"{ckpt['model']}.{tag}", "entry": entry, "details": details}


def steps_to_epochs(steps: int, schedule: Schedule) -> float:
    """How many epochs ``steps`` make under ``schedule`` (nan for iteration recipes)."""
    return steps / schedule.steps_per_epoch if schedule.steps_per_epoch else math.nan
