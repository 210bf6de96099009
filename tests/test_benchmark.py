"""``lowlight benchmark``: speed rows, roofline, JSON/Markdown/plot writers and the gallery."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lowlight_cli import benchmarking as bm

SPEED_FIELDS = {
    "model", "backend", "device", "precision", "height", "width", "path", "working_size",
    "median_s", "p90_s", "mp_per_s", "peak_mem_mb", "gflops_per_mp", "roofline_fraction",
}  # fmt: skip
MACHINE_FIELDS = {"cpu", "cores", "torch", "onnxruntime", "devices", "conv_gflops"}


def _paired_folder(root: Path, n: int = 2, h: int = 48, w: int = 64) -> Path:
    """A LOL-layout folder with ``n`` dark/bright pairs of smooth random images."""
    rng = np.random.default_rng(1)
    for side in ("low", "high"):
        (root / "eval15" / side).mkdir(parents=True)
    for i in range(n):
        base = rng.random((h // 8, w // 8, 3))
        high = np.asarray(
            Image.fromarray((base * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
        )
        low = (high.astype(np.float32) * 0.15).astype(np.uint8)
        Image.fromarray(low).save(root / "eval15" / "low" / f"{i}.png")
        Image.fromarray(high).save(root / "eval15" / "high" / f"{i}.png")
    return root


def _random_weights(tmp_path: Path, model: str) -> Path:
    """An untrained state dict of ``model`` saved as safetensors (a stand-in for trained ones)."""
    import torch
    from safetensors.torch import save_file

    from lowlight_cli.registry import create_model

    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in create_model(model).state_dict().items()}
    path = tmp_path / f"{model}_random.safetensors"
    save_file(state, str(path))
    return path


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> list[bm.SpeedConfig]:
    """Run speed configs in this process (a fresh interpreter per config costs seconds), with a
    small roofline probe (the real one is 19 GFLOP per run)."""
    seen: list[bm.SpeedConfig] = []
    monkeypatch.setattr(bm, "ROOFLINE_SIDE", 64)

    def run(config: bm.SpeedConfig) -> dict:
        seen.append(config)
        return bm.measure_config(config)

    monkeypatch.setattr(bm, "run_speed_config", run)
    return seen


def test_full_report_has_every_field(tmp_path: Path, in_process: list) -> None:
    from lowlight_cli.cli import app

    data = _paired_folder(tmp_path / "lol")
    weights = _random_weights(tmp_path, "neid")
    out = tmp_path / "out"
    args = [
        "benchmark", "--data", str(data), "--models", "gamma,neid", "--device", "cpu",
        "--weights", f"neid={weights}", "--sizes", "64x48", "--repeats", "2", "--precision", "fp32",
        "--warmup", "0", "--json", str(out / "r.json"), "--markdown", str(out / "r.md"),
        "--plot", str(out / "r.png"), "--gallery", str(out / "gallery"),
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "quality" in result.stdout and "speed on" in result.stdout  # the table still prints

    report = json.loads((out / "r.json").read_text())
    assert set(report["machine"]) >= MACHINE_FIELDS
    assert report["machine"]["conv_gflops"]["cpu/fp32"] > 0
    assert [r["model"] for r in report["quality"]] == ["gamma", "neid"]
    speed = report["speed"]
    assert len(speed) == 2 and len(in_process) == 2
    for row in speed:
        assert set(row) >= SPEED_FIELDS, SPEED_FIELDS - set(row)
        assert 0 < row["median_s"] <= row["p90_s"]
        assert row["mp_per_s"] == pytest.approx(
            row["width"] * row["height"] / 1e6 / row["median_s"], rel=1e-2
        )
        assert row["peak_mem_mb"] > 0
    neid = [r for r in speed if r["model"] == "neid"]
    assert all(r["gflops_per_mp"] > 0 and r["roofline_fraction"] > 0 for r in neid)
    assert all(r["weights"] == str(weights) for r in neid)  # the given file, not random weights

    md = (out / "r.md").read_text()
    assert "| gamma |" in md and "| neid | torch | cpu | fp32 | 64x48 | full-res |" in md
    with Image.open(out / "r.png") as png:
        assert png.format == "PNG" and png.size[0] > 100
    strips = sorted((out / "gallery").glob("*.jpg"))
    assert [p.stem for p in strips] == ["0", "1"]
    with Image.open(strips[0]) as strip:
        # input, gamma, neid, ground truth: four panels of the 240-pixel-high thumbnails.
        assert strip.size[1] > bm.GALLERY_PANEL_HEIGHT
        assert strip.size[0] >= 4 * bm.GALLERY_PANEL_HEIGHT * 64 // 48


def test_both_paths_are_timed_above_the_working_size(
    monkeypatch: pytest.MonkeyPatch, in_process: list
) -> None:
    """Up to the working size one run (full-res); above it a fast and a full-res row each."""
    from lowlight_cli.cli import app
    from lowlight_cli.constants import DEFAULT_WORKING_SIZE_MP

    monkeypatch.setitem(DEFAULT_WORKING_SIZE_MP, "cpu", 0.005)  # 100x50 = 0.005 MP
    args = ["benchmark", "--speed-only", "--json", "-", "--models", "neid,gamma",
            "--device", "cpu", "--precision", "fp32", "--sizes", "96x48,256x128",
            "--repeats", "1", "--warmup", "0"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {(r["model"], r["width"], r["path"]): r for r in json.loads(result.stdout)["speed"]}
    # gamma (classical) always runs at full resolution, so it has no fast rows.
    assert set(rows) == {("neid", 96, "full-res"), ("neid", 256, "fast"),
                         ("neid", 256, "full-res"), ("gamma", 96, "full-res"),
                         ("gamma", 256, "full-res")}  # fmt: skip
    fast = rows[("neid", 256, "fast")]
    assert fast["working_size"] == [100, 50] and fast["median_s"] > 0
    assert rows[("neid", 256, "full-res")]["working_size"] is None
    assert bm.path_label(fast) == "fast (100x50)"
    # The roofline counts the model's work at the working size, not the photo's pixels.
    achieved = fast["gflops_per_mp"] * 100 * 50 / 1e6 / fast["median_s"]
    assert fast["achieved_gflops"] == pytest.approx(achieved, rel=1e-3)


def test_bare_json_before_another_option_goes_to_stdout(tmp_path: Path, in_process: list) -> None:
    from lowlight_cli.cli import app

    args = ["benchmark", "--speed-only", "--json", "--models", "gamma", "--device", "cpu",
            "--sizes", "32x32", "--repeats", "1", "--warmup", "0"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # JSON only: no table mixed in
    assert report["speed"][0]["model"] == "gamma" and "quality" not in report


def test_unavailable_backend_is_skipped_with_a_note(
    monkeypatch: pytest.MonkeyPatch, in_process: list
) -> None:
    from importlib import util

    from lowlight_cli.cli import app

    real = util.find_spec
    monkeypatch.setattr(
        util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a)
    )
    assert "onnxruntime is not installed" in str(bm.backend_available("onnx"))
    args = ["benchmark", "--speed-only", "--json", "-", "--models", "gamma", "--device", "cpu",
            "--backend", "torch,onnx", "--sizes", "32x32", "--repeats", "1",
            "--warmup", "0"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {r["backend"] for r in report["speed"]} == {"torch"}
    assert any("onnx" in n for n in report["notes"])


def test_fresh_process_reports_its_own_peak_memory() -> None:
    config = bm.SpeedConfig(
        model="gamma", backend="torch", device="cpu", precision="fp32", height=256, width=256,
        repeats=1, warmup=0,
    )  # fmt: skip
    result = bm.run_speed_config(config)
    assert result.get("median_s", 0) > 0, result
    # The peak covers the run: at least the resident size before it, and more than an empty
    # interpreter with torch (a few tens of MB at the very least).
    assert result["peak_mem_mb"] >= result["base_mem_mb"] > 10


def test_conv_roofline_is_positive_and_flops_match_the_formula() -> None:
    import torch

    assert bm.measure_conv_gflops("cpu", side=32, channels=8, repeats=1) > 0
    conv = torch.nn.Conv2d(3, 6, 3, padding=1, bias=False)
    # A multiply-add counts as two FLOPs: 2 * Cin * Cout * 9 per output pixel.
    assert bm.count_flops(conv.eval(), 10, 12) == pytest.approx(2 * 3 * 6 * 9 * 10 * 12)
    assert bm.gflops_per_megapixel("neid") > 0
    assert bm.gflops_per_megapixel("gamma") == 0  # NumPy/OpenCV work is invisible to the counter


def test_slow_configs_are_skipped_from_flops_or_a_measured_smaller_size() -> None:
    calls: list[bm.SpeedConfig] = []

    def runner(cfg: bm.SpeedConfig) -> dict:
        calls.append(cfg)
        return {"median_s": 1.0, "p90_s": 1.2, "peak_mem_mb": 100.0, "runs": 3}

    def cfg(model: str, side: int) -> bm.SpeedConfig:
        return bm.SpeedConfig(
            model, "torch", "cpu", "fp32", side, side, budget_s=20.0, path="full-res"
        )

    # "fast": 1 s at 0.01 MP -> 100 s at 0.1 MP (extrapolated): over budget.
    # "heavy": 10^6 GFLOP/MP at 100 GFLOP/s -> 100 s even at 0.01 MP: never run.
    configs = [cfg("fast", 1000), cfg("fast", 100), cfg("heavy", 100)]
    rows = bm.measure_speed(
        configs,
        conv_gflops={"cpu/fp32": 100.0},
        gflops_mp={"fast": 1.0, "heavy": 1e6},
        runner=runner,
    )
    assert [(c.model, c.height) for c in calls] == [("fast", 100)]
    assert rows[1]["mp_per_s"] == pytest.approx(0.01)
    assert rows[1]["roofline_fraction"] == pytest.approx(1.0 * 0.01 / 1.0 / 100.0)
    for row in (rows[0], rows[2]):
        assert row["median_s"] is None and row["note"].startswith("skipped")
    assert rows[0]["estimated_s"] == pytest.approx(100.0)


def test_fast_path_estimates_count_the_model_at_the_working_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lowlight_cli.constants import DEFAULT_WORKING_SIZE_MP

    monkeypatch.setitem(DEFAULT_WORKING_SIZE_MP, "cpu", 0.5)
    small = bm.SpeedConfig("neid", "torch", "cpu", "fp32", 400, 600, path="full-res")
    big = bm.SpeedConfig("neid", "torch", "cpu", "fp32", 3000, 4000, path="fast")
    assert bm.model_megapixels(big) == pytest.approx(0.5, rel=1e-2)
    assert bm.model_megapixels(small) == pytest.approx(0.24)
    est = bm.estimate_seconds(big, None, None, seconds_per_mp=2.0)
    assert est == pytest.approx(2.0 * bm.model_megapixels(big) + bm.FAST_PATH_S_PER_MP * 12)
    full = dataclasses.replace(big, path="full-res")
    assert bm.estimate_seconds(full, None, None, seconds_per_mp=2.0) == pytest.approx(24.0)


def test_parse_sizes() -> None:
    assert bm.parse_sizes("600x400, 2400X1600") == [(600, 400), (2400, 1600)]
    assert bm.parse_sizes(None) is None
    from lowlight_cli.errors import UsageError

    for bad in ("600", "0x10", "axb", "10x-3"):
        with pytest.raises(UsageError):
            bm.parse_sizes(bad)


def _row(model: str, mp_s: float, side: int, **extra) -> dict:
    row = dict.fromkeys(SPEED_FIELDS)
    row.update(model=model, backend="torch", device="cpu", precision="fp32", height=side,
               width=side, median_s=side * side / 1e6 / mp_s, mp_per_s=mp_s, **extra)  # fmt: skip
    return row


def test_markdown_writer_and_plot_points(tmp_path: Path) -> None:
    report = {
        "machine": bm.machine_info(["cpu"]).to_dict() | {"conv_gflops": {"cpu/fp32": 12.5}},
        "quality": [{"model": "gamma", "psnr": 17.0, "ssim": 0.6, "n_images": 15},
                    {"model": "a|b", "psnr": 20.0, "ssim": 0.7, "n_images": 15}],
        "speed": [_row("gamma", 5.0, 100), _row("gamma", 3.0, 400),
                  _row("nrl", 0.01, 100, weights="random (untrained)"), _row("a|b", 1.0, 100)],
    }  # fmt: skip
    md = bm.render_markdown(report)
    assert "cpu/fp32: 12.5" in md
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(lines) == (1 + 2) + (1 + 4)  # quality header + rows, speed header + rows
    assert "a\\|b" in md and "| nrl* |" in md and bm.UNTRAINED_NOTE in md
    path = bm.write_markdown(tmp_path / "x" / "r.md", report)
    assert path.read_text() == md
    # One point per model with both a score and a timing (nrl has no score), at the largest
    # size all of them were timed at (100x100: a|b has no 400x400)...
    points = {p["label"]: p for p in bm.plot_points(report)}
    assert set(points) == {"gamma", "a|b"}
    assert points["gamma"]["mp_per_s"] == 5.0 and points["gamma"]["size"] == "100x100"
    # ...or each at its own largest, named in the label, when they share no size.
    report["speed"][-1] = _row("a|b", 1.0, 50)
    points = {p["label"]: p for p in bm.plot_points(report)}
    assert points["gamma @ 400x400"]["mp_per_s"] == 3.0 and "a|b @ 50x50" in points
    bm.write_plot(tmp_path / "p.png", report)
    bm.write_plot(tmp_path / "empty.png", {"quality": [], "speed": []})
    assert (tmp_path / "p.png").stat().st_size > 1000 and (tmp_path / "empty.png").exists()


def test_gallery_strip_holds_every_panel_in_order(tmp_path: Path) -> None:
    dark = np.zeros((30, 40, 3), np.uint8)
    bright = np.full((30, 40, 3), 200, np.uint8)
    out = {"m1": [np.full((30, 40, 3), 0.5, np.float32)]}
    paths = bm.write_gallery(tmp_path / "g", ["a.png"], [dark], out, [bright])
    assert [p.name for p in paths] == ["a.jpg"]
    strip = np.asarray(Image.open(paths[0]).convert("L"), dtype=np.float32)
    h = bm.GALLERY_PANEL_HEIGHT
    w = 40 * h // 30
    body = strip[-h // 2]  # a row through the panels, below the labels
    # input (black), model (mid-grey), ground truth (light), left to right.
    assert body[w // 2] < 20
    assert 110 < body[w + 4 + w // 2] < 145
    assert body[2 * (w + 4) + w // 2] > 180


def test_quality_uses_lol_from_the_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    """`lowlight benchmark --quality-only` without --data scores eval15 from the data folder,
    and says where LOL belongs when it is not there."""
    root = tmp_path / "datasets"
    monkeypatch.setenv("LOWLIGHT_DATA_DIR", str(root))
    code, _, err = run_cli(["benchmark", "--quality-only", "--models", "gamma"])
    assert code == 2
    assert str(root / "lol") in " ".join(err.split())

    _paired_folder(root / "lol")
    out = tmp_path / "q.json"
    code, _, err = run_cli(["benchmark", "--quality-only", "--models", "gamma", "--json", str(out)])
    assert code == 0, err
    rows = json.loads(out.read_text())["quality"]
    assert [r["model"] for r in rows] == ["gamma"] and rows[0]["n_images"] == 2


def _quality_rows(run_cli, data: Path, models: str, out: Path, flags: list[str]) -> dict:
    """``benchmark --quality-only`` on ``data`` with ``flags``: its rows by model."""
    code, _, err = run_cli(
        ["benchmark", "--quality-only", "--data", str(data), "--models", models,
         "--json", str(out), *flags]
    )  # fmt: skip
    assert code == 0, err
    return {r["model"]: r for r in json.loads(out.read_text())["quality"]}


def test_quality_no_coarse_scores_frlie_without_its_coarse_pass(tmp_path: Path, run_cli) -> None:
    """By default frlie is scored as `enhance` runs it, with its coarse pass; --no-coarse
    scores the plain model and says so in the row."""
    from lowlight_cli.engine import Enhancer
    from lowlight_cli.evaluate import evaluate_pairs
    from lowlight_cli.training.data import load_pairs, paired_split

    data = _paired_folder(tmp_path / "lol", h=120, w=160)  # above the coarse copy's size
    pairs = load_pairs(paired_split(data, "val"))
    scores = []
    for flag, coarse_pass in (([], True), (["--no-coarse"], False)):
        row = _quality_rows(run_cli, data, "frlie", tmp_path / f"q{len(flag)}.json", flag)["frlie"]
        assert row.get("note") == ("--no-coarse" if flag else None)
        fn = Enhancer.create("frlie", coarse_pass=coarse_pass).enhance
        assert row["psnr"] == pytest.approx(evaluate_pairs(fn, pairs, name="frlie").psnr, abs=1e-3)
        scores.append(row["psnr"])
    assert scores[0] != pytest.approx(scores[1], abs=1e-3)


def test_quality_ensemble_scores_trained_models_as_enhance_runs_them(
    tmp_path: Path, run_cli
) -> None:
    """--ensemble scores neid as `enhance --ensemble` gives it (marked in the row); gamma, a
    curve, is scored as it is."""
    from lowlight_cli.engine import Enhancer
    from lowlight_cli.evaluate import evaluate_pairs
    from lowlight_cli.training.data import load_pairs, paired_split

    data = _paired_folder(tmp_path / "lol")
    rows = {}
    for flag in ([], ["--ensemble"]):
        out = tmp_path / f"q{len(flag)}.json"
        rows[bool(flag)] = _quality_rows(run_cli, data, "neid,gamma", out, flag)
    assert rows[True]["neid"]["note"] == "--ensemble" and "note" not in rows[False]["neid"]
    assert rows[True]["gamma"] == rows[False]["gamma"]
    pairs = load_pairs(paired_split(data, "val"))
    expected = evaluate_pairs(Enhancer.create("neid", ensemble=True).enhance, pairs, name="neid")
    assert rows[True]["neid"]["psnr"] == pytest.approx(expected.psnr, abs=1e-3)
    assert rows[True]["neid"]["psnr"] != pytest.approx(rows[False]["neid"]["psnr"], abs=1e-3)
