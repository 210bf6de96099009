"""``lowlight export``."""

from __future__ import annotations

from lowlight_cli.errors import UsageError


def export() -> None:
    """(being built)"""
    raise UsageError("'export' is not available yet in this build")
