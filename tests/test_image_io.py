"""Tests for lowlight_cli.image_io: formats, bit depths, metadata, orientation, writes, bad input.

Input files are made with independent encoders (Pillow, OpenCV, tifffile) so a reader bug and a
writer bug cannot cancel out.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from conftest import shared_path
from PIL import Image, ImageCms, ImageOps

from lowlight_cli import image_io
from lowlight_cli.constants import MAX_IMAGE_PIXELS, ExitCode
from lowlight_cli.errors import ImageError, UsageError
from lowlight_cli.image_io import (
    FORMATS,
    Photo,
    decode_image,
    output_path_for,
    read_image,
    write_image,
)

RNG = np.random.default_rng(1234)
H, W = 6, 9  # non-square so rotations and transposes are visible


def _icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _exif(orientation: int = 1, make: str = "TestCam") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[271] = make
    return exif.tobytes()


def _u8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def _u16(*shape: int, high: int = 65536) -> np.ndarray:
    return RNG.integers(0, high, size=shape, dtype=np.uint16)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes, bool]]:
    """(type, body, crc_ok) for every chunk of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        chunks.append((kind, body, crc == zlib.crc32(kind + body)))
        pos += 12 + length
    return chunks


def _cv2_write(path: Path, rgb: np.ndarray) -> None:
    """Write with OpenCV (RGB(A) in, BGR(A) on disk); PNG chunks can be added afterwards."""
    arr = rgb if rgb.ndim == 2 else rgb[..., [2, 1, 0, *range(3, rgb.shape[2])]]
    ok, buf = cv2.imencode(path.suffix, np.ascontiguousarray(arr))
    assert ok
    path.write_bytes(buf.tobytes())


def _png_with_chunks(data: bytes, extra: list[bytes]) -> bytes:
    """Insert chunks right after IHDR (8 + 25 bytes)."""
    return data[:33] + b"".join(extra) + data[33:]


def _to_uint(pixels: np.ndarray, bits: int) -> np.ndarray:
    return np.rint(pixels * (2**bits - 1)).astype(np.uint16 if bits == 16 else np.uint8)


# ------------------------------------------------------------------------------------------
# Reading: values, bit depth, modes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "bits", "channels"),
    [
        ("rgb8.png", 8, 3),
        ("rgba8.png", 8, 4),
        ("rgb16.png", 16, 3),
        ("rgba16.png", 16, 4),
        ("rgb8.tif", 8, 3),
        ("rgb16.tif", 16, 3),
        ("rgba16.tif", 16, 4),
        ("gray16.tif", 16, 1),
        ("gray16.png", 16, 1),
        ("gray8.png", 8, 1),
        ("rgb8.bmp", 8, 3),
    ],
)
def test_lossless_roundtrip_is_exact(tmp_path: Path, name: str, bits: int, channels: int) -> None:
    shape = (H, W) if channels == 1 else (H, W, channels)
    src = _u16(*shape) if bits == 16 else _u8(*shape)
    path = tmp_path / name
    if name.endswith(".tif"):
        photometric = "minisblack" if channels == 1 else "rgb"
        extras = ["unassalpha"] if channels == 4 else None
        tifffile.imwrite(path, src, photometric=photometric, extrasamples=extras)
    else:
        _cv2_write(path, src)

    photo = read_image(path)
    assert photo.bit_depth == bits
    assert photo.pixels.dtype == np.float32 and photo.pixels.shape == (H, W, 3)
    rgb = src if channels != 1 else np.repeat(src[..., None], 3, axis=2)
    assert np.array_equal(_to_uint(photo.pixels, bits), rgb[..., :3])
    if channels == 4:
        assert np.array_equal(_to_uint(photo.alpha, bits), src[..., 3])
    else:
        assert photo.alpha is None
    assert photo.is_grayscale == (channels == 1)

    out = write_image(tmp_path / f"out_{name}", photo, photo.pixels)
    again = read_image(out)
    assert again.bit_depth == bits
    assert again.mode == photo.mode
    assert np.array_equal(again.pixels, photo.pixels)
    if channels == 4:
        assert np.array_equal(again.alpha, photo.alpha)


