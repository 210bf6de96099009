"""Several processes under ``torchrun``: the process group, gradient averaging, agreement.

Gradients are averaged with ``all_reduce`` before the optimiser step, which is what
DistributedDataParallel does, done by hand because the models train through methods other than
``forward`` (symnet's ``inverse``, neid's ``forward_train``, frlie's ``encode``/``restore``), which
DDP's hooks would not see.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    owned: bool = False  # this process group was started by train(), which shuts it down

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_name: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return _Dist(world, rank, local, owned)


# How long _all_reduce waits for gloo's worker to let go of a tensor (it takes ~0.1 ms).
_RELEASE_WAIT_S = 1.0


def _all_reduce(tensor: torch.Tensor, *, maximum: bool = False) -> None:
    """``all_reduce`` (sum or max) that returns once the backend holds no reference to ``tensor``.

    gloo wakes the caller before its worker thread drops its own references to the tensor: in
    5-55 % of calls the worker still held them when ``all_reduce`` returned (2 processes,
    2-core CPU), for about 0.1 ms. If Python has let go by then, the worker has to take the
    GIL to free the tensor, and when that happens while the interpreter is shutting down the
    process aborts ("terminate called without an active exception", a SIGABRT after a
    finished run; pytorch/pytorch#190489). Waiting the fraction of a millisecond here means the
    tensor is always freed by Python. CUDA tensors (NCCL) are left to the backend: its watchdog
    frees them, and ``destroy_process_group`` in :func:`train` stops it.
    """
    import torch.distributed as dist

    op = dist.ReduceOp.MAX if maximum else dist.ReduceOp.SUM
    dist.all_reduce(tensor, op=op)
    if tensor.device.type != "cpu" or not hasattr(tensor, "_use_count"):
        return
    deadline = time.monotonic() + _RELEASE_WAIT_S
    while tensor._use_count() > 1 and time.monotonic() < deadline:
        time.sleep(1e-4)


def _average_gradients(params: list[nn.Parameter], world: int) -> None:
    if world <= 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    _all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def _all_agree(local: bool, world: int, device: torch.device) -> bool:
    """True when any process says so (one ``all_reduce``): every rank must stop at one step."""
    if world <= 1:
        return local
    flag = torch.tensor([1.0 if local else 0.0], device=device)
    _all_reduce(flag, maximum=True)
    return bool(flag.item() > 0)


def _all_agree_max(value: int, world: int, device: torch.device) -> int:
    """The largest of every process's ``value`` (one ``all_reduce``): a number all ranks use."""
    if world <= 1:
        return value
    t = torch.tensor([float(value)], device=device)
    _all_reduce(t, maximum=True)
    return int(t.item())
