"""Training checkpoints: atomic writes, RNG capture, and the fp16 safetensors export."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowlight_cli.errors import UsageError
from lowlight_cli.files import atomic_file
from lowlight_cli.weights.state import TRAINING_CHECKPOINT_FORMAT

CHECKPOINT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """Every random generator a training step may touch (python, numpy, torch, cuda).

    numpy's key array is stored as a tensor, so that a checkpoint holds nothing the weights-only
    unpickler refuses (``lowlight enhance --weights best.pt`` reads it that way).
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (cuda only where it was captured and exists)."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys  # older checkpoints: ndarray
    np.random.set_state((name, np.asarray(keys, np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``.

    A crash or Ctrl-C mid-write leaves the previous checkpoint intact.
    """
    path = Path(path)
    with atomic_file(path) as fh:
        torch.save(obj, fh)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by the training loop.

    Raises:
        UsageError: missing file or not a lowlight checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}", hint="give the path of last.pt or best.pt")
    try:
        # Our checkpoints hold RNG states and recipe dicts, which the weights-only unpickler
        # refuses; only load checkpoints you wrote yourself.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a corrupt file
        raise UsageError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != TRAINING_CHECKPOINT_FORMAT:
        raise UsageError(f"{path} is not a lowlight training checkpoint")
    return ckpt


def save_fp16_safetensors(
    state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, Any]
) -> tuple[str, int]:
    """Write ``state`` as fp16 safetensors with JSON-encoded ``metadata`` values.

    One writer for every shipped file: :func:`lowlight_cli.weights.save_safetensors_fp16`.

    Returns:
        ``(sha256, bytes)`` of the file.
    """
    from lowlight_cli.weights import save_safetensors_fp16

    return save_safetensors_fp16(state, path, metadata)
