"""Speed, a small roofline, machine facts, report writers, a plot and a before/after gallery.

Speed is measured through the engine (:class:`lowlight_cli.engine.Enhancer`, automatic tiling
included), so the numbers are what ``lowlight enhance`` delivers, on either path: ``fast`` (the
default: the model at the working size, its effect carried to the full size by edge-aware
upsampling) or ``full-res`` (the model on every pixel, in tiles). Each configuration (model x
backend x device x precision x size) runs in a fresh Python process: its peak memory is then its
own, not the high-water mark of whatever ran before it in the same process.

The roofline is deliberately small: every model's FLOPs per pixel (counted once with
:class:`torch.utils.flop_counter.FlopCounterMode` on a small input) times the pixels it enhanced
per second, divided by the convolution throughput this machine reached in the same run (a 3x3
64->64 convolution on a 512x512 input). It says how far a model is from "compute bound at the
speed of a plain convolution", not an absolute hardware peak.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata, util
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowlight_cli.constants import DEFAULT_BENCHMARK_BUDGET_S
from lowlight_cli.devices import precision_dtype
from lowlight_cli.errors import LowlightError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

# Default sizes (width x height): a LOL frame, a 4 MP photo and a 12 MP one. On a CPU the
# full-resolution path takes minutes per model at 12 MP: the budget skips it there (with its
# estimate), while the fast path's rows run.
DEFAULT_SIZES: dict[str, tuple[tuple[int, int], ...]] = {
    "cpu": ((600, 400), (2400, 1600), (4000, 3000)),
    "gpu": ((600, 400), (2400, 1600), (4000, 3000)),
}
PATHS = ("fast", "full-res")
# Seconds per megapixel of photo the fast path spends around the model (shrinking, fitting and
# applying the colour transforms), for estimates only: about 0.2 s/MP measured on a 2-core CPU,
# rounded up so that an estimate errs on the long side.
FAST_PATH_S_PER_MP = 0.25
# Timed runs and warm-up runs per configuration; CPUs get few because one run takes seconds.
DEFAULT_REPEATS = {"cpu": 3, "gpu": 10}
DEFAULT_WARMUP = {"cpu": 1, "gpu": 3}
# Seconds one configuration may take (warm-up + timed runs); after that it stops timing, and a
# configuration predicted to exceed it is skipped with its estimate instead of run
# (DEFAULT_BENCHMARK_BUDGET_S, in constants so the CLI can show it without importing this module).
# A worker that has not answered after budget * this + startup is killed (a hard stop).
_HARD_TIMEOUT_FACTOR = 3.0
_WORKER_STARTUP_S = 60.0
# Roofline probe: a 3x3 64->64 convolution on a 512x512 input (19.3 GFLOP per run).
ROOFLINE_CHANNELS = 64
ROOFLINE_SIDE = 512
ROOFLINE_REPEATS = 3
# FLOPs are counted on a square input of about this side (rounded up to the size multiple).
FLOP_PROBE_SIDE = 64
# Dark synthetic input for speed runs: speed does not depend on content, but keep it plausible.
_SPEED_INPUT_MAX = 0.25
# Gallery: each panel is scaled to this height; label strip height in pixels.
GALLERY_PANEL_HEIGHT = 240
_GALLERY_LABEL_HEIGHT = 22


@dataclass(frozen=True)
class SpeedConfig:
    """One speed measurement to make.

    Attributes:
        model: registry name.
        backend: ``torch`` or ``onnx``.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (already resolved, not ``auto``).
        precision: ``fp32``, ``fp16`` or ``bf16``.
        height: input height in pixels.
        width: input width in pixels.
        repeats: timed runs (at most; fewer when the budget runs out, never fewer than one).
        warmup: untimed runs first.
        budget_s: seconds the configuration may take in all.
        weights: weights id or path, or None for the model's default.
        random_if_missing: use untrained weights when the weights cannot be loaded (speed does
            not depend on the values of the weights).
        tile: the engine's ``tile`` option (``auto`` = what users get).
        path: ``fast`` (the default working size) or ``full-res`` (every pixel).
    """

    model: str
    backend: str
    device: str
    precision: str
    height: int
    width: int
    repeats: int = 3
    warmup: int = 1
    budget_s: float = DEFAULT_BENCHMARK_BUDGET_S
    weights: str | None = None
    random_if_missing: bool = True
    tile: str = "auto"
    path: str = "fast"


@dataclass
class MachineInfo:
    """What the numbers were measured on."""

    cpu: str
    cores: int
    torch_threads: int
    memory_gb: float
    python: str
    platform: str
    torch: str
    onnxruntime: str | None
    devices: dict[str, str] = field(default_factory=dict)
    conv_gflops: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Parsing


def parse_sizes(text: str | None) -> list[tuple[int, int]] | None:
    """``"600x400,2400x1600"`` -> ``[(600, 400), (2400, 1600)]`` (width x height); None -> None.

    Raises:
        UsageError: a part that is not ``WxH`` with positive integers.
    """
    if text is None or not text.strip():
        return None
    sizes = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        w, sep, h = part.partition("x")
        if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
            raise UsageError(f"bad size '{part}'", hint="write WIDTHxHEIGHT, e.g. 600x400")
        sizes.append((int(w), int(h)))
    return sizes or None


def parse_list(
    text: str, *, allowed: Sequence[str] | None = None, what: str = "value"
) -> list[str]:
    """``"a, b,a"`` -> ``["a", "b"]`` (lower-cased, order kept, duplicates dropped).

    Raises:
        UsageError: empty, or a value outside ``allowed`` (prefix before ``:`` is checked).
    """
    out: list[str] = []
    for part in text.split(","):
        item = part.strip().lower()
        if not item or item in out:
            continue
        if allowed is not None and item.split(":", 1)[0] not in allowed:
            raise UsageError(f"unknown {what} '{item}'", hint=f"choose from: {', '.join(allowed)}")
        out.append(item)
    if not out:
        raise UsageError(f"no {what} given")
    return out


def device_kind(device: str) -> str:
    """``cpu`` for the CPU, ``gpu`` for anything else (CUDA, MPS)."""
    return "cpu" if device.split(":", 1)[0] == "cpu" else "gpu"


def resolve_device_name(device: str) -> str:
    """``auto`` -> the concrete device it picks (``cpu``, ``cuda:0``, ``mps``), as text."""
    from lowlight_cli.devices import resolve_device

    dev = resolve_device(device)
    return dev.type if dev.index is None else f"{dev.type}:{dev.index}"


def backend_available(name: str) -> str | None:
    """None when backend ``name`` can run here, else the reason it cannot (for a note)."""
    if name == "torch":
        return None
    if util.find_spec(f"lowlight_cli.backends.{name}") is None:
        return f"the {name} backend is not part of this build yet"
    if name == "onnx" and util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install 'lowlight[onnx]')"
    return None


# ---------------------------------------------------------------------------------------------
# Machine and roofline


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_gb() -> float:
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return round(pages * page / 1024**3, 1)
    except (AttributeError, ValueError, OSError):
        return float("nan")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(devices: Sequence[str] = ("cpu",)) -> MachineInfo:
    """CPU model, cores, memory, library versions and the names of ``devices`` (no timing)."""
    import torch

    names: dict[str, str] = {}
    for dev in devices:
        if dev.startswith("cuda"):
            names[dev] = torch.cuda.get_device_name(torch.device(dev))
        elif dev == "mps":
            names[dev] = "Apple MPS"
        else:
            names[dev] = _cpu_name()
    return MachineInfo(
        cpu=_cpu_name(),
        cores=os.cpu_count() or 1,
        torch_threads=torch.get_num_threads(),
        memory_gb=_memory_gb(),
        python=platform.python_version(),
        platform=platform.platform(terse=True),
        torch=torch.__version__,
        onnxruntime=_version("onnxruntime"),
        devices=names,
    )


def _synchronize(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_conv_gflops(
    device: str = "cpu",
    precision: str = "fp32",
    *,
    side: int | None = None,
    channels: int = ROOFLINE_CHANNELS,
    repeats: int = ROOFLINE_REPEATS,
) -> float:
    """This machine's throughput on a 3x3 ``channels``->``channels`` conv, in GFLOP/s (median).

    Counts a multiply-add as two FLOPs, as :class:`~torch.utils.flop_counter.FlopCounterMode`
    does, so the two can be divided. ``side`` defaults to :data:`ROOFLINE_SIDE`.
    """
    import torch

    side = side or ROOFLINE_SIDE
    dtype = precision_dtype(precision)
    dev = torch.device(device)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(dev, dtype).eval()
    x = torch.rand(1, channels, side, side, device=dev, dtype=dtype)
    flops = 2.0 * channels * channels * 9 * side * side
    times = []
    with torch.inference_mode():
        conv(x)  # warm-up: kernel selection, allocator
        _synchronize(dev)
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            conv(x)
            _synchronize(dev)
            times.append(time.perf_counter() - start)
    return flops / float(np.median(times)) / 1e9


def count_flops(model: nn.Module, height: int, width: int) -> float:
    """FLOPs of one forward pass of ``model`` on a ``(1, 3, height, width)`` input (CPU, fp32)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return float(counter.get_total_flops())


