"""One explicit registry of every model the program knows.

Facts about a model (size multiple, tiling, precisions, scale, default weights) live here in a
:class:`ModelSpec`, not in the module (the spandrel idea). Builders are import paths so that this
module — and ``lowlight --help`` — never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lowlight_cli.errors import UsageError, WeightsError

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import torch
    from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """What the engine, training, export and tests need to know about one model.

    Attributes:
        name: registry id (``symnet``); weights ids are ``name.tag`` (``symnet.lol``).
        builder: ``module:Class`` of the ``nn.Module``; keyword-only constructor.
        kwargs: constructor keyword arguments of the default architecture.
        title: paper title / one-line description.
        kind: ``neural`` (trained weights) or ``classical`` (no weights).
        size_multiple: input H and W must be multiples of this (the engine pads).
        supports_tiling: the model may be run on overlapping tiles.
        fp16_safe: half precision gives results within tolerance of fp32.
        bf16_safe: bfloat16 likewise.
        bf16_auto: ``--precision auto`` may pick bf16 (on CPUs where bf16 is faster, see
            :func:`lowlight_cli.devices.cpu_prefers_bf16`): with the shipped weights the bf16
            output stays within 40 dB PSNR of fp32 on LOL frames (docs/scripts/measure_bf16.py,
            checked by tests/test_registry.py). Implies ``bf16_safe``.
        scale: output size / input size.
        default_weights: weights id in ``weights_manifest.json`` (None: no weights needed).
        exportable: can be exported to ONNX.
        receptive_margin: pixels of context a tile needs on each side for seamless merging.
        lol_eval15: a classical model's PSNR / SSIM on LOL eval15 through ``lowlight benchmark
            --quality-only`` (neural models carry theirs in the weights' manifest entry);
            shown by ``lowlight models`` for comparison, checked by tests/test_registry.py.
        coarse_pass_mp: megapixels of a second, coarse pass over the whole photo whose broad
            shading (blurred by ``COARSE_BLUR`` coarse pixels) replaces the full pass's, for a
            model whose receptive field is too small to judge a region's brightness from the
            scene around it (0: no coarse pass; see ``Enhancer``, docs/models.md).
        weights_settings: constructor settings a weights file may set for itself (the
            ``kwargs`` it records, :func:`~lowlight_cli.weights.read_weights_file`): widths,
            which change neither ``size_multiple`` nor ``receptive_margin``, so that weights
            trained with ``--set model_kwargs=...`` run as they were trained.
    """

    name: str
    builder: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    kind: str = "neural"
    size_multiple: int = 1
    supports_tiling: bool = True
    fp16_safe: bool = False
    bf16_safe: bool = False
    bf16_auto: bool = False
    scale: int = 1
    default_weights: str | None = None
    exportable: bool = True
    receptive_margin: int = 32
    lol_eval15: tuple[float, float] | None = None
    coarse_pass_mp: float = 0.0
    weights_settings: tuple[str, ...] = ()

    def build(self, **overrides: Any) -> nn.Module:
        """Instantiate the module with the default kwargs updated by ``overrides``."""
        module_name, _, cls_name = self.builder.partition(":")
        cls = getattr(importlib.import_module(module_name), cls_name)
        return cls(**{**self.kwargs, **overrides})


MODELS: dict[str, ModelSpec] = {
    "symnet": ModelSpec(
        name="symnet",
        builder="lowlight_cli.models.symnet:SymNet",
        kwargs={"num_blocks": 8, "rounds": 3},
        title="Deep Symmetric Network for Underexposed Image Enhancement (ICCV 2021)",
        size_multiple=1,
        # ES = exp(sigmoid) is bounded and the encoder has unit operator norm: fp16 and bf16
        # stay within 2e-3 of fp32 (tests/test_models_symnet.py).
        fp16_safe=True,
        bf16_safe=True,
        # bf16 vs fp32 on LOL eval15 with the CPU preview weights: 53.6 dB (worst of 5 frames).
        bf16_auto=True,
        default_weights="symnet.lol",
        # Exact receptive radius: 2 (E) + 8 blocks x 2 Ts x (2 + 2 x 3 rounds) + 2 (D).
        receptive_margin=132,
    ),
    "nrl": ModelSpec(
        name="nrl",
        builder="lowlight_cli.models.nrl:NRL",
        kwargs={"channels": 64, "steps": 6},
        title="Non-identical residual learning with dynamic perceptual loss",
        size_multiple=1,
        # T is floored at 0.02 by a softplus, so I_L / T stays small; fp16 and bf16 agree
        # with fp32 (tests/test_models_nrl.py).
        fp16_safe=True,
        bf16_safe=True,
        bf16_auto=True,  # 56.1 dB worst of the 15 eval15 frames (shipped weights)
        default_weights="nrl.lol",
        weights_settings=("channels",),
        # Exact receptive radius: 2 + 2 (FMSB 5x5s) + 6 steps x 2 (3x3s) + 1 (reconstruction).
        receptive_margin=17,
    ),
    "frlie": ModelSpec(
        name="frlie",
        builder="lowlight_cli.models.frlie:FRLIE",
        kwargs={"width": 32, "num_blocks": 4, "dilation_rates": (1, 2, 3, 4)},
        title="Feature restoration for low-light image enhancement (ICASSP 2022)",
        size_multiple=4,
        fp16_safe=True,
        default_weights="frlie.lol",
        weights_settings=("width",),
        receptive_margin=64,
        # frlie sees a 291 px window, half a LOL frame's width: its local brightness goes
        # wrong in broad patches (a dark band over a night sky). Taking the broad shading from
        # a pass on a ~150 x 100 copy scored 17.94 -> 19.25 dB, SSIM 0.803 -> 0.8105 on the 15
        # held-out pairs (0.008-0.06 MP and blurs of 1-4 coarse pixels tried; docs/models.md).
        coarse_pass_mp=0.015,
    ),
    "neid": ModelSpec(
        name="neid",
        builder="lowlight_cli.models.neid:NEID",
        kwargs={"upscale": False, "base_channels": 32, "depth": 3, "dr_blocks": 2},
        title="Light enhancement + detail refinement (LE/DR/FF)",
        size_multiple=16,  # 2 (bicubic x0.5 first) * 2**depth (U-Net max-pools)
        fp16_safe=True,
        bf16_safe=True,
        bf16_auto=True,  # 56.8 dB worst of the 15 eval15 frames (shipped weights)
        default_weights="neid.lol",
        weights_settings=("base_channels",),
        receptive_margin=64,
    ),
    "gamma": ModelSpec(
        name="gamma",
        builder="lowlight_cli.models.classical:AdaptiveGamma",
        title="Adaptive global gamma (classical baseline)",
        kind="classical",
        fp16_safe=True,
        bf16_safe=True,
        receptive_margin=0,
        lol_eval15=(16.38, 0.632),
    ),
    "clahe": ModelSpec(
        name="clahe",
        builder="lowlight_cli.models.classical:Clahe",
        title="Gamma, then OpenCV CLAHE on lightness (classical baseline)",
        kind="classical",
        supports_tiling=False,  # CLAHE's grid is relative to the whole image
        exportable=False,
        receptive_margin=64,
        lol_eval15=(16.92, 0.572),
    ),
}

NEURAL_MODELS: tuple[str, ...] = tuple(n for n, s in MODELS.items() if s.kind == "neural")


def get_spec(name: str) -> ModelSpec:
    """Return the spec for ``name`` (a model id, or a weights id ``name.tag``).

    Raises:
        UsageError: unknown model, with the list of known ones.
    """
    base = name.split(".", 1)[0].lower()
    if base not in MODELS:
        raise UsageError(f"unknown model '{name}'", hint=f"choose one of: {', '.join(MODELS)}")
    return MODELS[base]


def check_upscale(spec: ModelSpec, upscale: bool) -> None:
    """Raise UsageError when ``upscale`` is asked of a model without an x2 mode."""
    if upscale and "upscale" not in spec.kwargs:
        raise UsageError(
            f"model '{spec.name}' has no x2 mode", hint=f"--upscale works with: {_x2_models()}"
        )


def check_supersample(spec: ModelSpec, *, upscale: bool, supersample: bool) -> None:
    """Raise UsageError for ``supersample`` on a model without an x2 mode, or with ``upscale``."""
    if not supersample:
        return
    if upscale:
        raise UsageError(
            "--supersample and --upscale exclude each other",
            hint="--upscale keeps the x2 output; --supersample averages it back to the input size",
        )
    if "upscale" not in spec.kwargs:
        raise UsageError(
            f"model '{spec.name}' has no x2 mode to supersample with",
            hint=f"--supersample works with: {_x2_models()}",
        )


def check_ensemble(spec: ModelSpec, ensemble: bool) -> None:
    """Raise UsageError for ``ensemble`` on a classical model (a curve has nothing to average)."""
    if ensemble and spec.kind != "neural":
        raise UsageError(
            f"--ensemble averages a trained model; '{spec.name}' is a classical curve",
            hint="use it with symnet, nrl, frlie or neid",
        )


def _x2_models() -> str:
    """The models with an x2 mode, for error hints."""
    return ", ".join(n for n, s in MODELS.items() if "upscale" in s.kwargs) or "none"


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build model ``name`` with random (untrained) weights in eval mode."""
    model = get_spec(name).build(**overrides)
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or frozen) of ``model``."""
    return sum(p.numel() for p in model.parameters())


def load_model(
    name: str,
    weights: str | Path | None = None,
    *,
    device: torch.device | str = "cpu",
    **overrides: Any,
) -> nn.Module:
    """Build ``name`` and load its weights (``weights``: id, path, or None for the default).

    Classical models need no weights and ignore ``weights``. A weights file that records a
    width other than the default (``ModelSpec.weights_settings``) is built at that width;
    ``overrides`` win over what the file records.
    """
    from lowlight_cli.weights import load_weights

    spec = get_spec(name)
    if spec.kind != "neural":
        return spec.build(**overrides).to(device).eval()
    state, recorded = load_weights(weights, spec=spec)
    own = {k: recorded[k] for k in spec.weights_settings if k in recorded}
    model = spec.build(**{**own, **overrides})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # missing, unexpected or mis-shaped tensors
        raise _weights_mismatch(spec, weights, model, state) from err
    return model.to(device).eval()


def _weights_mismatch(
    spec: ModelSpec, weights: str | Path | None, model: nn.Module, state: dict[str, Any]
) -> WeightsError:
    """A WeightsError saying which model ``state`` is for, when its tensor names tell."""
    what = f"weights {weights}" if weights is not None else f"the default weights of {spec.name}"
    names = set(state)
    for other in NEURAL_MODELS:
        if other != spec.name and set(create_model(other).state_dict()) == names:
            return WeightsError(
                f"{what} are for model '{other}', not '{spec.name}'",
                hint=f"run them with --model {other}, or pick weights made for {spec.name} "
                "(lowlight weights list)",
            )
    expected = model.state_dict()
    missing = len(set(expected) - names)
    unexpected = len(names - set(expected))
    shapes = sum(1 for k in names & set(expected) if state[k].shape != expected[k].shape)
    return WeightsError(
        f"{what} do not fit model '{spec.name}' ({missing} tensors missing, {unexpected} "
        f"unexpected, {shapes} of another shape)",
        hint="they may be another model's, or made with other model settings; "
        "`lowlight weights list` shows the ones that fit",
    )
