"""``lowlight train``."""

from __future__ import annotations

from lowlight_cli.errors import UsageError


def train() -> None:
    """(being built)"""
    raise UsageError("'train' is not available yet in this build")
