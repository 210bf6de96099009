"""``lowlight weights``: list, download, verify, locate and clear model weights, and write a
training checkpoint's weights as a file for ``--weights``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(help="List, download, verify and locate model weights.", no_args_is_help=True)

_JSON = typer.Option(False, "--json", help="Print JSON on stdout.")


def _human(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover - loop always returns


def _selected(ids: list[str] | None, all_: bool, *, default_all: bool) -> list[str]:
    from lowlight_cli.errors import UsageError
    from lowlight_cli.weights import load_manifest

    manifest = load_manifest()
    if all_ and ids:
        raise UsageError("give weights ids or --all, not both")
    if not ids and not (all_ or default_all):
        raise UsageError(
            "name the weights to download", hint="give ids (lowlight weights list) or --all"
        )
    if all_ or not ids:
        return list(manifest.entries)
    for weights_id in ids:
        manifest.get(weights_id)  # unknown id -> WeightsError listing the known ones
    return list(ids)


@app.command("list")
def list_weights(as_json: bool = _JSON) -> None:
    """Show every weights id: bundled, cached or missing, with sizes and licenses."""
    from lowlight_cli.weights import cache_dir, load_manifest, local_path

    manifest = load_manifest()
    rows: list[dict[str, Any]] = []
    for entry in manifest.entries.values():
        found = local_path(entry)
        rows.append(
            {
                "id": entry.id,
                "status": found[1] if found else "missing",
                "file": entry.file,
                "format": entry.format,
                "bytes": entry.bytes,
                "local_path": str(found[0]) if found else None,
                "local_bytes": found[0].stat().st_size if found else None,
                "license": entry.license,
                "metrics": entry.metrics,
            }
        )
    if as_json:
        from lowlight_cli.cli._common import print_json

        print_json({"manifest": manifest.location, "cache": str(cache_dir()), "weights": rows})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lowlight weights (cache: {cache_dir()})")
    for col in ("id", "status", "file", "size", "on disk", "license"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["id"],
            r["status"],
            r["file"],
            _human(r["bytes"]),
            _human(r["local_bytes"]),
            r["license"].split(";")[0],  # the full text is in --json and the manifest
        )
    Console().print(table)


@app.command("download")
def download(
    ids: list[str] | None = typer.Argument(None, help="Weights ids, e.g. neid.lol."),
    all_: bool = typer.Option(False, "--all", help="Download every weights id."),
    force: bool = typer.Option(False, "--force", help="Download again even if cached."),
    as_json: bool = _JSON,
) -> None:
    """Fetch weights into the cache (verified by sha256); bundled ones need nothing."""
    from lowlight_cli.cli._common import err_console
    from lowlight_cli.weights import fetch, file_sha256

    results = []
    for weights_id in _selected(ids, all_, default_all=False):
        path = fetch(weights_id, force=force)
        results.append(
            {
                "id": weights_id,
                "path": str(path),
                "bytes": path.stat().st_size,
                "sha256": file_sha256(path),
            }
        )
        if not as_json:
            err_console.print(f"{weights_id}: {path}", markup=False)
    if as_json:
        from lowlight_cli.cli._common import print_json

        print_json({"downloaded": results})


@app.command("verify")
def verify(
    ids: list[str] | None = typer.Argument(None, help="Weights ids (default: all)."),
    as_json: bool = _JSON,
) -> None:
    """Re-hash the local weights files and compare them with the manifest (exit 4 on mismatch)."""
    from lowlight_cli.errors import WeightsError
    from lowlight_cli.weights import load_manifest, verify_entry

    manifest = load_manifest()
    results = [verify_entry(manifest.get(i)) for i in _selected(ids, False, default_all=True)]
    if as_json:
        from lowlight_cli.cli._common import print_json

        print_json({"verified": results})
    else:
        for r in results:
            where = f" {r['path']}" if r["path"] else ""
            line = f"{r['id']}: {r['status']}{where}"
            if r["status"] == "mismatch":
                line += f" (expected {r['expected']}, got {r['actual']})"
            typer.echo(line)
    bad = [r["id"] for r in results if r["status"] == "mismatch"]
    if bad:
        raise WeightsError(
            f"checksum mismatch for {', '.join(bad)}",
            hint=f"run 'lowlight weights download --force {' '.join(bad)}'",
        )


@app.command("path")
def path(
    weights_id: str = typer.Argument(..., help="Weights id, e.g. neid.lol."),
    as_json: bool = _JSON,
) -> None:
    """Print the local path of a weights file (exit 4 if it is not bundled or cached)."""
    from lowlight_cli.weights import resolve_weights

    resolved = resolve_weights(weights_id, download=False)
    if as_json:
        from lowlight_cli.cli._common import print_json

        print_json({"id": weights_id, "path": str(resolved)})
    else:
        typer.echo(str(resolved))


@app.command("from-checkpoint")
def from_checkpoint(
    checkpoint: Path = typer.Argument(..., help="A training checkpoint (best.pt or last.pt)."),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Destination .safetensors (default: MODEL.TAG.safetensors beside the checkpoint).",
    ),
    tag: str | None = typer.Option(None, "--tag", help="Weights tag (default: the dataset)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing destination file."),
) -> None:
    """Write a training checkpoint's weights (its EMA if it kept one) as fp16 safetensors for
    --weights, without training; prints the manifest entry."""
    from lowlight_cli.cli._common import err_console, print_json
    from lowlight_cli.errors import UsageError
    from lowlight_cli.training.checkpoint import load_checkpoint
    from lowlight_cli.training.loop import export_checkpoint

    ckpt = load_checkpoint(checkpoint)  # a clear error before anything is written
    if out is None:
        out = (
            checkpoint.parent
            / f"{ckpt['model']}.{tag or ckpt.get('dataset', 'custom')}.safetensors"
        )
    if out.exists() and not force:
        raise UsageError(f"{out} exists", hint="pass --force to replace it, or choose --out")
    exported = export_checkpoint(checkpoint, out, tag=tag)
    err_console.print(f"wrote {out} (step {exported['details']['steps']})", markup=False)
    print_json(exported)


@app.command("clear")
def clear(
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = _JSON,
) -> None:
    """Delete the downloaded weights from the cache (bundled weights are never touched)."""
    from lowlight_cli.errors import UsageError
    from lowlight_cli.weights import cache_dir, cache_files

    targets = cache_files()
    total = sum(p.stat().st_size for p in targets)
    if targets and not yes:
        if not sys.stdin.isatty():
            raise UsageError("refusing to clear the cache without confirmation", hint="pass --yes")
        if not typer.confirm(
            f"Delete {len(targets)} files ({_human(total)}) from {cache_dir()}?", err=True
        ):
            raise typer.Exit(1)
    for p in targets:
        p.unlink(missing_ok=True)
    if as_json:
        from lowlight_cli.cli._common import print_json

        print_json(
            {"cache": str(cache_dir()), "removed": [str(p) for p in targets], "bytes": total}
        )
    else:
        typer.echo(f"removed {len(targets)} files ({_human(total)}) from {cache_dir()}")
