"""Building blocks shared by several models.

Global pooling and tiled inference
----------------------------------
Low-light models estimate lighting over the whole image through global average pooling. Run on
tiles, each tile would see different statistics and tiles would disagree in brightness. Every
model therefore pools through :class:`GlobalAvgPool`, which normally computes a plain mean but,
inside :func:`pooling_context`, can *record* every pooled vector of a forward pass (a context pass
over a downscaled whole image) as one flat ``(B, total_channels)`` tensor, or *replay* such a
tensor into later passes (every tile), so that all tiles share the whole image's statistics.
The same mechanism gives ONNX graphs an explicit ``stats`` input and output: the ``select`` mode
(export only) records every mean and returns either it or the replayed value, chosen by a boolean
tensor, so that one graph serves plain passes, context passes and tiles
(:mod:`lowlight_cli.export`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class _PoolState:
    mode: str  # "record", "replay" or "select"
    stats: torch.Tensor | None = None  # replay/select: (B or 1, total)
    recorded: list[torch.Tensor] = field(default_factory=list)
    offset: int = 0
    use_stats: torch.Tensor | None = None  # select: bool scalar, True replays ``stats``


_STATE: contextvars.ContextVar[_PoolState | None] = contextvars.ContextVar(
    "lowlight_pool_state", default=None
)


class PooledStats:
    """Handle returned by :func:`pooling_context` in record mode."""

    def __init__(self, state: _PoolState) -> None:
        self._state = state

    @property
    def tensor(self) -> torch.Tensor:
        """All pooled vectors of the pass, concatenated: ``(B, total_channels)``."""
        if not self._state.recorded:
            raise RuntimeError("no global pooling happened in this pass")
        return torch.cat(self._state.recorded, dim=1)


@contextlib.contextmanager
def pooling_context(
    mode: str, stats: torch.Tensor | None = None, *, use_stats: torch.Tensor | None = None
) -> Iterator[PooledStats]:
    """Record or replay global pooling statistics for the forward passes inside the block.

    Args:
        mode: ``"record"`` (collect every pooled vector), ``"replay"`` (use ``stats``) or
            ``"select"`` (record, and use ``stats`` where ``use_stats`` is True; for tracing
            an ONNX graph that can do both).
        stats: ``(B or 1, total_channels)`` from a recording; required for replay. For replay,
            each forward pass inside the block must consume exactly the recorded channels; use
            one ``with`` block per forward pass.
        use_stats: bool scalar tensor, required for select.
    """
    if mode not in ("record", "replay", "select"):
        raise ValueError(f"mode must be 'record', 'replay' or 'select', not {mode!r}")
    if mode in ("replay", "select") and stats is None:
        raise ValueError(f"{mode} needs stats")
    if mode == "select" and use_stats is None:
        raise ValueError("select needs use_stats")
    state = _PoolState(mode=mode, stats=stats, use_stats=use_stats)
    token = _STATE.set(state)
    try:
        yield PooledStats(state)
    finally:
        _STATE.reset(token)
    if mode in ("replay", "select") and stats is not None and state.offset != stats.shape[1]:
        raise RuntimeError(
            f"replayed {state.offset} of {stats.shape[1]} pooled channels: the stats were "
            "recorded from a different model or configuration"
        )


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Mean over H and W, or the recorded value during a replay.

    Args:
        x: ``(B, C, H, W)``.

    Returns:
        ``(B, C, 1, 1)``.
    """
    state = _STATE.get()
    if state is None:
        return x.mean(dim=(2, 3), keepdim=True)
    if state.mode == "record":
        pooled = x.mean(dim=(2, 3), keepdim=True)
        state.recorded.append(pooled.flatten(1))
        return pooled
    assert state.stats is not None
    c = x.shape[1]
    chunk = state.stats[:, state.offset : state.offset + c]
    state.offset += c
    if chunk.shape[1] != c:
        raise RuntimeError("replayed stats are shorter than the model's pooling needs")
    chunk = chunk.to(dtype=x.dtype, device=x.device)
    if state.mode == "select":
        assert state.use_stats is not None
        pooled = x.mean(dim=(2, 3), keepdim=True)
        state.recorded.append(pooled.flatten(1))
        # A select, not a blend, so both choices are bit-exact.
        return torch.where(state.use_stats, chunk.reshape(-1, c, 1, 1), pooled)
    return chunk.expand(x.shape[0], c).reshape(x.shape[0], c, 1, 1)


class GlobalAvgPool(nn.Module):
    """``(B, C, H, W) -> (B, C, 1, 1)``; see the module docstring for tiled inference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_avg_pool(x)
