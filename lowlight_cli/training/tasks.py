"""How each model trains: one :class:`Task` per paper (setup, loss, extra networks, validation)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowlight_cli.errors import UsageError, WeightsError
from lowlight_cli.training.config import Reporter, TrainConfig
from lowlight_cli.training.data import Augment, Batch, RunData
from lowlight_cli.training.distributed import _average_gradients
from lowlight_cli.training.precision import _Amp
from lowlight_cli.training.recipes import Recipe


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
    except ImportError as err:  # the weights package is optional for a training-only checkout
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
        luma_gain = self.recipe.encoder_luma_gain  # type: ignore[attr-defined]
        w1, w2 = vgg16_conv1_for_symnet(load_vgg16_state(path), luma_gain=luma_gain)
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
            w_lowfreq=r.lowfreq_weight,  # type: ignore[attr-defined]
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

    def prepare(self, data: RunData, reporter: Reporter) -> dict[str, Any]:
        init = getattr(self.recipe, "init", "paper")
        if init not in ("paper", "kaiming"):
            raise UsageError(f"unknown neid init '{init}'", hint="paper or kaiming")
        if init == "kaiming" and self.cfg.init is None:
            # The recipe's seed made the paper init; this redraws from the same generator.
            for m in self.model.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        return {"weights_init": init if self.cfg.init is None else "from --init"}

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        from lowlight_cli.training.losses import NEID_W_COLOR, neid_loss

        le, dr = self.model.forward_train(batch.low)
        w_color = float(getattr(self.recipe, "color_weight", NEID_W_COLOR))
        total, parts = neid_loss(le.float(), dr.float(), batch.high, w_color=w_color)
        return total, {k: float(v.detach()) for k, v in parts.items()}


TASKS: dict[str, type[Task]] = {
    "symnet": SymNetTask,
    "nrl": NRLTask,
    "frlie": FRLIETask,
    "neid": NEIDTask,
}
