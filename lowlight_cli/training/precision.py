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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), per torch's probe."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(cpu, probe, None)
        if check is not None and check():
            return True
    return False


def resolve_amp(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32).

    ``auto`` is bf16 (or fp16 without bf16) on CUDA and fp32 elsewhere; on a CPU with native
    bf16 the training loop then measures both and keeps the faster (:func:`cpu_candidates`).

    Raises:
        ResourceError: half precision asked for where it is not supported.
    """
    if precision in ("auto", "fp32"):
        if precision == "auto" and device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if precision not in ("fp16", "bf16"):
        raise UsageError(f"unknown precision '{precision}'", hint="auto, fp32, fp16, bf16")
    if device.type == "cpu" and precision == "bf16":
        if not cpu_has_native_bf16():
            raise ResourceError(
                "this CPU has no native bf16 (AVX-512 BF16 or AMX)", hint="use --precision fp32"
            )
        return torch.bfloat16
    if device.type != "cuda":
        raise ResourceError(
            f"{precision} training needs CUDA (or, for bf16, a CPU with native bf16)",
            hint="use --precision fp32",
        )
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ResourceError("this GPU has no bfloat16", hint="use --precision fp16")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def cpu_candidates(
    precision: str, channels_last: bool | None
) -> list[tuple[torch.dtype | None, bool]]:
    """The (autocast dtype, channels_last) settings worth timing on this CPU.

    What is fastest differs between CPUs (neid's step under bf16 autocast was reported 3.3x
    faster than fp32 on a Zen 4, and measured 1.4x slower on a Xeon with AVX-512 BF16 but no
    AMX; docs/training.md), so nothing fixed is chosen: ``auto``
    precision tries fp32 and, where the CPU has native bf16, bf16; an unset memory format
    tries both layouts. One candidate means there is nothing to measure.
    """
    dtypes: list[torch.dtype | None]
    if precision == "auto":
        dtypes = [None, torch.bfloat16] if cpu_has_native_bf16() else [None]
    else:
        dtypes = [resolve_amp(precision, torch.device("cpu"))]
    layouts = [True, False] if channels_last is None else [channels_last]
    return [(d, cl) for d in dtypes for cl in layouts]


def describe_setting(dtype: torch.dtype | None, channels_last: bool) -> str:
    """``fp32``, ``bf16+channels_last``, ... (logs and checkpoints)."""
    name = str(dtype).replace("torch.", "").replace("bfloat16", "bf16").replace("float16", "fp16")
    return ("fp32" if dtype is None else name) + ("+channels_last" if channels_last else "")


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
