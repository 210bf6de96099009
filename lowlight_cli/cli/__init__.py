"""The ``lowlight`` command line: one thin module per command.

Command modules import only light things at top level; torch, onnxruntime and the engine are
imported inside the command functions so that ``lowlight --help`` stays fast.
``main`` is the one place that maps errors to exit codes.
"""

from __future__ import annotations

import sys

import typer

from lowlight_cli import __version__
from lowlight_cli.cli import batch, benchmark, enhance, export, models, train, weights
from lowlight_cli.constants import ExitCode
from lowlight_cli.errors import LowlightError

app = typer.Typer(
    name="lowlight",
    help="Make dark, underexposed photos look right.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"lowlight {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        callback=_version_callback,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Make dark, underexposed photos look right."""


app.command("enhance")(enhance.enhance)
app.command("batch")(batch.batch)
app.command("train")(train.train)
app.command("benchmark", cls=benchmark.BenchmarkCommand)(benchmark.benchmark)
app.command("export")(export.export)
app.command("models")(models.models)
app.add_typer(weights.app, name="weights")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and map every error to its exit code and a one-line message."""
    from lowlight_cli.cli._common import print_error

    # Ctrl-C never reaches here: Typer ends the run with exit 130 and no message itself, so
    # enhance and batch report how far they got before letting the interrupt go.
    try:
        app(args=argv, prog_name="lowlight")
    except LowlightError as err:
        print_error(err)
        sys.exit(int(err.exit_code))
    except MemoryError:
        print_error(LowlightError("out of memory", hint="use a smaller --tile"))
        sys.exit(int(ExitCode.RESOURCE))