def test_dark_16bit_photo_stays_16bit(tmp_path: Path) -> None:
    # Every value fits in 8 bits: a value-based guess would wrongly call this an 8-bit image.
    src = _u16(H, W, 3, high=200)
    _cv2_write(tmp_path / "dark.png", src)
    photo = read_image(tmp_path / "dark.png")
    assert photo.bit_depth == 16
    out = write_image(tmp_path / "o.png", photo, photo.pixels)
    assert cv2.imread(str(out), cv2.IMREAD_UNCHANGED).dtype == np.uint16


def test_jpeg_and_webp_read(tmp_path: Path) -> None:
    src = np.full((H, W, 3), 120, np.uint8)
    for name in ("a.jpg", "a.webp"):
        Image.fromarray(src).save(tmp_path / name, quality=95)
        photo = read_image(tmp_path / name)
        assert photo.format == ("JPEG" if name.endswith("jpg") else "WEBP")
        assert photo.bit_depth == 8
        assert np.abs(photo.pixels * 255 - 120).max() <= 2  # lossy codecs, flat image


def test_palette_image_becomes_rgb(tmp_path: Path) -> None:
    img = Image.fromarray(_u8(H, W, 3)).quantize(colors=8)
    img.save(tmp_path / "p.png")
    photo = read_image(tmp_path / "p.png")
    assert photo.mode == "P" and not photo.is_grayscale
    expected = np.asarray(img.convert("RGB"))
    assert np.array_equal(_to_uint(photo.pixels, 8), expected)
    out = write_image(tmp_path / "o.png", photo, photo.pixels)
    assert Image.open(out).mode == "RGB"


# ------------------------------------------------------------------------------------------
# Orientation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_and_is_reset(tmp_path: Path, orientation: int) -> None:
    stored = _u8(H, W, 3)
    path = tmp_path / "o.png"
    Image.fromarray(stored).save(path, exif=_exif(orientation))
    photo = read_image(path)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert np.array_equal(_to_uint(photo.pixels, 8), expected)

    out = write_image(tmp_path / "out.png", photo, photo.pixels)
    written = Image.open(out)
    assert written.getexif().get(0x0112) == 1  # pixels are upright now
    assert written.getexif().get(271) == "TestCam"  # the rest of the EXIF survives
    assert np.array_equal(np.asarray(written.convert("RGB")), expected)


_TRANSPOSE = {
    2: [Image.Transpose.FLIP_LEFT_RIGHT],
    3: [Image.Transpose.ROTATE_180],
    4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE],
    6: [Image.Transpose.ROTATE_270],
    7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_90],
}


def _upright(stored: np.ndarray, orientation: int) -> np.ndarray:
    """Pillow's EXIF transpose applied to any array, through an index image."""
    index = Image.fromarray(
        np.arange(stored.shape[0] * stored.shape[1], dtype=np.int32).reshape(stored.shape[:2])
    )
    for method in _TRANSPOSE.get(orientation, []):
        index = index.transpose(method)
    return stored.reshape(-1, *stored.shape[2:])[np.asarray(index)]


