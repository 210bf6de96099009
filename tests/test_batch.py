"""``lowlight batch``: discovery, mirroring, skipping, bad files, interruption (gamma model)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lowlight_cli.cli.batch import find_images


def _dark(path: Path, size: tuple[int, int] = (32, 24), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((size[1], size[0], 3)) * 50).astype(np.uint8)).save(path)
    return path


def _tree(root: Path) -> None:
    _dark(root / "a.jpg")
    _dark(root / "b.png", seed=1)
    _dark(root / "sub" / "c.png", seed=2)
    _dark(root / "sub" / "deeper" / "d.webp", seed=3)
    (root / "notes.txt").write_text("not an image")


def test_recursive_mirror_then_everything_skipped(tmp_path: Path, run_cli) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _tree(src)
    code, stdout, stderr = run_cli(
        ["batch", str(src), "-o", str(out), "-r", "-m", "gamma", "--json"]
    )
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["summary"]["ok"] == 4 and report["summary"]["failed"] == 0
    made = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert made == [
        "a_enhanced.jpg",
        "b_enhanced.png",
        "sub/c_enhanced.png",
        "sub/deeper/d_enhanced.webp",
    ]
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    code, stdout, _ = run_cli(["batch", str(src), "-o", str(out), "-r", "-m", "gamma", "--json"])
    assert code == 0
    summary = json.loads(stdout)["summary"]
    assert summary["ok"] == 0 and summary["skipped"] == 4
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    code, stdout, _ = run_cli(
        ["batch", str(src), "-o", str(out), "-r", "-m", "gamma", "--json", "--no-skip-existing"]
    )
    assert code == 0 and json.loads(stdout)["summary"]["ok"] == 4


def test_batch_takes_the_working_size_options(tmp_path: Path, run_cli) -> None:
    """Both paths through batch give full-size outputs; contradicting options fail early."""
    src = tmp_path / "in"
    src.mkdir()
    for name, (w, h) in (("a.png", (160, 120)), ("b.png", (90, 60))):
        yy, xx = np.mgrid[0:h, 0:w]
        smooth = 25 + 20 * np.sin(xx / 11)[..., None] * np.cos(yy / 7)[..., None]
        Image.fromarray(np.repeat(smooth, 3, axis=2).astype(np.uint8)).save(src / name)
    fast, full = tmp_path / "fast", tmp_path / "full"
    code, stdout, stderr = run_cli(
        ["batch", str(src), "-o", str(fast), "-m", "gamma", "--working-size", "0.004", "--json"]
    )
    assert code == 0, stderr
    assert json.loads(stdout)["precision"] == "fp32"
    code, _, stderr = run_cli(["batch", str(src), "-o", str(full), "-m", "gamma", "--full-res"])
    assert code == 0, stderr
    for name, size in (("a_enhanced.png", (160, 120)), ("b_enhanced.png", (90, 60))):
        a, b = Image.open(fast / name), Image.open(full / name)
        assert a.size == b.size == size
        # gamma is a global curve; on a smooth photo the fast path follows it closely.
        assert np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean() < 2
    code, _, stderr = run_cli(
        ["batch", str(src), "-o", str(tmp_path / "x"), "--full-res", "--working-size", "1"]
    )
    assert code == 2 and "contradict" in stderr and not (tmp_path / "x").exists()


def test_outputs_beside_inputs_are_never_reread(tmp_path: Path, run_cli) -> None:
    _tree(tmp_path)
    code, _, err = run_cli(["batch", str(tmp_path), "-m", "gamma"])
    assert code == 0, err
    assert (tmp_path / "a_enhanced.jpg").exists() and not (
        tmp_path / "sub" / "c_enhanced.png"
    ).exists()
    code, stdout, _ = run_cli(["batch", str(tmp_path), "-m", "gamma", "--json"])
    files = json.loads(stdout)["files"]
    assert {Path(f["input"]).name for f in files} == {"a.jpg", "b.png"}
    assert all(f["status"] == "skipped" for f in files)
    assert not list(tmp_path.glob("*_enhanced_enhanced*"))


def test_output_folder_inside_input_is_excluded(tmp_path: Path) -> None:
    _tree(tmp_path)
    _dark(tmp_path / "results" / "old.png")  # e.g. a previous run's output without suffix
    found = find_images(
        tmp_path, recursive=True, pattern="*", suffix="", exclude=tmp_path / "results"
    )
    assert [p.name for p in found] == ["a.jpg", "b.png", "c.png", "d.webp"]
    only_png = find_images(tmp_path, recursive=True, pattern="*.png", suffix="_x", exclude=None)
    assert sorted(p.name for p in only_png) == ["b.png", "c.png", "old.png"]


def test_corrupt_files_are_reported_and_the_rest_finishes(tmp_path: Path, run_cli) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _tree(src)
    (src / "truncated.jpg").write_bytes((src / "a.jpg").read_bytes()[:60])
    (src / "sub" / "empty.png").write_bytes(b"")
    (src / "text.webp").write_text("hello")
    code, stdout, stderr = run_cli(
        ["batch", str(src), "-o", str(out), "-r", "-m", "gamma", "--json"]
    )
    assert code == 6
    report = json.loads(stdout)
    assert report["summary"]["ok"] == 4 and report["summary"]["failed"] == 3
    failed = {Path(f["input"]).name: f["error"] for f in report["files"] if f["status"] == "failed"}
    assert set(failed) == {"truncated.jpg", "empty.png", "text.webp"}
    assert all(reason for reason in failed.values())
    lines = [line for line in stderr.splitlines() if line.startswith("failed: ")]
    for name, reason in failed.items():
        (line,) = [line for line in lines if name in line]  # one line per bad file...
        assert line.count(name) == 1  # ...naming it once, with its reason
        assert reason.split(name)[-1].strip(": ") in line
    assert len([p for p in out.rglob("*") if p.is_file()]) == 4


def test_usage_errors(tmp_path: Path, run_cli) -> None:
    assert run_cli(["batch", str(tmp_path / "missing"), "-m", "gamma"])[0] == 2
    assert run_cli(["batch", str(tmp_path), "-m", "gamma"])[0] == 2  # no images
    _dark(tmp_path / "a.png")
    assert run_cli(["batch", str(tmp_path), "-m", "gamma", "--suffix", ""])[0] == 2
    assert run_cli(["batch", str(tmp_path), "-m", "gamma", "--upscale"])[0] == 2


def _outputs_and_strays(out: Path) -> tuple[list[Path], list[Path]]:
    files = [p for p in out.rglob("*") if p.is_file()]
    good = [p for p in files if p.name.endswith("_enhanced.png")]
    return good, [p for p in files if p not in good]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_batch_leaves_no_partial_files_and_resumes(tmp_path: Path, sig: int) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(12):
        _dark(src / f"img{i:02d}.png", (48, 40), seed=i)
    cmd = [sys.executable, "-m", "lowlight_cli", "batch", str(src), "-o", str(out), "-m", "gamma"]
    # A 1 s pause per file keeps the run going long enough to be interrupted mid-way even
    # when a loaded machine starves this polling loop.
    env = {**os.environ, "LOWLIGHT_TEST_DELAY": "1.0"}
    # Start the child as a terminal would: a shell running pytest in the background (as CI
    # runners and `cmd &` do) ignores SIGINT, the child inherits SIG_IGN and Python then (rightly)
    # keeps ignoring Ctrl-C. Reset it so the test exercises the handler a user's Ctrl-C reaches.
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and _outputs_and_strays(out)[0]:
            break  # the first outputs are there: interrupt mid-run
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    done, strays = _outputs_and_strays(out)
    # The user is told where it stopped and what to do, with the count of files really there.
    assert f"interrupted: {len(done)} of 12 photos written" in err.decode()
    assert "run the same command again" in err.decode()
    assert strays == []  # no temp or partial files
    assert 1 <= len(done) < 12
    for path in done:  # every output present is a complete image
        with Image.open(path) as image:
            image.load()
            assert image.size == (48, 40)
    stamps = {p: p.stat().st_mtime_ns for p in done}
    rerun = subprocess.run([*cmd, "--json"], capture_output=True, check=False, timeout=120)
    assert rerun.returncode == 0, rerun.stderr.decode()
    summary = json.loads(rerun.stdout)["summary"]
    assert summary["skipped"] == len(done) and summary["ok"] == 12 - len(done)
    assert stamps == {p: p.stat().st_mtime_ns for p in done}  # finished files untouched
    assert len(_outputs_and_strays(out)[0]) == 12 and _outputs_and_strays(out)[1] == []


def test_phone_and_camera_formats_are_picked_up_in_any_case(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pillow_heif", reason="HEIC support needs pillow-heif")
    from PIL import features

    from lowlight_cli.image_io import _register_heif

    _register_heif()
    src, out = tmp_path / "in", tmp_path / "out"
    _dark(src / "a.jpg")
    rng = np.random.default_rng(4)
    pixels = (rng.random((24, 32, 3)) * 50).astype(np.uint8)
    Image.fromarray(pixels).save(src / "IMG_1.HEIC", "HEIF")
    Image.fromarray(pixels).save(src / "b.heif", "HEIF")
    expected = {"a.jpg", "IMG_1.HEIC", "b.heif"}
    if features.check("avif"):
        Image.fromarray(pixels).save(src / "C.AVIF", "AVIF")
        expected.add("C.AVIF")
    (src / "D.DNG").write_bytes(b"II*\x00" + bytes(60))  # a RAW file, without rawpy here
    monkeypatch.setitem(sys.modules, "rawpy", None)
    found = find_images(src, recursive=False, pattern="*", suffix="_enhanced", exclude=None)
    assert {p.name for p in found} == expected | {"D.DNG"}

    code, stdout, stderr = run_cli(["batch", str(src), "-o", str(out), "-m", "gamma", "--json"])
    assert code == 6, stderr  # the RAW file fails, the rest is done
    report = json.loads(stdout)
    assert report["summary"]["ok"] == len(expected) and report["summary"]["failed"] == 1
    (failed,) = [f for f in report["files"] if f["status"] == "failed"]
    assert failed["input"].endswith("D.DNG") and "lowlight[raw]" in failed["error"]
    made = {p.name for p in out.iterdir()}
    assert {"a_enhanced.jpg", "IMG_1_enhanced.heic", "b_enhanced.heif"} <= made
    assert Image.open(out / "IMG_1_enhanced.heic").format == "HEIF"
    if "C.AVIF" in expected:
        assert Image.open(out / "C_enhanced.avif").format == "AVIF"
