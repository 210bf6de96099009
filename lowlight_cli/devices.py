"""Devices, precisions and free memory, resolved once at the edge and passed down as objects."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from lowlight_cli.constants import ENV_HEAP_TUNING, PRECISIONS
from lowlight_cli.errors import ResourceError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from lowlight_cli.registry import ModelSpec

# When nothing can tell us how much RAM is free, assume a modest laptop.
_FALLBACK_AVAILABLE_BYTES = 4 * 1024**3


def resolve_device(name: str) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a usable :class:`torch.device`.

    ``auto`` picks CUDA, then Apple MPS, then the CPU.

    Raises:
        UsageError: unknown name, or a device this machine does not have.
    """
    import torch

    text = (name or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise UsageError(
                "device 'mps' is not available on this machine",
                hint="MPS needs Apple silicon and a torch build with MPS; use --device cpu",
            )
        return torch.device("mps")
    kind, _, index_text = text.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"device '{name}' is not available: this torch build or machine has no CUDA",
                hint="use --device cpu (or auto), or install a CUDA build of torch",
            )
        if not index_text:
            return torch.device("cuda", torch.cuda.current_device())
        if not index_text.isdigit():
            raise UsageError(f"bad device '{name}'", hint="write cuda:N, e.g. cuda:0")
        index, count = int(index_text), torch.cuda.device_count()
        if index >= count:
            raise UsageError(
                f"device '{name}' does not exist: this machine has {count} CUDA device(s)",
                hint=f"use cuda:0 .. cuda:{count - 1}",
            )
        return torch.device("cuda", index)
    raise UsageError(f"unknown device '{name}'", hint="choose auto, cpu, cuda, cuda:N or mps")


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def precision_dtype(name: str) -> torch.dtype:
    """``fp32``/``fp16``/``bf16`` -> the torch dtype (KeyError for anything else)."""
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def precision_name(dtype: torch.dtype) -> str:
    """A torch dtype -> ``fp32``/``fp16``/``bf16`` (other dtypes: their torch name)."""
    import torch

    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    return names.get(dtype, str(dtype).removeprefix("torch."))


def resolve_precision(precision: str, spec: ModelSpec, device: torch.device) -> torch.dtype:
    """The compute dtype for ``precision`` on ``device``, if the model declares it safe.

    ``auto`` is bf16 on a CPU where bf16 is faster (:func:`cpu_prefers_bf16`) for a model whose
    registry entry says its bf16 output stays within 40 dB of fp32 (``bf16_auto``), and fp32
    everywhere else: GPUs keep fp32 until half precision is measured there.

    fp16 on the CPU is refused: PyTorch's CPU half kernels are slow or missing for several
    layers, and the memory it would save is better saved with smaller tiles. bf16 runs on the CPU
    where the model allows it.

    Raises:
        UsageError: unknown precision name.
        ResourceError: the model is not safe in that precision, or the device cannot do it.
    """
    import torch

    text = (precision or "fp32").strip().lower()
    if text not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}'", hint="choose auto, fp32, fp16 or bf16")
    if text == "auto":
        if device.type == "cpu" and spec.bf16_auto and cpu_prefers_bf16():
            return torch.bfloat16
        return torch.float32
    if text == "fp32":
        return torch.float32
    safe = spec.fp16_safe if text == "fp16" else spec.bf16_safe
    if not safe:
        raise ResourceError(
            f"model '{spec.name}' is not validated in {text}",
            hint="use --precision fp32 (see `lowlight models` for what each model supports)",
        )
    if text == "fp16":
        if device.type == "cpu":
            raise ResourceError(
                "fp16 on the CPU is not supported (slow or missing kernels)",
                hint="use --precision fp32 (or bf16 where the model allows it) on the CPU",
            )
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ResourceError(
            f"{device} does not support bf16", hint="use --precision fp16 or fp32 on this GPU"
        )
    return torch.bfloat16


