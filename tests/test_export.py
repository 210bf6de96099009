"""ONNX export: parity with torch for every exportable model, stats in/out, metadata, CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx", reason="ONNX export needs onnx (pip install 'lowlight[onnx]')")
pytest.importorskip("onnxruntime", reason="the parity check needs onnxruntime")

from lowlight_cli import export as ex  # noqa: E402
from lowlight_cli.models.blocks import pooling_context  # noqa: E402
from lowlight_cli.registry import MODELS, create_model, get_spec  # noqa: E402

# Same architectures, fewer repeats, so every test stays a few seconds on a busy CPU.
SMALL_KWARGS: dict[str, dict] = {
    "symnet": {"num_blocks": 1, "rounds": 2, "width": 16},
    "nrl": {"channels": 16, "steps": 2},
    "frlie": {"width": 8, "num_blocks": 1},
    "neid": {"base_channels": 8},
    "gamma": {},
}
CASES = [
    pytest.param("symnet", {}, id="symnet"),
    pytest.param("nrl", {}, id="nrl"),
    pytest.param("frlie", {}, id="frlie"),
    pytest.param("neid", {}, id="neid-same-size"),
    pytest.param("neid", {"upscale": True}, id="neid-upscale"),
    pytest.param("gamma", {}, id="gamma"),
]


def lively(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Redraw learnable weights with torch's default init: several papers zero-init the last
    layer of a branch, which would make the parity check trivially pass on that branch."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                bound = 1.0 / math.sqrt(p[0].numel())
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
            elif p.ndim == 1 and not p.abs().max() > 0:
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * 0.05)
    return model


def small_model(name: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return lively(create_model(name, **{**SMALL_KWARGS[name], **overrides}))


def test_every_exportable_model_is_covered() -> None:
    exportable = {n for n, s in MODELS.items() if s.exportable}
    assert exportable == {p.values[0] for p in CASES}
    assert not MODELS["clahe"].exportable


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_export_matches_torch_on_odd_padded_sizes(name: str, overrides: dict) -> None:
    spec = get_spec(name)
    model = small_model(name, **overrides)
    data, total = ex.export_onnx(model, spec, metadata={"model": name})
    results = ex.check_parity(model, spec, data, sizes=((61, 45), (37, 70)))
    scale = 2 if overrides.get("upscale") else spec.scale
    session = ex.make_session(data)
    x = np.random.default_rng(1).random((1, 3, 48, 64), dtype=np.float32) * 0.4
    feeds = {"image": x}
    if total:
        feeds |= {"stats": np.zeros((1, total), np.float32), "use_stats": np.array(False)}
    out = session.run(["output"], feeds)[0]
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    assert out.shape == (1, 3, 48 * scale, 64 * scale)
    # Relative to the output's size too, so tiny untrained outputs cannot pass by accident.
    assert np.abs(out - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(expected).std()) > 1e-3
    for r in results:
        assert r.max_abs_diff <= ex.TOLERANCE["fp32"]
        assert (r.replay_max_abs_diff is not None) == (total > 0)


@pytest.mark.parametrize("name", ["nrl", "gamma"])
def test_stats_output_and_replay_match_torch_pooling_context(name: str) -> None:
    spec = get_spec(name)
    model = small_model(name)
    data, total = ex.export_onnx(model, spec)
    assert total > 0
    rng = np.random.default_rng(2)
    context = (rng.random((1, 3, 40, 52), dtype=np.float32) * 0.2).astype(np.float32)
    tile = (rng.random((2, 3, 24, 32), dtype=np.float32) * 0.5).astype(np.float32)
    with torch.inference_mode():
        with pooling_context("record") as pooled:
            model(torch.from_numpy(context))
        stats = pooled.tensor
        with pooling_context("replay", stats):
            expected = model(torch.from_numpy(tile)).numpy()
        plain = model(torch.from_numpy(tile)).numpy()
    session = ex.make_session(data)
    zeros = np.zeros((1, total), np.float32)
    got_stats = session.run(
        ["stats_out"], {"image": context, "stats": zeros, "use_stats": np.array(False)}
    )[0]
    np.testing.assert_allclose(got_stats, stats.numpy(), atol=1e-6)
    replayed = session.run(
        ["output"], {"image": tile, "stats": got_stats, "use_stats": np.array(True)}
    )[0]
    assert replayed.shape == (2, 3, 24, 32)  # dynamic batch
    assert np.abs(replayed - expected).max() <= 1e-4
    # The replay path really uses the stats input: other statistics, other output.
    shifted = session.run(
        ["output"], {"image": tile, "stats": got_stats + 1.0, "use_stats": np.array(True)}
    )[0]
    assert np.abs(shifted - replayed).max() > 1e-4
    unreplayed = session.run(
        ["output"], {"image": tile, "stats": got_stats + 1.0, "use_stats": np.array(False)}
    )[0]
    assert np.abs(unreplayed - plain).max() <= 1e-4  # use_stats False ignores the stats input


def test_graph_has_dynamic_axes_and_metadata(tmp_path) -> None:
    import onnx

    spec = get_spec("frlie")
    model = small_model("frlie")
    path = tmp_path / "frlie.onnx"
    info = ex.export_model("frlie", path, model=model, check=False)
    assert info.path == path and path.is_file()
    proto = onnx.load(str(path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims][1] == 3
    assert all(dims[i].dim_param for i in (0, 2, 3)), "batch, height and width must be dynamic"
    meta = ex.read_metadata(path)
    assert meta["model"] == "frlie"
    assert meta["size_multiple"] == str(spec.size_multiple)
    assert meta["weights_sha256"] == ex.state_sha256(model)
    assert len(meta["weights_sha256"]) == 64
    # A different set of weights hashes differently.
    assert (
        ex.state_sha256(lively(create_model("frlie", **SMALL_KWARGS["frlie"]), 1))
        != meta["weights_sha256"]
    )


def test_weights_sha256_is_the_weights_file_hash(tmp_path) -> None:
    import hashlib

    from safetensors.torch import save_file

    model = small_model("nrl")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert ex.weights_sha256(get_spec("nrl"), path) == expected


def test_parity_check_fails_loudly_on_a_wrong_graph() -> None:
    spec = get_spec("nrl")
    data, _ = ex.export_onnx(small_model("nrl"), spec)
    other = lively(create_model("nrl", **SMALL_KWARGS["nrl"]), seed=5)
    with pytest.raises(ex.ExportError, match="disagree"):
        ex.check_parity(other, spec, data, sizes=((20, 18),))


def test_real_check_sizes_for_the_cheapest_model(tmp_path) -> None:
    """The issue's 600x400 and 1001x701 parity, end to end, for gamma (milliseconds a pass)."""
    info = ex.export_model("gamma", tmp_path / "gamma.onnx")
    assert [r.size for r in info.parity] == list(ex.CHECK_SIZES)
    assert all(r.max_abs_diff <= 1e-4 and r.replay_max_abs_diff <= 1e-4 for r in info.parity)