def gflops_per_megapixel(name: str, *, side: int = FLOP_PROBE_SIDE) -> float:
    """GFLOPs one megapixel of input costs model ``name`` (random weights; counted, not timed).

    Classical models run OpenCV/NumPy code the counter cannot see; they report ~0.
    """
    from lowlight_cli.registry import create_model, get_spec

    spec = get_spec(name)
    s = -(-side // spec.size_multiple) * spec.size_multiple
    flops = count_flops(create_model(spec.name), s, s)
    return flops / (s * s) * 1e6 / 1e9


# ---------------------------------------------------------------------------------------------
# Speed: parent side


def speed_row(
    config: SpeedConfig, result: dict[str, Any], gflops_mp: float | None, conv_gflops: float | None
) -> dict[str, Any]:
    """Merge a worker's ``result`` with the config and the roofline numbers into a JSON row."""
    row: dict[str, Any] = {
        "model": config.model,
        "backend": config.backend,
        "device": config.device,
        "precision": config.precision,
        "height": config.height,
        "width": config.width,
        "path": config.path,
        "working_size": None,
        "median_s": None,
        "p90_s": None,
        "mp_per_s": None,
        "peak_mem_mb": None,
        "base_mem_mb": None,
        "gflops_per_mp": None if gflops_mp is None else round(gflops_mp, 3),
        "achieved_gflops": None,
        "roofline_fraction": None,
        "runs": 0,
        "tile": None,
        "weights": None,
        "mem_method": None,
        "note": None,
    }
    row.update({k: v for k, v in result.items() if k in row})
    median = row["median_s"]
    if median:
        mp = config.height * config.width / 1e6
        row["mp_per_s"] = _sig(mp / median)
        if gflops_mp:
            # The model's work: on the fast path it sees the working size, not the photo.
            w, h = row["working_size"] or (config.width, config.height)
            achieved = gflops_mp * (w * h / 1e6) / median
            row["achieved_gflops"] = _sig(achieved)
            if conv_gflops:
                row["roofline_fraction"] = _sig(achieved / conv_gflops)
    return row


def _sig(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant figures (slow models run at 0.001 MP/s)."""
    return float(f"{value:.{digits}g}")


def run_speed_config(config: SpeedConfig) -> dict[str, Any]:
    """Run one configuration in a fresh Python process and return the worker's result dict.

    Never raises for a failing configuration: the result then carries a ``note``.
    """
    payload = json.dumps(asdict(config))
    timeout = config.budget_s * _HARD_TIMEOUT_FACTOR + _WORKER_STARTUP_S
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lowlight_cli.benchmarking"],
            input=payload,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"note": f"killed after {timeout:.0f} s (over budget)"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"note": f"worker failed (exit {proc.returncode}): {tail}"}
    return json.loads(lines[-1])


def model_megapixels(config: SpeedConfig) -> float:
    """Megapixels the model itself sees in ``config``: the working size on the fast path."""
    from lowlight_cli.engine import default_working_size, shrunk_shape
    from lowlight_cli.registry import get_spec

    mp = config.height * config.width / 1e6
    if config.path != "fast":
        return mp
    small = shrunk_shape(
        config.height, config.width, default_working_size(get_spec(config.model), config.device)
    )
    return mp if small is None else small[0] * small[1] / 1e6


def estimate_seconds(
    config: SpeedConfig,
    gflops_mp: float | None,
    conv_gflops: float | None,
    seconds_per_mp: float | None,
) -> float | None:
    """Predicted seconds of one run: from a smaller size already measured, else from FLOPs.

    ``seconds_per_mp`` is the model's time per megapixel it sees; on the fast path that is the
    working size, plus :data:`FAST_PATH_S_PER_MP` for the photo around it. The FLOP-based
    estimate assumes the model runs at the full convolution throughput, so it is a lower bound:
    a configuration is skipped only when even that does not fit.
    """
    mp = config.height * config.width / 1e6
    model_mp = model_megapixels(config)
    around = FAST_PATH_S_PER_MP * mp if model_mp < mp else 0.0
    if seconds_per_mp is not None:
        return seconds_per_mp * model_mp + around
    if gflops_mp and conv_gflops:
        return gflops_mp * model_mp / conv_gflops + around
    return None


def measure_speed(
    configs: Sequence[SpeedConfig],
    *,
    conv_gflops: dict[str, float],
    gflops_mp: dict[str, float | None],
    runner: Callable[[SpeedConfig], dict[str, Any]] = run_speed_config,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Measure every configuration (smallest sizes first), skipping those that cannot fit.

    Args:
        configs: what to measure.
        conv_gflops: :func:`roofline_key` -> measured conv GFLOP/s (the roofline).
        gflops_mp: model -> GFLOPs per megapixel (None when unknown).
        runner: runs one config (a fresh process by default; tests may run in-process).
        on_row: called with each finished row (progress).

    Returns:
        One row per config (see :func:`speed_row`), in the order of ``configs``.
    """
    order = sorted(range(len(configs)), key=lambda i: configs[i].height * configs[i].width)
    per_mp: dict[tuple[str, ...], float] = {}
    rows: dict[int, dict[str, Any]] = {}
    for i in order:
        cfg = configs[i]
        key = (cfg.model, cfg.backend, cfg.device, cfg.precision)
        roof = conv_gflops.get(roofline_key(cfg.device, cfg.precision))
        est = estimate_seconds(cfg, gflops_mp.get(cfg.model), roof, per_mp.get(key))
        if est is not None and est * (1 + cfg.warmup) > cfg.budget_s:
            result: dict[str, Any] = {
                "note": f"skipped: about {est:.0f} s per run (estimate) is over the "
                f"{cfg.budget_s:.0f} s budget; raise --budget to measure it"
            }
        else:
            result = runner(cfg)
            if result.get("median_s") and not result.get("working_size"):
                # Only whole-model runs tell the model's time per megapixel.
                per_mp[key] = result["median_s"] / (cfg.height * cfg.width / 1e6)
        row = speed_row(cfg, result, gflops_mp.get(cfg.model), roof)
        if est is not None and row["median_s"] is None:
            row["estimated_s"] = round(est, 2)
        rows[i] = row
        if on_row is not None:
            on_row(row)
    return [rows[i] for i in range(len(configs))]


def roofline_key(device: str, precision: str) -> str:
    """Key of :attr:`MachineInfo.conv_gflops`: ``"cpu/fp32"``, ``"cuda:0/bf16"``."""
    return f"{device}/{precision}"


# ---------------------------------------------------------------------------------------------
# Speed: worker side (runs in its own process)


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux ``clear_refs`` 5); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _rss_mb() -> float | None:
    """Current resident memory in MiB (Linux), or None (CUDA rows report device memory)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mb() -> tuple[float, str]:
    """Peak resident memory of this process in MiB, and how it was read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "VmHWM"
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return (peak / 1024**2 if sys.platform == "darwin" else peak / 1024), "ru_maxrss"


def _build_enhancer(config: SpeedConfig) -> tuple[Any, str]:
    """The Enhancer a user would get, or one with untrained weights when none can be loaded."""
    from lowlight_cli.engine import Enhancer
    from lowlight_cli.errors import WeightsError
    from lowlight_cli.registry import create_model, get_spec

    spec = get_spec(config.model)
    working_size = "auto" if config.path == "fast" else "full"
    try:
        enh = Enhancer.create(
            config.model,
            weights=config.weights,
            device=config.device,
            precision=config.precision,
            backend=config.backend,
            tile=config.tile,
            working_size=working_size,
        )
        label = "none" if spec.kind != "neural" else (config.weights or spec.default_weights)
        return enh, str(label)
    except WeightsError:
        if not config.random_if_missing or config.backend != "torch":
            raise
    enh = Enhancer(
        create_model(spec.name),
        spec=spec,
        device=config.device,
        precision=config.precision,
        tile=config.tile,
        working_size=working_size,
    )
    return enh, "random (untrained; speed does not depend on weight values)"


def measure_config(config: SpeedConfig) -> dict[str, Any]:
    """Time one configuration in this process (meant for a fresh one; see the module notes).

    Returns:
        ``median_s``, ``p90_s``, ``runs``, ``peak_mem_mb``, ``mem_method``, ``tile``,
        ``weights``, and ``note`` when the budget cut the timed runs short.
    """
    import torch

    enh, weights_label = _build_enhancer(config)
    rng = np.random.default_rng(0)
    image = rng.random((config.height, config.width, 3), dtype=np.float32) * _SPEED_INPUT_MAX
    small = enh.working_shape(config.height, config.width)
    model_shape = small or (config.height, config.width)
    tile = enh.tile if enh.tile is not None else enh.auto_tile(*model_shape)
    cuda = config.device.startswith("cuda")
    base: float | None = None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 1024**2
        mem_method = "torch.cuda.max_memory_allocated"
    else:
        mem_method = "since reset" if _reset_peak_rss() else "whole fresh process"
        base = _rss_mb()
    start = time.perf_counter()
    for _ in range(config.warmup):
        enh.enhance(image)
    times: list[float] = []
    note = None
    while len(times) < max(1, config.repeats):
        t0 = time.perf_counter()
        enh.enhance(image)  # returns a NumPy array, so GPU work has finished
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > config.budget_s and len(times) < config.repeats:
            note = f"budget reached after {len(times)} of {config.repeats} timed runs"
            break
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 1024**2
    else:
        peak, how = _peak_rss_mb()
        mem_method = f"{how}, {mem_method}"
    return {
        "median_s": round(float(np.median(times)), 5),
        "p90_s": round(float(np.percentile(times, 90)), 5),
        "runs": len(times),
        "peak_mem_mb": round(peak, 1),
        "base_mem_mb": None if base is None else round(base, 1),
        "mem_method": mem_method,
        "tile": "whole image" if not tile or not enh.spec.supports_tiling else tile,
        "path": "full-res" if small is None else "fast",
        "working_size": None if small is None else [small[1], small[0]],
        "weights": weights_label,
        "note": note,
    }


def _worker_main() -> None:
    """Read one :class:`SpeedConfig` as JSON on stdin, print its result as one JSON line."""
    config = SpeedConfig(**json.loads(sys.stdin.read()))
    try:
        result = measure_config(config)
    except LowlightError as err:
        result = {"note": f"failed: {err.message}" + (f" ({err.hint})" if err.hint else "")}
    sys.stdout.write(json.dumps(result) + "\n")


# ---------------------------------------------------------------------------------------------
# Report writers


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.{digits}f}"
    return str(value)