def cpu_prefers_bf16() -> bool:
    """True on CPUs whose bf16 convolutions run on matrix units (Intel AMX).

    AVX512-BF16 alone does not pay: on a 2-core Xeon with it (no AMX), every model ran slower
    in bf16 than in fp32 at the fast path's working size (848x644: nrl 3.4 vs 2.3 s, neid 0.43 vs
    0.28 s, frlie 1.39 vs 0.86 s, symnet 39 vs 30 s; docs/usage.md), so ``--precision auto``
    keeps fp32 there, as on CPUs without bf16 at all (emulated). AMX CPUs are not measured yet.
    """
    import torch

    check = getattr(getattr(torch, "cpu", None), "_is_amx_tile_supported", None)
    if check is None:  # a torch without the probe (private helper of torch.cpu, >= 2.1)
        return False
    try:
        return bool(check())
    except RuntimeError:  # pragma: no cover - a build without cpuinfo
        return False


def available_memory(device: torch.device) -> int:
    """Bytes a computation on ``device`` may reasonably use right now.

    CUDA: free device memory. CPU and MPS (unified memory): available system RAM from
    ``/proc/meminfo`` (Linux), ``os.sysconf`` (other POSIX), the Windows API, else a fixed 4 GiB.
    """
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return available_ram()


# glibc's malloc serves blocks over 32 MB with mmap and unmaps them on free, so every tile's
# activations come back as fresh pages the kernel must fault in and zero, one 4 kB page at a time:
# 4.5 M page faults and 11 s of kernel time in a 16 s neid run at 2400x1600. Blocks up to this
# size are served from (and kept in) the heap instead, so the next tile reuses them.
CPU_HEAP_KEEP_BYTES = 1 << 30
_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
_heap_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed blocks up to 1 GiB instead of returning them to the kernel.

    Called by both backends on the CPU, where the same activation sizes (and the engine's tile
    buffers) are allocated and freed tile after tile. Measured on neid at 2400x1600 (2 cores,
    torch): 16.8 s -> 9.3 s; the process keeps what it freed until it exits (peak RSS 1.05 ->
    1.41 GB there). Applied once per process; a no-op off glibc (macOS, Windows, musl) or with
    ``LOWLIGHT_HEAP_TUNING=0``.

    Returns:
        True when glibc accepted the settings.
    """
    global _heap_tuned
    if _heap_tuned is None:
        _heap_tuned = False
        if sys.platform.startswith("linux") and os.environ.get(ENV_HEAP_TUNING, "1") != "0":
            try:
                import ctypes

                libc = ctypes.CDLL("libc.so.6")
                _heap_tuned = (
                    libc.mallopt(_M_MMAP_THRESHOLD, CPU_HEAP_KEEP_BYTES) == 1
                    and libc.mallopt(_M_TRIM_THRESHOLD, CPU_HEAP_KEEP_BYTES) == 1
                )
            except (OSError, AttributeError):  # no glibc: nothing to tune
                pass
    return _heap_tuned


def release_freed_memory() -> bool:
    """Hand what :func:`keep_freed_memory` kept back to the kernel (glibc ``malloc_trim``).

    Called between photos: tiles of one photo reuse each other's blocks, but the next photo's
    sizes differ, so without it the heap of a batch only grows with every new size.

    Returns:
        True when memory was released; False when the heap was not tuned (nothing kept).
    """
    if not _heap_tuned:
        return False
    import ctypes

    return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))


def available_ram() -> int:
    """Available system RAM in bytes (best effort, never raises)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if sys.platform == "win32":
        return _windows_available_ram()
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
        if pages > 0 and size > 0:
            return int(pages) * int(size)
    except (ValueError, OSError, AttributeError):
        pass
    return _FALLBACK_AVAILABLE_BYTES


def _windows_available_ram() -> int:
    try:
        import ctypes

        class _MemoryStatus(ctypes.Structure):
            _fields_ = [
                ("length", ctypes.c_ulong),
                ("load", ctypes.c_ulong),
                ("total_phys", ctypes.c_ulonglong),
                ("avail_phys", ctypes.c_ulonglong),
                ("total_page", ctypes.c_ulonglong),
                ("avail_page", ctypes.c_ulonglong),
                ("total_virtual", ctypes.c_ulonglong),
                ("avail_virtual", ctypes.c_ulonglong),
                ("avail_ext", ctypes.c_ulonglong),
            ]

        status = _MemoryStatus()
        status.length = ctypes.sizeof(_MemoryStatus)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
            return int(status.avail_phys)
    except (OSError, AttributeError):
        pass
    return _FALLBACK_AVAILABLE_BYTES
