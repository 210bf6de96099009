"""Tests for lowlight_cli.image_io with HEIC/HEIF (pillow-heif) and AVIF (Pillow's plugin).

Inputs are encoded here with pillow-heif, Pillow and OpenCV directly, lossless where the codec
allows it, so values can be compared exactly; the real phone files in ../shared are checked
for size, orientation and metadata only.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import shared_path
from PIL import Image, ImageCms, features

from lowlight_cli import image_io
from lowlight_cli.constants import ExitCode
from lowlight_cli.errors import ImageError, UsageError
from lowlight_cli.image_io import (
    decode_image,
    encode_image,
    normalize_format,
    output_path_for,
    read_image,
    write_image,
)

pillow_heif = pytest.importorskip("pillow_heif", reason="HEIC support needs pillow-heif")
needs_avif = pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF")

RNG = np.random.default_rng(19)
H, W = 6, 9  # non-square so rotations are visible


def _icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _exif(orientation: int = 1, make: str = "PhoneCam") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[271] = make
    return exif.tobytes()


def _heic_lossless(arr: np.ndarray, bits: int = 8, **params: object) -> bytes:
    """Exactly lossless HEIC: RGB kept as RGB (no YCbCr matrix), full-resolution chroma."""
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels] + (f";{bits}" if bits > 8 else "")
    data = arr.astype("<u2" if bits > 8 else np.uint8)
    buf = io.BytesIO()
    extra = {"bit_depth": bits} if bits > 8 else {}
    pillow_heif.encode(
        mode,
        (arr.shape[1], arr.shape[0]),
        data.tobytes(),
        buf,
        quality=-1,
        chroma="444",
        matrix_coefficients=0,
        **extra,
        **params,
    )
    return buf.getvalue()


def _smooth(height: int = 48, width: int = 64) -> np.ndarray:
    """A dim gradient: lossy codecs keep it close, unlike noise."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 60 / width + 10, y * 60 / height + 10, 40 + 0 * x], axis=2).astype(
        np.uint8
    )


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(1.0 / mse)


# ------------------------------------------------------------------------------------------
# HEIC / HEIF
# ------------------------------------------------------------------------------------------


def test_8bit_heic_reads_exactly_with_icc_and_exif(tmp_path: Path) -> None:
    src = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    icc = _icc()
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(_heic_lossless(src, icc_profile=icc, exif=_exif()))
    photo = read_image(path)
    assert (photo.format, photo.bit_depth, photo.source_bits) == ("HEIF", 8, 8)
    assert np.array_equal(np.rint(photo.pixels * 255).astype(np.uint8), src)
    assert photo.icc_profile == icc  # a Display P3 profile must survive the same way
    exif = Image.Exif()
    exif.load(photo.exif)
    assert exif.get(271) == "PhoneCam" and exif.get(0x0112) in (None, 1)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_heic_rotation_is_applied_once(tmp_path: Path, orientation: int) -> None:
    # pillow-heif stores the EXIF orientation as the container's rotation (irot/imir);
    # libheif applies it on decode and the EXIF tag is reset, so nothing rotates twice.
    stored = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    path = tmp_path / "o.heic"
    path.write_bytes(_heic_lossless(stored, exif=_exif(orientation)))
    photo = read_image(path)
    turned = {3: np.rot90(stored, 2), 6: np.rot90(stored, -1), 8: np.rot90(stored, 1)}
    assert np.array_equal(np.rint(photo.pixels * 255).astype(np.uint8), turned[orientation])
    out = write_image(tmp_path / "o.png", photo, photo.pixels)
    assert Image.open(out).getexif().get(0x0112) == 1
    assert Image.open(out).size == (photo.width, photo.height)


@pytest.mark.parametrize("bits", [10, 12])
def test_high_bit_heic_takes_the_16bit_path(tmp_path: Path, bits: int) -> None:
    top = 2**bits - 1
    src = RNG.integers(0, top + 1, (H, W, 3), dtype=np.uint16)
    src[0, 0] = top  # white must come out as exactly 1.0, not 65472 / 65535
    path = tmp_path / f"hdr{bits}.heic"
    path.write_bytes(_heic_lossless(src, bits, icc_profile=_icc()))
    photo = read_image(path)
    assert (photo.bit_depth, photo.source_bits) == (16, bits)
    assert photo.pixels[0, 0, 0] == 1.0
    assert np.array_equal(np.rint(photo.pixels * top).astype(np.uint16), src)

    # Back to HEIC: the input's 10 or 12 bits; to PNG: 16 bits.
    smooth = np.repeat(np.linspace(0.05, 0.6, 64, dtype=np.float32)[None, :, None], 48, 0)
    pixels = np.repeat(smooth, 3, axis=2)
    heic = write_image(tmp_path / "out.heic", photo, pixels)
    again = pillow_heif.open_heif(heic, convert_hdr_to_8bit=False, hdr_to_16bit=False)
    assert again.info["bit_depth"] == bits
    values = np.asarray(again).astype(np.float64) / top
    assert _psnr(values, pixels) > 40
    png = write_image(tmp_path / "out.png", photo, pixels)
    assert png.read_bytes()[24] == 16