@pytest.mark.parametrize("orientation", [5, 6, 7])
def test_orientation_on_16bit_png(tmp_path: Path, orientation: int) -> None:
    stored = _u16(H, W, 3)
    _, buf = cv2.imencode(".png", stored[..., ::-1].copy())
    exif = _exif(orientation)[6:]  # PNG eXIf holds the bare TIFF structure
    data = _png_with_chunks(buf.tobytes(), [_png_chunk(b"eXIf", exif)])
    (tmp_path / "o.png").write_bytes(data)
    photo = read_image(tmp_path / "o.png")
    assert photo.bit_depth == 16
    assert np.array_equal(_to_uint(photo.pixels, 16), _upright(stored, orientation))


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("orientation", [1, 2, 6, 8])
def test_orientation_on_tiff(tmp_path: Path, bits: int, orientation: int) -> None:
    stored = _u16(H, W, 3) if bits == 16 else _u8(H, W, 3)
    path = tmp_path / "o.tif"
    exif_tags = [(274, "H", 1, orientation, True), (271, "s", 0, "TestCam", True)]
    tifffile.imwrite(path, stored, photometric="rgb", extratags=exif_tags)
    photo = read_image(path)
    assert photo.bit_depth == bits
    assert np.array_equal(_to_uint(photo.pixels, bits), _upright(stored, orientation))
    exif = Image.Exif()
    exif.load(photo.exif)  # rebuilt as a standalone EXIF block for the output
    assert exif.get(0x0112) == 1 and exif.get(271) == "TestCam"


# ------------------------------------------------------------------------------------------
# Metadata carried to the output
# ------------------------------------------------------------------------------------------


def test_jpeg_keeps_icc_and_exif(tmp_path: Path) -> None:
    icc = _icc()
    Image.fromarray(_u8(H, W, 3)).save(tmp_path / "a.jpg", icc_profile=icc, exif=_exif(3))
    photo = read_image(tmp_path / "a.jpg")
    out = write_image(tmp_path / "b.jpg", photo, photo.pixels, quality=90)
    written = Image.open(out)
    assert written.info["icc_profile"] == icc
    assert written.getexif().get(271) == "TestCam"
    assert written.getexif().get(0x0112) == 1


@pytest.mark.parametrize("bits", [8, 16])
def test_png_keeps_icc_and_exif(tmp_path: Path, bits: int) -> None:
    icc = _icc()
    src = _u16(H, W, 3) if bits == 16 else _u8(H, W, 3)
    _, buf = cv2.imencode(".png", src[..., ::-1].copy())
    iccp = _png_chunk(b"iCCP", b"test\x00\x00" + zlib.compress(icc))
    exif = _png_chunk(b"eXIf", _exif(1)[6:])
    (tmp_path / "a.png").write_bytes(_png_with_chunks(buf.tobytes(), [iccp, exif]))
    photo = read_image(tmp_path / "a.png")
    assert photo.icc_profile == icc and photo.bit_depth == bits

    out = write_image(tmp_path / "b.png", photo, photo.pixels)
    data = out.read_bytes()
    chunks = _png_chunks(data)
    assert all(crc_ok for _, _, crc_ok in chunks)
    kinds = [k for k, _, _ in chunks]
    assert kinds.index(b"iCCP") < kinds.index(b"IDAT")
    assert kinds.index(b"eXIf") < kinds.index(b"IDAT")
    assert b"sRGB" not in kinds  # forbidden beside iCCP
    written = Image.open(out)
    assert written.info["icc_profile"] == icc
    assert written.getexif().get(271) == "TestCam"
    decoded = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)  # libpng checks the file too
    assert decoded.dtype == (np.uint16 if bits == 16 else np.uint8)
    assert np.array_equal(decoded[..., ::-1], src)


def test_16bit_tiff_keeps_icc(tmp_path: Path) -> None:
    icc = _icc()
    src = _u16(H, W, 3)
    tifffile.imwrite(tmp_path / "a.tif", src, photometric="rgb", iccprofile=icc)
    photo = read_image(tmp_path / "a.tif")
    assert photo.icc_profile == icc
    out = write_image(tmp_path / "b.tif", photo, photo.pixels)
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.tags[34675].value == icc
        assert np.array_equal(page.asarray(), src)


def test_cmyk_profile_is_not_carried_onto_rgb_pixels() -> None:
    fake_cmyk = bytes(16) + b"CMYK" + bytes(108)
    photo = Photo(pixels=np.zeros((H, W, 3), np.float32), icc_profile=fake_cmyk, format="JPEG")
    data = image_io.encode_image(photo, photo.pixels, "png")
    assert "icc_profile" not in Image.open(io.BytesIO(data)).info


