"""Run a PyTorch module as a :class:`~lowlight_cli.backends.base.Backend`."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lowlight_cli.backends.base import Backend, OutOfMemory, is_out_of_memory
from lowlight_cli.devices import precision_name
from lowlight_cli.models.blocks import pooling_context


class TorchBackend(Backend):
    """A module on a device in a dtype, under ``torch.inference_mode``.

    Args:
        module: the model (moved to ``device``/``dtype`` and put in eval mode here).
        device: resolved device (see :func:`lowlight_cli.devices.resolve_device`).
        dtype: compute dtype (see :func:`lowlight_cli.devices.resolve_precision`).
        scale: output size / input size of ``module``.
        channels_last: use the NHWC memory format; None picks it on CUDA only (on the CPU it
            measured no faster, see ``docs/usage.md``).
    """

    name = "torch"

    def __init__(
        self,
        module: nn.Module,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        scale: int = 1,
        channels_last: bool | None = None,
    ) -> None:
        self._device = torch.device(device)
        self._dtype = dtype
        self.precision = precision_name(dtype)
        self.device = str(self._device)
        self.scale = scale
        self._channels_last = (
            self._device.type == "cuda" if channels_last is None else bool(channels_last)
        )
        if self._device.type == "cpu":
            from lowlight_cli.devices import keep_freed_memory

            keep_freed_memory()
        module = module.to(device=self._device, dtype=dtype).eval()
        if self._channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module

    def _input(self, x: np.ndarray) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W), got {x.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        tensor = tensor.to(device=self._device, dtype=self._dtype)
        if self._channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def run(self, x: np.ndarray, stats: np.ndarray | None = None) -> np.ndarray:
        """See :meth:`Backend.run`."""
        try:
            with torch.inference_mode():
                tensor = self._input(x)
                if stats is None:
                    out = self.module(tensor)
                else:
                    replay = torch.from_numpy(stats).to(self._device)
                    with pooling_context("replay", replay):
                        out = self.module(tensor)
                del tensor
                return out.float().cpu().contiguous().numpy()
        except Exception as exc:
            if is_out_of_memory(exc):
                raise OutOfMemory(str(exc)) from exc
            raise

    def context(self, x: np.ndarray) -> np.ndarray | None:
        """See :meth:`Backend.context`."""
        try:
            with torch.inference_mode():
                tensor = self._input(x)
                with pooling_context("record") as pooled:
                    self.module(tensor)
                del tensor
                try:
                    recorded = pooled.tensor
                except RuntimeError:
                    return None  # the model pools nothing: tiles need no shared statistics
                return recorded.float().cpu().numpy()
        except Exception as exc:
            if is_out_of_memory(exc):
                raise OutOfMemory(str(exc)) from exc
            raise

    def free(self) -> None:
        """Return cached CUDA/MPS memory after an out-of-memory error."""
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
        elif self._device.type == "mps" and hasattr(torch, "mps"):
            torch.mps.empty_cache()
