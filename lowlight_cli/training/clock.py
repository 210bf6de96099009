"""The time a training run spends training, with the stretches it was stopped left out.

``--budget`` fits a schedule to seconds per step, and the learning curves log hours. A run that
is stopped for a while (Ctrl-Z and ``fg``, ``kill -STOP`` / ``-CONT`` to free the cores for
something else) loses wall time without training: counted, it would make the steps look slow
and shrink the fitted schedule, and it would add hours to the curve that trained nothing.

A stopped process uses no CPU, a training one does, so a gap between two ticks that is long
(``STALL_SECONDS``) and almost idle (under ``STALL_CPU_SHARE`` of it on the CPU, all threads
together) is taken as a stop, less the CPU time it did use. A run that waits on a busy machine
still uses its share of CPU and still counts. ``--time-limit`` stays on the wall clock.
"""

from __future__ import annotations

import time

STALL_SECONDS = 30.0
STALL_CPU_SHARE = 0.1


class RunClock:
    """Monotonic seconds less the stops seen by :meth:`tick` (call it once per step)."""

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._cpu = time.process_time()
        self.stopped = 0.0

    def tick(self) -> float:
        """Account for the time since the last tick; returns the seconds taken as a stop."""
        wall, cpu = time.monotonic(), time.process_time()
        d_wall, d_cpu = wall - self._wall, cpu - self._cpu
        self._wall, self._cpu = wall, cpu
        if d_wall >= STALL_SECONDS and d_cpu < STALL_CPU_SHARE * d_wall:
            stop = d_wall - d_cpu
            self.stopped += stop
            return stop
        return 0.0

    def now(self) -> float:
        """Like ``time.monotonic()``, without the stops counted so far."""
        return time.monotonic() - self.stopped
