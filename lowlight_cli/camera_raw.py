"""Camera RAW reading through rawpy (LibRaw), the optional ``raw`` extra.

A RAW file is demosaiced into 16-bit sRGB pixels (image_io makes them a ``Photo``) with the
camera's own white balance and no brightening of any kind: making a dark picture bright is the
model's job, and an automatic stretch first would leave it nothing to do, or clip highlights
before it starts. ``docs/image-io.md`` lists the LibRaw settings and the reasons for each.

RAW is read, never written: the result goes to a 16-bit PNG by default (or any other output
format), with an sRGB ICC profile and the camera metadata that the file or LibRaw gives.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowlight_cli.constants import MAX_IMAGE_PIXELS
from lowlight_cli.errors import ImageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

# Only the standard library at import time: `lowlight batch` reads RAW_EXTENSIONS, and
# `lowlight --help` must stay fast (numpy and Pillow are imported where they are used).

# File suffixes (lower case) of camera RAW formats LibRaw reads: Adobe DNG and the makers' own.
RAW_EXTENSIONS = frozenset(
    {
        ".dng",  # Adobe, and many phones' "RAW"/ProRAW
        ".cr2",  # Canon
        ".cr3",
        ".crw",
        ".nef",  # Nikon
        ".nrw",
        ".arw",  # Sony
        ".srf",
        ".sr2",
        ".raf",  # Fujifilm
        ".orf",  # Olympus / OM System
        ".rw2",  # Panasonic
        ".rwl",  # Leica
        ".pef",  # Pentax
        ".srw",  # Samsung
        ".x3f",  # Sigma
        ".3fr",  # Hasselblad
        ".fff",
        ".iiq",  # Phase One
        ".erf",  # Epson
        ".kdc",  # Kodak
        ".dcr",
        ".mos",  # Leaf
        ".mef",  # Mamiya
        ".mrw",  # Minolta
    }
)

INSTALL_HINT = "pip install 'lowlight[raw]'"

_TIFF_HEADERS = (b"II*\x00", b"MM\x00*")
_NEW_SUBFILE_TYPE = 254
_PHOTOMETRIC = 262
_CFA, _LINEAR_RAW = 32803, 34892  # PhotometricInterpretation values only RAW data uses
_DNG_VERSION = 50706
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_ORIENTATION = 0x0112
_MAKER_NOTE = 0x927C
# IFD0 tags carried to the output: description, make, model, software, date, artist, copyright.
_DESCRIPTIVE_TAGS = (270, 271, 272, 305, 306, 315, 33432)
_DATETIME_FORMAT = "%Y:%m:%d %H:%M:%S"


def is_raw_name(path: str | Path) -> bool:
    """True when the file name has a camera RAW suffix (any case)."""
    return Path(path).suffix.lower() in RAW_EXTENSIONS


def looks_like_raw(data: bytes) -> bool:
    """True for RAW data without a telling name (stdin): a DNG, a CR2, or a TIFF-based RAW.

    Such files are TIFFs whose first directory is RAW data, or only a small preview of it
    (NEF, ARW, PEF...); read as a plain TIFF they would give the preview, not the photo.
    """
    if data[:4] not in _TIFF_HEADERS:
        return False
    if data[8:10] == b"CR":  # Canon CR2 marks its TIFF header
        return True
    ifd0 = _tiff_ifd0(data)
    if ifd0 is None:
        return False
    subfile = ifd0.get(_NEW_SUBFILE_TYPE, 0)
    return (
        _DNG_VERSION in ifd0
        or ifd0.get(_PHOTOMETRIC) in (_CFA, _LINEAR_RAW)
        or (isinstance(subfile, int) and bool(subfile & 1))  # the first image is a preview
    )


@dataclass(frozen=True)
class DecodedRaw:
    """A demosaiced RAW file: what :mod:`lowlight_cli.image_io` turns into a ``Photo``.

    Attributes:
        pixels: ``(H, W, 3)`` float32 sRGB in [0, 1], upright (16 bits of precision).
        icc_profile: the sRGB profile the pixels are in.
        exif: EXIF that the file and LibRaw give (orientation 1), or None.
    """

    pixels: np.ndarray
    icc_profile: bytes
    exif: bytes | None


def decode_raw(data: bytes, *, label: str) -> DecodedRaw:
    """Demosaic a camera RAW file into a 16-bit sRGB photo.

    Args:
        data: the whole RAW file.
        label: how to name the file in error messages.

    Returns:
        The pixels, an sRGB ICC profile and the EXIF (see :class:`DecodedRaw`); image_io makes
        it a 16-bit ``Photo`` of format ``RAW``.

    Raises:
        ImageError: rawpy is not installed, the file is not a RAW file LibRaw knows, it is
            corrupt or truncated, or larger than ``constants.MAX_IMAGE_PIXELS``.
    """
    import numpy as np

    try:
        import rawpy
    except ImportError as exc:
        raise ImageError(
            f"cannot read {label}: camera RAW needs the optional rawpy package; "
            f"install it with: {INSTALL_HINT}"
        ) from exc
    try:
        with rawpy.RawPy() as raw:
            raw.open_buffer(io.BytesIO(data))
            sizes = raw.sizes
            check_size(int(sizes.width), int(sizes.height), label)
            rgb = raw.postprocess(
                use_camera_wb=True,  # the white balance the photographer saw
                use_auto_wb=False,
                no_auto_bright=True,  # brightening is the model's job
                bright=1.0,
                exp_shift=None,
                highlight_mode=rawpy.HighlightMode.Clip,  # no pink, reconstructed highlights
                output_color=rawpy.ColorSpace.sRGB,
                gamma=(2.4, 12.92),  # the sRGB curve, to match the sRGB profile we attach
                output_bps=16,
                user_flip=None,  # turn it upright as the camera recorded
                half_size=False,
                median_filter_passes=0,
            )
            exif = _carried_exif(data, raw)
    except rawpy.LibRawFileUnsupportedError as exc:
        raise ImageError(
            f"cannot read {label}: not a camera RAW file LibRaw recognises",
            hint="check that it is a RAW file, or convert it to DNG",
        ) from exc
    except rawpy.LibRawTooBigError as exc:
        raise ImageError(
            f"cannot read {label}: image is larger than LibRaw's limits",
            hint="this limit guards against decompression bombs",
        ) from exc
    except (rawpy.LibRawError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageError(f"cannot read {label}: corrupt or truncated ({reason})") from exc
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint16:
        raise ImageError(f"cannot read {label}: LibRaw gave {rgb.dtype} pixels of {rgb.shape}")
    pixels = rgb.astype(np.float32)
    pixels *= np.float32(1.0 / 65535.0)
    return DecodedRaw(pixels=pixels, icc_profile=_srgb_profile(), exif=exif)


def check_size(width: int, height: int, label: str) -> None:
    """Refuse an empty image or one over ``MAX_IMAGE_PIXELS`` (a decompression bomb) by header.

    Raises:
        ImageError: naming ``label`` and the size.
    """
    if width <= 0 or height <= 0:
        raise ImageError(f"cannot read {label}: invalid size {width}x{height}")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"cannot read {label}: {width}x{height} is larger than {MAX_IMAGE_PIXELS} pixels",
            hint="this limit guards against decompression bombs; downscale the image first",
        )


def _tiff_ifd0(data: bytes) -> Image.Exif | None:
    """The first directory of a TIFF-structured file (Pillow reads only the directory)."""
    from PIL import Image

    ifd0 = Image.Exif()
    try:
        ifd0.load(data)
    except (SyntaxError, ValueError, OSError, EOFError, KeyError, TypeError, IndexError):
        return None
    return ifd0


def _carried_exif(data: bytes, raw: Any) -> bytes | None:
    """EXIF for the output: the file's own tags where it is TIFF-based, completed by LibRaw's.

    MakerNotes stay behind: their offsets point into the RAW file, so in a new file they would
    be garbage, and they are often larger than a JPEG's EXIF segment allows.
    """
    from PIL import Image

    exif = Image.Exif()
    sub: dict[int, object] = {}
    gps: dict[int, object] = {}
    source = _tiff_ifd0(data) if data[:4] in _TIFF_HEADERS else None
    if source is not None:
        for tag in _DESCRIPTIVE_TAGS:
            if tag in source:
                exif[tag] = source[tag]
        try:
            sub = {k: v for k, v in source.get_ifd(_EXIF_IFD).items() if k != _MAKER_NOTE}
            gps = dict(source.get_ifd(_GPS_IFD))
        except (SyntaxError, ValueError, OSError, EOFError, KeyError, TypeError, IndexError):
            sub, gps = {}, {}
    _add_libraw_tags(exif, sub, raw)
    if sub:
        exif[_EXIF_IFD] = sub
    if gps:
        exif[_GPS_IFD] = gps
    if not len(exif):
        return None
    exif[_ORIENTATION] = 1  # LibRaw turned the pixels upright
    try:
        return exif.tobytes()
    except (ValueError, TypeError, OverflowError, KeyError):
        return None  # a tag Pillow cannot write back is not worth failing the photo over


def _add_libraw_tags(exif: Image.Exif, sub: dict[int, object], raw: Any) -> None:
    """Fill what the file's own EXIF lacks with what LibRaw parsed (any RAW format)."""
    other = getattr(raw, "other", None)  # rawpy 0.22 and newer
    lens = getattr(raw, "lens", None)
    if other is not None:
        if other.artist and 315 not in exif:
            exif[315] = str(other.artist)
        stamp = other.timestamp
        if stamp is not None and hasattr(stamp, "strftime"):
            sub.setdefault(0x9003, stamp.strftime(_DATETIME_FORMAT))  # DateTimeOriginal
            if 306 not in exif:
                exif[306] = stamp.strftime(_DATETIME_FORMAT)
        if other.shutter_speed and other.shutter_speed > 0:
            sub.setdefault(0x829A, _rational(other.shutter_speed))  # ExposureTime
        if other.aperture and other.aperture > 0:
            sub.setdefault(0x829D, _rational(other.aperture))  # FNumber
        if other.iso_speed and other.iso_speed > 0:
            sub.setdefault(0x8827, round(other.iso_speed))  # ISOSpeedRatings
        if other.focal_length and other.focal_length > 0:
            sub.setdefault(0x920A, _rational(other.focal_length))  # FocalLength
    if lens is not None:
        if getattr(lens, "make", ""):
            sub.setdefault(0xA433, str(lens.make))  # LensMake
        if getattr(lens, "model", ""):
            sub.setdefault(0xA434, str(lens.model))  # LensModel


def _rational(value: float) -> Any:
    from PIL.TiffImagePlugin import IFDRational

    fraction = Fraction(float(value)).limit_denominator(100000)
    return IFDRational(fraction.numerator, fraction.denominator)


def _srgb_profile() -> bytes | None:
    """An sRGB ICC profile (LittleCMS's), so colour-managed viewers read the pixels right."""
    try:
        from PIL import ImageCms

        return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    except (ImportError, OSError):
        return None
