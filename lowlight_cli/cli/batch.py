"""``lowlight batch``."""

from __future__ import annotations

from lowlight_cli.errors import UsageError


def batch() -> None:
    """(being built)"""
    raise UsageError("'batch' is not available yet in this build")
