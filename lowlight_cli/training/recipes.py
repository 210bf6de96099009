"""Each paper's training recipe as a dataclass; CLI flags override fields.

A recipe states the schedule in the paper's own unit (epochs, or iterations where the paper
counts iterations). :meth:`Recipe.resolve` turns it into a :class:`Schedule` in optimiser steps for
a given training-set size, scaling the learning-rate milestones proportionally when the user
asks for a different total with ``--steps`` (a paper that halves the rate at 100 of 250 epochs
halves it at 40 % of the run, whatever its length).

Where a paper is silent, the choice is written next to the field (see also ``docs/training.md``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from lowlight_cli.errors import UsageError


@dataclass(frozen=True)
class Schedule:
    """A resolved schedule, all in optimiser steps.

    Attributes:
        total_steps: optimiser steps of the whole run.
        steps_per_epoch: steps that make one (possibly fractional) epoch; 0 for iteration recipes.
        milestones: steps at which the learning rate is multiplied by ``gamma`` (sorted).
        gamma: the factor applied at each milestone.
        base_lr: learning rate before the first milestone.
        warmup_steps: linear warm-up length (0 for every paper here).
    """

    total_steps: int
    steps_per_epoch: int
    milestones: tuple[int, ...]
    gamma: float
    base_lr: float
    warmup_steps: int = 0

    def lr_at(self, step: int) -> float:
        """Learning rate used for optimiser step ``step`` (0-based); a pure function of ``step``."""
        passed = sum(1 for m in self.milestones if step >= m)
        lr = self.base_lr * self.gamma**passed
        if self.warmup_steps and step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr


@dataclass(frozen=True)
class Recipe:
    """Settings shared by every model; the per-model subclasses set the papers' values.

    Attributes:
        model: registry name.
        epochs: length in epochs (None: ``iterations`` is the unit).
        iterations: length in optimiser steps when the paper counts iterations.
        epoch_fraction: share of the training set one epoch visits (nrl: 1/6).
        epoch_unit: what the training set is counted in for epochs: ``images`` (one sample
            per image per epoch) or ``patches`` (non-overlapping patch positions, for a paper
            whose data set is a set of patches, as nrl's DPED).
        milestones: learning-rate milestones in the recipe's unit (epochs or iterations).
        gamma: factor at each milestone.
        milestone_every: a milestone every this many units (nrl: every 5 epochs), added to
            ``milestones``.
        lr: initial learning rate.
        betas: Adam betas.
        weight_decay: Adam weight decay (L2, as in torch.optim.Adam).
        grad_clip: clip the global gradient norm to this (None: no clipping).
        batch_size: pairs per optimiser step (over all processes).
        patch: training crop size in pixels (of the ground truth); the crop's height when
            ``patch_width`` is set.
        patch_width: the crop's width for a rectangular crop (ours, no paper's; ``0``, the
            default: square). A landscape crop such as ``320 x 480`` shows a model two thirds of
            a 600 x 400 LOL frame; a portrait photo (an identity photo of 321 x 481) is turned a
            quarter turn to give it, and quarter-turn augmentation keeps to half turns.
        hflip, vflip, rot90: random augmentations.
        exposure_gain: the largest gain of the exposure augmentation (ours, no paper's): with
            probability ``exposure_prob`` the low-light crop is multiplied by a gain drawn
            log-uniformly from ``[1, exposure_gain]`` and clipped at 1, the target unchanged.
            Real photos mix dark and well-lit parts while LOL's inputs are dark everywhere; this
            teaches a model that a bright input stays bright. ``1`` (default) turns it off.
        exposure_prob: probability of the exposure augmentation per crop.
        exposure_to_target: also cap the gain so that an augmented crop is on average no
            brighter than its target: the model then never learns to darken, only to brighten a
            partly lit input less (a well-lit one not at all).
        identity_prob: with ``--identity-data FOLDER`` (ours, no paper's), the share of
            training samples that are a crop of one of those well-exposed photos as both input
            and target: the model learns to leave a well-lit picture as it is (LOL pairs never
            show one). ``0`` (default) without such a folder; the CLI makes it ``0.25`` when a
            folder is given and no ``--set identity_prob``.
        scene_exposure: train on targets rescaled to their scene's mean exposure (ours, no
            paper's; :func:`~lowlight_cli.training.data.scene_exposure_targets`). LOL's ground
            truths of one scene vary in exposure from shot to shot, out of step with the
            inputs; a model that learns each pair's exposure carries that noise to new shots.
            Validation pairs keep their own targets. ``False`` by default.
        loss: loss of the generic paired task (models without their own task, e.g. test
            stand-ins): ``l2`` or ``l1``.
        val_every: validate every this many steps (0: only at the end).
        log_every: a log line every this many steps when stderr is not a terminal.
        ema_decay: exponential moving average of the weights (None: no EMA; no paper uses one).
        warmup_steps: linear learning-rate warm-up over this many steps (ours, no paper's; 0
            by default). Meant for ``--init`` from trained weights, where a fresh Adam's first
            steps move every weight by about the learning rate whatever its gradient's size
            (on neid it did not remove the restart dip; on symnet it kept the first steps
            from collapsing: docs/models.md).
        stage: training stage for two-stage recipes (frlie); 0 for single-stage models.
        model_kwargs: constructor overrides (e.g. a tiny model in tests).
    """

    model: str = ""
    epochs: float | None = 100
    iterations: int | None = None
    epoch_fraction: float = 1.0
    epoch_unit: str = "images"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.5
    milestone_every: float | None = None
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float | None = None
    batch_size: int = 8
    patch: int = 128
    patch_width: int = 0
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    exposure_gain: float = 1.0
    exposure_prob: float = 0.5
    exposure_to_target: bool = False
    identity_prob: float = 0.0
    scene_exposure: bool = False
    loss: str = "l2"
    val_every: int = 1000
    log_every: int = 50
    ema_decay: float | None = None
    warmup_steps: int = 0
    stage: int = 0
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (stored in checkpoints and exported metadata)."""
        out = asdict(self)
        out["recipe"] = type(self).__name__
        return out

    def override(self, **changes: Any) -> Recipe:
        """A copy with the non-None ``changes`` applied.

        Raises:
            UsageError: a field this recipe does not have.
        """
        known = {f.name for f in fields(self)}
        unknown = sorted(k for k, v in changes.items() if v is not None and k not in known)
        if unknown:
            raise UsageError(
                f"recipe {type(self).__name__} has no setting {', '.join(unknown)}",
                hint=f"known settings: {', '.join(sorted(known))}",
            )
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def resolve(
        self,
        num_train: int,
        *,
        steps: int | None = None,
        epochs: float | None = None,
        batch_size: int | None = None,
    ) -> Schedule:
        """Turn the recipe into steps for ``num_train`` training samples.

        Args:
            num_train: size of the training set in the recipe's ``epoch_unit`` (images, or
                non-overlapping patches: :meth:`TrainingSet.count`).
            steps: total steps requested by the user (milestones scale proportionally).
            epochs: total epochs requested by the user (iteration recipes: iterations);
                milestones scale to the new length too, keeping the schedule's shape.
            batch_size: overrides the recipe's batch size.

        Raises:
            UsageError: both ``steps`` and ``epochs``, or a non-positive length.
        """
        if steps is not None and epochs is not None:
            raise UsageError("give --steps or --epochs, not both")
        batch = batch_size or self.batch_size
        if batch < 1 or num_train < 1:
            raise UsageError("the batch size and the training set must not be empty")
        unit_marks = sorted(set(self.milestones) | set(self._periodic_marks()))
        if self.epochs is not None:
            spe = max(1, math.ceil(num_train * self.epoch_fraction / batch))
            paper_total = self.epochs * spe
            marks_steps = [m * spe for m in unit_marks]
        else:
            spe = 0
            paper_total = float(self.iterations or 0)
            marks_steps = list(unit_marks)
        if paper_total <= 0:
            raise UsageError(f"recipe for {self.model} has no length; give --steps")
        if steps is not None:
            total = steps
        elif epochs is not None:
            total = round(epochs * spe) if spe else round(epochs)
        else:
            total = round(paper_total)
        if total < 1:
            raise UsageError("--steps/--epochs must be positive")
        if self.warmup_steps < 0:
            raise UsageError(f"warmup_steps must be >= 0, not {self.warmup_steps}")
        scale = total / paper_total
        milestones = tuple(
            sorted({max(1, round(m * scale)) for m in marks_steps if round(m * scale) < total})
        )
        return Schedule(
            total_steps=int(total),
            steps_per_epoch=spe,
            milestones=milestones,
            gamma=self.gamma,
            base_lr=self.lr,
            warmup_steps=min(int(self.warmup_steps), int(total)),
        )

    def _periodic_marks(self) -> list[float]:
        if not self.milestone_every:
            return []
        length = self.epochs if self.epochs is not None else self.iterations or 0
        count = int(length // self.milestone_every)
        return [
            self.milestone_every * k
            for k in range(1, count + 1)
            if self.milestone_every * k < length
        ]


@dataclass(frozen=True)
class SymNetRecipe(Recipe):
    """Zhao et al. 2021, LOL: 180 crops, Adam 2e-4, 250 epochs, halved every 100.

    Batch 2, flips/rotations, gradient clipping 10 and weight decay 1e-5 follow the authors'
    release (the paper is silent). ``backward_weight`` is the weight of the high->low L2 term
    (paper: 1); ``lowfreq_weight`` that of the low-frequency preconditioning term of
    :func:`~lowlight_cli.training.losses.symnet_loss` (paper: none, 0). ``encoder_luma_gain``
    scales the frozen encoder's response to flat grey
    (:func:`~lowlight_cli.models.vgg.boost_flat_luminance`; 1 = VGG's kernels as they are).
    """

    model: str = "symnet"
    epochs: float | None = 250
    milestones: tuple[float, ...] = (100, 200)
    gamma: float = 0.5
    lr: float = 2e-4
    weight_decay: float = 1e-5
    grad_clip: float | None = 10.0
    batch_size: int = 2
    patch: int = 180
    forward_weight: float = 1.0
    backward_weight: float = 1.0
    lowfreq_weight: float = 0.0
    encoder_luma_gain: float = 1.0


@dataclass(frozen=True)
class NRLRecipe(Recipe):
    """Hu & Huang: Adam 5e-4, batch 32, x0.95 every 5 epochs, 100 epochs of 1/6 of the patches.

    DPED, the paper's data, is a set of patches, so an epoch here is 1/6 of the training set's
    non-overlapping 128 px patch positions (LOL: 210 x 12 = 2520 patches -> 14 steps).

    Not in the paper (our choices, documented in docs/training.md): 128 px patches; the term
    weights ``MSE + 1e-4 DPL + 1e-3 adversarial`` (those of ``training/losses.py``: 1e-4 makes
    the Caffe-scale VGG's DPL comparable to the MSE, 1e-3 is SRGAN's adversarial weight); the
    discriminator's Adam settings and schedule equal the generator's; lambda (eq. 6) is
    estimated from ``lambda_patches`` random training patches before step 0.
    """

    model: str = "nrl"
    epochs: float | None = 100
    epoch_fraction: float = 1 / 6
    epoch_unit: str = "patches"
    milestone_every: float | None = 5
    gamma: float = 0.95
    lr: float = 5e-4
    batch_size: int = 32
    patch: int = 128
    mse_weight: float = 1.0
    dpl_weight: float = 1e-4
    adv_weight: float = 1e-3
    lambda_patches: int = 1000


@dataclass(frozen=True)
class FRLIERecipe(Recipe):
    """Yang et al. 2022: Adam betas (0.5, 0.9), batch 16, 192 crops; lr 2e-4 -> 2e-5.

    The paper decays the rate "after 15000 epochs"; at batch 16 that count only makes sense as
    iterations, so each stage runs 30 000 iterations with the x0.1 step at 15 000 (our choice).
    Stage 1 trains E and D on normal-light images with L2; stage 2 freezes them and trains FRNet
    with ``100 L2 + 0.2 feature L1 + 0.5 (1 - SSIM) + 0.05 hue``.
    """

    model: str = "frlie"
    epochs: float | None = None
    iterations: int | None = 30_000
    milestones: tuple[float, ...] = (15_000,)
    gamma: float = 0.1
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.9)
    batch_size: int = 16
    patch: int = 192
    stage: int = 2


@dataclass(frozen=True)
class NEIDRecipe(Recipe):
    """Jiang et al.: Adam 1e-4 -> 1e-5 at epoch 500 -> 1e-6 at 1000, 2000 epochs, batch 8.

    256 ground-truth crops; the aligned low-light crop is downsampled x2 (bicubic) to the
    128 x 128 input; vertical flips and 90-degree rotations only (no horizontal flip, as written).
    ``init``: ``paper`` (conv weights N(0, 0.02)) or ``kaiming`` (He normal, fan-in, for the
    ReLUs): without normalisation layers the paper's init shrinks the signal to ~1e-5 by the
    output and training starts slowly (measured in docs/models.md).
    ``color_weight``: eq. 7's ``lambda_2`` on the colour loss (the paper's 0.1).
    """

    model: str = "neid"
    epochs: float | None = 2000
    milestones: tuple[float, ...] = (500, 1000)
    gamma: float = 0.1
    lr: float = 1e-4
    batch_size: int = 8
    patch: int = 256
    hflip: bool = False
    input_downscale: int = 2
    init: str = "paper"
    color_weight: float = 0.1


RECIPES: dict[str, type[Recipe]] = {
    "symnet": SymNetRecipe,
    "nrl": NRLRecipe,
    "frlie": FRLIERecipe,
    "neid": NEIDRecipe,
}


def default_recipe(model: str) -> Recipe:
    """The paper's recipe for ``model`` (a generic L2 recipe for a model without one).

    Raises:
        UsageError: ``model`` is a classical baseline (nothing to train).
    """
    from lowlight_cli.registry import get_spec

    spec = get_spec(model)
    if spec.kind != "neural":
        raise UsageError(f"'{spec.name}' is a classical baseline and has nothing to train")
    return RECIPES.get(spec.name, Recipe)(model=spec.name)
