"""Photo-grade image reading and writing.

``read_image`` turns a file (or stdin) into a :class:`Photo`: float32 RGB pixels in [0, 1] with
the EXIF orientation applied, plus everything needed to write the result back faithfully (alpha,
bit depth, ICC profile, EXIF, the original mode). ``write_image`` encodes new pixels with that
metadata and commits the file atomically.

Choices worth knowing (see ``docs/image-io.md``):

* Bit depth comes from the file's header/dtype, never from pixel values.
* 16-bit PNG and TIFF pixels go through OpenCV, because Pillow cannot hold 16-bit RGB.
* HEIC/HEIF goes through pillow-heif (libheif), AVIF through Pillow's own plugin (libavif);
  10/12-bit pictures of either take the 16-bit path. Camera RAW goes through ``camera_raw``
  (rawpy, an optional extra).
* Grayscale photos are enhanced as RGB and written back as grayscale (BT.601 luminance).
* Alpha is carried through untouched; JPEG and BMP outputs drop it.
* The EXIF orientation is applied on read and reset to 1 in the carried EXIF.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import struct
import sys
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lowlight_cli.camera_raw import check_size as _check_size  # one rule for every decoder
from lowlight_cli.constants import DEFAULT_JPEG_QUALITY, DEFAULT_STDOUT_FORMAT, MAX_IMAGE_PIXELS
from lowlight_cli.errors import ImageError, UsageError
from lowlight_cli.files import fsync_dir, new_file_mode

# Pillow's own bomb guard uses the program's limit: it warns above it (escalated to an error
# below) and raises above twice it. One limit, one message.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

_EXIF_PREFIX = b"Exif\x00\x00"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ORIENTATION_TAG = 0x0112
_TIFF_ICC_TAG = 34675
_TIFF_BITS_TAG = 258
_TIFF_EXIF_IFD = 0x8769
_TIFF_GPS_IFD = 0x8825
# IFD0 tags worth carrying from a TIFF input into the output's EXIF (descriptive ones only; the
# layout tags like StripOffsets describe the old file and would be wrong in a new one).
_TIFF_DESCRIPTIVE_TAGS = (270, 271, 272, 305, 306, 315, 33432)
# PNG chunks that describe colour in ways an embedded ICC profile supersedes.
_PNG_COLOUR_CHUNKS = (b"iCCP", b"sRGB", b"gAMA", b"cHRM")
_MAX_JPEG_EXIF = 65533  # one APP1 segment
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"})
_BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # same weights as Pillow's "L"
# Rows encoded at a time: 256 rows of a 6000 px wide photo are 18 MB of float32.
ENCODE_ROWS = 256


@dataclass(frozen=True)
class ImageFormat:
    """What one output format can carry.

    Attributes:
        name: canonical (Pillow-style) name, e.g. ``"JPEG"``.
        extensions: file suffixes, preferred first.
        bit_depths: bits per channel it can store.
        alpha: stores an alpha channel.
        icc: stores an ICC profile.
        exif: stores EXIF.
    """

    name: str
    extensions: tuple[str, ...]
    bit_depths: tuple[int, ...]
    alpha: bool
    icc: bool
    exif: bool


FORMATS: dict[str, ImageFormat] = {
    "JPEG": ImageFormat("JPEG", (".jpg", ".jpeg"), (8,), alpha=False, icc=True, exif=True),
    "PNG": ImageFormat("PNG", (".png",), (8, 16), alpha=True, icc=True, exif=True),
    "TIFF": ImageFormat("TIFF", (".tif", ".tiff"), (8, 16), alpha=True, icc=True, exif=False),
    "WEBP": ImageFormat("WEBP", (".webp",), (8,), alpha=True, icc=True, exif=True),
    "BMP": ImageFormat("BMP", (".bmp",), (8,), alpha=False, icc=False, exif=False),
    # 16-bit pixels are stored as 10-bit HEVC (12-bit when the input had 12 bits): HEVC has no
    # 16-bit profile, and 10-bit (Main 10) is what phones and viewers decode.
    "HEIF": ImageFormat(
        "HEIF", (".heic", ".heif", ".hif"), (8, 16), alpha=True, icc=True, exif=True
    ),
    "AVIF": ImageFormat("AVIF", (".avif",), (8,), alpha=True, icc=True, exif=True),
}

# Pillow format names we accept on read -> our format name. MPO is how Pillow names the
# multi-picture JPEGs many phones write.
_READ_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "TIFF": "TIFF", "WEBP": "WEBP"}
_READ_FORMATS.update(BMP="BMP", HEIF="HEIF", AVIF="AVIF")
_FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF", "HEIC": "HEIF", "HIF": "HEIF"}
# ISOBMFF major brands of HEIF (HEVC) and AVIF files: a file with one of these that no decoder
# accepts is a damaged HEIC/AVIF, not "some other format".
_ISOBMFF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"}
)
# Bits of 10/12-bit HEIC written from 16-bit pixels when the input does not say otherwise.
_HEIF_HIGH_BITS = 10


@dataclass
class Photo:
    """A decoded photo plus what is needed to write a result back faithfully.

    Attributes:
        pixels: ``(H, W, 3)`` float32 RGB in [0, 1], EXIF orientation applied (grayscale
            inputs are replicated to three channels).
        alpha: ``(H, W)`` float32 in [0, 1], or None.
        bit_depth: bits per channel of the processing path (8 or 16), from the file's header,
            not its values; 10/12-bit HEIF/AVIF and camera RAW take the 16-bit path.
        icc_profile: embedded ICC profile bytes, or None.
        exif: EXIF bytes (``Exif\\0\\0`` + TIFF structure) with orientation reset to 1, or None.
        format: canonical format name (``"JPEG"``, ``"PNG"``, ``"TIFF"``, ``"WEBP"``, ``"BMP"``,
            ``"HEIF"``, ``"AVIF"``, or ``"RAW"`` for camera RAW, which is read but not written).
        mode: the file's Pillow-like mode (``"L"``, ``"LA"``, ``"RGB"``, ``"RGBA"``, ``"I;16"``,
            ``"P"``...); 16-bit colour files report ``"RGB"``/``"RGBA"`` with ``bit_depth=16``.
        source: the file it came from (resolved), or None for stdin.
        source_bits: bits per channel the file stores (8, 10, 12 or 16; 16 for camera RAW);
            a 12-bit HEIC stays 12-bit when written back as HEIC.
    """

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    bit_depth: int = 8
    icc_profile: bytes | None = None
    exif: bytes | None = None
    format: str = "PNG"
    mode: str = "RGB"
    source: Path | None = None
    source_bits: int = 8

    @property
    def height(self) -> int:
        """Height in pixels (after orientation)."""
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        """Width in pixels (after orientation)."""
        return int(self.pixels.shape[1])

    @property
    def is_grayscale(self) -> bool:
        """True when the file was grayscale; the result is written back as grayscale."""
        return self.mode in _GRAY_MODES


# --------------------------------------------------------------------------------------------
# Formats and paths
# --------------------------------------------------------------------------------------------


def normalize_format(name: str) -> str:
    """Canonical output format name for ``jpg``, ``.JPEG``, ``tif``, ``png``...

    Raises:
        UsageError: the format is not one we write.
    """
    key = name.strip().lstrip(".").upper()
    key = _FORMAT_ALIASES.get(key, key)
    if key not in FORMATS:
        raise UsageError(
            f"unsupported output format {name!r}",
            hint="use one of: " + ", ".join(ext for f in FORMATS.values() for ext in f.extensions),
        )
    return key


def format_for_path(path: str | Path) -> str | None:
    """Output format implied by a file name's suffix, or None when the suffix is not known."""
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if suffix in fmt.extensions:
            return fmt.name
    return None


