"""``lowlight batch``: a folder (tree) of photos, resumable, keeps going when a file is bad.

Decoding and encoding run in a small thread pool with a bounded look-ahead, overlapping the model
on the main thread. Outputs are written atomically by ``image_io``, so an interrupted batch
(Ctrl-C or SIGTERM) leaves only complete files, and the same command run again skips them.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from lowlight_cli.camera_raw import RAW_EXTENSIONS
from lowlight_cli.cli.enhance import (
    BACKEND_OPTION,
    BIT_DEPTH_OPTION,
    COARSE_OPTION,
    DEVICE_OPTION,
    ENSEMBLE_OPTION,
    FORMAT_OPTION,
    FULL_RES_OPTION,
    JSON_OPTION,
    MODEL_OPTION,
    OVERLAP_OPTION,
    PRECISION_OPTION,
    QUALITY_OPTION,
    STRENGTH_OPTION,
    SUFFIX_OPTION,
    SUPERSAMPLE_OPTION,
    TILE_OPTION,
    UPSCALE_OPTION,
    WEIGHTS_OPTION,
    WORKING_SIZE_OPTION,
    build_enhancer,
    check_model_options,
    check_output_options,
    working_size_option,
)
from lowlight_cli.errors import BatchFailedError, LowlightError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from lowlight_cli.image_io import Photo

# Suffixes read as inputs (lower case; names match in any case); everything else in the folder
# is ignored. Camera RAW files are inputs too: without the raw extra each one fails with the
# command that installs it, and the rest of the batch goes on.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".heic", ".heif", ".hif", ".avif"}
    | RAW_EXTENSIONS
)


@dataclass
class FileResult:
    """One line of the report."""

    input: str
    output: str
    status: str  # "ok", "skipped" or "failed"
    seconds: float = 0.0
    error: str | None = None


def find_images(
    folder: Path, *, recursive: bool, pattern: str, suffix: str, exclude: Path | None
) -> list[Path]:
    """Image files under ``folder`` that are inputs, sorted.

    Hidden files (temp files of an interrupted write among them), files whose stem ends with
    ``suffix`` (earlier results) and anything under ``exclude`` (the output folder) are not.
    """
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    excluded = exclude.resolve() if exclude is not None else None
    images = []
    for path in found:
        if path.suffix.lower() not in IMAGE_EXTENSIONS or path.name.startswith("."):
            continue
        if suffix and path.stem.endswith(suffix):
            continue
        if excluded is not None and path.resolve().is_relative_to(excluded):
            continue
        if path.is_file():
            images.append(path)
    return sorted(images)


def batch(
    folder: Path = typer.Argument(..., help="Folder of photos.", show_default=False),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Output folder (default: beside each input)."
    ),
    recursive: bool = typer.Option(
        False, "--recursive", "-r", help="Include subfolders; the tree is mirrored under -o."
    ),
    pattern: str = typer.Option("*", "--glob", help="Only names matching this pattern."),
    skip_existing: bool = typer.Option(
        True, "--skip-existing/--no-skip-existing", help="Skip photos whose output exists."
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
    workers: int = typer.Option(2, "--workers", min=1, max=16, help="Decode/encode threads."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Enhance every photo in FOLDER; bad files are reported, not fatal (exit 6)."""
    from lowlight_cli.cli._common import sigterm_as_interrupt
    from lowlight_cli.image_io import output_path_for

    folder = folder.expanduser()
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder", hint="use `lowlight enhance` for files")
    out_root = output.expanduser() if output is not None else None
    if out_root is not None and out_root.exists() and not out_root.is_dir():
        raise UsageError(f"-o {output} is a file; batch needs a folder")
    if out_root is None and not suffix:
        raise UsageError("an empty --suffix would write over the inputs", hint="pass -o DIR")
    fmt = check_output_options(fmt, bit_depth)
    check_model_options(model, tile, upscale, supersample, ensemble)
    working_size = working_size_option(working_size, full_res)

    inputs = find_images(
        folder, recursive=recursive, pattern=pattern, suffix=suffix, exclude=out_root
    )
    if not inputs:
        raise UsageError(
            f"no images in {folder} match {pattern!r}",
            hint="check the folder, --glob, or add --recursive",
        )
    results: list[FileResult] = []
    todo: list[tuple[Path, Path]] = []
    for src in inputs:
        rel = src.relative_to(folder).parent
        dest = output_path_for(src, (out_root / rel) if out_root else src.parent, suffix, fmt)
        if skip_existing and dest.exists():
            results.append(FileResult(str(src), str(dest), "skipped"))
        else:
            todo.append((src, dest))

    started = time.perf_counter()
    runtime: dict[str, str | None] = {}
    if todo:
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
        # Which backend/device/execution provider really ran (onnx may fall back to CPU).
        runtime = {
            "backend": enhancer.backend.name,
            "device": enhancer.backend.device,
            "provider": getattr(enhancer.backend, "provider", None),
            "precision": enhancer.precision,
        }
        with sigterm_as_interrupt():
            results += _run(
                enhancer,
                todo,
                workers=workers,
                write_options={
                    "format": fmt,
                    "quality": quality,
                    "bit_depth": bit_depth,
                    "overwrite": not skip_existing,
                },
            )
    _report(
        results,
        model=model,
        seconds=time.perf_counter() - started,
        as_json=as_json,
        runtime=runtime,
    )


