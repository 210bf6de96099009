"""Names, environment variables, defaults and exit codes shared across the program."""

from __future__ import annotations

from enum import IntEnum

VERSION = "0.1.0"  # the package version (pyproject reads it here)
APP_NAME = "lowlight"
PACKAGE_NAME = "lowlight_cli"
MANIFEST_FILENAME = "weights_manifest.json"
BUNDLED_WEIGHTS_DIR = "bundled"  # inside the package: lowlight_cli/bundled/*.safetensors

# Environment variables (every often-used option has one).
ENV_DEVICE = "LOWLIGHT_DEVICE"
ENV_PRECISION = "LOWLIGHT_PRECISION"
ENV_MODEL = "LOWLIGHT_MODEL"
ENV_BACKEND = "LOWLIGHT_BACKEND"
ENV_TILE = "LOWLIGHT_TILE"
ENV_WORKING_SIZE = "LOWLIGHT_WORKING_SIZE"
ENV_CACHE_DIR = "LOWLIGHT_CACHE_DIR"
ENV_MANIFEST = "LOWLIGHT_MANIFEST"
ENV_WEIGHTS_URL = "LOWLIGHT_WEIGHTS_URL"
ENV_OFFLINE = "LOWLIGHT_OFFLINE"
ENV_VGG16_PATH = "LOWLIGHT_VGG16_PATH"
ENV_DATA_DIR = "LOWLIGHT_DATA_DIR"  # holds lol/ (train and benchmark without --data)
ENV_HEAP_TUNING = "LOWLIGHT_HEAP_TUNING"  # "0": leave glibc's malloc settings alone

# The default is the model whose shipped weights score best on LOL eval15 and look natural on
# real photos: nrl 20.82 dB / 0.784 SSIM (neid 19.22 / 0.751, softer; frlie
# 18.66 / 0.741 with its coarse pass, noisier). Revisit when the others catch up
# (docs/models.md).
DEFAULT_MODEL = "nrl"
DEFAULT_DEVICE = "auto"
# "auto": bf16 where the CPU computes it faster than fp32 (AMX) for models whose output stays
# within 40 dB of fp32 (ModelSpec.bf16_auto), fp32 everywhere else (devices.resolve_precision).
DEFAULT_PRECISION = "auto"
DEFAULT_BACKEND = "torch"
DEFAULT_SUFFIX = "_enhanced"
DEFAULT_STDOUT_FORMAT = "png"
DEFAULT_JPEG_QUALITY = 95
DEFAULT_TILE_OVERLAP = 32
# Megapixels the model works at by default (the fast path: docs/usage.md, "Working resolution"),
# per device kind; photos up to this size run at full resolution anyway. On LOL eval15 enlarged
# 4x, every working size from 0.24 to 1 MP scored within 0.1 dB of full resolution or above it
# (frlie +0.3 to +0.6 dB). The CPU takes 0.5 MP: symnet needs 30 s for its model pass there (a
# 12 MP photo stays under a minute, 1 MP would not) and nrl is 0.03 dB from full resolution.
# GPUs take 1 MP, the best-scoring size measured for nrl and neid; a GPU's model time at that
# size is not the constraint (not measured: no GPU was available).
DEFAULT_WORKING_SIZE_MP: dict[str, float] = {"cpu": 0.5, "cuda": 1.0, "mps": 1.0}
# Seconds one benchmark speed configuration may take (`lowlight benchmark --budget`).
DEFAULT_BENCHMARK_BUDGET_S = 60.0

# Decompression-bomb guard: refuse images above this many pixels (about 16k x 16k).
MAX_IMAGE_PIXELS = 268_435_456

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
BACKENDS = ("torch", "onnx")


class ExitCode(IntEnum):
    """Process exit codes; mapped in one place, ``lowlight_cli.cli.main``."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    IMAGE = 3
    WEIGHTS = 4
    RESOURCE = 5
    BATCH_FAILED = 6