def output_path_for(
    source: str | Path,
    out_dir: str | Path | None = None,
    suffix: str = "_enhanced",
    fmt: str | None = None,
) -> Path:
    """Where the result for ``source`` goes: ``<out_dir>/<stem><suffix><ext>``.

    Args:
        source: input file path.
        out_dir: output folder (None: beside the input).
        suffix: appended to the stem; may be empty when ``out_dir`` differs from the input's.
        fmt: output format (None: keep the input's format when writable, else PNG).

    Raises:
        UsageError: ``source`` is stdin, or ``fmt`` is unknown.
    """
    if str(source) == "-":
        raise UsageError("cannot derive an output name for stdin", hint="pass --output")
    src = Path(source)
    folder = Path(out_dir) if out_dir is not None else src.parent
    input_ext = src.suffix.lower()
    name = (format_for_path(src) or "PNG") if fmt is None else normalize_format(fmt)
    # Keep the user's own spelling (.jpeg, .tiff) when the format is unchanged.
    ext = input_ext if input_ext in FORMATS[name].extensions else FORMATS[name].extensions[0]
    return folder / f"{src.stem}{suffix}{ext}"


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_image(source: str | Path) -> Photo:
    """Read a photo from a file, or from stdin when ``source`` is ``"-"``.

    Args:
        source: path to a JPEG, PNG (8/16-bit), TIFF (8/16-bit), WebP, BMP, HEIC/HEIF or AVIF
            (8/10/12-bit) file, a camera RAW file (needs the ``raw`` extra), or ``"-"``.

    Returns:
        The :class:`Photo`; pixels ``(H, W, 3)`` float32 RGB in [0, 1], orientation applied.

    Raises:
        ImageError: missing, unreadable, empty, truncated, not an image, unsupported format, a
            RAW file without rawpy installed, or larger than ``constants.MAX_IMAGE_PIXELS``
            (checked from the header, before decoding).
    """
    from lowlight_cli.camera_raw import is_raw_name

    raw: bool | None = None  # stdin: tell from the content
    if str(source) == "-":
        label, path = "<stdin>", None
        try:
            data = sys.stdin.buffer.read()
        except OSError as exc:
            raise ImageError(f"cannot read {label}: {_reason(exc)}") from exc
    else:
        path = Path(source).expanduser()
        label = str(source)
        raw = True if is_raw_name(path) else None
        data = _read_file_bytes(path, label)
    if not data:
        raise ImageError(f"cannot read {label}: it is empty (0 bytes)")
    photo = decode_image(data, label=label, raw=raw)
    photo.source = path.resolve() if path is not None else None
    return photo


