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
ENV_CACHE_DIR = "LOWLIGHT_CACHE_DIR"
ENV_MANIFEST = "LOWLIGHT_MANIFEST"
ENV_WEIGHTS_URL = "LOWLIGHT_WEIGHTS_URL"
ENV_OFFLINE = "LOWLIGHT_OFFLINE"
ENV_VGG16_PATH = "LOWLIGHT_VGG16_PATH"
ENV_HEAP_TUNING = "LOWLIGHT_HEAP_TUNING"  # "0": leave glibc's malloc settings alone

# The default is the model whose shipped weights score best on LOL eval15 (nrl 19.20 dB /
# 0.713 SSIM; neid's interim CPU weights 16.00 / 0.639, below the gamma baseline's 16.38 dB,
# with blurred, colour-shifted output). Revisit when GPU-trained weights land (docs/models.md).
DEFAULT_MODEL = "nrl"
DEFAULT_DEVICE = "auto"
DEFAULT_PRECISION = "fp32"
DEFAULT_BACKEND = "torch"
DEFAULT_SUFFIX = "_enhanced"
DEFAULT_STDOUT_FORMAT = "png"
DEFAULT_JPEG_QUALITY = 95
DEFAULT_TILE_OVERLAP = 32
# Seconds one benchmark speed configuration may take (`lowlight benchmark --budget`).
DEFAULT_BENCHMARK_BUDGET_S = 60.0

# Decompression-bomb guard: refuse images above this many pixels (about 16k x 16k).
MAX_IMAGE_PIXELS = 268_435_456

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "fp16", "bf16")
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