# ------------------------------------------------------------------------------------------
# Bit depth, quantisation, alpha, grayscale
# ------------------------------------------------------------------------------------------


def test_output_bit_depth_default_and_override(tmp_path: Path) -> None:
    _cv2_write(tmp_path / "a.png", _u16(H, W, 3))
    photo16 = read_image(tmp_path / "a.png")
    jpg = write_image(tmp_path / "b.jpg", photo16, photo16.pixels)  # JPEG can only do 8
    assert read_image(jpg).bit_depth == 8
    png8 = write_image(tmp_path / "c.png", photo16, photo16.pixels, bit_depth=8)
    assert read_image(png8).bit_depth == 8

    _cv2_write(tmp_path / "d.png", _u8(H, W, 3))
    photo8 = read_image(tmp_path / "d.png")
    tif16 = write_image(tmp_path / "e.tif", photo8, photo8.pixels, bit_depth=16)
    assert read_image(tif16).bit_depth == 16

    for fmt in ("jpg", "webp", "bmp"):
        with pytest.raises(UsageError, match="16-bit"):
            write_image(tmp_path / f"f.{fmt}", photo8, photo8.pixels, bit_depth=16)
    with pytest.raises(UsageError):
        write_image(tmp_path / "g.png", photo8, photo8.pixels, bit_depth=12)
    assert not list(tmp_path.glob("f.*")) and not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("bits", [8, 16])
def test_quantisation_rounds(bits: int) -> None:
    top = 2**bits - 1
    levels = RNG.integers(0, top, size=(H, W, 3))
    # 0.7 of a step above each level: rounding goes up, truncation would not.
    pixels = ((levels + 0.7) / top).astype(np.float32)
    photo = Photo(pixels=pixels, bit_depth=bits)
    data = image_io.encode_image(photo, pixels, "png", bit_depth=bits)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert np.array_equal(decoded.astype(np.int64), np.minimum(levels + 1, top))


@pytest.mark.parametrize(
    ("fmt", "bits", "mode"),
    [
        ("png", 8, "RGB"),
        ("png", 16, "RGBA"),
        ("png", 16, "LA"),
        ("tif", 16, "L"),
        ("webp", 8, "LA"),
        ("bmp", 8, "RGB"),
    ],
)
def test_encoding_in_row_blocks_matches_one_block(
    monkeypatch: pytest.MonkeyPatch, fmt: str, bits: int, mode: str
) -> None:
    # Large photos are converted to integers ENCODE_ROWS rows at a time; blocks that do not
    # divide the height (3 rows of 11, the last one short) must give the same file as one block.
    height = 11
    pixels = RNG.uniform(-0.1, 1.1, size=(height, W, 3)).astype(np.float32)
    pixels[4, 2, 1] = np.nan
    if mode in ("L", "LA"):
        pixels[:] = pixels[..., :1]
    alpha = RNG.uniform(0, 1, size=(height, W)).astype(np.float32) if "A" in mode else None
    photo = Photo(pixels=pixels, alpha=alpha, bit_depth=bits, mode=mode)
    whole = image_io.encode_image(photo, pixels, fmt, bit_depth=bits)
    monkeypatch.setattr(image_io, "ENCODE_ROWS", 3)
    blocks = image_io.encode_image(photo, pixels, fmt, bit_depth=bits)
    assert blocks == whole
    decoded = decode_image(blocks)
    assert decoded.height == height and (decoded.alpha is None) == (alpha is None or fmt == "bmp")


def test_out_of_range_and_nan_are_clipped() -> None:
    pixels = np.array([[[-0.5, 1.5, np.nan]]], np.float32)
    data = image_io.encode_image(Photo(pixels=pixels), pixels, "png")
    assert np.asarray(Image.open(io.BytesIO(data))).tolist() == [[[0, 255, 0]]]


