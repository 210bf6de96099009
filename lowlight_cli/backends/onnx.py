"""Run an exported ONNX graph in onnxruntime as a :class:`~lowlight_cli.backends.base.Backend`.

The graph comes from :mod:`lowlight_cli.export` and is cached in the weights cache under
``onnx/``, keyed by the weights' sha256 (plus model mode, precision, opset and program version),
so it is exported once and again only when the weights change.

Execution providers follow ``--device``: ``cpu`` -> CPU EP; ``cuda[:n]`` -> CUDA EP (needs
``onnxruntime-gpu``); ``auto`` -> CUDA EP when onnxruntime offers it and a GPU answers, else CPU;
``tensorrt[:n]`` (or ``LOWLIGHT_ORT_TENSORRT=1`` with ``auto``/``cuda``) -> TensorRT EP first,
CUDA and CPU as fallbacks. The provider that onnxruntime actually uses is in
:attr:`OnnxBackend.provider`.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowlight_cli.backends.base import Backend, OutOfMemory, is_out_of_memory
from lowlight_cli.errors import BackendUnavailableError, ResourceError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from lowlight_cli.registry import ModelSpec

ENV_TENSORRT = "LOWLIGHT_ORT_TENSORRT"
INSTALL_HINT = "pip install 'lowlight[onnx]' (or use --backend torch)"
# Both wheels install the same `onnxruntime` package; whichever was installed last wins.
CPU_DISTRIBUTION = "onnxruntime"
GPU_DISTRIBUTIONS = ("onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")
# Each cached graph is checked once, cheaply, right after export (the full-size check is
# `lowlight export`'s).
CACHE_CHECK_SIZES = ((61, 45),)


class OnnxRuntimeConflictWarning(UserWarning):
    """Both the CPU and a GPU onnxruntime wheel are installed."""


def import_onnxruntime() -> Any:
    """Import onnxruntime, warning when the CPU and GPU wheels are both installed.

    Raises:
        BackendUnavailableError: onnxruntime (or onnx, needed to export) is not installed.
    """
    try:
        import onnx  # noqa: F401 - needed to export the cached graph
        import onnxruntime
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "onnxruntime"
        raise BackendUnavailableError(
            f"--backend onnx needs {missing}, which is not installed", hint=INSTALL_HINT
        ) from exc
    conflict = conflicting_distributions()
    if conflict:
        warnings.warn(
            f"both {' and '.join(conflict)} are installed; they share one module and the last "
            f"installed wins (pip uninstall {conflict[0]} to keep the GPU build)",
            OnnxRuntimeConflictWarning,
            stacklevel=2,
        )
    return onnxruntime


def conflicting_distributions() -> list[str]:
    """The installed onnxruntime distributions, when more than one is installed (else [])."""
    found = []
    for name in (CPU_DISTRIBUTION, *GPU_DISTRIBUTIONS):
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found if len(found) > 1 else []


def providers_for(device: str, available: list[str]) -> tuple[list[Any], str]:
    """Execution providers for ``device`` given onnxruntime's ``available`` ones.

    Returns:
        ``(providers, device label)``; the label is ``cpu`` or ``cuda:N``.

    Raises:
        UsageError: unknown device, or a GPU device this onnxruntime build cannot use.
    """
    text = (device or "auto").strip().lower()
    kind, _, index_text = text.partition(":")
    if index_text and not index_text.isdigit():
        raise UsageError(f"bad device '{device}'", hint="write cuda:N, e.g. cuda:0")
    index = int(index_text or 0)
    trt_env = os.environ.get(ENV_TENSORRT, "").strip().lower() in ("1", "true", "yes", "on")
    cuda_ok = "CUDAExecutionProvider" in available
    if kind == "cpu" or (kind == "auto" and not cuda_ok):
        return ["CPUExecutionProvider"], "cpu"
    if kind == "mps":
        raise UsageError(
            "--backend onnx has no MPS support", hint="use --device cpu or --backend torch"
        )
    if kind not in ("auto", "cuda", "tensorrt"):
        raise UsageError(
            f"unknown device '{device}' for --backend onnx",
            hint="choose auto, cpu, cuda[:N] or tensorrt[:N]",
        )
    if not cuda_ok:
        raise UsageError(
            f"device '{device}' needs onnxruntime's CUDA provider, which this build lacks",
            hint="pip install onnxruntime-gpu (and uninstall onnxruntime), or use --device cpu",
        )
    cuda = ("CUDAExecutionProvider", {"device_id": index})
    providers: list[Any] = [cuda, "CPUExecutionProvider"]
    if kind == "tensorrt" or trt_env:
        if "TensorrtExecutionProvider" not in available:
            raise UsageError(
                "onnxruntime's TensorRT provider is not available",
                hint="install TensorRT for onnxruntime-gpu, or use --device cuda",
            )
        providers.insert(0, ("TensorrtExecutionProvider", {"device_id": index}))
    return providers, f"cuda:{index}"


def cached_graph_path(spec: ModelSpec, weights_sha: str, *, upscale: bool, precision: str) -> Path:
    """Where the exported graph for these weights lives in the cache."""
    from lowlight_cli.constants import VERSION
    from lowlight_cli.export import DEFAULT_OPSET
    from lowlight_cli.weights import cache_dir

    mode = "x2" if upscale else "x1"
    key = f"{precision}-opset{DEFAULT_OPSET}-v{VERSION}-{weights_sha[:16]}"
    return cache_dir() / "onnx" / f"{spec.name}-{mode}-{key}.onnx"


def ensure_graph(
    spec: ModelSpec,
    *,
    weights: str | Path | None = None,
    upscale: bool = False,
    precision: str = "fp32",
) -> Path:
    """The cached ONNX graph for ``spec`` with ``weights``, exported (and checked) when missing.

    Raises:
        WeightsError, ExportError, UsageError.
    """
    from filelock import FileLock

    from lowlight_cli.export import check_parity, export_onnx, read_metadata, weights_sha256
    from lowlight_cli.registry import load_model

    overrides = {"upscale": True} if upscale else {}
    model = None
    if spec.kind != "neural" or (weights is None and spec.default_weights is None):
        # Classical models are hashed by their state; a neural model without weights raises
        # the usual WeightsError here.
        model = load_model(spec.name, weights, **overrides)
    # Neural weights are hashed as files, so a cached graph is found without building the model.
    sha = weights_sha256(spec, weights, model)
    path = cached_graph_path(spec, sha, upscale=upscale, precision=precision)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=600):
        if path.is_file():  # another process exported it while we waited
            return path
        if model is None:
            model = load_model(spec.name, weights, **overrides)
        metadata = {
            "model": spec.name,
            "mode": "upscale" if upscale else "same-size",
            "weights": str(weights or spec.default_weights or "none"),
            "weights_sha256": sha,
            "size_multiple": str(spec.size_multiple),
            "scale": str(2 if upscale else spec.scale),
        }
        data, _ = export_onnx(model, spec, None, precision=precision, metadata=metadata)
        if precision == "fp32":
            check_parity(model, spec, data, sizes=CACHE_CHECK_SIZES)
        from lowlight_cli.export import _atomic_write

        _atomic_write(path, data)
    if read_metadata(path).get("weights_sha256") != sha:  # pragma: no cover - defensive
        path.unlink(missing_ok=True)
        raise ResourceError(f"cached graph {path} does not match its weights; run again")
    return path


class OnnxBackend(Backend):
    """An exported graph in an onnxruntime session.

    Args:
        graph: path (or bytes) of a graph from :mod:`lowlight_cli.export`.
        device: ``auto|cpu|cuda[:n]|tensorrt[:n]``.
        scale: output size / input size of the graph.
        threads: CPU intra-op threads (default: physical cores).

    Attributes:
        provider: the execution provider onnxruntime actually runs on.
        graph: where the graph came from.
    """

    name = "onnx"

    def __init__(
        self,
        graph: str | Path | bytes,
        *,
        device: str = "auto",
        scale: int = 1,
        threads: int | None = None,
    ) -> None:
        from lowlight_cli.export import make_session, read_metadata

        ort = import_onnxruntime()
        providers, label = providers_for(device, list(ort.get_available_providers()))
        self.session = make_session(graph, providers=providers, threads=threads)
        used = self.session.get_providers()
        self.provider = used[0] if used else "CPUExecutionProvider"
        self.device = label if self.provider != "CPUExecutionProvider" else "cpu"
        if self.device == "cpu":
            from lowlight_cli.devices import keep_freed_memory

            keep_freed_memory()  # the engine's own per-tile buffers, as with the torch backend
        self.scale = scale
        self.graph = graph if isinstance(graph, bytes) else Path(graph)
        meta = read_metadata(graph)
        self.stats_channels = int(meta.get("stats_channels", "0"))
        self.precision = meta.get("precision", "fp32")
        self._dtype = np.float16 if self.precision == "fp16" else np.float32

    def _feeds(self, x: np.ndarray, stats: np.ndarray | None) -> dict[str, np.ndarray]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W), got {x.shape}")
        feeds = {"image": np.ascontiguousarray(x, dtype=self._dtype)}
        if self.stats_channels:
            if stats is None:
                feeds["stats"] = np.zeros((1, self.stats_channels), dtype=self._dtype)
            else:
                feeds["stats"] = np.ascontiguousarray(stats, dtype=self._dtype)
            feeds["use_stats"] = np.array(stats is not None)
        return feeds

    def _session_run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(names, feeds)
        except Exception as exc:  # onnxruntime's errors share no base class
            if is_out_of_memory(exc):
                raise OutOfMemory(str(exc)) from exc
            raise

    def run(self, x: np.ndarray, stats: np.ndarray | None = None) -> np.ndarray:
        """See :meth:`Backend.run`."""
        out = self._session_run(["output"], self._feeds(x, stats))[0]
        return np.ascontiguousarray(out, dtype=np.float32)

    def context(self, x: np.ndarray) -> np.ndarray | None:
        """See :meth:`Backend.context`."""
        if not self.stats_channels:
            return None
        stats = self._session_run(["stats_out"], self._feeds(x, None))[0]
        return np.ascontiguousarray(stats, dtype=np.float32)


def create_backend(
    spec: ModelSpec,
    *,
    weights: str | Path | None = None,
    device: str = "auto",
    precision: str = "fp32",
    upscale: bool = False,
) -> OnnxBackend:
    """The ONNX backend for ``spec`` (see :func:`lowlight_cli.backends.create_backend`).

    Raises:
        BackendUnavailableError: onnxruntime is not installed.
        UsageError: unknown device/precision, a model that cannot be exported.
        ResourceError: fp16 on the CPU, bf16, or a precision the model is not validated in.
        WeightsError, ExportError: from loading weights or exporting.
    """
    ort = import_onnxruntime()
    text = (precision or "fp32").strip().lower()
    if text == "auto":
        text = "fp32"  # no bf16 in onnxruntime's CPU kernels; fp16 on GPUs is not measured yet
    if not spec.exportable:
        raise UsageError(
            f"model '{spec.name}' cannot run on --backend onnx",
            hint="it runs OpenCV inside the model; use --backend torch",
        )
    _, label = providers_for(device, list(ort.get_available_providers()))
    if text == "bf16":
        raise ResourceError(
            "--backend onnx has no bf16", hint="use --precision fp32 (or fp16 on a GPU)"
        )
    if text == "fp16":
        if not spec.fp16_safe:
            raise ResourceError(
                f"model '{spec.name}' is not validated in fp16", hint="use --precision fp32"
            )
        if label == "cpu":
            raise ResourceError(
                "fp16 on the CPU is not supported by --backend onnx (slow or missing kernels)",
                hint="use --precision fp32 on the CPU",
            )
    elif text != "fp32":
        raise UsageError(f"unknown precision '{precision}'", hint="choose fp32, fp16 or bf16")
    graph = ensure_graph(spec, weights=weights, upscale=upscale, precision=text)
    return OnnxBackend(graph, device=device, scale=2 if upscale else spec.scale)
