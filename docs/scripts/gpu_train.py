"""Train the shipped weights on a lent GPU machine, inside its limits (see DEVELOPERS.md).

The machine takes at most 64 MiB of the working tree per command, runs a command for at most
10 minutes, keeps files only while it stays warm (about 30 s between commands), and sends back at
most 8 files of 16 MiB. So the training data travels in shards over several commands, training
fits one command, and what comes back is the exported fp16 weights plus one archive of logs.

Here (prepares ``.gpu/``, which git ignores; nothing from ../shared is committed):

    python docs/scripts/gpu_train.py pack --lol ../shared/data/lol \\
        --vgg ../shared/data/weights/vgg16_imagenet/vgg16_keras_imagenet_conv_oihw_fp16.npz

prints the shards and, for each device command, what to carry. There, in order, each command
carrying its shards (the last one stages its shards and trains):

    python3 docs/scripts/gpu_train.py stage                  # every command but the last
    python3 docs/scripts/gpu_train.py train --models neid,frlie,symnet --minutes 8 --out $OUT

``train`` runs the models side by side on the one GPU. Each model first runs for a probe (a
fixed share of the budget) at its recipe's initial rate, which measures its seconds per step;
the run is then resumed with ``--steps`` set to what fits the rest of the budget, so the
recipe's schedule (rate decays included) completes inside it. Runs continue from a ``last.pt``
left on the warm machine by an earlier command, or start from scratch (``--from shipped``:
from the bundled weights). It works the same on a CPU with tiny budgets, which is how it is
tried here before GPU time is spent (``--device cpu``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PACK = REPO / ".gpu"
STAGE = Path(os.environ.get("LOWLIGHT_GPU_STAGE", "/tmp/lowlight-gpu"))
CARRY_LIMIT = 64 * 2**20
MODELS_NEEDING_VGG = ("symnet", "nrl")
PROBE_SHARE = 0.12  # of each model's budget: long enough for a stable seconds-per-step
VALIDATIONS = 8  # per run after the probe


# ---- here: pack ---------------------------------------------------------------------------------


def _tree_bytes() -> int:
    """Bytes of what travels anyway: tracked files plus untracked files git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    paths = [REPO / p for p in out.decode().split("\0") if p]
    return sum(p.stat().st_size for p in paths if p.is_file())


def _to_lossless_webp(src: Path, dest: Path) -> None:
    from PIL import Image

    with Image.open(src) as im:
        pixels = np.asarray(im.convert("RGB"))
    Image.fromarray(pixels).save(dest, lossless=True, quality=100, method=6)
    with Image.open(dest) as back:
        if not np.array_equal(np.asarray(back.convert("RGB")), pixels):
            raise SystemExit(f"lossless WebP changed the pixels of {src}")


def pack(args: argparse.Namespace) -> None:
    lol = Path(args.lol)
    train_low, train_high = lol / "our485" / "low", lol / "our485" / "high"
    if not train_low.is_dir() or not (lol / "eval15" / "low").is_dir():
        raise SystemExit(f"{lol} is not a LOL folder (our485/ and eval15/)")
    if PACK.exists():
        shutil.rmtree(PACK)
    PACK.mkdir()
    room = CARRY_LIMIT - _tree_bytes() - args.margin_mb * 2**20
    if room < 8 * 2**20:
        raise SystemExit(f"the working tree leaves only {room / 2**20:.1f} MiB to carry")

    shards: list[tuple[str, int]] = []
    # eval15 as lossless WebP (same pixels, about 2/3 of the PNG bytes).
    for side in ("low", "high"):
        dest = PACK / "eval15" / side
        dest.mkdir(parents=True)
        for src in sorted((lol / "eval15" / side).iterdir()):
            _to_lossless_webp(src, dest / f"{src.stem}.webp")
    shards.append(("eval15", _dir_bytes(PACK / "eval15")))
    if args.vgg:
        (PACK / "vgg16").mkdir()
        shutil.copy2(args.vgg, PACK / "vgg16" / Path(args.vgg).name)
        shards.append(("vgg16", _dir_bytes(PACK / "vgg16")))

    highs = {p.stem: p for p in train_high.iterdir()}
    pairs = [(p, highs[p.stem]) for p in sorted(train_low.iterdir()) if p.stem in highs]
    index, used = 0, room + 1
    for low, high in pairs:
        size = low.stat().st_size + high.stat().st_size
        if used + size > room:
            index, used = index + 1, 0
            for side in ("low", "high"):
                (PACK / f"our485-{index}" / side).mkdir(parents=True)
        shutil.copy2(low, PACK / f"our485-{index}" / "low" / low.name)
        shutil.copy2(high, PACK / f"our485-{index}" / "high" / high.name)
        used += size
    shards += [(f"our485-{i}", _dir_bytes(PACK / f"our485-{i}")) for i in range(1, index + 1)]

    # Group shards into commands: first-fit by size, each command under the room left.
    calls: list[list[tuple[str, int]]] = []
    for name, size in sorted(shards, key=lambda s: -s[1]):
        if size > room:
            raise SystemExit(f"{name} ({size / 2**20:.1f} MiB) alone exceeds the {room} bytes")
        for call in calls:
            if sum(s for _, s in call) + size <= room:
                call.append((name, size))
                break
        else:
            calls.append([(name, size)])
    plan = {
        "tree_mib": round(_tree_bytes() / 2**20, 1),
        "room_per_command_mib": round(room / 2**20, 1),
        "pairs": len(pairs),
        "commands": [
            {
                "carry": [f".gpu/{n}" for n, _ in call],
                "mib": round(sum(s for _, s in call) / 2**20, 1),
            }
            for call in calls
        ],
    }
    (PACK / "plan.json").write_text(json.dumps(plan, indent=1))
    print(json.dumps(plan, indent=1))


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---- there: stage -------------------------------------------------------------------------------