def test_alpha_passes_through_untouched(tmp_path: Path) -> None:
    src = _u8(H, W, 4)
    _cv2_write(tmp_path / "a.png", src)
    photo = read_image(tmp_path / "a.png")
    brighter = np.sqrt(photo.pixels)  # stand-in for an enhancement; the model sees RGB only
    for name in ("b.png", "b.tif", "b.webp"):
        out = write_image(tmp_path / name, photo, brighter, quality=100)
        if name != "b.webp":
            assert np.array_equal(_to_uint(read_image(out).alpha, 8), src[..., 3])
        else:
            assert read_image(out).alpha is not None
    for name in ("b.jpg", "b.bmp"):  # documented: these formats drop alpha
        out = write_image(tmp_path / name, photo, brighter)
        assert read_image(out).alpha is None and Image.open(out).mode == "RGB"


def test_alpha_follows_an_upscaled_result(tmp_path: Path) -> None:
    _cv2_write(tmp_path / "a.png", _u8(H, W, 4))
    photo = read_image(tmp_path / "a.png")
    big = np.repeat(np.repeat(photo.pixels, 2, axis=0), 2, axis=1)
    again = read_image(write_image(tmp_path / "b.png", photo, big))
    assert again.pixels.shape == (2 * H, 2 * W, 3) and again.alpha.shape == (2 * H, 2 * W)


@pytest.mark.parametrize(("name", "bits"), [("g.png", 8), ("g16.png", 16), ("g.jpg", 8)])
def test_grayscale_written_back_as_luminance(tmp_path: Path, name: str, bits: int) -> None:
    src = _u16(H, W) if bits == 16 else _u8(H, W)
    if name.endswith(".jpg"):
        src = np.linspace(20, 220, H * W).reshape(H, W).astype(np.uint8)  # smooth: JPEG-friendly
        Image.fromarray(src).save(tmp_path / name, quality=95)
    else:
        _cv2_write(tmp_path / name, src)
    photo = read_image(tmp_path / name)
    assert photo.is_grayscale
    tinted = photo.pixels * np.array([1.0, 0.5, 0.25], np.float32)  # a result with colour
    out = write_image(tmp_path / f"out_{name}", photo, tinted)
    written = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert written.ndim == 2  # grayscale in, grayscale out
    luma = tinted @ np.array([0.299, 0.587, 0.114], np.float32)
    tolerance = 2 if name.endswith(".jpg") else 1  # JPEG is lossy
    assert np.abs(written.astype(np.int64) - _to_uint(luma, bits)).max() <= tolerance


def test_gray_with_alpha_png(tmp_path: Path) -> None:
    src = _u8(H, W, 2)
    Image.fromarray(src).save(tmp_path / "la.png")
    photo = read_image(tmp_path / "la.png")
    assert photo.mode == "LA"
    assert np.array_equal(_to_uint(photo.alpha, 8), src[..., 1])
    out = write_image(tmp_path / "o.png", photo, photo.pixels)
    written = Image.open(out)
    assert written.mode == "LA" and np.array_equal(np.asarray(written), src)


# ------------------------------------------------------------------------------------------
# stdin / stdout
# ------------------------------------------------------------------------------------------


class _FakeStream:
    def __init__(self, data: bytes = b"") -> None:
        self.buffer = io.BytesIO(data)


def test_stdin_and_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    src = _u8(H, W, 3)
    _, buf = cv2.imencode(".png", src[..., ::-1].copy())
    monkeypatch.setattr(sys, "stdin", _FakeStream(buf.tobytes()))
    photo = read_image("-")
    assert photo.source is None and np.array_equal(_to_uint(photo.pixels, 8), src)

    out = _FakeStream()
    monkeypatch.setattr(sys, "stdout", out)
    assert write_image("-", photo, photo.pixels) is None
    assert out.buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"  # default stdout format
    out.buffer = io.BytesIO()
    write_image("-", photo, photo.pixels, format="jpg")
    assert out.buffer.getvalue()[:2] == b"\xff\xd8"


