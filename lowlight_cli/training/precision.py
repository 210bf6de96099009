"""The training device and its precision (autocast dtype), resolved once at the start of a run."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from lowlight_cli.errors import ResourceError, UsageError
from lowlight_cli.training.distributed import _Dist


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
