"""ONNX export of a registry model, and the parity check of the exported graph against PyTorch.

The graph
---------
Inputs: ``image`` ``(B, 3, H, W)`` float RGB in [0, 1] (H, W multiples of the size multiple;
B, H and W are dynamic). Models that pool globally also take ``stats`` ``(1, total)`` float32
and ``use_stats`` (bool scalar) and give a second output ``stats_out`` ``(B, total)``: the
whole-image means this pass computed. With ``use_stats`` False the graph pools over ``image``
(a plain pass; ``stats_out`` is then what a context pass records); with True every global pooling
uses ``stats`` instead (a tile of a large image). One graph does both, so the weights are held
once and the ONNX backend's tiles match the torch backend's (see
:func:`lowlight_cli.models.blocks.pooling_context`, mode ``select``).

Metadata (``metadata_props``): ``lowlight.model``, ``lowlight.mode``, ``lowlight.weights``,
``lowlight.weights_sha256``, ``lowlight.size_multiple``, ``lowlight.scale``,
``lowlight.stats_channels``, ``lowlight.precision``, ``lowlight.opset``, ``lowlight.version``.

We use the TorchScript-based exporter (``dynamo=False``): it traces the eager modules as they
are (the ``pooling_context`` context variable included) and marks dynamic axes by name; the dynamo
exporter needs every data-dependent shape declared and rejected the models' size arithmetic
(``H // 2`` after a bicubic reduction, pixel shuffle) without extra constraints.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowlight_cli.constants import VERSION
from lowlight_cli.errors import LowlightError, ResourceError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from lowlight_cli.registry import ModelSpec

DEFAULT_OPSET = 17
# Parity-check sizes (width x height): a common photo size and an odd one that needs
# padding to the size multiple.
CHECK_SIZES: tuple[tuple[int, int], ...] = ((600, 400), (1001, 701))
# Largest |onnxruntime - torch| accepted by the check, per exported precision.
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}
META_PREFIX = "lowlight."


class ExportError(LowlightError):
    """The model could not be exported, or the exported graph disagrees with PyTorch."""


@dataclass
class ParityResult:
    """One parity measurement: ``size`` as (width, height) before padding."""

    size: tuple[int, int]
    padded: tuple[int, int]
    max_abs_diff: float
    replay_max_abs_diff: float | None = None


@dataclass
class ExportInfo:
    """What :func:`export_model` wrote."""

    path: Path
    model: str
    metadata: dict[str, str]
    stats_channels: int
    parity: list[ParityResult] = field(default_factory=list)


def count_pooled_channels(model: nn.Module, size_multiple: int) -> int:
    """Total channels of every global pooling in one forward pass (0: the model pools nothing)."""
    import torch

    from lowlight_cli.models.blocks import pooling_context

    side = max(2 * size_multiple, 16)
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    with torch.inference_mode(), pooling_context("record") as pooled:
        model(torch.full((1, 3, side, side), 0.25, dtype=dtype))
    try:
        return int(pooled.tensor.shape[1])
    except RuntimeError:
        return 0


def _wrapper(model: nn.Module, stats_channels: int) -> nn.Module:
    from torch import nn

    from lowlight_cli.models.blocks import pooling_context

    class _Select(nn.Module):
        """``(image, stats, use_stats) -> (output, stats_out)`` around ``model``."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image, stats, use_stats):
            with pooling_context("select", stats, use_stats=use_stats) as pooled:
                out = self.model(image)
            return out, pooled.tensor

    class _Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image):
            return self.model(image)

    return _Select() if stats_channels else _Plain()