def test_empty_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", _FakeStream(b""))
    with pytest.raises(ImageError, match="stdin"):
        read_image("-")


# ------------------------------------------------------------------------------------------
# Safe writing
# ------------------------------------------------------------------------------------------


@pytest.fixture
def png_photo(tmp_path: Path) -> Photo:
    _cv2_write(tmp_path / "in.png", _u8(H, W, 3))
    return read_image(tmp_path / "in.png")


def test_existing_output_needs_overwrite(tmp_path: Path, png_photo: Photo) -> None:
    dest = tmp_path / "out.png"
    dest.write_bytes(b"keep me")
    with pytest.raises(ImageError) as info:
        write_image(dest, png_photo, png_photo.pixels)
    assert "--overwrite" in info.value.hint and dest.read_bytes() == b"keep me"
    write_image(dest, png_photo, png_photo.pixels, overwrite=True)
    assert np.array_equal(read_image(dest).pixels, png_photo.pixels)


def test_input_is_never_overwritten(tmp_path: Path, png_photo: Photo, monkeypatch) -> None:
    before = (tmp_path / "in.png").read_bytes()
    monkeypatch.chdir(tmp_path)
    os.symlink(tmp_path / "in.png", tmp_path / "link.png")
    for dest in (
        tmp_path / "in.png",
        Path("in.png"),
        tmp_path / "sub" / ".." / "in.png",
        "link.png",
    ):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(ImageError, match="input file"):
            write_image(dest, png_photo, np.zeros_like(png_photo.pixels), overwrite=True)
    assert (tmp_path / "in.png").read_bytes() == before


def _leftovers(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_interrupt_during_write_leaves_nothing(tmp_path: Path, png_photo: Photo, monkeypatch):
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(image_io.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_image(out_dir / "a.png", png_photo, png_photo.pixels)
    assert _leftovers(out_dir) == set()


def test_disk_error_during_write_leaves_nothing(tmp_path: Path, png_photo: Photo, monkeypatch):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "a.png").write_bytes(b"old")

    def full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(image_io.os, "replace", full)
    with pytest.raises(ImageError, match=r"a\.png") as info:
        write_image(out_dir / "a.png", png_photo, png_photo.pixels, overwrite=True)
    assert info.value.hint == "free some disk space"
    assert _leftovers(out_dir) == {"a.png"} and (out_dir / "a.png").read_bytes() == b"old"


def test_missing_output_folder_is_created(tmp_path: Path, png_photo: Photo) -> None:
    out = write_image(tmp_path / "x" / "y" / "a.tiff", png_photo, png_photo.pixels)
    assert out.exists() and np.array_equal(read_image(out).pixels, png_photo.pixels)


def test_unknown_output_suffix(tmp_path: Path, png_photo: Photo) -> None:
    with pytest.raises(UsageError, match="format"):
        write_image(tmp_path / "a.gif", png_photo, png_photo.pixels)
    with pytest.raises(UsageError):
        write_image(tmp_path / "a.png", png_photo, png_photo.pixels, format="jxl")


# ------------------------------------------------------------------------------------------
# Bad input: every case is an ImageError (exit code 3) naming the file and the reason
# ------------------------------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)  # far too little data; must never be decoded
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _make_bad(tmp_path: Path, case: str) -> Path:
    if case == "zero-byte":
        path = tmp_path / "empty.jpg"
        path.write_bytes(b"")
    elif case == "truncated-jpeg":
        buf = io.BytesIO()
        Image.fromarray(_u8(64, 64, 3)).save(buf, "JPEG")
        path = tmp_path / "cut.jpg"
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif case == "text-as-jpeg":
        path = tmp_path / "notes.jpg"
        path.write_text("this is not a photo\n")
    elif case == "unsupported-format":
        path = tmp_path / "anim.gif"
        Image.fromarray(_u8(H, W, 3)).save(path)
    elif case == "bomb":
        path = tmp_path / "bomb.png"
        path.write_bytes(_png_header_only(50_000, 50_000))
    elif case == "just-over-limit":
        side = int(MAX_IMAGE_PIXELS**0.5) + 1  # Pillow alone would only warn here
        path = tmp_path / "big.png"
        path.write_bytes(_png_header_only(side, side))
    elif case == "directory":
        path = tmp_path / "folder.png"
        path.mkdir()
    elif case == "missing":
        path = tmp_path / "nowhere.png"
    else:  # pragma: no cover
        raise AssertionError(case)
    return path


BAD_CASES = [
    ("zero-byte", "empty"),
    ("truncated-jpeg", "truncated"),
    ("text-as-jpeg", "not a recognised image"),
    ("unsupported-format", "unsupported format GIF"),
    ("bomb", "larger than"),
    ("just-over-limit", "larger than"),
    ("directory", "folder"),
    ("missing", "no such file"),
]


@pytest.mark.parametrize(("case", "reason"), BAD_CASES)
def test_bad_input_raises_image_error(tmp_path: Path, case: str, reason: str) -> None:
    path = _make_bad(tmp_path, case)
    with pytest.raises(ImageError) as info:
        read_image(path)
    err = info.value
    assert path.name in err.message and reason in err.message
    assert "\n" not in err.message
    assert err.exit_code == ExitCode.IMAGE == 3


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.png"
    _cv2_write(path, _u8(H, W, 3))
    real = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self.name == "secret.png":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ImageError, match=r"secret\.png: permission denied") as info:
        read_image(path)
    assert info.value.exit_code == 3


