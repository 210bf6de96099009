"""Where weights live on this computer: the package's bundled folder, the user cache
(platformdirs, or ``LOWLIGHT_CACHE_DIR``), the offline switch and the download URLs.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from lowlight_cli.constants import (
    APP_NAME,
    BUNDLED_WEIGHTS_DIR,
    ENV_CACHE_DIR,
    ENV_OFFLINE,
    ENV_WEIGHTS_URL,
    PACKAGE_NAME,
)
from lowlight_cli.weights.manifest import Manifest, WeightsEntry, load_manifest

_TRUE = {"1", "true", "yes", "on"}


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


def cache_files(manifest: Manifest | None = None) -> list[Path]:
    """Files in the cache that belong to manifest entries (weights, subsets, .part, .lock)."""
    manifest = manifest or load_manifest()
    cache = cache_dir()
    names: set[str] = set()
    for entry in manifest.entries.values():
        for base in [entry.file] + ([entry.cache_subset.file] if entry.cache_subset else []):
            names.update({base, base + ".part", base + ".lock", base + ".sha256"})
    return sorted(cache / n for n in names if (cache / n).is_file())
