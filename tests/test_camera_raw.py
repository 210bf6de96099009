"""Tests for lowlight_cli.camera_raw: a synthetic DNG through LibRaw, and RAW without rawpy.

The DNG is built here with tifffile: a Bayer (RGGB) mosaic of a scene whose linear values are
known, with the tags LibRaw needs. Its colour matrix makes the camera's native space linear
sRGB, so the expected output is the scene through the sRGB curve, exactly.
"""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from lowlight_cli import camera_raw
from lowlight_cli.constants import ExitCode
from lowlight_cli.errors import ImageError
from lowlight_cli.image_io import decode_image, read_image, write_image

# XYZ (D65) -> linear sRGB: as a DNG ColorMatrix it says "this camera sees linear sRGB".
XYZ_TO_SRGB = np.array(
    [[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]]
)
BLACK, WHITE = 256, 4095


def _srgb(linear: float) -> float:
    return 12.92 * linear if linear <= 0.0031308 else 1.055 * linear ** (1 / 2.4) - 0.055


def make_dng(
    *,
    height: int = 32,
    width: int = 48,
    level: float = 0.1,
    neutral: tuple[float, float, float] = (0.5, 1.0, 0.5),
    orientation: int = 1,
) -> bytes:
    """A DNG of a grey scene, its top half twice as bright as ``level`` (linear).

    The light is tinted: the sensor records grey as ``neutral`` (here greenish), and the file's
    AsShotNeutral says so. With the camera's white balance the result is grey again.
    """
    scene = np.full((height, width), level)
    scene[: height // 2] *= 2
    gain = np.empty((height, width))
    gain[0::2, 0::2], gain[0::2, 1::2] = neutral[0], neutral[1]  # R G
    gain[1::2, 0::2], gain[1::2, 1::2] = neutral[1], neutral[2]  # G B
    mosaic = np.rint(BLACK + scene * gain * (WHITE - BLACK)).astype(np.uint16)

    def srational(values: np.ndarray) -> list[int]:
        return [x for v in values.ravel() for x in (round(v * 10000), 10000)]

    tags = [
        (254, "I", 1, 0, True),  # NewSubfileType: the main image
        (271, "s", 0, "Lowlight", True),  # Make
        (272, "s", 0, "Synthetic One", True),  # Model
        (274, "H", 1, orientation, True),
        (306, "s", 0, "2024:05:06 07:08:09", True),  # DateTime
        (315, "s", 0, "A. Tester", True),  # Artist
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern: RGGB
        (33434, "2I", 1, (1, 50), True),  # ExposureTime (TIFF/EP allows it in IFD0)
        (33437, "2I", 1, (28, 10), True),  # FNumber
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50708, "s", 0, "Lowlight Synthetic One", True),  # UniqueCameraModel
        (50714, "H", 1, BLACK, True),  # BlackLevel
        (50717, "H", 1, WHITE, True),  # WhiteLevel
        (50721, "2i", 9, srational(XYZ_TO_SRGB), True),  # ColorMatrix1
        (50728, "2I", 3, [x for n in neutral for x in (round(n * 1000), 1000)], True),
        (50778, "H", 1, 21, True),  # CalibrationIlluminant1: D65
    ]
    buf = io.BytesIO()
    tifffile.imwrite(buf, mosaic, photometric=32803, extratags=tags, metadata=None, software=False)
    return buf.getvalue()


@pytest.fixture
def rawpy():
    return pytest.importorskip("rawpy", reason="camera RAW needs rawpy (the raw extra)")


def test_dng_decodes_with_camera_white_balance_and_no_brightening(rawpy) -> None:
    photo = decode_image(make_dng(level=0.1), label="scene.dng", raw=True)
    assert (photo.format, photo.bit_depth, photo.mode) == ("RAW", 16, "RGB")
    assert photo.pixels.shape == (32, 48, 3) and photo.pixels.dtype == np.float32
    bright, dark = photo.pixels[4:12, 8:40], photo.pixels[20:28, 8:40]
    # The camera's white balance turns the greenish capture grey again...
    assert np.abs(bright - bright.mean(axis=2, keepdims=True)).max() < 0.005
    # ...and nothing brightened it: the values are the scene through the sRGB curve.
    assert bright.mean() == pytest.approx(_srgb(0.2), abs=0.005)
    assert dark.mean() == pytest.approx(_srgb(0.1), abs=0.005)
    assert photo.icc_profile is not None and photo.icc_profile[16:20] == b"RGB "


