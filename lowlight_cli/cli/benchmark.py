"""``lowlight benchmark``: quality (PSNR/SSIM on a paired folder) per model.

A report is a dict of sections (``{"quality": [...]}``); each section has one builder in
:data:`SECTIONS`, so further sections (speed, plots, a gallery) plug in beside ``quality``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from lowlight_cli.constants import ENV_DEVICE
from lowlight_cli.errors import BatchFailedError, LowlightError, UsageError


@dataclass
class BenchmarkOptions:
    """What the sections need, parsed once from the command line."""

    models: list[str]
    data: Path | None
    weights: dict[str, str]
    device: str
    per_image: bool


def parse_models(text: str) -> list[str]:
    """``"a,b"`` -> registry names (validated, order kept, duplicates dropped)."""
    from lowlight_cli.registry import get_spec

    names: list[str] = []
    for part in text.split(","):
        if part.strip():
            name = get_spec(part.strip()).name
            if name not in names:
                names.append(name)
    if not names:
        raise UsageError("no models given", hint="e.g. --models neid,gamma")
    return names


def parse_weights(values: list[str]) -> dict[str, str]:
    """``["nrl=path.safetensors", ...]`` -> ``{"nrl": "path.safetensors"}``."""
    from lowlight_cli.registry import get_spec

    out: dict[str, str] = {}
    for value in values:
        model, sep, ref = value.partition("=")
        if not sep or not model or not ref:
            raise UsageError(f"bad --weights '{value}'", hint="write MODEL=ID_OR_PATH")
        out[get_spec(model).name] = ref
    return out


def quality_section(opts: BenchmarkOptions) -> tuple[list[dict[str, Any]], list[str]]:
    """Mean PSNR/SSIM per model on the pairs of ``opts.data`` (LOL: its eval15 split).

    Returns:
        ``(rows, failures)``: one row per model that ran; one message per model that failed.
    """
    from lowlight_cli.cli._common import print_warning
    from lowlight_cli.evaluate import evaluate_pairs, model_enhance_fn
    from lowlight_cli.training.data import load_pairs, paired_split

    if opts.data is None:
        raise UsageError("the quality benchmark needs paired data", hint="pass --data DIR")
    pairs = load_pairs(paired_split(opts.data, "val"))
    rows, failures = [], []
    for model in opts.models:
        try:
            fn = model_enhance_fn(model, weights=opts.weights.get(model), device=opts.device)
            result = evaluate_pairs(fn, pairs, name=model)
        except LowlightError as err:
            # One model without weights should not hide the others' scores.
            failures.append(f"{model}: {err}")
            print_warning(f"{model}: {err}")
            continue
        rows.append(result.to_dict(per_image=opts.per_image))
    return rows, failures


SECTIONS: dict[str, Callable[[BenchmarkOptions], tuple[list[dict[str, Any]], list[str]]]] = {
    "quality": quality_section,
}


def benchmark(
    models: str = typer.Option(
        "gamma,clahe,symnet,nrl,frlie,neid", "--models", help="Comma-separated models."
    ),
    data: Path | None = typer.Option(
        None, "--data", help="Paired folder: LOL layout (uses eval15) or low/ + high/."
    ),
    quality_only: bool = typer.Option(
        False, "--quality-only", help="Only the quality section (PSNR/SSIM)."
    ),
    weights: list[str] = typer.Option(
        [], "--weights", help="Per-model weights, MODEL=ID_OR_PATH (repeatable)."
    ),
    device: str = typer.Option("auto", "--device", envvar=ENV_DEVICE, help="auto, cpu, cuda, mps."),
    per_image: bool = typer.Option(False, "--per-image", help="Include per-image scores."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """Measure the models: PSNR and SSIM against ground truth on a paired folder."""
    opts = BenchmarkOptions(
        models=parse_models(models),
        data=data,
        weights=parse_weights(weights),
        device=device,
        per_image=per_image,
    )
    wanted = ["quality"] if quality_only else list(SECTIONS)
    report: dict[str, Any] = {}
    failures: list[str] = []
    for name in wanted:
        rows, failed = SECTIONS[name](opts)
        report[name] = rows
        failures += failed
    if as_json:
        from lowlight_cli.cli._common import print_json

        print_json(report)
    else:
        _print_tables(report)
    if failures:
        raise BatchFailedError(
            f"{len(failures)} model(s) could not be measured",
            hint="pass trained weights with --weights MODEL=PATH",
        )


def _print_tables(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = report.get("quality")
    if rows is None:
        return
    table = Table(title="quality (mean over pairs)")
    for col in ("model", "PSNR (dB)", "SSIM", "images"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["model"], f"{r['psnr']:.3f}", f"{r['ssim']:.4f}", str(r["n_images"]))
    Console().print(table)
