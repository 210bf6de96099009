"""The backend interface: map an NCHW float32 array to an NCHW float32 array, nothing else.

A backend wraps one model on one device in one precision. The engine owns everything else
(padding, tiling, the context pass, merging, strength, clamping), so a new backend (ONNX Runtime,
say) only has to implement :meth:`Backend.run` and :meth:`Backend.context`:

* ``run(x, stats)``: ``x`` is ``(B, 3, h, w)`` float32 RGB in [0, 1] with ``h`` and ``w``
  multiples of the model's size multiple; returns ``(B, 3, h * scale, w * scale)`` float32,
  unclamped. With ``stats`` (from :meth:`Backend.context`), every global average pooling of the
  model must use those values instead of pooling over ``x`` (torch: ``pooling_context("replay")``;
  ONNX: the graph's ``stats`` input).
* ``context(x)``: run the model once on ``x`` (a downscaled whole image) and return the pooled
  statistics as ``(1, total_channels)`` float32, or None when the model pools nothing.
* Out-of-memory conditions must surface as :class:`OutOfMemory` (use :func:`is_out_of_memory`
  to recognise them), so the engine can retry with smaller tiles.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class OutOfMemory(Exception):
    """The device ran out of memory while running a tile; the engine retries smaller."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the out-of-memory errors of torch (CUDA/MPS/CPU), numpy and onnxruntime."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    if name == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
        return True
    text = str(exc).lower()
    # onnxruntime's errors do not derive from RuntimeError, so look at the message of any error.
    return (
        "out of memory" in text
        or "failed to allocate memory" in text  # onnxruntime
        or "not enough memory" in text  # torch CPU allocator
        or "can't allocate memory" in text
    )


class Backend(ABC):
    """One model on one device, as an array-to-array function.

    Attributes:
        name: backend id (``"torch"``, ``"onnx"``).
        device: where it runs, in words (``"cpu"``, ``"cuda:0"``).
        scale: output size / input size.
        precision: the compute precision that really runs (``fp32``, ``fp16``, ``bf16``).
    """

    name: str = "base"
    device: str = "cpu"
    scale: int = 1
    precision: str = "fp32"

    @abstractmethod
    def run(self, x: np.ndarray, stats: np.ndarray | None = None) -> np.ndarray:
        """Model output for ``x``.

        Args:
            x: ``(B, 3, h, w)`` float32 RGB in [0, 1], sides multiples of the size multiple.
            stats: ``(1, total_channels)`` pooled statistics to replay, or None to pool over ``x``.

        Returns:
            ``(B, 3, h * scale, w * scale)`` float32, not clamped.

        Raises:
            OutOfMemory: the device ran out of memory.
        """

    @abstractmethod
    def context(self, x: np.ndarray) -> np.ndarray | None:
        """Record the global pooling statistics of one pass over ``x`` (same layout as ``run``).

        Returns:
            ``(1, total_channels)`` float32, or None when the model has no global pooling.

        Raises:
            OutOfMemory: the device ran out of memory.
        """

    def free(self) -> None:  # noqa: B027 - optional hook, nothing to free by default
        """Release cached device memory (called after an out-of-memory retry)."""