def stage(args: argparse.Namespace) -> None:
    """Copy the carried shards out of the working tree, where they outlive this command."""
    STAGE.mkdir(parents=True, exist_ok=True)
    for shard in sorted(PACK.iterdir()) if PACK.is_dir() else []:
        if shard.is_dir() and not (STAGE / "shards" / shard.name).is_dir():
            tmp = STAGE / "shards" / f".{shard.name}.part"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(shard, tmp)
            tmp.rename(STAGE / "shards" / shard.name)
    print("staged:", _staged_summary())


def _staged_summary() -> dict[str, object]:
    shards = STAGE / "shards"
    names = sorted(p.name for p in shards.iterdir()) if shards.is_dir() else []
    n_pairs = sum(
        len(list((shards / n / "low").iterdir())) for n in names if n.startswith("our485-")
    )
    return {"shards": names, "train_pairs": n_pairs}


def _assemble_lol() -> Path:
    """``STAGE/lol/{our485,eval15}`` from the staged shards (symlinks)."""
    shards, lol = STAGE / "shards", STAGE / "lol"
    shutil.rmtree(lol, ignore_errors=True)
    for side in ("low", "high"):
        (lol / "our485" / side).mkdir(parents=True)
        for shard in sorted(shards.glob("our485-*")):
            for f in (shard / side).iterdir():
                (lol / "our485" / side / f.name).symlink_to(f)
    if not (shards / "eval15").is_dir():
        raise SystemExit("eval15 is not staged: carry .gpu/eval15 and run 'stage'")
    (lol / "eval15").symlink_to(shards / "eval15")
    if not any((lol / "our485" / "low").iterdir()):
        raise SystemExit("no training pairs are staged: carry a .gpu/our485-N and run 'stage'")
    return lol


# ---- there: train -------------------------------------------------------------------------------


def _lowlight(argv: list[str], log: Path) -> int:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with log.open("a") as fh:
        fh.write(f"\n$ lowlight {' '.join(argv)}\n")
        fh.flush()
        return subprocess.run(
            [sys.executable, "-m", "lowlight_cli", *argv], stdout=fh, stderr=fh, env=env
        ).returncode


def _sec_per_step(run: Path, fallback: float) -> float:
    """Median of the last logged rates (the first interval holds warm-up), else ``fallback``."""
    log = run / "metrics.jsonl"
    rows = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
    rates = [r["sec_per_step"] for r in rows if r.get("kind") == "train" and "sec_per_step" in r]
    return float(np.median(rates[1:][-5:] or rates)) if rates else fallback


