"""``lowlight export``: write a model as an ONNX graph and check it against PyTorch."""

from __future__ import annotations

from pathlib import Path

import typer

from lowlight_cli.cli.enhance import MODEL_OPTION, UPSCALE_OPTION, WEIGHTS_OPTION
from lowlight_cli.errors import ImageError, UsageError

OUTPUT_OPTION = typer.Option(
    None, "--output", "-o", help="The .onnx file (default: <model>[-x2].onnx here)."
)
OPSET_OPTION = typer.Option(17, "--opset", min=14, help="ONNX opset version.")
EXPORT_PRECISION_OPTION = typer.Option(
    "fp32", "--precision", help="fp32, or fp16 (for GPUs; checked loosely on the CPU)."
)
CHECK_OPTION = typer.Option(
    True, "--check/--no-check", help="Compare onnxruntime with torch at 600x400 and 1001x701."
)
OVERWRITE_OPTION = typer.Option(False, "--overwrite", help="Replace an existing file.")
JSON_OPTION = typer.Option(False, "--json", help="Print a JSON report on stdout.")


def export(
    model: str = MODEL_OPTION,
    weights: str | None = WEIGHTS_OPTION,
    output: Path | None = OUTPUT_OPTION,
    opset: int = OPSET_OPTION,
    precision: str = EXPORT_PRECISION_OPTION,
    upscale: bool = UPSCALE_OPTION,
    check: bool = CHECK_OPTION,
    overwrite: bool = OVERWRITE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Export a model to ONNX (dynamic batch/height/width, stats input for tiling) and check it."""
    from lowlight_cli.registry import check_upscale, get_spec

    spec = get_spec(model)
    check_upscale(spec, upscale)
    text = precision.strip().lower()
    if text not in ("fp32", "fp16"):
        raise UsageError(f"cannot export in {precision}", hint="use --precision fp32 or fp16")
    if not spec.exportable:
        raise UsageError(
            f"model '{spec.name}' cannot be exported to ONNX",
            hint="it runs OpenCV on the CPU inside the model; use --backend torch",
        )
    if output is None:
        output = Path(f"{spec.name}{'-x2' if upscale else ''}.onnx")
    if output.exists() and not overwrite:
        raise ImageError(f"cannot write {output}: it already exists", hint="pass --overwrite")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        from lowlight_cli.errors import BackendUnavailableError

        raise BackendUnavailableError(
            f"export needs {getattr(exc, 'name', None) or 'onnx'}, which is not installed",
            hint="pip install 'lowlight[onnx]'",
        ) from exc
    from lowlight_cli.export import export_model

    info = export_model(
        model, output, weights=weights, upscale=upscale, opset=opset, precision=text, check=check
    )
    if as_json:
        from lowlight_cli.cli._common import print_json

        print_json(
            {
                "output": str(info.path),
                "model": info.model,
                "metadata": info.metadata,
                "stats_channels": info.stats_channels,
                "parity": [
                    {
                        "size": list(r.size),
                        "padded": list(r.padded),
                        "max_abs_diff": r.max_abs_diff,
                        "replay_max_abs_diff": r.replay_max_abs_diff,
                    }
                    for r in info.parity
                ],
            }
        )
        return
    from lowlight_cli.cli._common import err_console

    for r in info.parity:
        replay = (
            f", replayed stats {r.replay_max_abs_diff:.2g}"
            if r.replay_max_abs_diff is not None
            else ""
        )
        err_console.print(
            f"checked {r.size[0]}x{r.size[1]} (padded {r.padded[0]}x{r.padded[1]}): "
            f"max |onnxruntime - torch| {r.max_abs_diff:.2g}{replay}",
            markup=False,
            highlight=False,
        )
    typer.echo(str(info.path))