def export_onnx(
    model: nn.Module,
    spec: ModelSpec,
    path: str | Path | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    metadata: dict[str, str] | None = None,
) -> tuple[bytes, int]:
    """Trace ``model`` into an ONNX graph with dynamic batch, height and width.

    Args:
        model: the module (any device; exported from a CPU copy in eval mode).
        spec: its registry entry (size multiple for the example input).
        path: where to write the ``.onnx`` file (atomically), or None to only return bytes.
        opset: ONNX opset version (>= 14).
        precision: ``fp32`` or ``fp16`` (weights, inputs and outputs in half precision).
        metadata: extra ``metadata_props`` (stored under the ``lowlight.`` prefix unless they
            already carry it).

    Returns:
        ``(serialized model, stats_channels)``.

    Raises:
        UsageError: bad precision/opset or a model that cannot be exported.
        ExportError: the exporter failed.
    """
    import onnx
    import torch

    if precision not in TOLERANCE:
        raise UsageError(f"cannot export in {precision}", hint="use --precision fp32 or fp16")
    if opset < 14:
        raise UsageError(f"opset {opset} is too old", hint="use --opset 14 or newer (default 17)")
    if not spec.exportable:
        raise UsageError(
            f"model '{spec.name}' cannot be exported to ONNX",
            hint="it runs OpenCV on the CPU inside forward(); use --backend torch",
        )
    dtype = torch.float16 if precision == "fp16" else torch.float32
    module = _cpu_copy(model, dtype)
    total = count_pooled_channels(module, spec.size_multiple)
    side = 2 * spec.size_multiple if spec.size_multiple > 1 else 32
    image = torch.rand(1, 3, side, side + spec.size_multiple, dtype=dtype)
    wrapper = _wrapper(module, total).eval()
    if total:
        args: tuple[Any, ...] = (
            image,
            torch.zeros(1, total, dtype=dtype),
            torch.tensor(False),
        )
        input_names = ["image", "stats", "use_stats"]
        output_names = ["output", "stats_out"]
        dynamic_axes = {
            "image": {0: "batch", 2: "height", 3: "width"},
            "output": {0: "batch", 2: "out_height", 3: "out_width"},
            "stats_out": {0: "batch"},
        }
    else:
        args = (image,)
        input_names, output_names = ["image"], ["output"]
        dynamic_axes = {
            "image": {0: "batch", 2: "height", 3: "width"},
            "output": {0: "batch", 2: "out_height", 3: "out_width"},
        }
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter warns about its own deprecation and about tracing
            # shape arithmetic; both are expected here.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                args,
                buffer,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many unrelated types
        raise ExportError(
            f"exporting {spec.name} to ONNX failed: {str(exc).splitlines()[0][:200]}",
            hint="try another --opset, or use --backend torch",
        ) from exc
    proto = onnx.load_from_string(buffer.getvalue())
    meta = {"stats_channels": str(total), "precision": precision, "opset": str(opset)}
    meta.update(metadata or {})
    set_metadata(proto, meta)
    data = proto.SerializeToString()
    if path is not None:
        _atomic_write(Path(path), data)
    return data, total


def set_metadata(proto: Any, values: dict[str, str]) -> None:
    """Add or replace ``metadata_props`` of an ``onnx.ModelProto`` (keys get the prefix)."""
    wanted = {
        (k if k.startswith(META_PREFIX) else META_PREFIX + k): str(v) for k, v in values.items()
    }
    kept = [p for p in proto.metadata_props if p.key not in wanted]
    del proto.metadata_props[:]
    for prop in kept:
        proto.metadata_props.add(key=prop.key, value=prop.value)
    for key, value in wanted.items():
        proto.metadata_props.add(key=key, value=value)


def read_metadata(path_or_bytes: str | Path | bytes) -> dict[str, str]:
    """The ``lowlight.*`` metadata of an exported model, without the prefix."""
    import onnx

    if isinstance(path_or_bytes, bytes):
        proto = onnx.load_from_string(path_or_bytes)
    else:
        proto = onnx.load(str(path_or_bytes), load_external_data=False)
    return {
        p.key[len(META_PREFIX) :]: p.value
        for p in proto.metadata_props
        if p.key.startswith(META_PREFIX)
    }


