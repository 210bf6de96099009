"""Backends: map an NCHW float32 array to an NCHW float32 array (see :mod:`.base`).

``torch`` runs the PyTorch module; ``onnx`` (when its module is present) runs an exported graph
in onnxruntime. A backend module other than torch provides
``create_backend(spec, *, weights, device, precision, upscale) -> Backend``; the engine calls
:func:`create_backend` and never imports a backend module itself.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from lowlight_cli.backends.base import Backend, OutOfMemory, is_out_of_memory
from lowlight_cli.constants import BACKENDS
from lowlight_cli.errors import BackendUnavailableError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from lowlight_cli.registry import ModelSpec

__all__ = ["Backend", "OutOfMemory", "create_backend", "is_out_of_memory"]


def create_backend(
    name: str,
    spec: ModelSpec,
    *,
    weights: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    upscale: bool = False,
) -> Backend:
    """Build backend ``name`` for ``spec`` with its weights loaded.

    Args:
        name: ``torch`` or ``onnx``.
        spec: the model.
        weights: weights id, file, or None for the spec's default.
        device: ``auto|cpu|cuda[:n]|mps``.
        precision: ``auto|fp32|fp16|bf16`` (see :func:`lowlight_cli.devices.resolve_precision`).
        upscale: the model's true x2 mode (only models with an ``upscale`` kwarg).

    Raises:
        UsageError: unknown backend; BackendUnavailableError when it is not installed.
        WeightsError, ResourceError: from loading weights or resolving the precision.
    """
    key = (name or "torch").strip().lower()
    if key not in BACKENDS:
        raise UsageError(f"unknown backend '{name}'", hint=f"choose one of: {', '.join(BACKENDS)}")
    if key == "torch":
        from lowlight_cli.backends.torch import TorchBackend
        from lowlight_cli.devices import resolve_device, resolve_precision
        from lowlight_cli.registry import load_model

        dev = resolve_device(device)
        dtype = resolve_precision(precision, spec, dev)
        overrides = {"upscale": True} if upscale else {}
        module = load_model(spec.name, weights, device="cpu", **overrides)
        return TorchBackend(module, device=dev, dtype=dtype, scale=2 if upscale else spec.scale)
    try:
        module = importlib.import_module(f"lowlight_cli.backends.{key}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(f"lowlight_cli.backends.{key}"):
            raise UsageError(
                f"the '{key}' backend is not available in this build yet",
                hint="use --backend torch",
            ) from exc
        raise BackendUnavailableError(
            f"the '{key}' backend needs {exc.name}, which is not installed",
            hint="pip install 'lowlight[onnx]' (or use --backend torch)",
        ) from exc
    return module.create_backend(
        spec, weights=weights, device=device, precision=precision, upscale=upscale
    )
