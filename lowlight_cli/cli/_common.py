"""Small helpers shared by the command modules (stderr console, JSON output, progress)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from lowlight_cli.errors import LowlightError

err_console = Console(stderr=True, highlight=False, soft_wrap=True)

# Test hook: seconds to sleep per photo, so interruption tests can catch a run mid-way.
ENV_TEST_DELAY = "LOWLIGHT_TEST_DELAY"


def delay_for_tests() -> float:
    """The per-photo pause asked for by :data:`ENV_TEST_DELAY` (0: none)."""
    return float(os.environ.get(ENV_TEST_DELAY, "0") or 0)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM ends it like Ctrl-C (``KeyboardInterrupt``).

    Without this SIGTERM (``kill``, a service manager, a CI timeout) ends the process on the
    spot, and a photo being encoded leaves its temporary file behind; as an exception it lets
    writes remove their temporary files and the command say where it stopped. Signal handlers
    can only be set from the main thread; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_interrupted(written: int, total: int, *, hint: str | None = None) -> None:
    """Say how far an interrupted run got (the interrupt itself then ends it with exit 130).

    Typer turns ``KeyboardInterrupt`` into exit 130 without a word, so commands that write
    photos report here before letting it go.
    """
    print_error(
        LowlightError(
            f"interrupted: {written} of {total} photos written, none half-written", hint=hint
        )
    )


def print_error(err: LowlightError) -> None:
    """One line on stderr: ``lowlight: error: message (hint)``."""
    msg = f"lowlight: error: {err.message}"
    if err.hint:
        msg += f"\n  hint: {err.hint}"
    err_console.print(msg, markup=False)


def print_warning(message: str) -> None:
    """One warning line on stderr."""
    err_console.print(f"lowlight: warning: {message}", markup=False)


def print_json(data: Any) -> None:
    """Machine-readable result on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def progress_enabled() -> bool:
    """Rich progress bars only when stderr is a terminal (and not disabled by NO_COLOR/CI)."""
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
