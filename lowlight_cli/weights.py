"""Model weights: the manifest, the local cache, verified downloads and state-dict loading.

Where a weights file comes from, in order: an explicit path (``--weights PATH``), the files
bundled in the package (``lowlight_cli/bundled/<file>``), the user cache (platformdirs, or
``LOWLIGHT_CACHE_DIR``), and last a download (never when ``LOWLIGHT_OFFLINE=1``).

A download streams into ``<cache>/<file>.part`` under a cross-process file lock, resumes a partial
file with an HTTP ``Range`` request, checks the sha256 and only then renames the file into place,
so the cache never holds an unverified file. Loading uses safetensors or
``torch.load(weights_only=True)``, never pickle code execution.

torch, requests and rich are imported inside the functions that need them so that importing this
module (``lowlight weights list``, the registry) stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowlight_cli import __version__
from lowlight_cli.constants import (
    APP_NAME,
    BUNDLED_WEIGHTS_DIR,
    ENV_CACHE_DIR,
    ENV_MANIFEST,
    ENV_OFFLINE,
    ENV_VGG16_PATH,
    ENV_WEIGHTS_URL,
    MANIFEST_FILENAME,
    PACKAGE_NAME,
)
from lowlight_cli.errors import NoDefaultWeightsError, WeightsError

if TYPE_CHECKING:  # pragma: no cover
    import requests
    import torch

    from lowlight_cli.registry import ModelSpec

SCHEMA_VERSION = 1
VGG16_ID = "vgg16.imagenet"

# Manifest format -> accepted file suffixes.
FORMATS: dict[str, tuple[str, ...]] = {
    "safetensors": (".safetensors",),
    "pth": (".pth", ".pt"),
    "onnx": (".onnx",),
}
SOURCE_TYPES = ("bundled", "url")

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*\.[a-z0-9][a-z0-9_-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Publishers such as torchvision put only the first 8+ hex digits of the sha256 in the name.
_SHA256_PREFIX_RE = re.compile(r"^[0-9a-f]{8,63}$")
_ENTRY_KEYS = {
    "file",
    "format",
    "source",
    "sha256",
    "sha256_prefix",
    "bytes",
    "license",
    "origin",
    "training",
    "metrics",
    "cache_subset",
    "notes",
}
_TRUE = {"1", "true", "yes", "on"}
_HASH_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# Manifest


@dataclass(frozen=True)
class CacheSubset:
    """Keep only part of a large upstream file in the cache.

    Attributes:
        file: name of the extracted safetensors file in the cache.
        keep_prefix: state-dict keys starting with this are kept (``features.`` for VGG-16).
    """

    file: str
    keep_prefix: str


@dataclass(frozen=True)
class WeightsEntry:
    """One ``id.tag`` of the manifest (see ``docs/weights.md`` for the schema).

    Attributes:
        id: ``model.tag`` (``neid.lol``); the part before the dot names the registry model.
        file: plain file name (no directories) used in the bundle, the cache and URLs.
        format: ``safetensors``, ``pth`` or ``onnx``.
        source: ``bundled`` (shipped in ``lowlight_cli/bundled``) or ``url``.
        url: primary download URL (``url`` sources only).
        mirrors: further URLs tried in order when the primary fails.
        sha256: full lowercase hex digest (None only when ``sha256_prefix`` is given).
        sha256_prefix: leading hex digits, only for upstream files published without a full hash.
        bytes: exact file size.
        license: license of the weights.
        origin: who made the file and where it comes from.
        training: how it was trained (data, recipe, commit).
        metrics: what it scores, e.g. ``{"lol_eval15": {"psnr": 22.1, "ssim": 0.81}}``.
        cache_subset: keep only a subset of the file in the cache (VGG-16).
        notes: free text.
    """

    id: str
    file: str
    format: str
    source: str
    bytes: int
    license: str
    origin: str
    training: str
    metrics: dict[str, Any] = field(default_factory=dict)
    url: str | None = None
    mirrors: tuple[str, ...] = ()
    sha256: str | None = None
    sha256_prefix: str | None = None
    cache_subset: CacheSubset | None = None
    notes: str = ""

    @property
    def model(self) -> str:
        """Registry model name (the part of the id before the dot)."""
        return self.id.split(".", 1)[0]

    @property
    def expected_hash(self) -> str:
        """The digest (or documented prefix) a file must match, for messages."""
        return self.sha256 or f"{self.sha256_prefix}..."

    def to_dict(self) -> dict[str, Any]:
        """The entry in manifest JSON form (without its id)."""
        source: dict[str, Any] = {"type": self.source}
        if self.source == "url":
            source["url"] = self.url
            if self.mirrors:
                source["mirrors"] = list(self.mirrors)
        out: dict[str, Any] = {"file": self.file, "format": self.format, "source": source}
        if self.sha256:
            out["sha256"] = self.sha256
        if self.sha256_prefix:
            out["sha256_prefix"] = self.sha256_prefix
        out.update(
            {
                "bytes": self.bytes,
                "license": self.license,
                "origin": self.origin,
                "training": self.training,
                "metrics": self.metrics,
            }
        )
        if self.cache_subset is not None:
            out["cache_subset"] = {
                "file": self.cache_subset.file,
                "keep_prefix": self.cache_subset.keep_prefix,
            }
        if self.notes:
            out["notes"] = self.notes
        return out


@dataclass(frozen=True)
class Manifest:
    """A validated manifest.

    Attributes:
        schema_version: format version (currently 1).
        entries: ``id.tag`` -> entry.
        location: where it was read from (for messages).
    """

    schema_version: int
    entries: dict[str, WeightsEntry]
    location: str

    def get(self, weights_id: str) -> WeightsEntry:
        """Return the entry for ``weights_id``.

        Raises:
            WeightsError: unknown id, listing the known ones.
        """
        entry = self.entries.get(weights_id)
        if entry is None:
            known = ", ".join(sorted(self.entries)) or "none"
            raise WeightsError(
                f"unknown weights '{weights_id}' (not in {self.location})",
                hint=f"known weights: {known}; or pass a file path",
            )
        return entry


def check_file_name(name: object, *, what: str = "file name") -> str:
    """Return ``name`` if it is a plain file name, safe to join to a directory.

    Rejects path separators, ``..``, hidden names, drive letters and control characters, so a
    manifest can never make the program read or write outside the bundle or cache directory.

    Raises:
        WeightsError: the name is unsafe.
    """
    bad = (
        not isinstance(name, str)
        or not name
        or len(name) > 255
        or name in {".", ".."}
        or name.startswith(".")
        or ".." in name
        or any(sep in name for sep in ("/", "\\", ":"))
        or any(ord(ch) < 32 for ch in name)
        or Path(name).name != name
    )
    if bad:
        raise WeightsError(
            f"unsafe {what} {name!r} in the weights manifest",
            hint="a manifest file name must be a plain name like 'neid.lol.safetensors' "
            "(no directories, no '..')",
        )
    return name  # type: ignore[return-value]


def _parse_entry(weights_id: str, raw: object, where: str) -> WeightsEntry:
    def fail(problem: str) -> WeightsError:
        return WeightsError(
            f"invalid weights manifest {where}: entry '{weights_id}': {problem}",
            hint="fix the manifest (schema in docs/weights.md)",
        )

    if not isinstance(weights_id, str) or not _ID_RE.match(weights_id):
        raise fail("id must look like 'model.tag' (lowercase letters, digits, '_' or '-')")
    if not isinstance(raw, dict):
        raise fail("must be an object")
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        raise fail(f"unknown keys {sorted(unknown)}")
    for key in ("file", "format", "source", "bytes", "license", "origin", "training"):
        if key not in raw:
            raise fail(f"missing '{key}'")
    try:
        name = check_file_name(raw["file"])
    except WeightsError as err:
        raise fail(err.message) from None
    fmt = raw["format"]
    if fmt not in FORMATS:
        raise fail(f"format must be one of {sorted(FORMATS)}, not {fmt!r}")
    if not name.endswith(FORMATS[fmt]):
        raise fail(f"file '{name}' does not end with {' or '.join(FORMATS[fmt])} for {fmt}")
    size = raw["bytes"]
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise fail("'bytes' must be a positive integer")
    for key in ("license", "origin", "training"):
        if not isinstance(raw[key], str) or not raw[key].strip():
            raise fail(f"'{key}' must be a non-empty string")
    metrics = raw.get("metrics", {})
    if not isinstance(metrics, dict) or not all(
        isinstance(v, int | float)
        or (isinstance(v, dict) and all(isinstance(x, int | float) for x in v.values()))
        for v in metrics.values()
    ):
        raise fail("'metrics' must map names to numbers or to {metric: number} objects")

    source = raw["source"]
    if not isinstance(source, dict) or source.get("type") not in SOURCE_TYPES:
        raise fail('\'source\' must be {"type": "bundled"} or {"type": "url", "url": ...}')
    url: str | None = None
    mirrors: tuple[str, ...] = ()
    if source["type"] == "url":
        if set(source) - {"type", "url", "mirrors"}:
            raise fail(f"unknown source keys {sorted(set(source) - {'type', 'url', 'mirrors'})}")
        url = source.get("url")
        raw_mirrors = source.get("mirrors", [])
        if not isinstance(raw_mirrors, list):
            raise fail("'source.mirrors' must be a list of URLs")
        for u in [url, *raw_mirrors]:
            if not isinstance(u, str) or not u.startswith(("https://", "http://")):
                raise fail(f"source URL {u!r} must start with https:// or http://")
        mirrors = tuple(raw_mirrors)
    elif set(source) != {"type"}:
        raise fail("a bundled source has no other keys (the file is lowlight_cli/bundled/<file>)")

    sha256 = raw.get("sha256")
    prefix = raw.get("sha256_prefix")
    if (sha256 is None) == (prefix is None):
        raise fail("give exactly one of 'sha256' and 'sha256_prefix'")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256_RE.match(sha256)):
        raise fail("'sha256' must be 64 lowercase hex digits")
    if prefix is not None:
        if not isinstance(prefix, str) or not _SHA256_PREFIX_RE.match(prefix):
            raise fail("'sha256_prefix' must be 8 to 63 lowercase hex digits")
        if source["type"] != "url":
            # Our own files always have a full digest; only upstream files may lack one.
            raise fail("'sha256_prefix' is only allowed for upstream (url) files")

    subset = None
    if "cache_subset" in raw:
        cs = raw["cache_subset"]
        if (
            not isinstance(cs, dict)
            or set(cs) != {"file", "keep_prefix"}
            or not isinstance(cs["keep_prefix"], str)
            or not cs["keep_prefix"]
        ):
            raise fail('\'cache_subset\' must be {"file": ..., "keep_prefix": ...}')
        try:
            subset_name = check_file_name(cs["file"], what="cache_subset file name")
        except WeightsError as err:
            raise fail(err.message) from None
        if not subset_name.endswith(".safetensors") or subset_name == name:
            raise fail("'cache_subset.file' must be another name ending with .safetensors")
        subset = CacheSubset(file=subset_name, keep_prefix=cs["keep_prefix"])
    notes = raw.get("notes", "")
    if not isinstance(notes, str):
        raise fail("'notes' must be a string")
    return WeightsEntry(
        id=weights_id,
        file=name,
        format=fmt,
        source=source["type"],
        bytes=size,
        license=raw["license"],
        origin=raw["origin"],
        training=raw["training"],
        metrics=metrics,
        url=url,
        mirrors=mirrors,
        sha256=sha256,
        sha256_prefix=prefix,
        cache_subset=subset,
        notes=notes,
    )


def parse_manifest(data: object, *, location: str = "<memory>") -> Manifest:
    """Validate manifest JSON data (already decoded) and return a :class:`Manifest`.

    Raises:
        WeightsError: wrong schema version, bad entry, duplicate file names.
    """
    if not isinstance(data, dict):
        raise WeightsError(f"invalid weights manifest {location}: top level must be an object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise WeightsError(
            f"weights manifest {location} has schema_version {version!r}; "
            f"this lowlight reads version {SCHEMA_VERSION}",
            hint="upgrade lowlight, or write the manifest in the documented schema",
        )
    extra = set(data) - {"schema_version", "weights", "description"}
    if extra:
        raise WeightsError(f"invalid weights manifest {location}: unknown keys {sorted(extra)}")
    raw_entries = data.get("weights")
    if not isinstance(raw_entries, dict):
        raise WeightsError(f"invalid weights manifest {location}: 'weights' must be an object")
    entries: dict[str, WeightsEntry] = {}
    seen: dict[str, str] = {}
    for weights_id, raw in raw_entries.items():
        entry = _parse_entry(weights_id, raw, location)
        names = [entry.file] + ([entry.cache_subset.file] if entry.cache_subset else [])
        for n in names:
            if n in seen:
                # Two ids sharing a cache file would overwrite each other's verified file.
                raise WeightsError(
                    f"invalid weights manifest {location}: '{weights_id}' and '{seen[n]}' "
                    f"both use the file name '{n}'"
                )
            seen[n] = weights_id
        entries[weights_id] = entry
    return Manifest(schema_version=version, entries=entries, location=location)


def manifest_path() -> Path:
    """Where the active manifest is read from.

    ``LOWLIGHT_MANIFEST`` if set (it replaces the packaged manifest); else the copy inside the
    installed package (the wheel force-includes it); else the repository's top-level file, which
    is what an editable install sees.
    """
    override = os.environ.get(ENV_MANIFEST)
    if override:
        return Path(override).expanduser()
    packaged = files(PACKAGE_NAME) / MANIFEST_FILENAME
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / MANIFEST_FILENAME


def load_manifest(path: str | Path | None = None) -> Manifest:
    """Read and validate the weights manifest (``path`` or :func:`manifest_path`).

    Raises:
        WeightsError: unreadable file, invalid JSON, or invalid schema.
    """
    path = Path(path) if path is not None else manifest_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        hint = f"check {ENV_MANIFEST}" if os.environ.get(ENV_MANIFEST) else "reinstall lowlight"
        raise WeightsError(
            f"cannot read weights manifest {path}: {exc.strerror}", hint=hint
        ) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WeightsError(
            f"weights manifest {path} is not valid JSON: line {exc.lineno}: {exc.msg}",
            hint="fix the JSON syntax",
        ) from exc
    return parse_manifest(data, location=str(path))


def manifest_entry(
    file: str,
    *,
    sha256: str,
    size: int,
    license: str,
    origin: str,
    training: str,
    metrics: Mapping[str, Any] | None = None,
    url: str | None = None,
    mirrors: Sequence[str] = (),
    file_format: str | None = None,
    notes: str = "",
) -> dict[str, Any]:
    """Build one manifest entry (a dict in the schema), validated; the trainer prints it.

    Args:
        file: plain file name (``neid.lol.safetensors``).
        sha256: full hex digest (from :func:`save_safetensors_fp16` or :func:`file_sha256`).
        size: file size in bytes.
        license: license of the weights.
        origin: who trained it, from which code/commit.
        training: data and recipe.
        metrics: scores, e.g. ``{"lol_eval15": {"psnr": 22.1, "ssim": 0.81}}``.
        url: download URL; None means the file is bundled in ``lowlight_cli/bundled``.
        mirrors: further download URLs.
        file_format: ``safetensors``/``pth``/``onnx``; None guesses from the suffix.
        notes: free text.

    Raises:
        WeightsError: the values do not form a valid entry.
    """
    if file_format is None:
        file_format = next((f for f, sfx in FORMATS.items() if file.endswith(sfx)), "safetensors")
    source: dict[str, Any] = {"type": "bundled"} if url is None else {"type": "url", "url": url}
    if url is not None and mirrors:
        source["mirrors"] = list(mirrors)
    raw: dict[str, Any] = {
        "file": file,
        "format": file_format,
        "source": source,
        "sha256": sha256,
        "bytes": size,
        "license": license,
        "origin": origin,
        "training": training,
        "metrics": dict(metrics or {}),
    }
    if notes:
        raw["notes"] = notes
    _parse_entry("new.entry", raw, "<new entry>")  # the id is the caller's; check the rest
    return raw


# --------------------------------------------------------------------------------------------
# Locations


def cache_dir() -> Path:
    """The weights cache: ``LOWLIGHT_CACHE_DIR`` or the platform's user cache dir + ``weights``."""
    override = os.environ.get(ENV_CACHE_DIR)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir(APP_NAME, appauthor=False)) / "weights"


