"""``lowlight models``: the registry as a table (or JSON)."""

from __future__ import annotations

import typer


def models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """List the models: parameters, size multiple, tiling, precisions, scale, default weights."""
    from lowlight_cli.registry import MODELS, count_parameters, create_model

    rows = []
    for spec in MODELS.values():
        params = count_parameters(create_model(spec.name))
        rows.append(
            {
                "name": spec.name,
                "title": spec.title,
                "kind": spec.kind,
                "parameters": params,
                "size_multiple": spec.size_multiple,
                "tiling": spec.supports_tiling,
                "fp16": spec.fp16_safe,
                "bf16": spec.bf16_safe,
                "scale": spec.scale,
                "default_weights": spec.default_weights,
                "kwargs": spec.kwargs,
            }
        )
    if as_json:
        from lowlight_cli.cli._common import print_json

        print_json({"models": rows})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lowlight models")
    for col in (
        "model",
        "kind",
        "params",
        "multiple",
        "tiling",
        "fp16",
        "bf16",
        "scale",
        "weights",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            r["kind"],
            f"{r['parameters']:,}",
            str(r["size_multiple"]),
            "yes" if r["tiling"] else "no",
            "yes" if r["fp16"] else "no",
            "yes" if r["bf16"] else "no",
            f"x{r['scale']}",
            r["default_weights"] or "-",
        )
    Console().print(table)