QUALITY_COLUMNS = (
    "model", "PSNR (dB)", "SSIM", "PSNR, GT mean", "SSIM, GT mean", "images", "note",
)  # fmt: skip


def quality_table_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Quality rows as text cells in the order of :data:`QUALITY_COLUMNS`."""
    return [
        [
            r["model"],
            _fmt(r["psnr"], 2),
            _fmt(r["ssim"], 4),
            _fmt(r.get("psnr_gt_mean"), 2),
            _fmt(r.get("ssim_gt_mean"), 4),
            str(r["n_images"]),
            r.get("note", ""),
        ]
        for r in rows
    ]


UNTRAINED_NOTE = "model* = timed with untrained weights (speed does not depend on their values)"
SPEED_COLUMNS = (
    "model", "backend", "device", "precision", "size", "path", "median s", "p90 s", "MP/s",
    "peak MB", "GFLOP/MP", "roofline", "note",
)  # fmt: skip


def speed_table_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Speed rows as text cells in the order of :data:`SPEED_COLUMNS`."""
    out = []
    for r in rows:
        frac = r.get("roofline_fraction")
        note = r.get("note") or ""
        untrained = str(r.get("weights") or "").startswith("random")
        out.append([
            r["model"] + ("*" if untrained else ""), r["backend"], r["device"], r["precision"],
            f"{r['width']}x{r['height']}", path_label(r),
            _fmt(r["median_s"]), _fmt(r["p90_s"]), _fmt(r["mp_per_s"]), _fmt(r["peak_mem_mb"], 0),
            _fmt(r["gflops_per_mp"], 1), "—" if frac is None else f"{100 * frac:.1f}%", note,
        ])  # fmt: skip
    return out


