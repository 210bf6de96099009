"""The onnxruntime backend: same engine output as torch, cached graphs, providers, install hints."""

from __future__ import annotations

import importlib.metadata
import json
import sys

import numpy as np
import pytest

from lowlight_cli.errors import BackendUnavailableError, ResourceError, UsageError
from lowlight_cli.registry import get_spec

torch = pytest.importorskip("torch")


def _needs_onnx() -> None:
    pytest.importorskip("onnx", reason="the onnx backend needs onnx (pip install 'lowlight[onnx]')")
    pytest.importorskip("onnxruntime", reason="the onnx backend needs onnxruntime")


def _save_random(tmp_path, name: str, seed: int = 0):
    """A weights file for the registry architecture of ``name`` with lively random values."""
    from safetensors.torch import save_file
    from test_export import lively

    from lowlight_cli.registry import create_model

    torch.manual_seed(seed)
    model = lively(create_model(name), seed=seed)
    path = tmp_path / f"{name}-{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _photo(height: int = 70, width: int = 101, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.random((height // 8 + 2, width // 8 + 2, 3), dtype=np.float32)
    import cv2

    return np.clip(cv2.resize(base, (width, height)) * 0.35, 0, 1).astype(np.float32)


@pytest.mark.parametrize("name", ["neid", "gamma"])
def test_engine_output_matches_torch_with_tiling(tmp_path, name: str) -> None:
    """One engine, two backends: tiles, padding, context pass and merging give the same image."""
    _needs_onnx()
    from lowlight_cli.engine import Enhancer

    weights = _save_random(tmp_path, name) if get_spec(name).kind == "neural" else None
    image = _photo()
    options = {"weights": weights, "device": "cpu", "tile": 48, "tile_overlap": 8}
    onnx_enh = Enhancer.create(name, backend="onnx", **options)
    torch_enh = Enhancer.create(name, backend="torch", **options)
    assert onnx_enh.backend.name == "onnx" and onnx_enh.backend.provider == "CPUExecutionProvider"
    calls = []
    got = onnx_enh.enhance(image, progress=lambda done, total: calls.append(total))
    expected = torch_enh.enhance(image)
    assert calls and calls[-1] > 1, "the image must really be tiled"
    assert got.shape == expected.shape == image.shape
    # The same output files: every 8-bit pixel within 1/255.
    assert np.abs(got - expected).max() <= 1 / 255
    assert np.abs(got - image).max() > 0.02  # the model did something


def test_upscale_mode_and_stats_through_the_backend(tmp_path) -> None:
    _needs_onnx()
    from lowlight_cli.backends import create_backend
    from lowlight_cli.backends.torch import TorchBackend
    from lowlight_cli.registry import load_model

    spec = get_spec("neid")
    weights = _save_random(tmp_path, "neid")
    onnx_b = create_backend("onnx", spec, weights=weights, device="cpu", upscale=True)
    torch_b = TorchBackend(load_model("neid", weights, upscale=True), scale=2)
    x = _photo(32, 48).transpose(2, 0, 1)[None].copy()
    small = _photo(16, 32, seed=3).transpose(2, 0, 1)[None].copy()
    assert onnx_b.scale == 2
    stats = onnx_b.context(small)
    np.testing.assert_allclose(stats, torch_b.context(small), atol=1e-5)
    got, expected = onnx_b.run(x, stats), torch_b.run(x, stats)
    assert got.shape == (1, 3, 64, 96)
    assert np.abs(got - expected).max() <= 1e-4


def test_graph_is_cached_by_weights_hash(tmp_path, monkeypatch) -> None:
    _needs_onnx()
    from lowlight_cli import export
    from lowlight_cli.backends import onnx as onnx_backend

    spec = get_spec("gamma")
    first = onnx_backend.ensure_graph(spec)
    assert first.parent.name == "onnx" and first.is_file()
    assert (
        first.parent.parent
        == onnx_backend.cached_graph_path(
            spec, "0" * 64, upscale=False, precision="fp32"
        ).parent.parent
    )
    stamp = first.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("re-exported although the weights did not change")

    monkeypatch.setattr(export, "export_onnx", no_export)
    assert onnx_backend.ensure_graph(spec) == first
    assert first.stat().st_mtime_ns == stamp
    monkeypatch.undo()

    nrl_a = _save_random(tmp_path, "nrl", seed=0)
    nrl_b = _save_random(tmp_path, "nrl", seed=1)
    spec = get_spec("nrl")
    path_a = onnx_backend.ensure_graph(spec, weights=nrl_a)
    path_b = onnx_backend.ensure_graph(spec, weights=nrl_b)
    assert path_a != path_b, "new weights must give a new graph"
    assert export.read_metadata(path_b)["weights_sha256"] == export.weights_sha256(spec, nrl_b)