def test_16bit_png_to_heic_is_10bit(tmp_path: Path) -> None:
    src = RNG.integers(0, 65536, (H, W, 3), dtype=np.uint16)
    ok, buf = cv2.imencode(".png", src)
    assert ok
    (tmp_path / "a.png").write_bytes(buf.tobytes())
    photo = read_image(tmp_path / "a.png")
    out = write_image(tmp_path / "a.heic", photo, photo.pixels)
    assert pillow_heif.open_heif(out, convert_hdr_to_8bit=False).info["bit_depth"] == 10
    eight = write_image(tmp_path / "b.heic", photo, photo.pixels, bit_depth=8)
    assert pillow_heif.open_heif(eight).info["bit_depth"] == 8


def test_heic_alpha_and_grayscale(tmp_path: Path) -> None:
    rgba = RNG.integers(0, 256, (H, W, 4), dtype=np.uint8)
    (tmp_path / "a.heic").write_bytes(_heic_lossless(rgba))
    photo = read_image(tmp_path / "a.heic")
    assert photo.alpha is not None
    assert np.array_equal(np.rint(photo.alpha * 255).astype(np.uint8), rgba[..., 3])
    out = write_image(tmp_path / "b.heic", photo, photo.pixels)
    assert Image.open(out).mode == "RGBA"

    gray = np.full((H, W), 90, np.uint8)
    (tmp_path / "g.heic").write_bytes(_heic_lossless(gray))
    photo = read_image(tmp_path / "g.heic")
    assert photo.is_grayscale
    assert Image.open(write_image(tmp_path / "g2.heic", photo, photo.pixels)).mode == "L"


def test_heic_output_keeps_metadata_and_follows_quality(tmp_path: Path) -> None:
    icc = _icc()
    Image.fromarray(_smooth()).save(tmp_path / "in.jpg", icc_profile=icc, exif=_exif(6))
    photo = read_image(tmp_path / "in.jpg")
    small = encode_image(photo, photo.pixels, "heic", quality=20)
    large = encode_image(photo, photo.pixels, "heic", quality=95)
    assert len(small) < len(large)
    written = Image.open(io.BytesIO(large))
    assert written.format == "HEIF" and written.size == (photo.width, photo.height)
    assert written.info["icc_profile"] == icc
    assert written.getexif().get(271) == "PhoneCam"
    assert written.getexif().get(0x0112) in (None, 1)
    assert _psnr(np.asarray(written.convert("RGB")) / 255, photo.pixels) > 35


def test_heic_names_and_options() -> None:
    assert normalize_format("heic") == normalize_format(".HEIF") == "HEIF"
    assert normalize_format("avif") == "AVIF"
    assert output_path_for("x/IMG_1.HEIC") == Path("x/IMG_1_enhanced.heic")
    assert output_path_for("x/a.heif") == Path("x/a_enhanced.heif")
    assert output_path_for("x/a.jpg", None, "_e", "heic") == Path("x/a_e.heic")
    assert output_path_for("x/a.AVIF") == Path("x/a_enhanced.avif")
    with pytest.raises(UsageError, match="16-bit"):
        encode_image(
            image_io.Photo(pixels=np.zeros((2, 2, 3), np.float32)),
            np.zeros((2, 2, 3), np.float32),
            "avif",
            bit_depth=16,
        )


# ------------------------------------------------------------------------------------------
# AVIF
# ------------------------------------------------------------------------------------------


@needs_avif
def test_avif_reads_with_rotation_icc_and_exif(tmp_path: Path) -> None:
    icc = _icc()
    stored = _smooth(24, 40)
    path = tmp_path / "a.avif"
    Image.fromarray(stored).save(path, quality=100, icc_profile=icc, exif=_exif(6))
    photo = read_image(path)
    assert (photo.format, photo.bit_depth) == ("AVIF", 8)
    assert (photo.width, photo.height) == (24, 40)  # turned upright
    assert _psnr(photo.pixels, np.rot90(stored, -1) / 255) > 35
    assert photo.icc_profile == icc
    exif = Image.Exif()
    exif.load(photo.exif)
    assert exif.get(271) == "PhoneCam" and exif.get(0x0112) == 1

    out = write_image(tmp_path / "b.avif", photo, photo.pixels, quality=90)
    written = Image.open(out)
    assert written.format == "AVIF" and written.size == (24, 40)
    assert written.info["icc_profile"] == icc
    assert written.getexif().get(0x0112) in (None, 1)
    assert written.getexif().get(271) == "PhoneCam"
    low = encode_image(photo, photo.pixels, "avif", quality=10)
    assert len(low) < out.stat().st_size


