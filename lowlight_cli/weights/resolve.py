"""From a weights reference to a file and a state dict.

Order: an explicit path, the bundled file, the cache, and last a download (never when
``LOWLIGHT_OFFLINE=1``); for VGG-16 only the conv layers are kept in the cache. Also checks
local copies against the manifest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from lowlight_cli.constants import ENV_OFFLINE, ENV_VGG16_PATH, ENV_WEIGHTS_URL
from lowlight_cli.errors import NoDefaultWeightsError, WeightsError
from lowlight_cli.weights.download import (
    DEFAULT_DOWNLOAD,
    DownloadOptions,
    _file_lock,
    _verify_part,
    download_file,
    file_sha256,
)
from lowlight_cli.weights.manifest import FORMATS, VGG16_ID, Manifest, WeightsEntry, load_manifest
from lowlight_cli.weights.state import _save_safetensors, read_state_dict, read_weights_file
from lowlight_cli.weights.store import bundled_dir, cache_dir, download_urls, is_offline, local_path


class ModelRef(Protocol):
    """What the weights need to know of a model; a registry ``ModelSpec`` is one.

    The weights sit below the registry (``registry.load_model`` loads through them), so they
    name a model by its fields instead of importing its type.
    """

    @property
    def name(self) -> str: ...

    @property
    def default_weights(self) -> str | None: ...


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


def default_weights_id(spec: ModelRef | None, manifest: Manifest | None = None) -> str:
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


def load_state_dict(ref: str | Path | None, *, spec: ModelRef | None = None) -> dict[str, Any]:
    """Float32 state dict for a model (:func:`load_weights` without the recorded settings)."""
    return load_weights(ref, spec=spec)[0]


def load_weights(
    ref: str | Path | None, *, spec: ModelRef | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Float32 state dict for a model, and the model settings its file records.

    Args:
        ref: weights id (``neid.lol``; a bare tag ``lol`` means ``<spec.name>.lol``), a path
            (``.safetensors``, ``.pth``, ``.pt``), or None for ``spec.default_weights``.
        spec: the model the weights are for; an id for another model is refused.

    Returns:
        ``(state, settings)``: ``dict[str, torch.Tensor]`` (floating tensors as float32, on
        CPU) and the constructor keyword arguments the file records (``{}`` if none;
        :func:`~lowlight_cli.weights.state.read_weights_file`).

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
    return read_weights_file(resolve_weights(ref))