def test_missing_onnxruntime_names_the_extra(monkeypatch, capsys, tmp_path) -> None:
    from lowlight_cli.backends import create_backend

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    with pytest.raises(BackendUnavailableError) as info:
        create_backend("onnx", get_spec("gamma"), device="cpu")
    assert info.value.exit_code == 2
    assert "pip install 'lowlight[onnx]'" in str(info.value)

    from PIL import Image

    from lowlight_cli.cli import main

    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["enhance", str(src), "--model", "gamma", "--backend", "onnx"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lowlight[onnx]" in err and "Traceback" not in err
    assert not (tmp_path / "in_enhanced.png").exists()


def test_warns_when_cpu_and_gpu_wheels_are_both_installed(monkeypatch) -> None:
    _needs_onnx()
    from lowlight_cli.backends import onnx as onnx_backend

    real = importlib.metadata.distribution

    def fake(name: str):
        if name in ("onnxruntime", "onnxruntime-gpu"):
            return object()
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", fake)
    assert onnx_backend.conflicting_distributions() == ["onnxruntime", "onnxruntime-gpu"]
    with pytest.warns(onnx_backend.OnnxRuntimeConflictWarning, match="onnxruntime-gpu"):
        onnx_backend.import_onnxruntime()


def test_no_warning_with_one_wheel(monkeypatch) -> None:
    from lowlight_cli.backends import onnx as onnx_backend

    def only_cpu(name: str):
        if name == "onnxruntime":
            return object()
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", only_cpu)
    assert onnx_backend.conflicting_distributions() == []


def test_providers_follow_the_device(monkeypatch) -> None:
    from lowlight_cli.backends.onnx import ENV_TENSORRT, providers_for

    cpu_only = ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.delenv(ENV_TENSORRT, raising=False)
    assert providers_for("auto", cpu_only) == (["CPUExecutionProvider"], "cpu")
    assert providers_for("cpu", gpu) == (["CPUExecutionProvider"], "cpu")
    providers, label = providers_for("auto", gpu)
    assert providers[0] == ("CUDAExecutionProvider", {"device_id": 0}) and label == "cuda:0"
    providers, label = providers_for("cuda:1", gpu)
    assert providers[0][1] == {"device_id": 1} and label == "cuda:1"
    providers, _ = providers_for("tensorrt", gpu)
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == gpu
    monkeypatch.setenv(ENV_TENSORRT, "1")
    assert providers_for("auto", gpu)[0][0][0] == "TensorrtExecutionProvider"
    with pytest.raises(UsageError, match="onnxruntime-gpu"):
        providers_for("cuda", cpu_only)
    with pytest.raises(UsageError, match="TensorRT"):
        providers_for("tensorrt", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(UsageError):
        providers_for("mps", gpu)
    with pytest.raises(UsageError):
        providers_for("tpu", gpu)


def test_precisions_the_backend_refuses() -> None:
    _needs_onnx()
    from lowlight_cli.backends import create_backend

    with pytest.raises(ResourceError, match="CPU"):
        create_backend("onnx", get_spec("gamma"), device="cpu", precision="fp16")
    with pytest.raises(ResourceError, match="bf16"):
        create_backend("onnx", get_spec("gamma"), device="cpu", precision="bf16")
    with pytest.raises(UsageError, match="clahe"):
        create_backend("onnx", get_spec("clahe"), device="cpu")


def test_json_reports_backend_and_provider(tmp_path, capsys) -> None:
    _needs_onnx()
    from PIL import Image

    from lowlight_cli.cli import main

    src = tmp_path / "in.png"
    Image.fromarray((_photo(20, 30) * 255).astype(np.uint8)).save(src)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "enhance",
                str(src),
                "--model",
                "gamma",
                "--backend",
                "onnx",
                "--device",
                "cpu",
                "--json",
            ]
        )
    assert exit_info.value.code == 0
    record = json.loads(capsys.readouterr().out)["files"][0]
    assert record["backend"] == "onnx"
    assert record["provider"] == "CPUExecutionProvider"
    assert (tmp_path / "in_enhanced.png").is_file()
