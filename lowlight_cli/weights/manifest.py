"""The weights manifest: its schema, reading and validating it, and building new entries."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from lowlight_cli.constants import ENV_MANIFEST, MANIFEST_FILENAME, PACKAGE_NAME
from lowlight_cli.errors import WeightsError

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
    return Path(__file__).resolve().parents[2] / MANIFEST_FILENAME


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
