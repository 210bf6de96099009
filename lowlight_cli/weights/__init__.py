"""Model weights: the manifest, the local cache, verified downloads and state-dict loading.

Where a weights file comes from, in order: an explicit path (``--weights PATH``), the files
bundled in the package (``lowlight_cli/bundled/<file>``), the user cache (platformdirs, or
``LOWLIGHT_CACHE_DIR``), and last a download (never when ``LOWLIGHT_OFFLINE=1``).

A download streams into ``<cache>/<file>.part`` under a cross-process file lock, resumes a partial
file with an HTTP ``Range`` request, checks the sha256 and only then renames the file into place,
so the cache never holds an unverified file. Loading uses safetensors or
``torch.load(weights_only=True)``, never pickle code execution.

One module per concern: :mod:`.manifest` (schema, reading, new entries), :mod:`.store`
(bundled folder, cache, offline switch, URLs), :mod:`.download` (verified, resumable downloads),
:mod:`.state` (reading and writing state-dict files) and :mod:`.resolve` (a reference to a file
and a state dict). Their public names are importable from here.

torch, requests and rich are imported inside the functions that need them so that importing this
package (``lowlight weights list``, the registry) stays cheap.
"""

from __future__ import annotations

from lowlight_cli.weights.download import (
    DEFAULT_DOWNLOAD,
    DownloadOptions,
    download_file,
    file_sha256,
)
from lowlight_cli.weights.manifest import (
    FORMATS,
    SCHEMA_VERSION,
    SOURCE_TYPES,
    VGG16_ID,
    CacheSubset,
    Manifest,
    WeightsEntry,
    check_file_name,
    load_manifest,
    manifest_entry,
    manifest_path,
    parse_manifest,
)
from lowlight_cli.weights.resolve import (
    ModelRef,
    default_weights_id,
    download_entry,
    fetch,
    load_state_dict,
    load_weights,
    resolve_vgg16,
    resolve_weights,
    verify_entry,
)
from lowlight_cli.weights.state import read_state_dict, read_weights_file, save_safetensors_fp16
from lowlight_cli.weights.store import (
    bundled_dir,
    cache_dir,
    cache_files,
    download_urls,
    is_offline,
    local_path,
)

__all__ = [
    "DEFAULT_DOWNLOAD",
    "FORMATS",
    "SCHEMA_VERSION",
    "SOURCE_TYPES",
    "VGG16_ID",
    "CacheSubset",
    "DownloadOptions",
    "Manifest",
    "ModelRef",
    "WeightsEntry",
    "bundled_dir",
    "cache_dir",
    "cache_files",
    "check_file_name",
    "default_weights_id",
    "download_entry",
    "download_file",
    "download_urls",
    "fetch",
    "file_sha256",
    "is_offline",
    "load_manifest",
    "load_state_dict",
    "load_weights",
    "local_path",
    "manifest_entry",
    "manifest_path",
    "parse_manifest",
    "read_state_dict",
    "read_weights_file",
    "resolve_vgg16",
    "resolve_weights",
    "save_safetensors_fp16",
    "verify_entry",
]
