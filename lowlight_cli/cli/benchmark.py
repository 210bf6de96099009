"""``lowlight benchmark``."""

from __future__ import annotations

from lowlight_cli.errors import UsageError


def benchmark() -> None:
    """(being built)"""
    raise UsageError("'benchmark' is not available yet in this build")