def path_label(row: dict[str, Any]) -> str:
    """``fast (816x612)``: the model at the working size; ``full-res``: on every pixel."""
    small = row.get("working_size")
    if row.get("path") == "fast" and small:
        return f"fast ({small[0]}x{small[1]})"
    return str(row.get("path") or "full-res")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    """The report (machine, quality, speed) as Markdown tables."""
    parts = ["# lowlight benchmark", ""]
    machine = report.get("machine")
    if machine:
        conv = ", ".join(f"{k}: {v:.1f}" for k, v in machine.get("conv_gflops", {}).items())
        parts += [
            "## Machine",
            "",
            f"- CPU: {machine['cpu']} ({machine['cores']} cores, torch uses "
            f"{machine['torch_threads']} threads), {machine['memory_gb']} GB RAM",
            f"- devices: {', '.join(f'{k} = {v}' for k, v in machine['devices'].items())}",
            f"- torch {machine['torch']}, onnxruntime {machine['onnxruntime'] or 'not installed'}, "
            f"Python {machine['python']}, {machine['platform']}",
            f"- measured 3x3 64->64 conv throughput (GFLOP/s): {conv or '—'}",
            "",
        ]
    if report.get("quality") is not None:
        parts += [
            "## Quality (mean over pairs)",
            "",
            _md_table(QUALITY_COLUMNS, quality_table_rows(report["quality"])),
            "",
        ]
    if report.get("speed") is not None:
        parts += [
            "## Speed (through the engine, after warm-up)",
            "",
            _md_table(SPEED_COLUMNS, speed_table_rows(report["speed"])),
            "",
        ]
    notes = list(report.get("notes") or [])
    if any(str(r.get("weights") or "").startswith("random") for r in report.get("speed") or []):
        notes.append(UNTRAINED_NOTE)
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(parts)


