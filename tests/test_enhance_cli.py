"""``lowlight enhance``: outputs, stdin/stdout, JSON, refusals, exit codes (gamma model)."""

from __future__ import annotations

import io
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

from lowlight_cli.cli import main


class Result:
    def __init__(self, exit_code: int, stdout: str, stderr: str) -> None:
        self.exit_code, self.stdout, self.stderr = exit_code, stdout, stderr
        self.output = stdout + stderr


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run ``lowlight ARGS`` through ``main`` (which maps errors to exit codes) in-process."""

    def invoke(args: list[str]) -> Result:
        capsys.readouterr()
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


def _dark(path: Path, size: tuple[int, int] = (48, 36), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((size[1], size[0], 3)) * 50).astype(np.uint8)).save(path)
    return path


def _mean(path: Path) -> float:
    return float(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).mean())


def test_default_output_beside_input_and_brighter(cli, tmp_path: Path) -> None:
    src = _dark(tmp_path / "night.jpg")
    before = src.read_bytes()
    result = cli(["enhance", str(src), "--model", "gamma"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "night_enhanced.jpg"
    assert out.exists() and str(out) in result.stdout
    assert Image.open(out).size == (48, 36)
    assert _mean(out) > _mean(src) + 10
    assert src.read_bytes() == before  # the input is untouched


def test_many_inputs_into_a_folder_with_json(cli, tmp_path: Path) -> None:
    a, b = _dark(tmp_path / "a.png"), _dark(tmp_path / "b.jpg", (30, 20), seed=1)
    out_dir = tmp_path / "out"
    result = cli(["enhance", str(a), str(b), "-o", str(out_dir), "-m", "gamma", "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)["files"]
    assert [Path(r["output"]).name for r in records] == ["a_enhanced.png", "b_enhanced.jpg"]
    assert records[1]["size"] == [30, 20] and records[1]["model"] == "gamma"
    assert all(r["seconds"] >= 0 for r in records)
    assert sorted(p.name for p in out_dir.iterdir()) == ["a_enhanced.png", "b_enhanced.jpg"]


def test_output_file_format_and_bit_depth(cli, tmp_path: Path) -> None:
    src = _dark(tmp_path / "x.jpg")
    dest = tmp_path / "result.png"
    result = cli(["enhance", str(src), "-o", str(dest), "-m", "gamma", "--bit-depth", "16"])
    assert result.exit_code == 0, result.output
    assert dest.exists() and not (tmp_path / "x_enhanced.jpg").exists()
    assert dest.read_bytes()[24] == 16  # PNG IHDR bit depth
    made = cli(["enhance", str(src), "-m", "gamma", "-f", "webp", "--suffix", "_b"])
    assert made.exit_code == 0, made.output
    assert (tmp_path / "x_b.webp").exists()


def test_existing_output_is_refused_then_overwritten(cli, tmp_path: Path) -> None:
    src = _dark(tmp_path / "p.png")
    dest = tmp_path / "p_enhanced.png"
    dest.write_bytes(b"keep me")
    refused = cli(["enhance", str(src), "-m", "gamma"])
    assert refused.exit_code == 3
    assert dest.read_bytes() == b"keep me"
    done = cli(["enhance", str(src), "-m", "gamma", "--overwrite"])
    assert done.exit_code == 0, done.output
    assert Image.open(dest).size == (48, 36)


def test_input_is_never_the_output(cli, tmp_path: Path) -> None:
    src = _dark(tmp_path / "same.png")
    before = src.read_bytes()
    result = cli(["enhance", str(src), "-o", str(src), "-m", "gamma", "--overwrite"])
    assert result.exit_code == 3
    assert src.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--model", "nope"], 2),
        (["--model", "gamma", "--upscale"], 2),
        (["--model", "gamma", "--supersample"], 2),
        (["--model", "neid", "--upscale", "--supersample"], 2),
        (["--model", "clahe", "--ensemble"], 2),
        (["--model", "gamma", "--tile", "big"], 2),
        (["--model", "gamma", "--backend", "tensorrt"], 2),
        (["--model", "gamma", "--device", "tpu"], 2),
        (["--model", "gamma", "--strength", "1.5"], 2),
        (["--model", "gamma", "--format", "gif"], 2),
        (["--model", "gamma", "--format", "jpg", "--bit-depth", "16"], 2),
        (["--model", "clahe", "--precision", "fp16"], 5),
        (["--model", "gamma", "--working-size", "big"], 2),
        (["--model", "gamma", "--working-size", "-1"], 2),
        (["--model", "gamma", "--working-size", "0.5", "--full-res"], 2),
        (["--model", "gamma", "--precision", "fp8"], 2),
    ],
)
def test_bad_options_exit_codes(cli, tmp_path: Path, args: list[str], code: int) -> None:
    src = _dark(tmp_path / "i.png")
    result = cli(["enhance", str(src), *args])
    assert result.exit_code == code, result.output
    assert not (tmp_path / "i_enhanced.png").exists()


def test_unreadable_input_exit_3(cli, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    result = cli(["enhance", str(bad), "-m", "gamma"])
    assert result.exit_code == 3
    assert not list(tmp_path.glob("broken_enhanced*"))


def test_stdin_to_stdout_in_a_real_process(tmp_path: Path) -> None:
    src = _dark(tmp_path / "pipe.png")
    proc = subprocess.run(
        [sys.executable, "-m", "lowlight_cli", "enhance", "-", "--model", "gamma"],
        input=src.read_bytes(),
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    image = Image.open(io.BytesIO(proc.stdout))
    assert image.format == "PNG" and image.size == (48, 36)
    assert list(tmp_path.iterdir()) == [src]  # nothing written beside


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_enhance_of_many_photos_says_how_far_it_got(tmp_path: Path, sig: int) -> None:
    """Ctrl-C or SIGTERM: exit 130, finished photos kept, nothing partial, the count on stderr."""
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    inputs = [str(_dark(tmp_path / "in" / f"img{i}.png", seed=i)) for i in range(8)]
    cmd = [sys.executable, "-m", "lowlight_cli", "enhance", *inputs, "-o", str(out), "-m", "gamma"]
    # 1 s per photo (test hook) so the signal lands mid-run; SIGINT reset as a terminal has it
    # (see the batch interrupt test).
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "LOWLIGHT_TEST_DELAY": "1.0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 180
    # Wait for a finished photo, not a temp file (an interrupt would rightly remove that one).
    while time.monotonic() < deadline and proc.poll() is None and not any(out.glob("*.png")):
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    files = sorted(out.iterdir())
    assert all(p.name.endswith("_enhanced.png") for p in files), files  # no temp files
    assert 1 <= len(files) < 8
    assert f"interrupted: {len(files)} of 8 photos written, none half-written" in err.decode()
    for path in files:
        with Image.open(path) as image:
            image.load()  # complete images only


def test_an_interrupt_right_after_a_photo_is_written_still_counts_it(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal between the output's atomic rename and the run's bookkeeping: counted as written."""
    import lowlight_cli.image_io as image_io

    real_write = image_io.write_image

    def write_then_interrupt(*args, **kwargs):
        real_write(*args, **kwargs)
        raise KeyboardInterrupt  # as if SIGTERM arrived the moment the rename finished

    monkeypatch.setattr(image_io, "write_image", write_then_interrupt)
    inputs = [str(_dark(tmp_path / f"img{i}.png", seed=i)) for i in range(3)]
    out = tmp_path / "out"
    out.mkdir()
    result = cli(["enhance", *inputs, "-o", str(out), "-m", "gamma"])
    assert result.exit_code == 130, result.output
    assert [p.name for p in out.iterdir()] == ["img0_enhanced.png"]
    assert "interrupted: 1 of 3 photos written, none half-written" in result.stderr