def _run(
    enhancer: Any,
    todo: list[tuple[Path, Path]],
    *,
    workers: int,
    write_options: dict[str, Any],
) -> list[FileResult]:
    """Read ahead, enhance on this thread, write behind; one failure never stops the rest."""
    from lowlight_cli.cli._common import (
        delay_for_tests,
        err_console,
        print_interrupted,
        progress_enabled,
    )
    from lowlight_cli.devices import release_freed_memory
    from lowlight_cli.image_io import read_image, write_image

    delay = delay_for_tests()
    results: list[FileResult] = []
    reads: deque[Future[Photo]] = deque()
    writes: deque[tuple[Future[Any], FileResult, float]] = deque()
    next_read = 0
    bar = task = None
    if progress_enabled():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        )
        bar.start()
        task = bar.add_task("enhancing", total=len(todo))

    def finish_write(block: bool) -> None:
        while writes and (block or writes[0][0].done()):
            future, record, began = writes.popleft()
            try:
                future.result()
            except LowlightError as err:
                record.status, record.error = "failed", str(err)
            except Exception as err:  # encoder bugs must not stop the batch either
                record.status, record.error = "failed", f"{type(err).__name__}: {err}"
            record.seconds = round(time.perf_counter() - began, 3)
            results.append(record)
            if bar is not None:
                bar.advance(task)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lowlight-io")
    interrupted = False
    try:
        for index, (src, dest) in enumerate(todo):
            # Read one photo ahead: decoding overlaps the model, and at most two decoded photos
            # (hundreds of MB each at 24 MP) are held at once.
            while next_read < len(todo) and next_read <= index + 1:
                reads.append(pool.submit(read_image, todo[next_read][0]))
                next_read += 1
            began = time.perf_counter()
            record = FileResult(str(src), str(dest), "ok")
            try:
                photo = reads.popleft().result()
                if delay:
                    time.sleep(delay)
                pixels = enhancer.enhance(photo.pixels)
            except LowlightError as err:
                record.status, record.error = "failed", str(err)
            except Exception as err:
                record.status, record.error = "failed", f"{type(err).__name__}: {err}"
            if record.status == "failed":
                record.seconds = round(time.perf_counter() - began, 3)
                results.append(record)
                if bar is not None:
                    bar.advance(task)
                continue
            writes.append(
                (pool.submit(write_image, dest, photo, pixels, **write_options), record, began)
            )
            del photo, pixels
            release_freed_memory()  # this photo's tile buffers do not fit the next one's sizes
            while len(writes) > workers:  # bounded: finished pixels must not pile up in memory
                finish_write(block=True)
            finish_write(block=False)
        while writes:
            finish_write(block=True)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        # On Ctrl-C/SIGTERM: drop queued reads, let running writes finish (they are atomic, so
        # each either completes or leaves nothing), say where the run stopped, then let the
        # interrupt propagate (exit 130; Typer turns it into that code without a word).
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.stop()
        if interrupted:
            written = sum(r.status == "ok" for r in results) + sum(
                1 for f, _, _ in writes if not f.cancelled() and f.exception() is None
            )
            print_interrupted(
                written,
                len(todo),
                hint="run the same command again to do the rest (written photos are skipped)",
            )
    return results


def _report(
    results: list[FileResult],
    *,
    model: str,
    seconds: float,
    as_json: bool,
    runtime: dict[str, str | None] | None = None,
) -> None:
    from lowlight_cli.cli._common import err_console, print_json

    counts = {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "failed")}
    failed = [r for r in results if r.status == "failed"]
    if as_json:
        print_json(
            {
                "model": model,
                **(runtime or {}),
                "summary": {**counts, "total": len(results), "seconds": round(seconds, 3)},
                "files": [asdict(r) for r in sorted(results, key=lambda r: r.input)],
            }
        )
    from rich.table import Table

    table = Table(title="lowlight batch", title_justify="left")
    for column in ("enhanced", "skipped", "failed", "seconds"):
        table.add_column(column, justify="right")
    table.add_row(*(str(counts[s]) for s in ("ok", "skipped", "failed")), f"{seconds:.1f}")
    err_console.print(table)
    if failed:
        for r in failed:
            # Errors from image_io already name the file ("cannot read X: ..."): once is enough.
            line = r.error if r.input in r.error else f"{r.input}: {r.error}"
            err_console.print(f"failed: {line}", markup=False, highlight=False)
        names = ", ".join(r.input for r in failed[:5])  # the reasons are listed just above
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        raise BatchFailedError(
            f"{len(failed)} of {len(results)} files failed: {names}{more}",
            hint="fix or remove those files and run the same command again; "
            "finished files are skipped",
        )
