"""``lowlight benchmark``: quality (PSNR/SSIM on a paired folder) and speed per model.

A report is a dict of sections (``{"machine": {...}, "quality": [...], "speed": [...]}``); each
list section has one builder in :data:`SECTIONS`. The measuring, the roofline, the writers
(JSON, Markdown, plot) and the gallery live in :mod:`lowlight_cli.benchmarking`; this module
only parses options and puts the pieces together.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand

from lowlight_cli.constants import (
    BACKENDS,
    DEFAULT_BENCHMARK_BUDGET_S,
    ENV_BACKEND,
    ENV_DEVICE,
    ENV_PRECISION,
    PRECISIONS,
)
from lowlight_cli.errors import (
    BatchFailedError,
    LowlightError,
    NoDefaultWeightsError,
    UsageError,
)

# Without --models every model is benchmarked; one with no trained default weights yet is
# then reported as skipped (its speed is still timed), not as a failure of the run.
DEFAULT_MODELS = "gamma,clahe,symnet,nrl,frlie,neid"


@dataclass
class BenchmarkOptions:
    """What the sections need, parsed once from the command line."""

    models: list[str]
    data: Path | None
    weights: dict[str, str]
    device: str
    per_image: bool
    devices: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=lambda: ["torch"])
    precisions: list[str] = field(default_factory=lambda: ["auto"])
    paths: list[str] = field(default_factory=lambda: ["fast", "full-res"])
    sizes: list[tuple[int, int]] | None = None
    repeats: int | None = None
    warmup: int | None = None
    budget_s: float = 60.0
    gallery: Path | None = None
    # --ensemble: the trained models are scored averaged over the 8 orientations.
    ensemble: bool = False
    # --no-coarse: frlie is scored without its coarse pass (the plain model).
    coarse_pass: bool = True
    notes: list[str] = field(default_factory=list)
    # Filled by the quality section for the gallery: model -> thumbnails, in pair order.
    thumbnails: dict[str, list[Any]] = field(default_factory=dict)
    conv_gflops: dict[str, float] = field(default_factory=dict)
    # True when --models was given: then a model that cannot be scored is a failure (exit 6).
    models_named: bool = True


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
    from lowlight_cli.registry import get_spec
    from lowlight_cli.training.data import load_pairs, paired_split

    if opts.data is None:
        raise UsageError("the quality benchmark needs paired data", hint="pass --data DIR")
    pairs = load_pairs(paired_split(opts.data, "val"))
    rows, failures = [], []
    for model in opts.models:
        try:
            ensemble = opts.ensemble and get_spec(model).kind == "neural"
            fn = model_enhance_fn(
                model,
                weights=opts.weights.get(model),
                device=opts.device,
                ensemble=ensemble,
                coarse_pass=opts.coarse_pass,
            )
            if opts.gallery is not None:
                fn = _keep_thumbnails(fn, opts.thumbnails.setdefault(model, []))
            result = evaluate_pairs(fn, pairs, name=model)
        except NoDefaultWeightsError as err:
            if opts.models_named:
                failures.append(f"{model}: {err}")
                print_warning(f"{model}: {err}")
            else:
                opts.notes.append(f"quality of {model} skipped: {err}")
                rows.append(
                    {"model": model, "psnr": None, "ssim": None, "psnr_gt_mean": None,
                     "ssim_gt_mean": None, "n_images": 0,
                     "note": f"skipped: {err.message}"}
                )  # fmt: skip
            continue
        except LowlightError as err:
            # One model without weights should not hide the others' scores.
            failures.append(f"{model}: {err}")
            print_warning(f"{model}: {err}")
            continue
        row = result.to_dict(per_image=opts.per_image)
        notes = ["--ensemble"] if ensemble else []
        if not opts.coarse_pass and get_spec(model).coarse_pass_mp:
            notes.append("--no-coarse")
        if notes:
            row["note"] = " ".join(notes)
        rows.append(row)
    return rows, failures


def _keep_thumbnails(fn: Callable[[Any], Any], store: list[Any]) -> Callable[[Any], Any]:
    """Wrap an enhance function so a small copy of each output is kept for the gallery."""
    from lowlight_cli.benchmarking import thumbnail

    def run(pixels: Any) -> Any:
        out = fn(pixels)
        store.append(thumbnail(out))
        return out

    return run


def speed_section(opts: BenchmarkOptions) -> tuple[list[dict[str, Any]], list[str]]:
    """Seconds, MP/s, peak memory and roofline fraction per model x backend x device x precision.

    Returns:
        ``(rows, failures)``: one row per configuration (skipped ones carry a ``note``); one
        message per configuration whose worker failed.
    """
    from lowlight_cli import benchmarking as bm
    from lowlight_cli.cli._common import err_console, print_warning, progress_enabled
    from lowlight_cli.registry import get_spec

    backends = []
    for backend in opts.backends:
        reason = bm.backend_available(backend)
        if reason is None:
            backends.append(backend)
        else:
            opts.notes.append(f"backend {backend} skipped: {reason}")
            print_warning(f"backend {backend} skipped: {reason}")
    configs, pre_rows = [], []
    for device in opts.devices:
        kind = bm.device_kind(device)
        sizes = opts.sizes or list(bm.DEFAULT_SIZES[kind])
        repeats = opts.repeats if opts.repeats is not None else bm.DEFAULT_REPEATS[kind]
        warmup = opts.warmup if opts.warmup is not None else bm.DEFAULT_WARMUP[kind]
        for precision in opts.precisions:
            for model in opts.models:
                spec = get_spec(model)
                for backend in backends:
                    try:
                        # Rows name the precision that runs ("auto" resolved, as enhance does).
                        concrete = _concrete_precision(precision, spec, device, backend)
                        usable = True
                    except LowlightError as err:
                        concrete, usable, reason = precision, False, err.message
                    for width, height in sizes:
                        for path in _paths_at(opts.paths, spec, device, height, width):
                            cfg = bm.SpeedConfig(
                                model=model, backend=backend, device=device,
                                precision=concrete, height=height, width=width,
                                repeats=repeats, warmup=warmup, budget_s=opts.budget_s,
                                weights=opts.weights.get(model),
                                random_if_missing=model not in opts.weights, path=path,
                            )  # fmt: skip
                            if not usable:
                                row = bm.speed_row(cfg, {"note": f"skipped: {reason}"}, None, None)
                                pre_rows.append(row)
                            elif cfg not in configs:  # "auto" may resolve to a listed one
                                configs.append(cfg)
    for device, precision in dict.fromkeys((c.device, c.precision) for c in configs):
        key = bm.roofline_key(device, precision)
        if key in opts.conv_gflops:
            continue
        try:
            opts.conv_gflops[key] = round(bm.measure_conv_gflops(device, precision), 2)
        except RuntimeError as exc:  # e.g. a dtype this device has no conv kernel for
            opts.notes.append(f"roofline {key} not measured: {str(exc).splitlines()[0]}")
    gflops_mp: dict[str, float | None] = {}
    for model in dict.fromkeys(c.model for c in configs):
        gflops_mp[model] = bm.gflops_per_megapixel(model)

    def show(row: dict[str, Any]) -> None:
        if progress_enabled():
            err_console.print(
                f"speed {row['model']} {row['backend']} {row['device']} {row['precision']} "
                f"{row['width']}x{row['height']} {bm.path_label(row)}: "
                f"{row['median_s'] or row['note']}",
                markup=False,
            )

    rows = bm.measure_speed(
        configs,
        conv_gflops=opts.conv_gflops,
        gflops_mp=gflops_mp,
        runner=bm.run_speed_config,  # looked up per call, so tests can run configs in-process
        on_row=show,
    )
    failures = [
        f"{r['model']} {r['device']} {r['width']}x{r['height']}: {r['note']}"
        for r in rows
        if r["median_s"] is None and not str(r["note"]).startswith("skipped")
    ]
    for failure in failures:
        print_warning(failure)
    return pre_rows + rows, failures


def _concrete_precision(precision: str, spec: Any, device: str, backend: str) -> str:
    """``auto`` -> the precision ``lowlight enhance`` would run (others are checked as is).

    Raises:
        LowlightError: a precision the model or device cannot do.
    """
    import torch

    from lowlight_cli.devices import precision_name, resolve_precision

    dtype = resolve_precision(precision, spec, torch.device(device))
    if precision != "auto":
        return precision
    if backend != "torch":
        return "fp32"  # the ONNX backend's "auto"
    return precision_name(dtype)


def _paths_at(paths: list[str], spec: Any, device: str, height: int, width: int) -> list[str]:
    """The paths worth timing at one size: up to the working size both are the same run."""
    from lowlight_cli.engine import default_working_size, shrunk_shape

    if shrunk_shape(height, width, default_working_size(spec, device)) is not None:
        return paths
    return ["full-res"]


SECTIONS: dict[str, Callable[[BenchmarkOptions], tuple[list[dict[str, Any]], list[str]]]] = {
    "quality": quality_section,
    "speed": speed_section,
}


class BenchmarkCommand(TyperCommand):
    """The benchmark command, where ``--json`` takes an optional FILE.

    Every other command has a bare ``--json`` (JSON on stdout); the benchmark also writes a file
    (``--json out.json``). A bare ``--json`` (last, or before another option) means stdout, so
    both spellings work. Click has no public optional-value option, hence the argument rewrite.
    """

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        fixed: list[str] = []
        for i, arg in enumerate(args):
            fixed.append(arg)
            nxt = args[i + 1] if i + 1 < len(args) else None
            if arg == "--json" and (nxt is None or (nxt.startswith("-") and nxt != "-")):
                fixed.append("-")
        return super().parse_args(ctx, fixed)


def benchmark(
    models: str | None = typer.Option(
        None,
        "--models",
        help=f"Comma-separated models (default: all, {DEFAULT_MODELS}; then one without "
        "default weights is a skipped quality row, not a failure).",
        show_default=False,
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Paired folder: LOL layout (uses eval15) or low/ + high/ (default: lol/ in the "
        "user data folder or LOWLIGHT_DATA_DIR, when there).",
    ),
    quality_only: bool = typer.Option(
        False, "--quality-only", help="Only the quality section (PSNR/SSIM)."
    ),
    speed_only: bool = typer.Option(False, "--speed-only", help="Only the speed section."),
    weights: list[str] = typer.Option(
        [], "--weights", help="Per-model weights, MODEL=ID_OR_PATH (repeatable)."
    ),
    device: str = typer.Option(
        "auto", "--device", envvar=ENV_DEVICE, help="auto, cpu, cuda[:N], mps; comma-separated."
    ),
    backend: str = typer.Option(
        "torch", "--backend", envvar=ENV_BACKEND, help="Speed: torch, onnx; comma-separated."
    ),
    precision: str = typer.Option(
        "auto",
        "--precision",
        envvar=ENV_PRECISION,
        help="Speed: auto (what enhance picks), fp32, fp16, bf16; comma-separated.",
    ),
    paths: str = typer.Option(
        "fast,full-res",
        "--paths",
        help="Speed: fast (the working size, enhance's default), full-res (every pixel); "
        "comma-separated. Up to the working size both are one run, shown as full-res.",
    ),
    sizes: str | None = typer.Option(
        None,
        "--sizes",
        help="Speed: WIDTHxHEIGHT list (default: 600x400,2400x1600,4000x3000).",
    ),
    repeats: int | None = typer.Option(
        None, "--repeats", min=1, help="Speed: timed runs per config (default: 3 CPU, 10 GPU)."
    ),
    warmup: int | None = typer.Option(
        None, "--warmup", min=0, help="Speed: warm-up runs per config (default: 1 CPU, 3 GPU)."
    ),
    budget: float = typer.Option(
        DEFAULT_BENCHMARK_BUDGET_S,
        "--budget",
        min=1.0,
        help="Speed: seconds one config may take; slower ones stop early or are skipped.",
    ),
    per_image: bool = typer.Option(False, "--per-image", help="Include per-image scores."),
    ensemble: bool = typer.Option(
        False,
        "--ensemble",
        help="Quality: score the trained models as `enhance --ensemble` runs them (the "
        "classical ones as they are).",
    ),
    coarse: bool = typer.Option(
        True,
        "--coarse/--no-coarse",
        help="Quality: score frlie with its coarse pass, as `enhance` runs it (default), or "
        "the plain model.",
    ),
    json_file: str | None = typer.Option(
        None,
        "--json",
        help="Write the report as JSON to FILE; alone (or '-'): JSON on stdout, no table.",
    ),
    markdown: Path | None = typer.Option(None, "--markdown", help="Write Markdown tables here."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a quality-vs-speed PNG here."),
    gallery: Path | None = typer.Option(
        None, "--gallery", help="Write labelled before/after strips of the quality set here."
    ),
) -> None:
    """Measure the models: PSNR/SSIM on a paired folder, and speed, memory and FLOPs."""
    from lowlight_cli import benchmarking as bm

    if quality_only and speed_only:
        raise UsageError("--quality-only and --speed-only exclude each other")
    if gallery is not None and speed_only:
        raise UsageError("--gallery shows the quality set", hint="drop --speed-only")
    from lowlight_cli.datasets import data_dir, default_lol, require_data

    if data is None:
        data = default_lol()
        if gallery is not None or quality_only:
            data = require_data("lol", data)
    opts = BenchmarkOptions(
        models=parse_models(models if models is not None else DEFAULT_MODELS),
        models_named=models is not None,
        data=data,
        weights=parse_weights(weights),
        device=device,
        per_image=per_image,
        backends=bm.parse_list(backend, allowed=BACKENDS, what="backend"),
        precisions=bm.parse_list(precision, allowed=PRECISIONS, what="precision"),
        paths=bm.parse_list(paths, allowed=bm.PATHS, what="path"),
        sizes=bm.parse_sizes(sizes),
        repeats=repeats,
        warmup=warmup,
        budget_s=budget,
        gallery=gallery,
        ensemble=ensemble,
        coarse_pass=coarse,
    )
    opts.devices = [bm.resolve_device_name(d) for d in bm.parse_list(device, what="device")]
    opts.device = opts.devices[0]  # quality runs once, on the first device
    if quality_only:
        wanted = ["quality"]
    elif speed_only:
        wanted = ["speed"]
    else:
        wanted = list(SECTIONS)
        if data is None:
            wanted.remove("quality")
            opts.notes.append(f"quality skipped: no --data, and no LOL in {data_dir() / 'lol'}")
    report: dict[str, Any] = {}
    failures: list[str] = []
    for name in wanted:
        rows, failed = SECTIONS[name](opts)
        report[name] = rows
        failures += failed
    if not quality_only:
        info = bm.machine_info(opts.devices)
        info.conv_gflops = opts.conv_gflops  # measured by the speed section, in this run
        report = {"machine": info.to_dict(), **report}
    if opts.notes:
        report["notes"] = opts.notes
    if gallery is not None:
        _write_gallery(opts)
    if json_file not in (None, "-"):
        bm.write_json(json_file, report)
    if markdown is not None:
        bm.write_markdown(markdown, report)
    if plot is not None:
        bm.write_plot(plot, report)
    if json_file == "-":
        from lowlight_cli.cli._common import print_json

        print_json(report)
    else:
        _print_tables(report)
    if failures:
        raise BatchFailedError(
            f"{len(failures)} measurement(s) failed",
            hint="pass trained weights with --weights MODEL=PATH",
        )


def _write_gallery(opts: BenchmarkOptions) -> None:
    from lowlight_cli import benchmarking as bm
    from lowlight_cli.training.data import load_pairs, paired_split

    if opts.data is None:
        return
    pairs = load_pairs(paired_split(opts.data, "val"))
    # Models that failed to load have fewer (or no) outputs; they are left out of the strips.
    outputs = {m: t for m, t in opts.thumbnails.items() if len(t) == len(pairs.names)}
    bm.write_gallery(opts.gallery, pairs.names, pairs.low, outputs, list(pairs.high))


def _print_tables(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from lowlight_cli.benchmarking import (
        QUALITY_COLUMNS,
        SPEED_COLUMNS,
        quality_table_rows,
        speed_table_rows,
    )

    # Off a terminal rich assumes 80 columns, which folds the speed table beyond reading.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    rows = report.get("quality")
    if rows is not None:
        table = Table(title="quality (mean over pairs)")
        for col in QUALITY_COLUMNS:
            table.add_column(col)
        for cells in quality_table_rows(rows):
            table.add_row(*cells)
        console.print(table)
    speed = report.get("speed")
    if speed is not None:
        machine = report.get("machine", {})
        conv = ", ".join(f"{k} {v:.1f}" for k, v in machine.get("conv_gflops", {}).items())
        table = Table(title=f"speed on {machine.get('cpu', '?')} (conv GFLOP/s: {conv or '—'})")
        for col in SPEED_COLUMNS:
            table.add_column(col)
        for cells in speed_table_rows(speed):
            table.add_row(*cells)
        console.print(table)
    for note in report.get("notes", []):
        console.print(f"note: {note}", markup=False)