def _read_file_bytes(path: Path, label: str) -> bytes:
    try:
        if path.is_dir():
            raise ImageError(f"cannot read {label}: it is a folder, not an image file")
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ImageError(f"cannot read {label}: no such file", hint="check the path") from exc
    except PermissionError as exc:
        raise ImageError(
            f"cannot read {label}: permission denied", hint="check the file's permissions"
        ) from exc
    except IsADirectoryError as exc:
        raise ImageError(f"cannot read {label}: it is a folder, not an image file") from exc
    except OSError as exc:
        raise ImageError(f"cannot read {label}: {_reason(exc)}") from exc


def decode_image(data: bytes, *, label: str = "<bytes>", raw: bool | None = None) -> Photo:
    """Decode encoded image bytes into a :class:`Photo` (``source`` left as None).

    Args:
        data: the whole encoded file.
        label: how to name the image in error messages.
        raw: True to decode as camera RAW (the file name says so), False never to, None to
            decide from the content (DNG and TIFF-based RAW files are recognised).

    Raises:
        ImageError: as :func:`read_image`.
    """
    from lowlight_cli import camera_raw

    if raw or (raw is None and camera_raw.looks_like_raw(data)):
        decoded = camera_raw.decode_raw(data, label=label)
        return Photo(
            pixels=decoded.pixels,
            bit_depth=16,
            icc_profile=decoded.icc_profile,
            exif=decoded.exif,
            format="RAW",
            mode="RGB",
            source_bits=16,
        )
    supported = ", ".join([*sorted(set(_READ_FORMATS.values())), "camera RAW"])
    _register_heif()
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit; a warning would let a bomb through.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                pil_format = im.format or ""
                if pil_format not in _READ_FORMATS:
                    raise ImageError(
                        f"cannot read {label}: unsupported format {pil_format or 'unknown'}",
                        hint=f"supported: {supported}",
                    )
                width, height = im.size
                _check_size(width, height, label)
                fmt = _READ_FORMATS[pil_format]
                source_bits = _header_bit_depth(data, im, fmt, label)
                bit_depth = 8 if source_bits == 8 else 16
                orientation = _orientation(im)
                icc = im.info.get("icc_profile") or None
                exif = _carried_exif(im, fmt)
                mode = im.mode
                if bit_depth == 16:
                    rgb, alpha, mode, upright = _decode_16bit(
                        data, im, fmt, orientation, source_bits
                    )
                    if upright:
                        orientation = 1
                else:
                    rgb, alpha = _decode_8bit(im, label)
                    if fmt == "TIFF" and _ORIENTATION_TAG not in im.tag_v2:
                        # Newer Pillow turns TIFFs upright while loading and then drops the
                        # tag; never rotate twice.
                        orientation = 1
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"cannot read {label}: image is larger than {MAX_IMAGE_PIXELS} pixels",
            hint="this limit guards against decompression bombs; downscale the image first",
        ) from exc
    except UnidentifiedImageError as exc:
        if data[4:8] == b"ftyp" and data[8:12] in _ISOBMFF_BRANDS:
            _explain_unreadable_heif(data, label)
        raise ImageError(
            f"cannot read {label}: not a recognised image file", hint=f"supported: {supported}"
        ) from exc
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        RuntimeError,  # libheif's decode errors
        struct.error,
        zlib.error,
    ) as exc:
        # Pillow reports truncated and corrupt data through all of these.
        raise ImageError(f"cannot read {label}: corrupt or truncated ({_reason(exc)})") from exc

    rgb = _apply_orientation(rgb, orientation)
    if alpha is not None:
        alpha = _apply_orientation(alpha, orientation)
    if icc is not None and _icc_space(icc) not in (b"RGB ", b"GRAY"):
        # e.g. a CMYK profile from a CMYK JPEG: the pixels are now RGB, so it no longer applies.
        icc = None
    return Photo(
        pixels=np.ascontiguousarray(rgb),
        alpha=None if alpha is None else np.ascontiguousarray(alpha),
        bit_depth=bit_depth,
        icc_profile=icc,
        exif=exif,
        format=fmt,
        mode=mode,
        source_bits=source_bits,
    )


@functools.cache
def _register_heif() -> bool:
    """Teach Pillow to open HEIC/HEIF through pillow-heif; False when it is not installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    # Only the primary picture is wanted: no thumbnails, depth maps or auxiliary images.
    pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
    return True


def _heif_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, bits) from a HEIF/AVIF container's header, without decoding pixels.

    libheif parses AVIF containers too, even where it has no AV1 decoder. None when
    pillow-heif is missing or cannot parse the header.
    """
    if not _register_heif():
        return None
    import pillow_heif

    try:
        heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=False)
        width, height = heif.size
        return int(width), int(height), int(heif.info.get("bit_depth", 8))
    except (OSError, ValueError, SyntaxError, RuntimeError, EOFError, KeyError, IndexError):
        return None