@needs_avif
@pytest.mark.parametrize("bits", [10, 12])
def test_high_bit_avif(tmp_path: Path, bits: int) -> None:
    if not image_io._cv2_reads_avif():
        pytest.skip("this OpenCV has no AVIF codec; 10/12-bit AVIF is then read at 8 bits")
    top = 2**bits - 1
    y, x = np.mgrid[0:32, 0:48]
    src = np.stack([x * top // 47, y * top // 31, np.full_like(x, top // 3)], axis=2)
    ok, buf = cv2.imencode(
        ".avif",
        src[..., ::-1].astype(np.uint16).copy(),
        [cv2.IMWRITE_AVIF_DEPTH, bits, cv2.IMWRITE_AVIF_QUALITY, 100],
    )
    assert ok
    photo = decode_image(buf.tobytes(), label="hdr.avif")
    assert (photo.format, photo.bit_depth, photo.source_bits) == ("AVIF", 16, bits)
    assert photo.pixels.shape == (32, 48, 3)
    assert _psnr(photo.pixels, src / top) > 40  # scaled by 2**bits - 1, not 65535


# ------------------------------------------------------------------------------------------
# Bad input: one ImageError (exit 3) naming the file, before any pixel is decoded
# ------------------------------------------------------------------------------------------


def _with_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite every image-size (ispe) box: the header then claims another size."""
    out = bytearray(data)
    pos = out.find(b"ispe")
    assert pos > 0
    while pos > 0:
        struct.pack_into(">II", out, pos + 8, width, height)  # after version and flags
        pos = out.find(b"ispe", pos + 4)
    return bytes(out)


def _small_heic() -> bytes:
    # A size the HEVC coder needs no crop (clap) box for: the ispe box then sets the size.
    buf = io.BytesIO()
    image_io._register_heif()
    Image.fromarray(_smooth(64, 96)).save(buf, "HEIF", quality=80)
    return buf.getvalue()


def _small_avif() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_smooth(64, 96)).save(buf, "AVIF", quality=80)
    return buf.getvalue()


BAD_FILES = {
    "truncated.heic": (lambda: _small_heic()[: len(_small_heic()) // 2], "truncated"),
    "header-only.heic": (lambda: _small_heic()[:200], "truncated HEIF"),
    "notes.heic": (lambda: b"this is not a photo\n", "not a recognised image"),
    "empty.heic": (lambda: b"", "empty"),
    "bomb.heic": (lambda: _with_size(_small_heic(), 50_000, 50_000), "larger than"),
    "truncated.avif": (lambda: _small_avif()[: len(_small_avif()) // 2], "truncated"),
    "bomb.avif": (lambda: _with_size(_small_avif(), 50_000, 50_000), "larger than"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_heic_and_avif(tmp_path: Path, name: str) -> None:
    if name.endswith(".avif") and not features.check("avif"):
        pytest.skip("Pillow built without AVIF")
    make, reason = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(make())
    with pytest.raises(ImageError) as info:
        read_image(path)
    err = info.value
    assert name in err.message and reason in err.message, err.message
    assert "\n" not in err.message
    assert err.exit_code == ExitCode.IMAGE == 3


def test_heic_bomb_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded a bomb")

    bomb = _with_size(_small_heic(), 50_000, 50_000)
    monkeypatch.setattr(Image.Image, "load", never)
    monkeypatch.setattr(image_io, "_decode_heif_high_bits", never)
    with pytest.raises(ImageError, match="larger than"):
        decode_image(bomb, label="bomb.heic")


def test_heic_without_pillow_heif_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_io, "_register_heif", lambda: False)
    with pytest.raises(ImageError, match="pillow-heif") as info:
        image_io._explain_unreadable_heif(_small_heic(), "x.heic")
    assert info.value.exit_code == 3


# ------------------------------------------------------------------------------------------
# Real phone files (../shared)
# ------------------------------------------------------------------------------------------


@pytest.mark.shared
@pytest.mark.parametrize(
    ("name", "size", "icc_bytes"),
    [
        ("IMG_5195.HEIC", (2566, 3313), 548),
        ("iphone_13_pro_max.HEIC", (3024, 4032), 548),
        ("samplefilehub.heif", (640, 426), 0),
    ],
)
def test_real_phone_heic(tmp_path: Path, name: str, size: tuple[int, int], icc_bytes: int) -> None:
    path = shared_path("photos", "heic", name)
    photo = read_image(path)
    assert (photo.width, photo.height) == size  # upright, as the phone shows it
    assert photo.format == "HEIF" and photo.bit_depth == 8
    assert len(photo.icc_profile or b"") == icc_bytes  # Display P3 kept, not converted
    if icc_bytes:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(photo.icc_profile))
        assert "Display P3" in ImageCms.getProfileDescription(profile)
    original = Image.open(path)
    original_tags = {k: v for k, v in original.getexif().items() if k != 0x0112}
    assert original_tags  # resolution at least; the iPhones' also camera, lens, exposure
    # A small copy: the metadata path is what is under test, not the encoder's speed.
    small = photo.pixels[::8, ::8]
    for fmt in ("jpg", "heic"):
        written = Image.open(io.BytesIO(encode_image(photo, small, fmt, quality=80)))
        assert written.info.get("icc_profile") == photo.icc_profile
        assert written.getexif().get(0x0112) in (None, 1)
        kept = {k: v for k, v in written.getexif().items() if k != 0x0112}
        assert kept == original_tags