def write_markdown(path: str | Path, report: dict[str, Any]) -> Path:
    """Write :func:`render_markdown` of ``report`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(report), encoding="utf-8")
    return path


def write_json(path: str | Path, report: dict[str, Any]) -> Path:
    """Write ``report`` as indented JSON to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def plot_points(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One point per model/backend: PSNR against MP/s on the first device and precision timed.

    Points use the largest size that every plotted model was timed at, so they compare like
    with like; when there is no such size, each uses its own largest (named in the label).
    Models with no quality row or no timing are left out.
    """
    psnr = {r["model"]: r["psnr"] for r in report.get("quality") or [] if r["psnr"] is not None}
    timed = [r for r in report.get("speed") or [] if r["model"] in psnr and r.get("mp_per_s")]
    if not timed:
        return []
    setting = (timed[0]["device"], timed[0]["precision"])
    timed = [r for r in timed if (r["device"], r["precision"]) == setting]
    by_key: dict[tuple[str, str], dict[tuple[int, int], dict[str, Any]]] = {}
    for r in timed:
        by_key.setdefault((r["model"], r["backend"]), {})[(r["width"], r["height"])] = r
    common = set.intersection(*(set(sizes) for sizes in by_key.values()))
    points = []
    for (model, backend), sizes in by_key.items():
        size = max(common or sizes, key=lambda wh: wh[0] * wh[1])
        r = sizes[size]
        label = model if backend == "torch" else f"{model} ({backend})"
        if not common:
            label += f" @ {size[0]}x{size[1]}"
        points.append(
            {
                "label": label,
                "mp_per_s": r["mp_per_s"],
                "psnr": psnr[model],
                "size": f"{size[0]}x{size[1]}" if common else "mixed sizes",
                "device": r["device"],
            }
        )
    return points


def write_plot(path: str | Path, report: dict[str, Any]) -> Path:
    """Quality (PSNR) against speed (MP/s, log scale) scatter as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = plot_points(report)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    try:
        for p in points:
            ax.scatter(p["mp_per_s"], p["psnr"], s=40)
            ax.annotate(p["label"], (p["mp_per_s"], p["psnr"]), xytext=(5, 4),
                        textcoords="offset points", fontsize=9)  # fmt: skip
        if points:
            from matplotlib.ticker import NullFormatter, ScalarFormatter

            ax.set_xscale("log")
            # Plain numbers: the models span decades, but the classical ones alone do not.
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            sizes = sorted({f"{p['size']} on {p['device']}" for p in points})
            ax.set_title(f"quality vs speed ({'; '.join(sizes)})", fontsize=10)
        else:
            ax.text(0.5, 0.5, "no model has both a quality score and a timing",
                    ha="center", va="center", transform=ax.transAxes)  # fmt: skip
        ax.set_xlabel("megapixels per second (higher is faster)")
        ax.set_ylabel("PSNR (dB, higher is better)")
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Gallery


def thumbnail(pixels: np.ndarray, height: int = GALLERY_PANEL_HEIGHT) -> np.ndarray:
    """``(H, W, 3)`` float [0, 1] (or uint8) -> ``(height, W', 3)`` uint8, aspect kept."""
    import cv2

    img = pixels if pixels.dtype == np.uint8 else np.round(np.clip(pixels, 0, 1) * 255)
    img = np.ascontiguousarray(img.astype(np.uint8))
    h, w = img.shape[:2]
    width = max(1, round(w * height / h))
    interp = cv2.INTER_AREA if height < h else cv2.INTER_CUBIC
    return cv2.resize(img, (width, height), interpolation=interp)


def compose_row(panels: Sequence[tuple[str, np.ndarray]], *, gap: int = 4) -> np.ndarray:
    """Panels side by side, each with its label in a strip above it; ``(H, W, 3)`` uint8."""
    from PIL import Image, ImageDraw

    height = max(p.shape[0] for _, p in panels)
    width = sum(p.shape[1] for _, p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, height + _GALLERY_LABEL_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for label, panel in panels:
        canvas.paste(Image.fromarray(panel), (x, _GALLERY_LABEL_HEIGHT))
        draw.text((x + 4, 4), label, fill=(0, 0, 0))
        x += panel.shape[1] + gap
    return np.asarray(canvas)


def write_gallery(
    directory: str | Path,
    names: Sequence[str],
    inputs: Sequence[np.ndarray],
    outputs: dict[str, Sequence[np.ndarray]],
    targets: Sequence[np.ndarray | None] | None = None,
) -> list[Path]:
    """One labelled before/after strip per image: input, each model, ground truth.

    Args:
        directory: where the JPEGs go (created).
        names: image names (file stems).
        inputs: the dark inputs, ``(H, W, 3)`` uint8 or float [0, 1], or thumbnails.
        outputs: model -> its outputs (or thumbnails) in the order of ``names``.
        targets: ground truth per image, or None where there is none.

    Returns:
        The files written.
    """
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for i, name in enumerate(names):
        panels = [("input", thumbnail(inputs[i]))]
        panels += [(model, thumbnail(outs[i])) for model, outs in outputs.items()]
        if targets is not None and targets[i] is not None:
            panels.append(("ground truth", thumbnail(targets[i])))
        path = directory / f"{Path(name).stem}.jpg"
        Image.fromarray(compose_row(panels)).save(path, quality=90)
        written.append(path)
    return written


if __name__ == "__main__":
    _worker_main()
