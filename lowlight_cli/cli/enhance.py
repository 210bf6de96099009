"""``lowlight enhance``: one or many photos (or stdin) through one model.

The option definitions here are shared with ``lowlight batch``.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from lowlight_cli.constants import (
    DEFAULT_BACKEND,
    DEFAULT_DEVICE,
    DEFAULT_JPEG_QUALITY,
    DEFAULT_MODEL,
    DEFAULT_PRECISION,
    DEFAULT_SUFFIX,
    DEFAULT_TILE_OVERLAP,
    ENV_BACKEND,
    ENV_DEVICE,
    ENV_MODEL,
    ENV_PRECISION,
    ENV_TILE,
    ENV_WORKING_SIZE,
)
from lowlight_cli.errors import ImageError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from lowlight_cli.engine import Enhancer

MODEL_OPTION = typer.Option(
    DEFAULT_MODEL, "--model", "-m", envvar=ENV_MODEL, help="Model (see `lowlight models`)."
)
WEIGHTS_OPTION = typer.Option(
    None, "--weights", "-w", help="Weights file or id (e.g. neid.lol); default: the model's."
)
DEVICE_OPTION = typer.Option(
    DEFAULT_DEVICE, "--device", envvar=ENV_DEVICE, help="auto, cpu, cuda, cuda:N or mps."
)
PRECISION_OPTION = typer.Option(
    DEFAULT_PRECISION,
    "--precision",
    envvar=ENV_PRECISION,
    help="auto (bf16 on CPUs where it is faster, AMX, for models that stay within 40 dB of "
    "fp32; else fp32), fp32, fp16 (GPU) or bf16, where the model allows it.",
)
BACKEND_OPTION = typer.Option(
    DEFAULT_BACKEND, "--backend", envvar=ENV_BACKEND, help="torch or onnx."
)
TILE_OPTION = typer.Option(
    "auto",
    "--tile",
    envvar=ENV_TILE,
    help="Tile side in pixels; 0 = whole image; auto = from free memory.",
)
WORKING_SIZE_OPTION = typer.Option(
    None,
    "--working-size",
    envvar=ENV_WORKING_SIZE,
    help="Megapixels the model works at; larger photos get its effect by edge-aware "
    "upsampling. auto (default) = per device, full = every pixel.",
    show_default=False,
)
FULL_RES_OPTION = typer.Option(
    False,
    "--full-res",
    help="Run the model on every pixel (tiled): same as --working-size full; slow on a CPU.",
)
OVERLAP_OPTION = typer.Option(
    DEFAULT_TILE_OVERLAP, "--tile-overlap", min=0, help="Blend width between tiles (pixels)."
)
STRENGTH_OPTION = typer.Option(
    1.0, "--strength", min=0.0, max=1.0, help="0..1: how much enhancement to keep."
)
UPSCALE_OPTION = typer.Option(False, "--upscale", help="Also enlarge x2 (neid only).")
SUPERSAMPLE_OPTION = typer.Option(
    False,
    "--supersample",
    help="neid only: run its x2 mode on every input pixel and average back to the input size: "
    "sharper, no fine grid, ~5x slower.",
)
ENSEMBLE_OPTION = typer.Option(
    False,
    "--ensemble",
    help="Average the model over the photo's 8 orientations (rotations and mirrors): "
    "cleaner, 8x slower. Trained models only.",
)
COARSE_OPTION = typer.Option(
    True,
    "--coarse/--no-coarse",
    help="frlie: take the broad brightness from a second pass over a ~150x100 copy of the "
    "photo (default); --no-coarse runs the plain model.",
)
FORMAT_OPTION = typer.Option(
    None,
    "--format",
    "-f",
    help="Output format: jpg, png, tif, webp, bmp, heic, avif (default: the input's; "
    "16-bit PNG for camera RAW).",
)
QUALITY_OPTION = typer.Option(
    DEFAULT_JPEG_QUALITY, "--quality", "-q", min=1, max=100, help="JPEG/WebP/HEIC/AVIF quality."
)
BIT_DEPTH_OPTION = typer.Option(
    None,
    "--bit-depth",
    help="8 or 16 (PNG/TIFF; HEIC stores 16 as 10 or 12 bits); default: the input's.",
)
SUFFIX_OPTION = typer.Option(
    DEFAULT_SUFFIX, "--suffix", help="Appended to the input's name for the output's."
)
OVERWRITE_OPTION = typer.Option(False, "--overwrite", help="Replace existing output files.")
JSON_OPTION = typer.Option(False, "--json", help="Print a JSON report on stdout.")


def build_enhancer(
    *,
    model: str,
    weights: str | None,
    device: str,
    precision: str,
    backend: str,
    tile: str,
    tile_overlap: int,
    strength: float,
    upscale: bool,
    working_size: str | None = None,
    supersample: bool = False,
    ensemble: bool = False,
    coarse_pass: bool = True,
) -> Enhancer:
    """Create the engine from command-line values (heavy imports happen here, not at startup).

    ``working_size`` is what :func:`working_size_option` returns (None: the device's default).
    """
    from lowlight_cli.engine import Enhancer

    return Enhancer.create(
        model,
        weights=weights,
        device=device,
        precision=precision,
        backend=backend,
        tile=tile,
        tile_overlap=tile_overlap,
        strength=strength,
        upscale=upscale,
        supersample=supersample,
        ensemble=ensemble,
        coarse_pass=coarse_pass,
        working_size=working_size,
    )


def working_size_option(working_size: str | None, full_res: bool) -> str | None:
    """One working size from ``--working-size`` and ``--full-res`` (validated; None: auto).

    Raises:
        UsageError: a bad size, or ``--full-res`` with a different ``--working-size``.
    """
    from lowlight_cli.engine import parse_working_size

    size = parse_working_size(working_size)
    if full_res:
        if size not in (None, 0.0):
            raise UsageError(
                f"--full-res and --working-size {working_size} contradict each other",
                hint="pass one of them",
            )
        return "full"
    return working_size


def check_output_options(fmt: str | None, bit_depth: int | None) -> str | None:
    """Validate --format and --bit-depth before any work; returns the canonical format."""
    from lowlight_cli.image_io import FORMATS, normalize_format

    name = normalize_format(fmt) if fmt is not None else None
    if bit_depth is not None:
        if bit_depth not in (8, 16):
            raise UsageError(f"--bit-depth must be 8 or 16, not {bit_depth}")
        if name is not None and bit_depth not in FORMATS[name].bit_depths:
            raise UsageError(
                f"{name} cannot store {bit_depth}-bit images",
                hint="use PNG, TIFF or HEIC for 16-bit",
            )
    return name


def _advance(bar: Any, task: Any, done: int, total: int) -> None:
    bar.update(task, completed=done, total=total)


def check_model_options(
    model: str, tile: str, upscale: bool, supersample: bool = False, ensemble: bool = False
) -> None:
    """Fail on an unknown model, a bad --tile, a misplaced --upscale, --supersample or
    --ensemble before any work."""
    from lowlight_cli.engine import parse_tile
    from lowlight_cli.registry import check_ensemble, check_supersample, check_upscale, get_spec

    spec = get_spec(model)
    check_upscale(spec, upscale)
    check_supersample(spec, upscale=upscale, supersample=supersample)
    check_ensemble(spec, ensemble)
    parse_tile(tile)


def _destination(
    source: str,
    output: str | None,
    *,
    many: bool,
    suffix: str,
    fmt: str | None,
) -> str:
    from lowlight_cli.image_io import output_path_for

    if output == "-":
        return "-"
    if source == "-":
        if output is None:
            return "-"
        if Path(output).is_dir():
            raise UsageError(
                "cannot name the output of stdin inside a folder", hint="give -o FILE or -o -"
            )
        return output
    if output is None:
        if not suffix:
            raise UsageError(
                "an empty --suffix would write over the input", hint="pass -o DIR or a suffix"
            )
        return str(output_path_for(source, None, suffix, fmt))
    out = Path(output).expanduser()
    if many or out.is_dir() or output.endswith(("/", "\\")):
        if out.exists() and not out.is_dir():
            raise UsageError(f"-o {output} is a file, but several inputs need a folder")
        return str(output_path_for(source, out, suffix, fmt))
    return str(out)


def enhance(
    inputs: list[str] = typer.Argument(
        ..., metavar="INPUT...", help="Image files, or - for stdin.", show_default=False
    ),
    output: str | None = typer.Option(
        None,
        "--output",
        "-o",
        help="Output file (one input), folder, or - for stdout. Default: <stem>_enhanced.<ext> "
        "beside each input (stdout for stdin).",
    ),
    model: str = MODEL_OPTION,
    weights: str | None = WEIGHTS_OPTION,
    device: str = DEVICE_OPTION,
    precision: str = PRECISION_OPTION,
    backend: str = BACKEND_OPTION,
    working_size: str | None = WORKING_SIZE_OPTION,
    full_res: bool = FULL_RES_OPTION,
    tile: str = TILE_OPTION,
    tile_overlap: int = OVERLAP_OPTION,
    strength: float = STRENGTH_OPTION,
    upscale: bool = UPSCALE_OPTION,
    supersample: bool = SUPERSAMPLE_OPTION,
    ensemble: bool = ENSEMBLE_OPTION,
    coarse: bool = COARSE_OPTION,
    fmt: str | None = FORMAT_OPTION,
    quality: int = QUALITY_OPTION,
    bit_depth: int | None = BIT_DEPTH_OPTION,
    suffix: str = SUFFIX_OPTION,
    overwrite: bool = OVERWRITE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Enhance dark photos: INPUT -> <stem>_enhanced.<ext> (or -o), nothing half-written."""
    from lowlight_cli.cli._common import (
        delay_for_tests,
        print_interrupted,
        print_json,
        progress_enabled,
        sigterm_as_interrupt,
    )

    if inputs.count("-") > 1:
        raise UsageError("stdin (-) can be read only once")
    many = len(inputs) > 1
    if output == "-" and many:
        raise UsageError("-o - (stdout) takes exactly one input")
    fmt = check_output_options(fmt, bit_depth)
    check_model_options(model, tile, upscale, supersample, ensemble)
    working_size = working_size_option(working_size, full_res)
    plan = [(src, _destination(src, output, many=many, suffix=suffix, fmt=fmt)) for src in inputs]
    if as_json and any(dest == "-" for _, dest in plan):
        raise UsageError("--json and an image on stdout would mix", hint="write the image to -o")
    for src, dest in plan:  # fail before loading a model or spending minutes on pixels
        if dest != "-" and src != "-" and Path(dest).expanduser().resolve() == Path(src).resolve():
            raise ImageError(f"refusing to write {dest}: it is the input file")
        if dest != "-" and Path(dest).exists() and not overwrite:
            raise ImageError(f"cannot write {dest}: it already exists", hint="pass --overwrite")

    enhancer = build_enhancer(
        model=model,
        weights=weights,
        device=device,
        precision=precision,
        backend=backend,
        tile=tile,
        tile_overlap=tile_overlap,
        strength=strength,
        upscale=upscale,
        supersample=supersample,
        ensemble=ensemble,
        coarse_pass=coarse,
        working_size=working_size,
    )
    write_options = {
        "format": fmt,
        "quality": quality,
        "bit_depth": bit_depth,
        "overwrite": overwrite,
    }
    show_progress = progress_enabled()
    delay = delay_for_tests()
    records: list[dict[str, Any]] = []
    # The photo in progress and its output file's identity before it: an interrupt can land
    # after the output's atomic rename but before its record, and must still count it.
    current: tuple[str, tuple[int, int] | None] | None = None
    with sigterm_as_interrupt():
        try:
            for src, dest in plan:
                if delay:
                    time.sleep(delay)
                current = (dest, _file_identity(dest))
                record = _enhance_one(enhancer, src, dest, write_options, show_progress)
                records.append(record)
                current = None
                if not as_json and dest != "-":
                    typer.echo(record["output"])
        except KeyboardInterrupt:
            written = len(records)
            if current is not None:  # stdout ("-") has no identity and never counts here
                written += _file_identity(current[0]) not in (None, current[1])
            # Writes are atomic: the photo in progress leaves nothing, finished ones stay.
            # Typer ends the run with exit 130 and no message, so say where it stopped.
            hint = None
            if many:
                hint = (
                    "enhance the rest again (existing outputs are refused without --overwrite), "
                    "or use `lowlight batch`, which skips them"
                )
            print_interrupted(written, len(plan), hint=hint)
            raise
    if as_json:
        print_json({"files": records})


def _file_identity(path: str) -> tuple[int, int] | None:
    """``(inode, mtime_ns)`` of ``path``, None when it does not exist (or is stdout)."""
    if path == "-":
        return None
    try:
        stat = Path(path).expanduser().stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _enhance_one(
    enhancer: Enhancer,
    src: str,
    dest: str,
    write_options: dict[str, Any],
    show_progress: bool,
) -> dict[str, Any]:
    """Read, enhance and write one photo; returns its ``--json`` record."""
    from lowlight_cli.cli._common import err_console
    from lowlight_cli.image_io import read_image, write_image

    started = time.perf_counter()
    photo = read_image(src)
    small = enhancer.working_shape(photo.height, photo.width)
    if show_progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} tiles"),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        ) as bar:
            task = bar.add_task(Path(src).name if src != "-" else "<stdin>", total=None)
            pixels = enhancer.enhance(photo.pixels, partial(_advance, bar, task))
    else:
        pixels = enhancer.enhance(photo.pixels)
    written = write_image(dest, photo, pixels, **write_options)
    seconds = time.perf_counter() - started
    record = {
        "input": "-" if src == "-" else str(Path(src)),
        "output": "-" if written is None else str(written),
        "model": enhancer.spec.name,
        # Which backend/device/execution provider really ran (onnx may fall back to CPU).
        "backend": enhancer.backend.name,
        "device": enhancer.backend.device,
        "provider": getattr(enhancer.backend, "provider", None),
        "precision": enhancer.precision,
        # "fast": the model ran at working_size [w, h] and was carried to full size.
        "path": "full-res" if small is None else "fast",
        "working_size": None if small is None else [small[1], small[0]],
        "size": [photo.width, photo.height],
        "output_size": [int(pixels.shape[1]), int(pixels.shape[0])],
        "seconds": round(seconds, 3),
    }
    if written is not None and show_progress:  # a human is watching: say what happened
        err_console.print(
            f"{record['input']} -> {record['output']} "
            f"({record['size'][0]}x{record['size'][1]}, {record['model']}, {seconds:.1f} s)",
            markup=False,
            highlight=False,
        )
    return record
