"""State-dict files: read ``.safetensors`` and ``.pth``/``.pt`` (``torch.load(weights_only=True)``,
never pickled code), and write fp16 safetensors atomically for shipping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowlight_cli.errors import WeightsError
from lowlight_cli.weights.download import file_sha256

if TYPE_CHECKING:  # pragma: no cover
    import torch


def read_state_dict(path: str | Path, *, keep_dtype: bool = False) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt`` file into a CPU state dict.

    :func:`read_weights_file` gives the model settings the file records as well.

    ``.pth`` files go through ``torch.load(weights_only=True)``, which refuses pickled code
    (numpy arrays and scalars are allowed: checkpoints often carry them as metadata). A
    ``lowlight train`` checkpoint (``best.pt``, ``last.pt``) gives the weights its export would
    (:func:`training_checkpoint_weights`); another checkpoint dict holding its weights under
    ``state_dict`` or ``model`` is unwrapped, and a ``module.`` prefix (DataParallel) is removed.

    Args:
        path: the file.
        keep_dtype: keep stored dtypes; by default floating tensors become float32.

    Raises:
        WeightsError: unreadable file, unsupported format, not a tensor dict.
    """
    return read_weights_file(path, keep_dtype=keep_dtype)[0]


def read_weights_file(
    path: str | Path, *, keep_dtype: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`read_state_dict`, with the model settings the file records.

    The settings are the constructor keyword arguments the weights were made with: the
    ``kwargs`` metadata of a safetensors file written by ``lowlight train --export`` or
    ``lowlight weights from-checkpoint``, or ``model_kwargs`` of a training checkpoint;
    ``{}`` for files that record none (most ``.pth`` files).

    Raises:
        WeightsError: as :func:`read_state_dict`.
    """
    import torch

    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            state, settings = _read_safetensors(path)
        elif suffix in (".pth", ".pt"):
            state = _load_pickled_tensors(path)
            settings = {}
        elif suffix == ".onnx":
            raise WeightsError(
                f"{path.name} is an ONNX model, not a state dict",
                hint="use it with --backend onnx",
            )
        else:
            raise WeightsError(
                f"unsupported weights file {path.name}",
                hint="use a .safetensors, .pth or .pt file",
            )
    except WeightsError:
        raise
    except Exception as exc:  # safetensors/torch raise many types for corrupt files
        raise WeightsError(
            f"cannot read weights {path}: {exc}",
            hint="the file may be truncated or not a weights file; download it again",
        ) from exc
    if isinstance(state, dict) and state.get("format") == TRAINING_CHECKPOINT_FORMAT:
        if isinstance(state.get("model_kwargs"), dict):
            settings = dict(state["model_kwargs"])
        state = training_checkpoint_weights(state)
    elif isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(
            f"{path} does not hold a state dict of tensors",
            hint="save model.state_dict() (or use the trainer's --export)",
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if keep_dtype:
        return dict(state), settings
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}, settings


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A safetensors file's tensors and the ``kwargs`` its metadata records (JSON; ``{}``
    if none), read through one open file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as fh:
        state = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open is not iterable)
        raw = (fh.metadata() or {}).get("kwargs")
    try:
        settings = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        settings = {}
    return state, settings if isinstance(settings, dict) else {}


TRAINING_CHECKPOINT_FORMAT = "lowlight-train"


def training_checkpoint_weights(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a ``lowlight train`` checkpoint stands for: the EMA where the run kept one
    (what it validated and picked ``best.pt`` on), the live weights for everything else."""
    return {**ckpt["model_state"], **(ckpt.get("ema") or {})}


def _numpy_globals() -> list[Any]:
    """numpy's array and scalar constructors and dtype classes: data, not code."""
    import numpy as np

    reconstruct = np.empty(0).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    dtypes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSUV"}
    return [reconstruct, scalar, np.ndarray, np.dtype, *dtypes]


def _load_pickled_tensors(path: Path) -> Any:
    import torch

    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if safe_globals is None:
        return torch.load(path, map_location="cpu", weights_only=True)
    with safe_globals(_numpy_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def _save_safetensors(state: Mapping[str, Any], path: Path, metadata: Mapping[str, str]) -> None:
    from safetensors.torch import save

    from lowlight_cli.files import atomic_file

    data = save(dict(state), metadata=dict(metadata))
    with atomic_file(path) as fh:
        fh.write(data)


def save_safetensors_fp16(
    state: Mapping[str, Any], path: str | Path, metadata: Mapping[str, Any] | None = None
) -> tuple[str, int]:
    """Write a state dict as fp16 safetensors (atomically) for shipping.

    Floating tensors are stored as float16 (half the size; the loader widens them back to
    float32); integer/bool tensors are kept. Values that overflow float16 are refused rather
    than silently stored as inf.

    Args:
        state: ``name -> torch.Tensor``.
        path: destination ``.safetensors`` file.
        metadata: string metadata (other values are JSON-encoded).

    Returns:
        ``(sha256, bytes)`` of the written file, for :func:`manifest_entry`.

    Raises:
        WeightsError: a tensor does not fit in float16, or the path is not ``.safetensors``.
    """
    import torch

    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path} must end with .safetensors")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        t = value.detach().to("cpu")
        if t.is_floating_point():
            half = t.to(torch.float16)
            if not torch.isfinite(half).all() and torch.isfinite(t).all():
                raise WeightsError(
                    f"tensor '{key}' overflows float16 (max |x| = {t.abs().max().item():.3g})",
                    hint="ship this model in float32 or rescale the layer",
                )
            t = half
        # Copies: safetensors refuses tensors that share memory (tied weights).
        out[key] = t.contiguous().clone()
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    _save_safetensors(out, path, meta)
    return file_sha256(path), path.stat().st_size