def test_strength_zero_keeps_the_photo(cli, tmp_path: Path) -> None:
    src = _dark(tmp_path / "s.png")
    result = cli(["enhance", str(src), "-m", "gamma", "--strength", "0"])
    assert result.exit_code == 0, result.output
    original = np.asarray(Image.open(src), dtype=int)
    produced = np.asarray(Image.open(tmp_path / "s_enhanced.png"), dtype=int)
    assert np.abs(original - produced).max() <= 1


def test_env_vars_supply_defaults(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _dark(tmp_path / "e.png")
    monkeypatch.setenv("LOWLIGHT_MODEL", "gamma")
    monkeypatch.setenv("LOWLIGHT_DEVICE", "cpu")
    monkeypatch.setenv("LOWLIGHT_TILE", "0")
    result = cli(["enhance", str(src), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["files"][0]["model"] == "gamma"
    monkeypatch.setenv("LOWLIGHT_BACKEND", "nonsense")
    assert cli(["enhance", str(src), "--overwrite"]).exit_code == 2


@pytest.mark.parametrize("model", ["neid", "frlie", "nrl"])
def test_fresh_install_enhances_offline_with_bundled_weights(tmp_path: Path, model: str) -> None:
    """What a user gets right after install: no cache, no network, the shipped weights."""
    from lowlight_cli.registry import get_spec
    from lowlight_cli.weights import load_manifest

    entry = load_manifest().get(get_spec(model).default_weights)
    if entry.source != "bundled":
        pytest.skip(f"{model}'s default weights are not bundled in this build")
    rng = np.random.default_rng(3)
    dark = (rng.random((48, 64, 3)) * 40 + 5).astype(np.uint8)  # a dim photo, mean ~25/255
    src = tmp_path / "dark.png"
    Image.fromarray(dark).save(src)
    env = {
        **os.environ,
        "LOWLIGHT_OFFLINE": "1",
        "LOWLIGHT_CACHE_DIR": str(tmp_path / "empty-cache"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "lowlight_cli", "enhance", str(src), "--model", model],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = np.asarray(Image.open(tmp_path / "dark_enhanced.png"))
    assert out.shape == dark.shape
    assert out.mean() > dark.mean() + 30  # the trained weights really brighten
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").iterdir())


def test_the_fast_path_keeps_16_bits_alpha_and_colour_profile(cli, tmp_path: Path) -> None:
    """An explicit working size puts even gamma on the fast path; the file side is unchanged."""
    import tifffile
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:150, 0:200]
    rgb = (3000 + 2000 * np.sin(xx / 9)[..., None] * np.cos(yy / 13)[..., None]
           + rng.integers(0, 400, (150, 200, 3)))  # fmt: skip
    alpha = rng.integers(0, 65536, (150, 200, 1))
    src = np.concatenate([rgb, alpha], axis=2).astype(np.uint16)
    tifffile.imwrite(tmp_path / "dark.tif", src, photometric="rgb", extrasamples=[2],
                     iccprofile=icc)  # fmt: skip
    fast = cli(["enhance", str(tmp_path / "dark.tif"), "-m", "gamma", "--working-size", "0.01",
                "--json"])  # fmt: skip
    assert fast.exit_code == 0, fast.output
    record = json.loads(fast.stdout)["files"][0]
    assert record["path"] == "fast" and record["working_size"] == [115, 87]
    assert record["precision"] == "fp32"
    with tifffile.TiffFile(tmp_path / "dark_enhanced.tif") as tif:
        page = tif.pages[0]
        out = page.asarray()
        assert page.tags[34675].value == icc
    assert out.dtype == np.uint16 and out.shape == src.shape
    assert np.array_equal(out[..., 3], src[..., 3])  # alpha passes through untouched
    assert out[..., :3].mean() > 3 * src[..., :3].mean()
    assert len(np.unique(out[..., 1])) > 256  # still 16-bit levels, not 8-bit ones
    full = cli(["enhance", str(tmp_path / "dark.tif"), "-m", "gamma", "--full-res", "--json",
                "--suffix", "_full"])  # fmt: skip
    assert full.exit_code == 0, full.output
    assert json.loads(full.stdout)["files"][0]["path"] == "full-res"


def test_jpeg_keeps_exif_on_the_fast_path(cli, tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[271] = "TestCam"
    src = tmp_path / "cam.jpg"
    Image.fromarray(np.full((120, 160, 3), 30, np.uint8)).save(src, exif=exif.tobytes())
    result = cli(["enhance", str(src), "-m", "gamma", "--working-size", "0.005"])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "cam_enhanced.jpg") as out:
        assert out.getexif().get(271) == "TestCam" and out.size == (160, 120)


# ------------------------------------------------------------------------------------------
# Phone and camera formats: HEIC/HEIF, AVIF, camera RAW
# ------------------------------------------------------------------------------------------


def _dark_heic(path: Path, size: tuple[int, int] = (48, 36)) -> Path:
    pytest.importorskip("pillow_heif", reason="HEIC support needs pillow-heif")
    from lowlight_cli.image_io import _register_heif

    _register_heif()
    rng = np.random.default_rng(5)
    exif = Image.Exif()
    exif[271] = "PhoneCam"
    pixels = (rng.random((size[1], size[0], 3)) * 50).astype(np.uint8)
    Image.fromarray(pixels).save(path, "HEIF", quality=90, exif=exif.tobytes())
    return path


def test_heic_in_heic_out_and_quality(cli, tmp_path: Path) -> None:
    src = _dark_heic(tmp_path / "IMG_5195.HEIC")
    result = cli(["enhance", str(src), "-m", "gamma", "--json"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "IMG_5195_enhanced.heic"
    assert json.loads(result.stdout)["files"][0]["output"] == str(out.resolve())
    written = Image.open(out)
    assert written.format == "HEIF" and written.size == (48, 36)
    assert written.getexif().get(271) == "PhoneCam"
    assert _mean(out) > _mean(src) + 10
    low = cli(["enhance", str(src), "-m", "gamma", "-q", "10", "--suffix", "_low"])
    assert low.exit_code == 0, low.output
    assert (tmp_path / "IMG_5195_low.heic").stat().st_size < out.stat().st_size
    jpg = cli(["enhance", str(src), "-m", "gamma", "-f", "jpg"])
    assert jpg.exit_code == 0 and Image.open(tmp_path / "IMG_5195_enhanced.jpg").format == "JPEG"


def test_avif_output_by_option(cli, tmp_path: Path) -> None:
    from PIL import features

    if not features.check("avif"):
        pytest.skip("Pillow built without AVIF")
    src = _dark(tmp_path / "night.png")
    result = cli(["enhance", str(src), "-m", "gamma", "-f", "avif"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "night_enhanced.avif"
    assert Image.open(out).format == "AVIF"
    again = cli(["enhance", str(out), "-m", "gamma", "--suffix", "_2"])  # AVIF in, AVIF out
    assert again.exit_code == 0, again.output
    assert Image.open(tmp_path / "night_enhanced_2.avif").size == (48, 36)


def test_dng_in_16bit_png_out(cli, tmp_path: Path) -> None:
    pytest.importorskip("rawpy", reason="camera RAW needs rawpy (the raw extra)")
    from test_camera_raw import make_dng

    src = tmp_path / "DSC_0001.DNG"
    src.write_bytes(make_dng(level=0.02))
    result = cli(["enhance", str(src), "-m", "gamma"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "DSC_0001_enhanced.png"
    assert out.read_bytes()[24] == 16  # PNG IHDR: 16 bits per sample
    written = Image.open(out)
    assert written.size == (48, 32) and written.getexif().get(271) == "Lowlight"
    assert written.info.get("icc_profile")
    pytest.importorskip("pillow_heif", reason="HEIC support needs pillow-heif")
    as_heic = cli(["enhance", str(src), "-m", "gamma", "-f", "heic"])
    assert as_heic.exit_code == 0, as_heic.output
    assert Image.open(tmp_path / "DSC_0001_enhanced.heic").format == "HEIF"


def _bad_heic(tmp_path: Path, case: str) -> Path:
    import struct

    if case == "text.heic":
        path = tmp_path / case
        path.write_text("this is not a photo\n")
        return path
    if case == "empty.dng":
        path = tmp_path / case
        path.write_bytes(b"")
        return path
    good = _dark_heic(tmp_path / "good.heic", size=(64, 64)).read_bytes()
    (tmp_path / "good.heic").unlink()
    path = tmp_path / case
    if case == "truncated.heic":
        path.write_bytes(good[: len(good) // 2])
    else:  # bomb.heic: the size box claims 50000 x 50000
        data = bytearray(good)
        pos = data.find(b"ispe")
        struct.pack_into(">II", data, pos + 8, 50_000, 50_000)
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("case", ["truncated.heic", "text.heic", "bomb.heic", "empty.dng"])
def test_bad_phone_and_camera_files_exit_3_with_one_line(cli, tmp_path: Path, case: str):
    src = _bad_heic(tmp_path, case)
    result = cli(["enhance", str(src), "-m", "gamma"])
    assert result.exit_code == 3, result.output
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and case in errors[0], result.stderr
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [case]  # nothing left behind


def test_raw_without_rawpy_one_line_exit_3(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "rawpy", None)
    src = tmp_path / "IMG_0001.CR2"
    src.write_bytes(b"II*\x00\x10\x00\x00\x00CR\x02\x00" + bytes(64))
    result = cli(["enhance", str(src), "-m", "gamma"])
    assert result.exit_code == 3
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line, no hint below
    assert "lowlight[raw]" in result.stderr and "not a recognised" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["IMG_0001.CR2"]


def test_ensemble_reaches_the_engine_from_enhance_and_batch(cli, tmp_path: Path) -> None:
    """`enhance --ensemble` and `batch --ensemble` write the 8-orientation mean the engine gives."""
    from lowlight_cli.engine import Enhancer

    (tmp_path / "in").mkdir()
    src = _dark(tmp_path / "in" / "d.png")
    pixels = np.asarray(Image.open(src).convert("RGB"), dtype=np.float32) / 255.0
    expected = Enhancer.create("neid", ensemble=True).enhance(pixels) * 255.0
    plain = Enhancer.create("neid").enhance(pixels) * 255.0
    assert np.abs(expected - plain).max() > 2.0
    result = cli(["enhance", str(src), "-m", "neid", "--ensemble", "-o", str(tmp_path / "e.png")])
    assert result.exit_code == 0, result.output
    result = cli(["batch", str(tmp_path / "in"), "-o", str(tmp_path / "b"), "-m", "neid",
                  "--ensemble"])  # fmt: skip
    assert result.exit_code == 0, result.output
    for out in (tmp_path / "e.png", tmp_path / "b" / "d_enhanced.png"):
        got = np.asarray(Image.open(out).convert("RGB"), dtype=np.float32)
        assert np.abs(got - expected).max() <= 1.0


def test_no_coarse_reaches_the_engine_from_enhance_and_batch(cli, tmp_path: Path) -> None:
    """frlie runs with its coarse pass by default; `--no-coarse` gives the plain model, from
    `enhance` and `batch` alike."""
    from lowlight_cli.engine import Enhancer

    (tmp_path / "in").mkdir()
    src = _dark(tmp_path / "in" / "d.png", size=(200, 150))  # above the coarse copy's size
    pixels = np.asarray(Image.open(src).convert("RGB"), dtype=np.float32) / 255.0
    coarse = Enhancer.create("frlie").enhance(pixels) * 255.0
    plain = Enhancer.create("frlie", coarse_pass=False).enhance(pixels) * 255.0
    assert np.abs(coarse - plain).max() > 2.0
    outputs = {
        "c.png": (["-m", "frlie"], coarse),
        "p.png": (["-m", "frlie", "--no-coarse"], plain),
    }
    for name, (flags, _) in outputs.items():
        result = cli(["enhance", str(src), *flags, "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    result = cli(["batch", str(tmp_path / "in"), "-o", str(tmp_path / "b"), "-m", "frlie",
                  "--no-coarse"])  # fmt: skip
    assert result.exit_code == 0, result.output
    checks = [(tmp_path / n, want) for n, (_, want) in outputs.items()]
    for out, want in [*checks, (tmp_path / "b" / "d_enhanced.png", plain)]:
        got = np.asarray(Image.open(out).convert("RGB"), dtype=np.float32)
        assert np.abs(got - want).max() <= 1.0