def test_unexportable_and_bad_options_are_usage_errors() -> None:
    from lowlight_cli.errors import UsageError

    with pytest.raises(UsageError, match="cannot be exported"):
        ex.export_onnx(create_model("clahe"), get_spec("clahe"))
    with pytest.raises(UsageError, match="bf16"):
        ex.export_onnx(small_model("gamma"), get_spec("gamma"), precision="bf16")
    with pytest.raises(UsageError, match="opset"):
        ex.export_onnx(small_model("gamma"), get_spec("gamma"), opset=11)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``lowlight ARGS`` in-process: (exit code, stdout, stderr)."""
    from lowlight_cli.cli import main

    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_export_command_writes_checks_and_reports(tmp_path, capsys) -> None:
    import json

    out = tmp_path / "g.onnx"
    code, stdout, _ = run_cli(["export", "--model", "gamma", "-o", str(out), "--json"], capsys)
    assert code == 0
    report = json.loads(stdout)
    assert out.is_file()
    assert report["metadata"]["model"] == "gamma"
    assert [tuple(p["size"]) for p in report["parity"]] == list(ex.CHECK_SIZES)
    code, _, err = run_cli(["export", "--model", "gamma", "-o", str(out), "--no-check"], capsys)
    assert code == 3 and "--overwrite" in err  # refuses to overwrite
    code, _, err = run_cli(["export", "--model", "clahe", "-o", str(tmp_path / "c.onnx")], capsys)
    assert code == 2 and "cannot be exported" in err


def test_fp16_export_is_a_half_graph_close_to_fp32_torch() -> None:
    import onnx

    spec = get_spec("neid")
    model = small_model("neid")
    data, _ = ex.export_onnx(model, spec, precision="fp16")
    proto = onnx.load_from_string(data)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert ex.read_metadata(data)["precision"] == "fp16"
    results = ex.check_parity(model, spec, data, sizes=((61, 45),), precision="fp16")
    assert 0 < results[0].max_abs_diff <= ex.TOLERANCE["fp16"]
