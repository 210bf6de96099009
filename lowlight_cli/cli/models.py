"""``lowlight models``: the registry as a table (or JSON)."""

from __future__ import annotations

import typer


def models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """List the models: parameters, size multiple, tiling, precisions, scale, default weights
    and what they score on LOL eval15 (from the manifest)."""
    from lowlight_cli.constants import DEFAULT_MODEL
    from lowlight_cli.registry import MODELS, count_parameters, create_model
    from lowlight_cli.weights import load_manifest

    manifest = load_manifest()
    rows = []
    for spec in MODELS.values():
        params = count_parameters(create_model(spec.name))
        entry = manifest.entries.get(spec.default_weights) if spec.default_weights else None
        # Weights that --weights ID accepts besides the default (previews, other data sets).
        others = [
            {"id": wid, "lol_eval15": other.metrics.get("lol_eval15")}
            for wid, other in sorted(manifest.entries.items())
            if wid.startswith(spec.name + ".") and wid != spec.default_weights
        ]
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
                "default": spec.name == DEFAULT_MODEL,
                "default_weights": spec.default_weights,
                # False: the registry names an id the manifest does not list yet (--weights ID).
                "weights_available": entry is not None,
                "lol_eval15": (
                    entry.metrics.get("lol_eval15")
                    if entry
                    else {"psnr": spec.lol_eval15[0], "ssim": spec.lol_eval15[1]}
                    if spec.lol_eval15
                    else None
                ),
                "other_weights": others,
                "kwargs": spec.kwargs,
            }
        )
    if as_json:
        from lowlight_cli.cli._common import print_json

        print_json({"models": rows})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="lowlight models",
        caption="* default model (--model, LOWLIGHT_MODEL); (id): no default weights, "
        "--weights id runs these",
    )
    # The size multiple and kwargs are in --json; the table keeps to what fits 80 columns.
    for col in ("model", "kind", "params", "tiling", "half", "weights", "eval15 dB/SSIM"):
        table.add_column(col, no_wrap=col in ("model", "params", "weights", "eval15 dB/SSIM"))
    for r in rows:
        half = [p for p in ("fp16", "bf16") if r[p]]
        if r["default_weights"] is None:
            weights = "-"
        elif r["weights_available"]:
            weights = r["default_weights"]
        else:
            weights = "none yet"
        score = r["lol_eval15"]
        if score is None and r["other_weights"]:
            # No default weights: show what --weights can run instead, marked as not default.
            other = r["other_weights"][0]
            weights = f"({other['id']})"
            score = other["lol_eval15"]
        table.add_row(
            r["name"] + (" *" if r["default"] else ""),
            r["kind"],
            f"{r['parameters'] / 1e6:.2f} M" if r["parameters"] else "0",
            "yes" if r["tiling"] else "no",
            ",".join(half) or "-",
            weights,
            f"{score['psnr']:.2f} / {score['ssim']:.3f}" if score else "-",
        )
    Console().print(table)