def _timed_run(
    common: list[str], run: Path, budget: float, log: Path, init: str | None
) -> dict[str, object]:
    """Probe, then resume with the steps that fit: the schedule completes inside ``budget``."""
    t0 = time.monotonic()
    last = run / "last.pt"
    resumed = last.is_file()
    if not resumed:
        probe = max(20.0, PROBE_SHARE * budget)
        argv = [*common, "--out", str(run), "--steps", "1000000", "--val-every", "1000000"]
        argv += ["--time-limit", f"{probe:.0f}"] + (["--init", init] if init else [])
        if _lowlight(argv, log) != 0 or not last.is_file():
            return {"error": f"probe failed, see {log.name}"}
    import torch

    done = int(torch.load(last, map_location="cpu", weights_only=False)["step"])
    # Without logged rates, the probe's wall time per step (start-up included: pessimistic).
    sps = _sec_per_step(run, (time.monotonic() - t0) / max(done, 1) if not resumed else 1.0)
    left = budget - (time.monotonic() - t0)
    # 8 % for validation, checkpoints and start-up.
    total = done + max(1, int(0.92 * left / sps))
    argv = [*common, "--out", str(run), "--resume", str(last), "--steps", str(total)]
    argv += ["--val-every", str(max(1, (total - done) // VALIDATIONS))]
    argv += ["--time-limit", f"{max(left, 1.0):.0f}", "--export"]
    code = _lowlight(argv, log)
    return {"exit": code, "sec_per_step": sps, "planned_steps": total, "probe_steps": done}


def _train_one(args: argparse.Namespace, model: str, lol: Path, budget: float) -> dict:
    runs, logs = STAGE / "runs", STAGE / "logs"
    runs.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{model}.log"
    common = ["train", "--model", model, "--dataset", "lol", "--data", str(lol)]
    common += ["--device", args.device, "--seed", str(args.seed), "--workers", str(args.workers)]
    common += ["--threads", str(args.threads), "--log-every", "10"]
    if args.device.startswith("cuda"):
        common += ["--channels-last"]
    for opt in ("batch_size", "patch"):
        if getattr(args, opt):
            common += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    if model in MODELS_NEEDING_VGG:
        vgg = sorted((STAGE / "shards" / "vgg16").glob("*")) if (STAGE / "shards").is_dir() else []
        if not vgg:
            return {"model": model, "error": "VGG-16 is not staged (carry .gpu/vgg16)"}
        common += ["--vgg", str(vgg[0])]
    shipped = sorted((REPO / "lowlight_cli" / "bundled").glob(f"{model}.lol*.safetensors"))
    init = str(shipped[0]) if args.start == "shipped" and shipped else None
    if model != "frlie":
        result = _timed_run(common, runs / model, budget, log, init)
        return {"model": model, **result, "run": str(runs / model)}
    # frlie: stage 1 (reconstructor on the normal-light images), then stage 2 (FRNet) from it;
    # a stage 2 already under way on this machine just continues.
    if (runs / "frlie-stage2" / "last.pt").is_file():
        s2 = _timed_run([*common, "--stage", "2"], runs / "frlie-stage2", budget, log, None)
        return {"model": model, **s2, "run": str(runs / "frlie-stage2")}
    s1 = _timed_run(
        [*common, "--stage", "1"], runs / "frlie-stage1", args.frlie_stage1 * budget, log, init
    )
    best1 = runs / "frlie-stage1" / "best.pt"
    if not best1.is_file():
        return {"model": model, "stage1": s1, "error": "stage 1 left no best.pt"}
    left = budget - (time.monotonic() - args.t_start)
    s2 = _timed_run([*common, "--stage", "2"], runs / "frlie-stage2", left, log, str(best1))
    return {"model": model, "stage1": s1, **s2, "run": str(runs / "frlie-stage2")}


def _guarded(args: argparse.Namespace, model: str, lol: Path, budget: float) -> dict:
    try:
        return _train_one(args, model, lol, budget)
    except Exception as exc:  # one model's failure must not cost the others' results
        return {"model": model, "error": f"{type(exc).__name__}: {exc}"}


def train(args: argparse.Namespace) -> None:
    args.t_start = time.monotonic()
    stage(args)
    lol = _assemble_lol()
    budget = args.minutes * 60.0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(models)) as pool:
        futures = {m: pool.submit(_guarded, args, m, lol, budget) for m in models}
        results = [futures[m].result() for m in models]
    _collect(args, results)


def _collect(args: argparse.Namespace, results: list[dict]) -> None:
    """Exported weights and one archive of logs into --out: within the 8 files that come back."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        run = Path(str(r.get("run", "")))
        for exported in sorted(run.glob("*.safetensors")) if r.get("run") else []:
            shutil.copy2(exported, out / exported.name)
            r["exported"] = exported.name
        best = run / "best.pt"
        if r.get("run") and best.is_file():
            import torch

            r["best"] = torch.load(best, map_location="cpu", weights_only=False).get("best")
    summary = {"staged": _staged_summary(), "minutes": args.minutes, "results": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(STAGE / "logs", arcname="logs")
        for run in sorted((STAGE / "runs").glob("*")):
            for name in ("metrics.jsonl", "metrics.png"):
                if (run / name).is_file():
                    tar.add(run / name, arcname=f"runs/{run.name}/{name}")
    print(json.dumps(summary, indent=1, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="here: write the shards to .gpu/ and print the carry plan")
    p.add_argument("--lol", required=True)
    p.add_argument("--vgg", help="VGG-16 .npz (needed to train symnet or nrl)")
    p.add_argument("--margin-mb", type=int, default=2)
    p.set_defaults(func=pack)
    s = sub.add_parser("stage", help="there: copy carried shards to the machine's /tmp")
    s.set_defaults(func=stage)
    t = sub.add_parser("train", help="there: stage, then train models side by side")
    t.add_argument("--models", default="neid,frlie,symnet")
    t.add_argument("--minutes", type=float, default=8.0, help="training budget per model")
    t.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
    t.add_argument("--device", default="cuda")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=3)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--patch", type=int)
    t.add_argument("--start", choices=("scratch", "shipped"), default="scratch")
    t.add_argument("--frlie-stage1", type=float, default=0.3, help="share of frlie's budget")
    t.set_defaults(func=train)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