def test_bomb_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded a bomb")

    monkeypatch.setattr(cv2, "imdecode", never)
    monkeypatch.setattr(Image.Image, "load", never)
    with pytest.raises(ImageError, match="larger than"):
        decode_image(_png_header_only(50_000, 50_000), label="bomb.png")


def test_corrupt_16bit_png(tmp_path: Path) -> None:
    _, buf = cv2.imencode(".png", _u16(32, 32, 3))
    path = tmp_path / "cut16.png"
    path.write_bytes(buf.tobytes()[:200])
    with pytest.raises(ImageError, match=r"cut16\.png"):
        read_image(path)


# ------------------------------------------------------------------------------------------
# Paths and formats
# ------------------------------------------------------------------------------------------


def test_output_path_for(tmp_path: Path) -> None:
    assert output_path_for(tmp_path / "a.JPEG") == tmp_path / "a_enhanced.jpeg"
    assert output_path_for("x/a.jpeg", "out") == Path("out/a_enhanced.jpeg")
    assert output_path_for("x/a.jpg", "out", "", "png") == Path("out/a.png")
    assert output_path_for("x/a.tiff", None, "_e", "tif") == Path("x/a_e.tiff")
    assert output_path_for("x/a.gif") == Path("x/a_enhanced.png")
    with pytest.raises(UsageError):
        output_path_for("-")
    assert set(FORMATS) == {"JPEG", "PNG", "TIFF", "WEBP", "BMP", "HEIF", "AVIF"}


@pytest.mark.shared
@pytest.mark.parametrize(
    "name", ["athameem_tulips_3024x4032.jpg", "exif-samples_42_IndexError_4032x3024.jpg"]
)
def test_real_phone_photo_keeps_its_metadata(name: str) -> None:
    # Real camera files: large EXIF (one known to break naive parsers), an ICC profile.
    path = shared_path("photos", name)
    photo = read_image(path)
    original = Image.open(path)
    upright = ImageOps.exif_transpose(original)
    assert (photo.width, photo.height) == upright.size
    data = image_io.encode_image(photo, photo.pixels, "jpg")
    written = Image.open(io.BytesIO(data))
    assert written.size == upright.size
    assert written.info.get("icc_profile") == original.info.get("icc_profile")
    assert written.getexif().get(0x0112) in (None, 1)
    original_tags = {k: v for k, v in original.getexif().items() if k != 0x0112}
    assert {k: v for k, v in written.getexif().items() if k != 0x0112} == original_tags