def _explain_unreadable_heif(data: bytes, label: str) -> None:
    """Raise the real reason a file with a HEIF/AVIF signature could not be opened."""
    is_avif = bool({b"avif", b"avis"} & _ftyp_brands(data))
    header = _heif_header(data)
    if header is not None:
        _check_size(header[0], header[1], label)  # libavif refuses huge sizes at parse time
    if is_avif and not _pillow_has_avif():
        raise ImageError(
            f"cannot read {label}: this Pillow was built without AVIF support",
            hint="install Pillow 11.3 or newer from its wheels: pip install -U pillow",
        )
    if not is_avif and not _register_heif():
        raise ImageError(
            f"cannot read {label}: HEIC/HEIF support needs pillow-heif",
            hint="pip install pillow-heif",
        )
    kind = "AVIF" if is_avif else "HEIF"
    raise ImageError(f"cannot read {label}: corrupt or truncated {kind} file")


def _ftyp_brands(data: bytes) -> set[bytes]:
    """Major and compatible brands of an ISOBMFF file's leading ``ftyp`` box."""
    (size,) = struct.unpack_from(">I", data, 0)
    end = min(max(size, 16), len(data), 256)
    return {data[8:12]} | {data[i : i + 4] for i in range(16, end - 3, 4)}


@functools.cache
def _pillow_has_avif() -> bool:
    from PIL import features

    return bool(features.check("avif"))


def _header_bit_depth(data: bytes, im: Image.Image, fmt: str, label: str) -> int:
    """Bits per channel as the file declares it (PNG IHDR, TIFF BitsPerSample, HEIF/AVIF).

    Returns 8, 16, or 10/12 for HEIF and AVIF; an AVIF above 8 bits counts as 8 where OpenCV
    cannot decode AVIF (Pillow then reads it at 8 bits).
    """
    if fmt == "PNG" and data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR":
        return 16 if data[24] == 16 else 8
    if fmt == "HEIF":
        return max(8, int(im.info.get("bit_depth") or 8))
    if fmt == "AVIF":
        header = _heif_header(data)
        bits = header[2] if header is not None else 8
        return bits if bits > 8 and _cv2_reads_avif() else 8
    if fmt == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(_TIFF_BITS_TAG, 8)
        bits = max(bits) if isinstance(bits, tuple) else int(bits)
        if bits == 16:
            return 16
        if bits > 16:
            raise ImageError(
                f"cannot read {label}: {bits}-bit TIFF samples are not supported",
                hint="save it as 8- or 16-bit integer TIFF",
            )
    return 8


def _decode_8bit(im: Image.Image, label: str) -> tuple[np.ndarray, np.ndarray | None]:
    mode = im.mode
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        mode in ("P", "L", "RGB") and "transparency" in im.info
    )
    if mode in ("I", "F", "I;16", "I;16L", "I;16B", "I;16N"):
        raise ImageError(
            f"cannot read {label}: unsupported pixel mode {mode}",
            hint="save it as 8- or 16-bit integer RGB or grayscale",
        )
    if mode in _GRAY_MODES:
        gray = np.asarray(im.convert("LA" if has_alpha else "L"))
        luma = gray[..., 0] if has_alpha else gray
        rgb = np.repeat(luma[..., None], 3, axis=2)
        alpha = gray[..., 1] if has_alpha else None
    else:
        arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
        rgb = arr[..., :3]
        alpha = arr[..., 3] if has_alpha else None
    scale = np.float32(1.0 / 255.0)
    return (
        _scaled_float(rgb, scale),
        None if alpha is None else _scaled_float(alpha, scale),
    )


def _scaled_float(values: np.ndarray, scale: np.float32) -> np.ndarray:
    """``values * scale`` as float32, scaled in place: one full-size float buffer, not two."""
    out = values.astype(np.float32)
    out *= scale
    return out


def _decode_16bit(
    data: bytes, im: Image.Image, fmt: str, orientation: int, bits: int = 16
) -> tuple[np.ndarray, np.ndarray | None, str, bool]:
    """16-bit PNG/TIFF pixels through OpenCV, which keeps the uint16 dtype; 10/12-bit HEIF
    through pillow-heif and 10/12-bit AVIF through OpenCV, both as integers up to 2**bits - 1.

    Returns:
        RGB and alpha as float32 [0, 1], the Pillow-like mode, and whether the decoder already
        applied the EXIF orientation.
    """
    import cv2

    upright = False
    if fmt == "HEIF":
        arr, upright = _decode_heif_high_bits(data), True
    else:
        arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is not None and fmt == "AVIF":
        upright = _cv2_orients_avif()
    if arr is not None and fmt == "TIFF":
        upright = _cv2_orients_tiff()
    elif arr is None and fmt == "TIFF":
        import tifffile

        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            arr = tif.pages[0].asarray()
        # tifffile returns RGB order; match OpenCV's BGR so one code path follows.
        if arr.ndim == 3 and arr.shape[2] in (3, 4):
            arr = arr[..., [2, 1, 0, *range(3, arr.shape[2])]]
    if arr is None or arr.size == 0:
        raise ValueError("the 16-bit decoder could not read the pixel data")
    if arr.dtype != np.uint16:
        raise ValueError(f"unsupported 16-bit sample type {arr.dtype}")
    # Pillow may report a TIFF's size after orientation; the header holds the stored size.
    tags = getattr(im, "tag_v2", {})
    height, width = (tags.get(257), tags.get(256)) if fmt == "TIFF" else im.size[::-1]
    if upright and orientation >= 5 and fmt != "HEIF":  # HEIF sizes are the upright ones
        height, width = width, height
    if arr.shape[:2] != (height, width):
        raise ValueError("decoded size does not match the header")
    scale = np.float32(1.0 / (2**bits - 1))
    gray_file = im.mode in _GRAY_MODES
    alpha = None
    if arr.ndim == 2:
        rgb = np.repeat(arr[..., None], 3, axis=2)
    elif arr.shape[2] == 2:
        rgb, alpha = np.repeat(arr[..., :1], 3, axis=2), arr[..., 1]
    elif arr.shape[2] >= 3:
        rgb = arr[..., 2::-1]
        alpha = arr[..., 3] if arr.shape[2] >= 4 else None
    else:
        raise ValueError(f"unsupported channel count {arr.shape[2]}")
    if gray_file:
        mode = "LA" if alpha is not None else "I;16"
    else:
        mode = "RGBA" if alpha is not None else "RGB"
    return (
        _scaled_float(rgb, scale),
        None if alpha is None else _scaled_float(alpha, scale),
        mode,
        upright,
    )