def bundled_dir() -> Path:
    """The package's folder of shipped weights (``lowlight_cli/bundled``)."""
    return Path(str(files(PACKAGE_NAME) / BUNDLED_WEIGHTS_DIR))


def is_offline() -> bool:
    """True when ``LOWLIGHT_OFFLINE`` is 1/true/yes/on: never touch the network."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in _TRUE


def download_urls(entry: WeightsEntry) -> list[str]:
    """URLs to try for ``entry``, in order.

    ``LOWLIGHT_WEIGHTS_URL`` replaces every manifest URL with ``<base>/<file>``, so an
    air-gapped site never reaches out to the public ones.
    """
    base = os.environ.get(ENV_WEIGHTS_URL, "").strip()
    if base:
        return [f"{base.rstrip('/')}/{entry.file}"]
    if entry.url:
        return [entry.url, *entry.mirrors]
    return []


def local_path(entry: WeightsEntry) -> tuple[Path, str] | None:
    """Where ``entry`` already is on disk, as ``(path, "bundled" | "cached")``, or None.

    For an entry with a cache subset (VGG-16) the extracted subset counts as cached. A cached
    file whose size differs from the manifest is ignored (it will be fetched again).
    """
    bundled = bundled_dir() / entry.file
    if bundled.is_file():
        return bundled, "bundled"
    cache = cache_dir()
    if entry.cache_subset is not None:
        subset = cache / entry.cache_subset.file
        if subset.is_file():
            return subset, "cached"
    cached = cache / entry.file
    if cached.is_file() and cached.stat().st_size == entry.bytes:
        return cached, "cached"
    return None


# --------------------------------------------------------------------------------------------
# Hashing and downloading


def file_sha256(path: str | Path) -> str:
    """Lowercase hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class DownloadOptions:
    """Network behaviour of downloads (tests shrink the timeouts and delays).

    Attributes:
        connect_timeout: seconds to establish a connection.
        read_timeout: seconds without receiving a byte before giving up on a response.
        retries: extra attempts per URL after connection errors, timeouts and 5xx (not 4xx).
        backoff: first delay between attempts in seconds; doubles each time.
        max_backoff: cap on one delay.
        lock_timeout: seconds to wait for another process fetching the same file.
        chunk_size: bytes per read.
        progress: show a progress bar; None means only when stderr is a terminal.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 4
    backoff: float = 1.0
    max_backoff: float = 30.0
    lock_timeout: float = 3600.0
    chunk_size: int = 1 << 16
    progress: bool | None = None


DEFAULT_DOWNLOAD = DownloadOptions()


class _RetryableError(Exception):
    """A failure worth another attempt (connection, timeout, 5xx, short body)."""


class _FatalError(Exception):
    """A failure another attempt at the same URL will not fix (4xx, bad URL)."""


@contextmanager
def _file_lock(target: Path, timeout: float) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(str(target) + ".lock")
    try:
        lock.acquire(timeout=timeout)
    except Timeout as exc:
        raise WeightsError(
            f"timed out after {timeout:.0f} s waiting for another lowlight process to fetch "
            f"{target.name}",
            hint=f"if no other lowlight is running, delete {target}.lock",
        ) from exc
    try:
        yield
    finally:
        lock.release()


def _progress_wanted(options: DownloadOptions) -> bool:
    if options.progress is not None:
        return options.progress
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


def _fetch_once(
    session: requests.Session,
    url: str,
    part: Path,
    size: int | None,
    options: DownloadOptions,
    advance: Any,
) -> None:
    """One HTTP attempt: append to (Range honoured) or rewrite ``part``."""
    import requests

    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is not None and have == size:
        return  # a run that died before the rename left a whole file; it is verified next
    # Byte ranges refer to the stored bytes, so ask for no content encoding.
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = session.get(
            url,
            stream=True,
            headers=headers,
            timeout=(options.connect_timeout, options.read_timeout),
        )
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _RetryableError(f"cannot connect: {exc}") from exc
    except requests.RequestException as exc:
        raise _FatalError(str(exc)) from exc
    with resp:
        status = resp.status_code
        if status == 416 and have:
            # The server has no bytes after ours: our partial file cannot be extended.
            part.unlink()
            raise _RetryableError("server rejected the resume range; starting over")
        if status >= 500:
            raise _RetryableError(f"HTTP {status} {resp.reason}")
        if status not in (200, 206):
            raise _FatalError(f"HTTP {status} {resp.reason}")
        mode = "wb"
        if status == 206:
            content_range = resp.headers.get("Content-Range", "")
            match = re.match(r"bytes (\d+)-", content_range)
            if not have or not match or int(match.group(1)) != have:
                part.unlink(missing_ok=True)
                raise _RetryableError(f"unexpected partial response ({content_range!r})")
            mode = "ab"
        else:
            # 200: the server ignored Range (or there was none); start from scratch.
            have = 0
        advance(completed=have)
        try:
            with open(part, mode) as fh:
                for chunk in resp.iter_content(chunk_size=options.chunk_size):
                    fh.write(chunk)
                    advance(advance=len(chunk))
                fh.flush()
                os.fsync(fh.fileno())
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _RetryableError(f"connection lost: {exc}") from exc
        except requests.RequestException as exc:
            # ChunkedEncodingError: the server closed the connection mid-body.
            raise _RetryableError(f"transfer interrupted: {exc}") from exc
    got = part.stat().st_size
    if size is not None and got < size:
        raise _RetryableError(f"connection closed after {got} of {size} bytes")


def download_file(
    urls: Sequence[str],
    dest: str | Path,
    *,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    size: int | None = None,
    options: DownloadOptions | None = None,
) -> Path:
    """Download the first URL that works into ``dest``, verified, resumable, atomically.

    Under a lock on ``dest.lock``: returns at once if another process already placed ``dest``;
    otherwise streams into ``dest.part`` (resuming it with ``Range``), retries connection
    errors, timeouts and 5xx with exponential backoff, moves on to the next URL after a 4xx or
    exhausted retries, checks size and sha256 and then renames ``.part`` to ``dest``.

    Args:
        urls: primary URL first, then mirrors.
        dest: final path (its directory is created).
        sha256: expected full digest; or ``sha256_prefix``: expected leading digits.
        size: expected byte count (enables resume sanity checks and early-close detection).
        options: timeouts, retries, progress; default :data:`DEFAULT_DOWNLOAD`.

    Returns:
        ``dest``.

    Raises:
        WeightsError: every URL failed, or the checksum did not match (the partial file is
            deleted; the message has the expected and actual digests).
    """
    import requests

    options = options or DEFAULT_DOWNLOAD
    dest = Path(dest)
    if not urls:
        raise WeightsError(f"no download URL for {dest.name}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with _file_lock(dest, options.lock_timeout):
        if dest.is_file() and (size is None or dest.stat().st_size == size):
            return dest  # another process finished it while we waited for the lock
        failures: list[str] = []
        with _progress(dest.name, size, options) as advance, requests.Session() as session:
            session.headers["User-Agent"] = f"{APP_NAME}/{__version__}"
            for url in urls:
                error = _try_url(session, url, part, size, options, advance)
                if error is None:
                    break
                failures.append(f"{url}: {error}")
            else:
                raise WeightsError(
                    f"could not download {dest.name}: " + "; ".join(failures),
                    hint=f"check the network, set {ENV_WEIGHTS_URL} to a mirror, or download "
                    f"the file yourself and pass --weights PATH",
                )
        _verify_part(part, dest.name, urls, sha256=sha256, sha256_prefix=sha256_prefix, size=size)
        os.replace(part, dest)
    return dest


def _try_url(
    session: requests.Session,
    url: str,
    part: Path,
    size: int | None,
    options: DownloadOptions,
    advance: Any,
) -> str | None:
    """Attempt ``url`` with retries; None on success, else the last error text."""
    last = ""
    for attempt in range(options.retries + 1):
        if attempt:
            time.sleep(min(options.backoff * 2 ** (attempt - 1), options.max_backoff))
        try:
            _fetch_once(session, url, part, size, options, advance)
            return None
        except _FatalError as exc:
            return str(exc)  # a 4xx will not change on retry
        except _RetryableError as exc:
            last = str(exc)
    return f"{last} (after {options.retries + 1} attempts)"


def _verify_part(
    part: Path,
    name: str,
    urls: Sequence[str],
    *,
    sha256: str | None,
    sha256_prefix: str | None,
    size: int | None,
) -> None:
    actual = file_sha256(part)
    got = part.stat().st_size
    ok = (size is None or got == size) and (
        (sha256 is None or actual == sha256)
        and (sha256_prefix is None or actual.startswith(sha256_prefix))
    )
    if ok:
        return
    part.unlink(missing_ok=True)
    expected = sha256 or (f"{sha256_prefix}..." if sha256_prefix else "any")
    raise WeightsError(
        f"checksum mismatch for {name} from {urls[0]}: expected sha256 {expected}"
        + (f" ({size} bytes)" if size is not None else "")
        + f", got {actual} ({got} bytes); deleted {part.name}",
        hint="retry; if it happens again the server's file changed or is corrupt: "
        "report it, or use a mirror",
    )


@contextmanager
def _progress(name: str, size: int | None, options: DownloadOptions) -> Iterator[Any]:
    """Yield ``advance(completed=..|advance=..)``: a rich bar on stderr, or a no-op."""
    if not _progress_wanted(options):
        yield lambda **_: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(name, total=size)
        yield lambda **kw: bar.update(task, **kw)


# --------------------------------------------------------------------------------------------
# Resolution


def _missing_offline(entry: WeightsEntry) -> WeightsError:
    """The offline error: which file is missing, where it would go, and how to get it."""
    cache = cache_dir()
    urls = download_urls(entry)
    get = f"download {urls[0]}" if urls else "get the file from the lowlight release"
    how = (
        f"{get} (sha256 {entry.expected_hash}) and save it as {cache / entry.file}, "
        f"or run 'lowlight weights download {entry.id}' with network access"
    )
    if entry.id == VGG16_ID:
        return WeightsError(
            f"VGG-16 weights ({entry.file}) are not in the cache {cache}, "
            f"and {ENV_OFFLINE}=1 forbids downloading them",
            hint=f"set {ENV_VGG16_PATH} (or pass --vgg PATH) to a local VGG-16 (torchvision's "
            f"{entry.file} or the Keras/Caffe ImageNet .npz), or {how}",
        )
    return WeightsError(
        f"weights '{entry.id}' ({entry.file}) are not bundled and not in the cache {cache}, "
        f"and {ENV_OFFLINE}=1 forbids downloading them",
        hint=f"{how}, or pass --weights PATH",
    )


def download_entry(
    entry: WeightsEntry, *, force: bool = False, options: DownloadOptions | None = None
) -> Path:
    """Fetch ``entry``'s whole file into the cache (verified) and return its path.

    Raises:
        WeightsError: offline, no URL, download or checksum failure.
    """
    dest = cache_dir() / entry.file
    if force:
        dest.unlink(missing_ok=True)
    if dest.is_file() and dest.stat().st_size == entry.bytes:
        return dest
    if is_offline():
        raise _missing_offline(entry)
    urls = download_urls(entry)
    if not urls:
        raise WeightsError(
            f"weights '{entry.id}' should be bundled as {bundled_dir() / entry.file} "
            "but are missing, and the manifest has no URL for them",
            hint=f"reinstall lowlight, or set {ENV_WEIGHTS_URL} to a server holding {entry.file}",
        )
    return download_file(
        urls,
        dest,
        sha256=entry.sha256,
        sha256_prefix=entry.sha256_prefix,
        size=entry.bytes,
        options=options,
    )


def _fetch_subset(entry: WeightsEntry, options: DownloadOptions | None) -> Path:
    """Download ``entry``, keep only its ``cache_subset`` keys as safetensors, drop the rest."""
    if entry.cache_subset is None:
        return download_entry(entry, options=options)
    cache = cache_dir()
    subset = cache / entry.cache_subset.file
    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(subset, (options or DEFAULT_DOWNLOAD).lock_timeout):
        if subset.is_file():
            return subset  # another process extracted it while we waited
        full = download_entry(entry, options=options)
        # A file placed in the cache by hand (offline installs) has not been checked yet.
        _verify_part(
            full,
            entry.file,
            [str(full)],
            sha256=entry.sha256,
            sha256_prefix=entry.sha256_prefix,
            size=entry.bytes,
        )
        source_sha256 = file_sha256(full)
        state = read_state_dict(full, keep_dtype=True)
        keep = {k: v for k, v in state.items() if k.startswith(entry.cache_subset.keep_prefix)}
        if not keep:
            raise WeightsError(
                f"{entry.file} has no keys starting with '{entry.cache_subset.keep_prefix}'",
                hint="the upstream file changed; report it",
            )
        _save_safetensors(
            keep,
            subset,
            {
                "source_id": entry.id,
                "source_file": entry.file,
                "source_sha256": source_sha256,
                "keep_prefix": entry.cache_subset.keep_prefix,
            },
        )
        # `verify` checks the subset against the digest recorded here.
        subset.with_name(subset.name + ".sha256").write_text(file_sha256(subset) + "\n")
        # The rest (VGG-16's 490 MB classifier) is never used: do not keep it.
        full.unlink()
    return subset


def _obtain(entry: WeightsEntry, options: DownloadOptions | None) -> Path:
    """Local copy of ``entry``: bundled -> cache -> download (subset extraction if any)."""
    found = local_path(entry)
    if found is not None and (
        entry.cache_subset is None or found[0].name != entry.file or found[1] == "bundled"
    ):
        return found[0]
    # Not present, or the full upstream file sits in the cache without its subset.
    return _fetch_subset(entry, options)


def resolve_weights(
    ref: str | Path, *, download: bool = True, options: DownloadOptions | None = None
) -> Path:
    """Path of the weights ``ref``: a file path, or a manifest id ``model.tag``.

    Order: existing path -> bundled (``lowlight_cli/bundled/<file>``) -> cache -> download
    (unless ``LOWLIGHT_OFFLINE=1`` or ``download`` is False).

    Raises:
        WeightsError: missing path, unknown id, offline and missing, download failure.
    """
    if _looks_like_path(ref):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}", hint="check the --weights path")
        return path
    entry = load_manifest().get(str(ref))
    if not download:
        found = local_path(entry)
        if found is None:
            raise WeightsError(
                f"weights '{entry.id}' ({entry.file}) are not bundled and not in the cache "
                f"{cache_dir()}",
                hint=f"run 'lowlight weights download {entry.id}'",
            )
        return found[0]
    return _obtain(entry, options)


def _looks_like_path(ref: str | Path) -> bool:
    if isinstance(ref, Path):
        return True
    suffixes = (*(s for sfx in FORMATS.values() for s in sfx), ".npz")
    return "/" in ref or os.sep in ref or ref.endswith(suffixes) or Path(ref).is_file()


def resolve_vgg16(
    path: str | Path | None = None, *, options: DownloadOptions | None = None
) -> Path:
    """Path of ImageNet VGG-16 weights for symnet's encoder and the perceptual losses.

    Order: ``path`` (the trainer's ``--vgg``) -> ``LOWLIGHT_VGG16_PATH`` -> the extracted
    conv-layer subset in the cache -> download torchvision's ``vgg16-397923af.pth`` (528 MB),
    keep its ``features.*`` tensors (the 13 convs, 59 MB float32) as
    ``vgg16-397923af.features.safetensors`` in the cache and delete the full file.

    The returned file is the Keras/Caffe ``.npz``, a torchvision ``.pth``, or the extracted
    safetensors (torchvision key names, so torchvision's input convention);
    ``models.vgg.load_vgg16_state`` converts each to one convention.

    Raises:
        WeightsError: the given path is missing; offline without a local copy; download failure.
    """
    explicit = path if path is not None else os.environ.get(ENV_VGG16_PATH) or None
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            source = "--vgg" if path is not None else ENV_VGG16_PATH
            raise WeightsError(
                f"VGG-16 weights not found at {p} (from {source})",
                hint="pass an existing vgg16-397923af.pth, the Keras/Caffe .npz, "
                "or the extracted .safetensors",
            )
        return p
    return _obtain(load_manifest().get(VGG16_ID), options)


def fetch(weights_id: str, *, force: bool = False, options: DownloadOptions | None = None) -> Path:
    """Make ``weights_id`` available locally (``lowlight weights download``); return its path.

    Bundled files are returned as they are; ``force`` deletes the cached copy first.
    """
    entry = load_manifest().get(weights_id)
    if force:
        for name in [entry.file] + ([entry.cache_subset.file] if entry.cache_subset else []):
            (cache_dir() / name).unlink(missing_ok=True)
    return _obtain(entry, options)


def verify_entry(entry: WeightsEntry) -> dict[str, Any]:
    """Check the local copy of ``entry`` against the manifest.

    Returns:
        ``{"id", "status": "ok" | "mismatch" | "missing", "where", "path", "expected",
        "actual"}``. A cache subset is checked against the digest recorded when it was
        extracted (its source was checked against the manifest before extraction).
    """
    result: dict[str, Any] = {"id": entry.id, "path": None, "where": None}
    found = local_path(entry)
    if found is None:
        return {**result, "status": "missing", "expected": entry.expected_hash, "actual": None}
    path, where = found
    actual = file_sha256(path)
    if entry.cache_subset is not None and path.name == entry.cache_subset.file:
        sidecar = path.with_name(path.name + ".sha256")
        expected = sidecar.read_text().strip() if sidecar.is_file() else "unknown"
        ok = actual == expected
    else:
        expected = entry.expected_hash
        ok = path.stat().st_size == entry.bytes and (
            actual == entry.sha256 if entry.sha256 else actual.startswith(str(entry.sha256_prefix))
        )
    return {
        **result,
        "path": str(path),
        "where": where,
        "status": "ok" if ok else "mismatch",
        "expected": expected,
        "actual": actual,
    }


def cache_files(manifest: Manifest | None = None) -> list[Path]:
    """Files in the cache that belong to manifest entries (weights, subsets, .part, .lock)."""
    manifest = manifest or load_manifest()
    cache = cache_dir()
    names: set[str] = set()
    for entry in manifest.entries.values():
        for base in [entry.file] + ([entry.cache_subset.file] if entry.cache_subset else []):
            names.update({base, base + ".part", base + ".lock", base + ".sha256"})
    return sorted(cache / n for n in names if (cache / n).is_file())


# --------------------------------------------------------------------------------------------
# State dicts


def read_state_dict(path: str | Path, *, keep_dtype: bool = False) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt`` file into a CPU state dict.

    ``.pth`` files go through ``torch.load(weights_only=True)``, which refuses pickled code.
    A checkpoint dict holding its weights under ``state_dict`` or ``model`` is unwrapped, and a
    ``module.`` prefix (DataParallel) is removed.

    Args:
        path: the file.
        keep_dtype: keep stored dtypes; by default floating tensors become float32.

    Raises:
        WeightsError: unreadable file, unsupported format, not a tensor dict.
    """
    import torch

    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        elif suffix in (".pth", ".pt"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        elif suffix == ".onnx":
            raise WeightsError(
                f"{path.name} is an ONNX model, not a state dict",
                hint="use it with --backend onnx",
            )
        else:
            raise WeightsError(
                f"unsupported weights file {path.name}",
                hint="use a .safetensors, .pth or .pt file",
            )
    except WeightsError:
        raise
    except Exception as exc:  # safetensors/torch raise many types for corrupt files
        raise WeightsError(
            f"cannot read weights {path}: {exc}",
            hint="the file may be truncated or not a weights file; download it again",
        ) from exc
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(
            f"{path} does not hold a state dict of tensors",
            hint="save model.state_dict() (or use the trainer's --export)",
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if keep_dtype:
        return dict(state)
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def default_weights_id(spec: ModelSpec | None, manifest: Manifest | None = None) -> str:
    """The manifest id of ``spec``'s default weights (``manifest``: already read, else read now).

    Raises:
        NoDefaultWeightsError: the model names none, or its id is not in the manifest yet.
    """
    if spec is None or spec.default_weights is None:
        name = spec.name if spec is not None else "this model"
        raise NoDefaultWeightsError(
            f"{name} has no default weights", hint="pass --weights ID or --weights PATH"
        )
    manifest = manifest if manifest is not None else load_manifest()
    if spec.default_weights not in manifest.entries:
        # The registry names the id the default will have (symnet.lol); until such weights
        # are trained and listed, say so plainly and offer what the manifest does have.
        others = sorted(k for k in manifest.entries if k.startswith(f"{spec.name}."))
        raise NoDefaultWeightsError(
            f"{spec.name} has no default weights yet "
            f"('{spec.default_weights}' is not in the manifest)",
            hint=(
                f"pass --weights with one of: {', '.join(others)}; or a file path"
                if others
                else "pass --weights PATH (e.g. the file lowlight train --export writes)"
            ),
        )
    return spec.default_weights


def load_state_dict(ref: str | Path | None, *, spec: ModelSpec | None = None) -> dict[str, Any]:
    """Float32 state dict for a model.

    Args:
        ref: weights id (``neid.lol``; a bare tag ``lol`` means ``<spec.name>.lol``), a path
            (``.safetensors``, ``.pth``, ``.pt``), or None for ``spec.default_weights``.
        spec: the model the weights are for; an id for another model is refused.

    Returns:
        ``dict[str, torch.Tensor]``, floating tensors as float32, on CPU.

    Raises:
        WeightsError: no default weights, weights of another model, missing, corrupt.
    """
    manifest = None
    if ref is None:
        manifest = load_manifest()
        ref = default_weights_id(spec, manifest)
    if not _looks_like_path(ref):
        ref = str(ref)
        if "." not in ref and spec is not None:
            ref = f"{spec.name}.{ref}"
        entry = (manifest or load_manifest()).get(ref)
        if spec is not None and entry.model != spec.name:
            raise WeightsError(
                f"weights '{entry.id}' are for model '{entry.model}', not '{spec.name}'",
                hint=f"pick weights whose id starts with '{spec.name}.' (lowlight weights list)",
            )
    return read_state_dict(resolve_weights(ref))


def _save_safetensors(state: Mapping[str, Any], path: Path, metadata: Mapping[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(dict(state), tmp, metadata=dict(metadata))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_safetensors_fp16(
    state: Mapping[str, Any], path: str | Path, metadata: Mapping[str, Any] | None = None
) -> tuple[str, int]:
    """Write a state dict as fp16 safetensors (atomically) for shipping.

    Floating tensors are stored as float16 (half the size; the loader widens them back to
    float32); integer/bool tensors are kept. Values that overflow float16 are refused rather
    than silently stored as inf.

    Args:
        state: ``name -> torch.Tensor``.
        path: destination ``.safetensors`` file.
        metadata: string metadata (other values are JSON-encoded).

    Returns:
        ``(sha256, bytes)`` of the written file, for :func:`manifest_entry`.

    Raises:
        WeightsError: a tensor does not fit in float16, or the path is not ``.safetensors``.
    """
    import torch

    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path} must end with .safetensors")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        t = value.detach().to("cpu")
        if t.is_floating_point():
            half = t.to(torch.float16)
            if not torch.isfinite(half).all() and torch.isfinite(t).all():
                raise WeightsError(
                    f"tensor '{key}' overflows float16 (max |x| = {t.abs().max().item():.3g})",
                    hint="ship this model in float32 or rescale the layer",
                )
            t = half
        # Copies: safetensors refuses tensors that share memory (tied weights).
        out[key] = t.contiguous().clone()
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    _save_safetensors(out, path, meta)
    return file_sha256(path), path.stat().st_size
