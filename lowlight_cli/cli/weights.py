"""``lowlight weights``."""

from __future__ import annotations

import typer

app = typer.Typer(help="List, download, verify and locate model weights.", no_args_is_help=True)