def test_dng_orientation_is_applied_and_reset(rawpy) -> None:
    photo = decode_image(make_dng(orientation=6), label="turned.dng", raw=True)
    assert photo.pixels.shape == (48, 32, 3)  # 90 degrees clockwise: the top is now right
    assert photo.pixels[:, 20:].mean() > photo.pixels[:, :12].mean() + 0.1
    exif = Image.Exif()
    exif.load(photo.exif)
    assert exif[0x0112] == 1


def test_dng_metadata_reaches_the_output(rawpy, tmp_path: Path) -> None:
    path = tmp_path / "IMG_0042.DNG"
    path.write_bytes(make_dng())
    photo = read_image(path)
    assert photo.source == path.resolve()
    names = ["o.png", "o.jpg"]
    if importlib.util.find_spec("pillow_heif") is not None:
        names.append("o.heic")
    for name in names:
        out = write_image(tmp_path / name, photo, photo.pixels)
        written = Image.open(out)
        exif = written.getexif()
        # From the file's own tags...
        assert exif.get(271) == "Lowlight" and exif.get(272) == "Synthetic One"
        assert exif.get(306) == "2024:05:06 07:08:09" and exif.get(315) == "A. Tester"
        assert exif.get(0x0112) in (None, 1)
        # ...and from what LibRaw parsed (exposure, aperture, capture time).
        sub = exif.get_ifd(0x8769)
        assert float(sub[0x829A]) == pytest.approx(1 / 50)
        assert float(sub[0x829D]) == pytest.approx(2.8)
        assert sub[0x9003] == "2024:05:06 07:08:09"
        assert written.info.get("icc_profile") == photo.icc_profile


def test_dng_from_stdin_is_recognised_by_content(rawpy) -> None:
    data = make_dng()
    assert camera_raw.looks_like_raw(data)
    assert decode_image(data, label="<stdin>").format == "RAW"


def test_plain_tiff_is_not_raw(tmp_path: Path) -> None:
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((4, 6, 3), np.uint8), photometric="rgb")
    assert not camera_raw.looks_like_raw(buf.getvalue())
    assert not camera_raw.looks_like_raw(b"\xff\xd8\xff\xe0 a jpeg")
    assert camera_raw.is_raw_name("x/IMG_1.CR2") and camera_raw.is_raw_name("a.nef")
    assert not camera_raw.is_raw_name("a.tif")


def test_raw_without_rawpy_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "rawpy", None)  # makes `import rawpy` fail
    path = tmp_path / "IMG_5195.DNG"
    path.write_bytes(make_dng())
    with pytest.raises(ImageError) as info:
        read_image(path)
    err = info.value
    assert "IMG_5195.DNG" in err.message and "lowlight[raw]" in err.message
    assert "not a recognised" not in err.message
    assert err.hint is None and "\n" not in err.message  # one line, all of it
    assert err.exit_code == ExitCode.IMAGE == 3


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.dng", b"", "empty"),
        ("notes.nef", b"this is not a photo\n" * 20, "not a camera RAW file"),
        ("cut.dng", None, "corrupt or truncated"),
    ],
)
def test_bad_raw_files(rawpy, tmp_path: Path, name: str, content: bytes | None, reason: str):
    path = tmp_path / name
    path.write_bytes(make_dng(height=64, width=64)[:600] if content is None else content)
    with pytest.raises(ImageError) as info:
        read_image(path)
    err = info.value
    assert name in err.message and reason in err.message, err.message
    assert "\n" not in err.message and err.exit_code == 3


def test_raw_bomb_is_refused_before_demosaicing(rawpy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(camera_raw, "MAX_IMAGE_PIXELS", 32 * 48 - 1)

    class NeverDemosaic(rawpy.RawPy):
        def postprocess(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("demosaiced a bomb")

    monkeypatch.setattr(rawpy, "RawPy", NeverDemosaic)
    with pytest.raises(ImageError, match="larger than"):
        decode_image(make_dng(), label="big.dng", raw=True)