def state_sha256(model: nn.Module) -> str:
    """sha256 of a module's state (names, dtypes, shapes, bytes): identifies random weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{array.dtype}:{tuple(array.shape)};".encode())
        digest.update(array.view(-1).view(_byte_dtype()).numpy().tobytes())
    return digest.hexdigest()


def _byte_dtype():  # -> torch.dtype
    import torch

    return torch.uint8


def check_parity(
    model: nn.Module,
    spec: ModelSpec,
    onnx_bytes: bytes,
    *,
    sizes: tuple[tuple[int, int], ...] = CHECK_SIZES,
    precision: str = "fp32",
    seed: int = 0,
) -> list[ParityResult]:
    """Run the exported graph (onnxruntime, CPU) and the module (torch, CPU fp32) on random images.

    Each ``(width, height)`` is reflect-padded to the size multiple as the engine pads. For models
    that pool, the replay path is checked too: the stats of a pass on one image are replayed
    into both implementations on a second image.

    Raises:
        ExportError: a difference above the tolerance of ``precision``.
    """
    import torch

    from lowlight_cli.models.blocks import pooling_context

    session = make_session(onnx_bytes, providers=["CPUExecutionProvider"])
    total = int(read_metadata(onnx_bytes).get("stats_channels", "0"))
    dtype = np.float16 if precision == "fp16" else np.float32
    module = _cpu_copy(model, torch.float32)
    rng = np.random.default_rng(seed)
    tolerance = TOLERANCE[precision]
    results = []
    for width, height in sizes:
        x = _padded_random(rng, height, width, spec.size_multiple)
        with torch.inference_mode():
            expected = module(torch.from_numpy(x)).numpy()
        feeds = {"image": x.astype(dtype)}
        if total:
            feeds["stats"] = np.zeros((1, total), dtype=dtype)
            feeds["use_stats"] = np.array(False)
        got = session.run(["output"], feeds)[0].astype(np.float32)
        result = ParityResult((width, height), x.shape[2:][::-1], _max_diff(got, expected))
        if total:
            # Replay: the stats of a darker copy, applied to this image.
            other = (x * 0.5).astype(np.float32)
            with torch.inference_mode():
                with pooling_context("record") as pooled:
                    module(torch.from_numpy(other))
                stats = pooled.tensor
                with pooling_context("replay", stats):
                    expected_replay = module(torch.from_numpy(x)).numpy()
            feeds["stats"] = stats.numpy().astype(dtype)
            feeds["use_stats"] = np.array(True)
            got_replay = session.run(["output"], feeds)[0].astype(np.float32)
            result.replay_max_abs_diff = _max_diff(got_replay, expected_replay)
        results.append(result)
        worst = max(result.max_abs_diff, result.replay_max_abs_diff or 0.0)
        if not worst <= tolerance:
            raise ExportError(
                f"onnxruntime and torch disagree for {spec.name} at {width}x{height}: "
                f"max |diff| {worst:.3g} > {tolerance:g}",
                hint="try another --opset; report this as a bug",
            )
    return results


def export_model(
    name: str,
    output: str | Path,
    *,
    weights: str | Path | None = None,
    upscale: bool = False,
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    check: bool = True,
    sizes: tuple[tuple[int, int], ...] = CHECK_SIZES,
    model: nn.Module | None = None,
) -> ExportInfo:
    """Load a registry model with its weights, export it to ``output`` and check it.

    Args:
        name: model id or weights id (``neid.lol``).
        output: the ``.onnx`` file to write.
        weights: weights id or file (None: the model's default; ignored with ``model``).
        upscale: export the model's true x2 mode.
        opset: ONNX opset.
        precision: ``fp32`` or ``fp16``.
        check: run :func:`check_parity` on ``sizes``.
        sizes: ``(width, height)`` parity sizes.
        model: an already-built module to export instead of loading weights (tests, training).

    Returns:
        What was written, with the parity results.

    Raises:
        UsageError, WeightsError, ExportError.
    """
    from lowlight_cli.registry import check_upscale, get_spec, load_model

    spec = get_spec(name)
    check_upscale(spec, upscale)
    if weights is None and "." in name:
        weights = name
    if model is None:
        overrides = {"upscale": True} if upscale else {}
        model = load_model(spec.name, weights, device="cpu", **overrides)
        weights_label = str(weights or spec.default_weights or "none")
        weights_sha = weights_sha256(spec, weights, model)
    else:
        weights_label = "in-memory"
        weights_sha = state_sha256(model)
    metadata = {
        "model": spec.name,
        "mode": "upscale" if upscale else "same-size",
        "weights": weights_label,
        "weights_sha256": weights_sha,
        "size_multiple": str(spec.size_multiple),
        "scale": str(2 if upscale else spec.scale),
        "version": VERSION,
    }
    path = Path(output)
    data, total = export_onnx(
        model, spec, None, opset=opset, precision=precision, metadata=metadata
    )
    parity = check_parity(model, spec, data, sizes=sizes, precision=precision) if check else []
    _atomic_write(path, data)
    return ExportInfo(path, spec.name, read_metadata(data), total, parity)


def weights_sha256(
    spec: ModelSpec, weights: str | Path | None, model: nn.Module | None = None
) -> str:
    """sha256 of the weights file behind ``weights`` (None: the spec's default).

    Classical models (and neural ones without any weights reference) are hashed by the state of
    ``model``, which is then required.

    Raises:
        WeightsError: the weights cannot be resolved.
    """
    from lowlight_cli.weights import default_weights_id, file_sha256, resolve_weights

    ref = weights
    if ref is None and spec.kind == "neural" and spec.default_weights is not None:
        ref = default_weights_id(spec)
    if spec.kind != "neural" or ref is None:
        if model is None:
            raise ValueError("weights_sha256 needs the model when there is no weights file")
        return state_sha256(model)

    if isinstance(ref, str) and "." not in ref and not Path(ref).is_file():
        ref = f"{spec.name}.{ref}"  # a bare tag, as load_state_dict reads it
    return file_sha256(resolve_weights(ref))


def make_session(
    model: bytes | str | Path,
    *,
    providers: list[Any] | None = None,
    threads: int | None = None,
) -> Any:
    """An ``onnxruntime.InferenceSession`` with the settings that measured fastest on the CPU.

    Args:
        model: serialized graph or a ``.onnx`` path.
        providers: execution providers (default: CPU).
        threads: intra-op threads (default: physical cores).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    # Tiles change size at the image border; a memory pattern planned for one shape is
    # discarded for the next, so it only costs time.
    options.enable_mem_pattern = False
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(
            source, sess_options=options, providers=providers or ["CPUExecutionProvider"]
        )
    except Exception as exc:
        text = str(exc)
        if "memory" in text.lower():
            raise ResourceError(f"onnxruntime ran out of memory: {text[:160]}") from exc
        raise ExportError(
            f"onnxruntime could not load the graph: {text.splitlines()[0][:200]}",
            hint="delete the cached .onnx file or re-export with another --opset",
        ) from exc


def physical_cores() -> int:
    """Physical CPU cores (hyper-threads share one core's units, so they do not help convs)."""
    import os

    try:
        siblings: set[str] = set()
        for cpu in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology/thread_siblings_list"):
            siblings.add(cpu.read_text().strip())
        if siblings:
            return len(siblings)
    except OSError:
        pass
    return max(1, (os.cpu_count() or 2) // 2)


def _cpu_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    import copy

    return copy.deepcopy(model).to(device="cpu", dtype=dtype).eval()


def _padded_random(rng: np.random.Generator, height: int, width: int, multiple: int) -> np.ndarray:
    """A dark, smooth random photo ``(1, 3, H', W')``, reflect-padded to ``multiple`` as the
    engine pads."""
    from lowlight_cli.tiling import extract_tile, plan_tiles, round_up

    base = rng.random((height // 8 + 2, width // 8 + 2, 3), dtype=np.float32)
    import cv2

    image = cv2.resize(base, (width, height), interpolation=cv2.INTER_LINEAR)
    image += 0.05 * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(image * 0.4, 0.0, 1.0)  # dark, like the photos the models are for
    hp, wp = round_up(height, multiple), round_up(width, multiple)
    return extract_tile(image, plan_tiles(hp, wp, 0, 0, multiple)[0], hp, wp)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise ExportError(f"the exported graph gave shape {a.shape}, torch {b.shape}")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _atomic_write(path: Path, data: bytes) -> None:
    from lowlight_cli.files import atomic_file

    with atomic_file(path) as handle:
        handle.write(data)