def _decode_heif_high_bits(data: bytes) -> np.ndarray:
    """A 10/12-bit HEIF's primary picture, upright, as uint16 in the file's own range.

    In BGR(A) order, as OpenCV gives the other formats. pillow-heif is asked for the stored
    integers (``hdr_to_16bit=False``): its 16-bit mode shifts them, so white would be 65472.
    """
    import pillow_heif

    heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=False, hdr_to_16bit=False)
    arr = np.asarray(heif)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., [2, 1, 0, *range(3, arr.shape[2])]]
    return arr


@functools.cache
def _cv2_reads_avif() -> bool:
    """Whether this OpenCV has an AVIF codec (it keeps 10/12-bit samples; Pillow does not)."""
    import cv2

    depth_flag = getattr(cv2, "IMWRITE_AVIF_DEPTH", None)  # OpenCV 4.11 and newer
    if depth_flag is None:
        return False
    try:
        ok, buf = cv2.imencode(".avif", np.zeros((2, 2, 3), dtype=np.uint16), [depth_flag, 10])
    except cv2.error:
        return False
    if not ok:
        return False
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return arr is not None and arr.dtype == np.uint16


@functools.cache
def _cv2_orients_avif() -> bool:
    """Whether this OpenCV turns AVIFs upright itself (irot/imir), probed like TIFFs below."""
    import cv2

    buf = io.BytesIO()
    exif = Image.Exif()
    exif[_ORIENTATION_TAG] = 6  # Pillow stores it as the AVIF rotation (irot)
    Image.new("RGB", (2, 1)).save(buf, "AVIF", exif=exif.tobytes())
    arr = cv2.imdecode(np.frombuffer(buf.getvalue(), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    return arr is not None and arr.shape[:2] == (2, 1)


@functools.cache
def _cv2_orients_tiff() -> bool:
    """Whether this OpenCV turns TIFFs upright itself (OpenCV 5 does, IMREAD flags or not).

    Probed once on a 1x2 TIFF tagged "rotate 90" so that no OpenCV version rotates twice or never.
    """
    import cv2
    import tifffile

    buf = io.BytesIO()
    probe = np.zeros((1, 2), dtype=np.uint16)
    tifffile.imwrite(buf, probe, photometric="minisblack", extratags=[(274, "H", 1, 6, True)])
    arr = cv2.imdecode(np.frombuffer(buf.getvalue(), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    return arr is not None and arr.shape[:2] == (2, 1)


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except (TypeError, ValueError, SyntaxError, OSError, struct.error):
        return 1  # unreadable EXIF is not worth failing the photo over
    return value if 1 <= value <= 8 else 1


def _apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels ``(H, W, ...)`` into display orientation (EXIF values 1..8)."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return arr[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


def _carried_exif(im: Image.Image, fmt: str) -> bytes | None:
    """EXIF to carry to the output, orientation reset to 1 (the pixels are already upright)."""
    try:
        if fmt == "TIFF":
            return _exif_from_tiff(im)
        raw = im.info.get("exif")
        if not raw:
            return None
        return _reset_orientation(raw if raw.startswith(_EXIF_PREFIX) else _EXIF_PREFIX + raw)
    except (TypeError, ValueError, SyntaxError, OSError, struct.error, KeyError):
        return None


def _exif_from_tiff(im: Image.Image) -> bytes | None:
    """A TIFF keeps EXIF in its own IFD0; rebuild a standalone EXIF block from it."""
    source = im.getexif()
    exif = Image.Exif()
    for tag in _TIFF_DESCRIPTIVE_TAGS:
        if tag in source:
            exif[tag] = source[tag]
    for pointer in (_TIFF_EXIF_IFD, _TIFF_GPS_IFD):
        sub = source.get_ifd(pointer) if pointer in source else {}
        if sub:
            exif[pointer] = dict(sub)
    if not len(exif):
        return None
    exif[_ORIENTATION_TAG] = 1
    return exif.tobytes()


def _reset_orientation(exif: bytes) -> bytes:
    """Set IFD0 Orientation to 1 in place, leaving every other byte (MakerNotes too) intact."""
    body = bytearray(exif[len(_EXIF_PREFIX) :])
    order = {b"II": "<", b"MM": ">"}.get(bytes(body[:2]))
    if order is None or len(body) < 8:
        return exif
    (ifd0,) = struct.unpack_from(order + "I", body, 4)
    if ifd0 + 2 > len(body):
        return exif
    (count,) = struct.unpack_from(order + "H", body, ifd0)
    for i in range(count):
        entry = ifd0 + 2 + 12 * i
        if entry + 12 > len(body):
            break
        tag, kind, n = struct.unpack_from(order + "HHI", body, entry)
        if tag == _ORIENTATION_TAG and kind == 3 and n == 1:  # one SHORT, stored inline
            struct.pack_into(order + "H", body, entry + 8, 1)
            break
    return _EXIF_PREFIX + bytes(body)


def _icc_space(icc: bytes) -> bytes:
    """The ICC header's data colour space signature (``b"RGB "``, ``b"GRAY"``, ``b"CMYK"``)."""
    return icc[16:20] if len(icc) >= 20 else b""


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_image(
    dest: str | Path,
    photo: Photo,
    pixels: np.ndarray,
    *,
    format: str | None = None,
    quality: int = DEFAULT_JPEG_QUALITY,
    bit_depth: int | None = None,
    overwrite: bool = False,
) -> Path | None:
    """Encode ``pixels`` with ``photo``'s metadata and write them atomically.

    Args:
        dest: output path, or ``"-"`` for stdout.
        photo: the photo the pixels came from (alpha, mode, bit depth, ICC, EXIF, source).
        pixels: ``(H, W, 3)`` float RGB, clipped to [0, 1]; may differ in size from ``photo``
            (alpha is then resized to match).
        format: output format (``jpg``, ``png``, ``tif``, ``webp``, ``bmp``, ``heic``, ``avif``);
            default from the suffix of ``dest``, or PNG for stdout.
        quality: JPEG/WebP/HEIC/AVIF quality, 1..100.
        bit_depth: 8 or 16 (16 only for PNG/TIFF, and HEIC, which stores it as 10 or 12 bits);
            default: the input's where the format allows.
        overwrite: replace an existing ``dest``. The input file itself is never replaced.

    Returns:
        The written path (resolved), or None for stdout.

    Raises:
        UsageError: unknown format, bad quality or bit depth.
        ImageError: the destination exists, is the input, or cannot be written.
    """
    to_stdout = str(dest) == "-"
    if format is not None:
        fmt = normalize_format(format)
    elif to_stdout:
        fmt = normalize_format(DEFAULT_STDOUT_FORMAT)
    else:
        found = format_for_path(dest)
        if found is None:
            raise UsageError(
                f"cannot tell the output format from {str(dest)!r}",
                hint="use a .jpg/.png/.tif/.webp/.bmp/.heic/.avif name or pass --format",
            )
        fmt = found
    depth = _resolve_bit_depth(fmt, photo, bit_depth)
    if not to_stdout:
        path = Path(dest).expanduser()
        _check_destination(path, photo.source, overwrite)  # fail before spending time encoding
    data = encode_image(photo, pixels, fmt, quality=quality, bit_depth=depth)
    if to_stdout:
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except OSError as exc:  # e.g. BrokenPipeError when piped into `head`
            raise ImageError(f"cannot write <stdout>: {_reason(exc)}") from exc
        return None
    return _commit(path, data, source=photo.source, overwrite=overwrite)


def _resolve_bit_depth(fmt: str, photo: Photo, bit_depth: int | None) -> int:
    allowed = FORMATS[fmt].bit_depths
    if bit_depth is None:
        return photo.bit_depth if photo.bit_depth in allowed else max(allowed)
    if bit_depth not in (8, 16):
        raise UsageError(f"bit depth must be 8 or 16, not {bit_depth}")
    if bit_depth not in allowed:
        raise UsageError(
            f"{fmt} cannot store {bit_depth}-bit images",
            hint="use PNG, TIFF or HEIC for 16-bit output",
        )
    return bit_depth


def encode_image(
    photo: Photo,
    pixels: np.ndarray,
    fmt: str,
    *,
    quality: int = DEFAULT_JPEG_QUALITY,
    bit_depth: int = 8,
) -> bytes:
    """Encode ``pixels`` in memory as ``fmt`` with ``photo``'s alpha, mode, ICC and EXIF.

    Args:
        photo: where alpha/mode/ICC/EXIF come from.
        pixels: ``(H, W, 3)`` float RGB (values outside [0, 1] are clipped, NaN becomes 0).
        fmt: format name or alias (``jpg``, ``PNG``, ``heic``...).
        quality: JPEG/WebP/HEIC/AVIF quality, 1..100.
        bit_depth: 8 or 16 (must be one the format stores; HEIC stores 16 as 10 bits, or as 12
            when ``photo`` came from a 12-bit file).

    Returns:
        The encoded file.
    """
    fmt = normalize_format(fmt)
    info = FORMATS[fmt]
    if bit_depth not in info.bit_depths:
        raise UsageError(f"{fmt} cannot store {bit_depth}-bit images")
    if not 1 <= int(quality) <= 100:
        raise UsageError(f"quality must be between 1 and 100, not {quality}")
    arr = np.asarray(pixels)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"cannot encode pixels of shape {arr.shape}; expected (H, W, 3) RGB")
    bits = bit_depth
    if fmt == "HEIF" and bit_depth == 16:
        bits = 12 if photo.source_bits == 12 else _HEIF_HIGH_BITS
    quantised = _to_integers(photo, arr, fmt, bits)

    icc = photo.icc_profile if info.icc else None
    gray_out = quantised.ndim == 2 or quantised.shape[2] == 2
    if icc is not None and _icc_space(icc) != (b"GRAY" if gray_out else b"RGB "):
        icc = None  # a profile for the other colour model would be wrong for these pixels
    exif = photo.exif if info.exif else None
    try:
        if fmt == "TIFF":
            return _encode_tiff(quantised, icc)
        if fmt == "HEIF":
            return _encode_heif(quantised, bits, icc, exif, int(quality))
        if bit_depth == 16:
            return _encode_png16(quantised, icc, exif)
        return _encode_pillow(quantised, fmt, icc, exif, int(quality))
    except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: libheif
        raise ImageError(f"cannot encode the image as {fmt}: {_reason(exc)}") from exc


def _to_integers(photo: Photo, arr: np.ndarray, fmt: str, bit_depth: int) -> np.ndarray:
    """Clip, NaN -> 0, gray/alpha as ``fmt`` stores them, then round to ``bit_depth``-bit
    integers (8, 10, 12 or 16).

    Works through ``ENCODE_ROWS`` rows at a time, so its float32 temporaries stay small
    instead of being two more copies of the whole photo (576 MB at 24 MP).
    """
    gray = photo.is_grayscale and fmt != "WEBP"  # WebP has no grayscale mode
    alpha = None
    if FORMATS[fmt].alpha and photo.alpha is not None:
        alpha = _alpha_for(photo.alpha, arr.shape[:2])
    height = arr.shape[0]
    out: np.ndarray | None = None
    for top in range(0, height, ENCODE_ROWS):
        rows = slice(top, min(top + ENCODE_ROWS, height))
        rgb = np.clip(arr[rows].astype(np.float32, copy=False), 0.0, 1.0)  # a fresh array
        rgb[np.isnan(rgb)] = 0.0
        block = (rgb @ _BT601)[..., None] if gray else rgb
        if alpha is not None:
            if gray and bit_depth == 16 and fmt == "PNG":
                # OpenCV cannot write 16-bit gray+alpha PNG; keep the bits and the alpha as RGBA.
                block = np.repeat(block, 3, axis=2)
            block = np.concatenate([block, alpha[rows][..., None]], axis=2)
        if block.shape[2] == 1:
            block = block[..., 0]
        quantised = _quantise(block, bit_depth)
        if out is None:
            out = np.empty((height, *quantised.shape[1:]), dtype=quantised.dtype)
        out[rows] = quantised
    assert out is not None  # height >= 1 was checked by the caller
    return out


def _alpha_for(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The photo's alpha, resized only when the model changed the image size (upscale)."""
    if alpha.shape[:2] == size:
        return alpha
    import cv2

    resized = cv2.resize(
        alpha.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR
    )
    return np.clip(resized, 0.0, 1.0)


def _quantise(arr: np.ndarray, bit_depth: int) -> np.ndarray:
    """Round (not truncate) [0, 1] floats to integers of 8, 10, 12 or 16 bits."""
    top = float(2**bit_depth - 1)
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    # float32 is exact enough: x * 65535 is off by < 0.01, far from a rounding boundary for
    # values that came from integers, so read -> write round-trips stay exact.
    scaled = arr * np.float32(top)
    np.rint(scaled, out=scaled)
    return scaled.astype(dtype)


def _encode_pillow(
    arr: np.ndarray, fmt: str, icc: bytes | None, exif: bytes | None, quality: int
) -> bytes:
    image = Image.fromarray(np.ascontiguousarray(arr))
    params: dict[str, object] = {}
    if icc:
        params["icc_profile"] = icc
    if exif:
        params["exif"] = exif
    if fmt == "JPEG":
        params["quality"] = quality
        # 4:4:4 chroma at high quality: colour edges in enhanced shadows stay clean.
        params["subsampling"] = 0 if quality >= 90 else 2
        if exif and len(exif) > _MAX_JPEG_EXIF:
            del params["exif"]  # cannot fit one APP1 segment (usually a big thumbnail)
    elif fmt in ("WEBP", "AVIF"):
        params["quality"] = quality
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def _encode_heif(
    arr: np.ndarray, bits: int, icc: bytes | None, exif: bytes | None, quality: int
) -> bytes:
    """HEIC (HEVC) through pillow-heif: 8-bit, or 10/12-bit from integers of that range."""
    if not _register_heif():
        raise ImageError(
            "cannot write HEIC: pillow-heif is not installed", hint="pip install pillow-heif"
        )
    import pillow_heif

    channels = 1 if arr.ndim == 2 else arr.shape[2]
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    params: dict[str, object] = {"quality": quality}
    if bits > 8:
        mode += f";{bits}"
        params["bit_depth"] = bits
        arr = arr.astype("<u2", copy=False)  # pillow-heif takes little-endian samples
    if icc:
        params["icc_profile"] = icc
    if exif:
        params["exif"] = exif
    buf = io.BytesIO()
    height, width = arr.shape[:2]
    pillow_heif.encode(mode, (width, height), np.ascontiguousarray(arr).tobytes(), buf, **params)
    return buf.getvalue()


def _encode_png16(arr: np.ndarray, icc: bytes | None, exif: bytes | None) -> bytes:
    """16-bit PNG via OpenCV, then our own iCCP/eXIf chunks (OpenCV writes neither)."""
    import cv2

    bgr = arr if arr.ndim == 2 else arr[..., [2, 1, 0, *range(3, arr.shape[2])]]
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(bgr))
    if not ok:
        raise ValueError("OpenCV could not encode the 16-bit PNG")
    extra = []
    if icc:
        extra.append(_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)))
    if exif:
        body = exif[len(_EXIF_PREFIX) :] if exif.startswith(_EXIF_PREFIX) else exif
        extra.append(_png_chunk(b"eXIf", body))
    return _png_insert_chunks(encoded.tobytes(), extra, drop=_PNG_COLOUR_CHUNKS if icc else ())


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _png_insert_chunks(png: bytes, chunks: list[bytes], *, drop: tuple[bytes, ...] = ()) -> bytes:
    """Insert ``chunks`` right after IHDR (before PLTE/IDAT); remove chunk types in ``drop``."""
    if png[:8] != _PNG_SIGNATURE:
        raise ValueError("encoder did not produce a PNG")
    out = [png[:8]]
    pos = 8
    while pos + 8 <= len(png):
        (length,) = struct.unpack_from(">I", png, pos)
        kind = png[pos + 4 : pos + 8]
        end = pos + 12 + length
        if kind not in drop:
            out.append(png[pos:end])
        if kind == b"IHDR":
            out.extend(chunks)
        pos = end
    return b"".join(out)


def _encode_tiff(arr: np.ndarray, icc: bytes | None) -> bytes:
    """8/16-bit TIFF via tifffile: deflate, straight (unassociated) alpha, ICC in tag 34675."""
    import tifffile

    channels = 1 if arr.ndim == 2 else arr.shape[2]
    buf = io.BytesIO()
    tifffile.imwrite(
        buf,
        arr,
        photometric="minisblack" if channels <= 2 else "rgb",
        extrasamples=["unassalpha"] if channels in (2, 4) else None,
        compression="zlib",
        iccprofile=icc,
        metadata=None,  # no tifffile JSON shape description in ImageDescription
        software=False,
    )
    return buf.getvalue()


def _check_destination(dest: Path, source: Path | None, overwrite: bool) -> None:
    if source is not None and _same_file(dest, source):
        raise ImageError(
            f"refusing to write {dest}: it is the input file",
            hint="choose another output name; the input is never overwritten",
        )
    if dest.is_dir():
        raise ImageError(f"cannot write {dest}: it is a folder", hint="give a file name")
    if dest.exists() and not overwrite:
        raise ImageError(f"cannot write {dest}: it already exists", hint="pass --overwrite")


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _commit(dest: Path, data: bytes, *, source: Path | None, overwrite: bool) -> Path:
    """Write ``data`` to a temp file beside ``dest``, fsync, then move it into place."""
    _check_destination(dest, source, overwrite)
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=parent)
    except OSError as exc:
        raise ImageError(f"cannot write {dest}: {_reason(exc)}", hint=_write_hint(exc)) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, new_file_mode(dest))
        if overwrite:
            os.replace(tmp, dest)
        else:
            _move_no_clobber(tmp, dest)
    except BaseException as exc:
        # Any failure, Ctrl-C included, leaves neither a temp file nor a partial output.
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise ImageError(f"cannot write {dest}: {_reason(exc)}", hint=_write_hint(exc)) from exc
        raise
    fsync_dir(parent)
    return dest.resolve()


def _move_no_clobber(tmp: Path, dest: Path) -> None:
    """Move into place without replacing a file that appeared since the check (link is atomic)."""
    try:
        os.link(tmp, dest)
    except FileExistsError as exc:
        raise ImageError(
            f"cannot write {dest}: it already exists", hint="pass --overwrite"
        ) from exc
    except OSError:
        # Filesystems without hard links: best effort, the race window is tiny.
        if dest.exists():
            raise ImageError(
                f"cannot write {dest}: it already exists", hint="pass --overwrite"
            ) from None
        os.replace(tmp, dest)
        return
    tmp.unlink()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _write_hint(exc: OSError) -> str | None:
    if exc.errno == errno.ENOSPC:
        return "free some disk space"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "check the output folder's permissions"
    return None
