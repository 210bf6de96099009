"""The CLI surface: help, version, lazy imports, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from lowlight_cli import __version__
from lowlight_cli.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.stdout


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("enhance", "batch", "train", "benchmark", "weights", "export", "models"):
        assert command in result.stdout


def test_help_does_not_import_torch_onnxruntime_or_numpy() -> None:
    # numpy alone costs ~0.25 s of the help's start-up; it belongs to the commands that compute.
    code = (
        "import sys\n"
        "from lowlight_cli.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'cv2', 'numpy') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY=\n" in out.stdout, out.stdout


def test_models_json_lists_registry() -> None:
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    names = {m["name"] for m in json.loads(result.stdout)["models"]}
    assert {"symnet", "nrl", "frlie", "neid", "gamma", "clahe"} <= names


def test_models_marks_the_default_and_its_shipped_scores() -> None:
    from lowlight_cli.constants import DEFAULT_MODEL
    from lowlight_cli.weights import load_manifest

    result = runner.invoke(app, ["models", "--json"])
    rows = {m["name"]: m for m in json.loads(result.stdout)["models"]}
    assert [n for n, m in rows.items() if m["default"]] == [DEFAULT_MODEL]
    # `lowlight enhance photo.jpg` must work offline: the default model's weights are listed.
    assert rows[DEFAULT_MODEL]["weights_available"]
    manifest = load_manifest()
    for name, row in rows.items():
        entry = manifest.entries.get(row["default_weights"] or "")
        assert row["weights_available"] == (entry is not None), name
        if row["kind"] == "neural":
            assert row["lol_eval15"] == (entry.metrics.get("lol_eval15") if entry else None), name
        else:  # the baselines' measured scores, for comparison
            assert row["lol_eval15"]["psnr"] > 0, name
    # The default is the model whose shipped weights score best on LOL eval15; landing better
    # weights for another model means revisiting DEFAULT_MODEL (constants.py).
    scored = {
        n: r["lol_eval15"]["psnr"]
        for n, r in rows.items()
        if r["lol_eval15"] and r["kind"] == "neural"
    }
    assert max(scored, key=scored.get) == DEFAULT_MODEL, scored


def test_unknown_model_is_usage_error() -> None:
    from lowlight_cli.constants import ExitCode
    from lowlight_cli.errors import UsageError
    from lowlight_cli.registry import get_spec

    try:
        get_spec("nope")
    except UsageError as err:
        assert err.exit_code == ExitCode.USAGE
        assert "symnet" in str(err)
    else:  # pragma: no cover
        raise AssertionError("no error")


def test_option_help_survives_rich_markup() -> None:
    """Help is rendered as rich markup: text in [brackets] must not silently vanish from it."""
    import typer.main
    from rich.text import Text

    from lowlight_cli.cli import app

    group = typer.main.get_command(app)
    ctx = group.make_context("lowlight", [], resilient_parsing=True)
    for name in group.list_commands(ctx):
        for param in group.get_command(ctx, name).params:
            text = getattr(param, "help", None) or ""
            assert Text.from_markup(text).plain == text, (name, param.name, text)
