"""``lowlight enhance``."""

from __future__ import annotations

from lowlight_cli.errors import UsageError


def enhance() -> None:
    """(being built)"""
    raise UsageError("'enhance' is not available yet in this build")
