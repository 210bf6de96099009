"""Small helpers shared by the command modules (stderr console, JSON output, progress)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console

from lowlight_cli.errors import LowlightError

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


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
