"""The training loop: the loss falls, resume is exact, checkpoints/logs/export are complete."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lowlight_cli.training.loop import (
    BEST,
    LAST,
    METRICS_LOG,
    METRICS_PLOT,
    Reporter,
    TrainConfig,
    export_checkpoint,
    train,
)
from lowlight_cli.training.recipes import Recipe


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a small shared CPU, OpenMP threads waiting for each other make
    these tiny steps tens of times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TinyEnhancer(nn.Module):
    """Stand-in model: a gain map plus a small residual, enough to learn brightening."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)
        )
        self.gain = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain + self.body(x)


def _write_pairs(root: Path, n: int, size: tuple[int, int] = (40, 36), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "low").mkdir(parents=True)
    (root / "high").mkdir(parents=True)
    for i in range(n):
        high = rng.integers(60, 230, size=(size[1], size[0], 3), dtype=np.uint8)
        low = (high.astype(np.float32) * 0.2).astype(np.uint8)
        Image.fromarray(high).save(root / "high" / f"{i}.png")
        # Different extensions on the two sides: pairs match by stem.
        Image.fromarray(low).save(root / "low" / f"{i}.webp", lossless=True)
    return root


@pytest.fixture
def pairs_dir(tmp_path: Path) -> Path:
    return _write_pairs(tmp_path / "pairs", 6)


@pytest.fixture
def val_dir(tmp_path: Path) -> Path:
    return _write_pairs(tmp_path / "val", 2, seed=1)


def _recipe(**kw) -> Recipe:
    base = dict(
        model="tiny",
        epochs=None,
        iterations=12,
        milestones=(6,),
        gamma=0.5,
        lr=5e-3,
        batch_size=3,
        patch=24,
        val_every=4,
        log_every=2,
    )
    base.update(kw)
    return Recipe(**base)


def _cfg(tmp: Path, data: Path, val: Path | None, name: str, **kw) -> TrainConfig:
    return TrainConfig(
        model="tiny",
        dataset="pairs",
        data=data,
        val=val,
        recipe=kw.pop("recipe", _recipe()),
        out=tmp / name,
        device="cpu",
        precision="fp32",
        seed=kw.pop("seed", 3),
        workers=1,
        **kw,
    )


def _model() -> TinyEnhancer:
    torch.manual_seed(0)
    return TinyEnhancer()


def test_loss_falls_and_run_writes_everything(tmp_path: Path, pairs_dir: Path, val_dir: Path):
    result = train(
        _cfg(tmp_path, pairs_dir, val_dir, "run", recipe=_recipe(iterations=40, val_every=20)),
        model=_model(),
    )
    assert result.finished and result.step == 40
    losses = [r["loss"] for r in result.history if r["kind"] == "train"]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    out = tmp_path / "run"
    for name in (LAST, BEST, METRICS_LOG, METRICS_PLOT):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / METRICS_LOG).read_text().splitlines()]
    vals = [r for r in rows if r["kind"] == "val"]
    assert [r["step"] for r in vals] == [20, 40]
    assert all(0 < r["ssim"] <= 1 and r["psnr"] > 0 for r in vals)
    assert all("sec_per_step" in r for r in rows if r["kind"] == "train")
    ckpt = torch.load(out / LAST, weights_only=False)
    for key in ("model_state", "optimizer", "rng", "sampler", "recipe", "schedule", "step"):
        assert key in ckpt
    assert ckpt["recipe"]["iterations"] == 40


def test_resume_matches_uninterrupted_run(tmp_path: Path, pairs_dir: Path, val_dir: Path):
    straight = _model()
    train(_cfg(tmp_path, pairs_dir, val_dir, "straight"), model=straight)

    first = _model()
    half = train(_cfg(tmp_path, pairs_dir, val_dir, "split", stop_at=5), model=first)
    assert half.step == 5 and not half.finished
    # Disturb global RNGs: resume must restore them from the checkpoint.
    torch.manual_seed(1234)
    np.random.seed(99)
    second = TinyEnhancer()  # different initial weights: the checkpoint must replace them
    resumed = train(
        _cfg(tmp_path, pairs_dir, val_dir, "split", resume=tmp_path / "split" / LAST), model=second
    )
    assert resumed.finished and resumed.step == 12
    for (name, a), b in zip(
        straight.state_dict().items(), second.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    # The best checkpoint and metrics agree too.
    log_a = [json.loads(x) for x in (tmp_path / "straight" / METRICS_LOG).read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "split" / METRICS_LOG).read_text().splitlines()]
    timing = ("sec_per_step", "wall_hours")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(log_a) == strip(log_b)
    # Validation rows carry the run's wall hours, counted on across the resume.
    hours = [r["wall_hours"] for r in log_b if r["kind"] == "val"]
    assert hours == sorted(hours) and hours[-1] > 0
    ckpt = torch.load(tmp_path / "split" / LAST, weights_only=False)
    first_part = torch.load(tmp_path / "straight" / LAST, weights_only=False)["train_seconds"]
    assert ckpt["train_seconds"] >= hours[-1] * 3600 - 1 and hours[-1] > 0 and first_part > 0


def test_time_limit_stops_validates_and_resumes_exactly(
    tmp_path: Path, pairs_dir: Path, val_dir: Path
):
    straight = _model()
    train(_cfg(tmp_path, pairs_dir, val_dir, "straight"), model=straight)

    messages: list[str] = []

    class Spy(Reporter):
        def message(self, text: str) -> None:
            messages.append(text)

    # A limit shorter than one step: the step under way finishes, then the run stops there.
    cut = train(
        _cfg(tmp_path, pairs_dir, val_dir, "timed", time_limit=1e-6),
        model=_model(),
        reporter=Spy(),
    )
    assert cut.step == 1 and not cut.finished and cut.total_steps == 12
    assert cut.best is not None and cut.best["step"] == 1  # validated before stopping
    assert any("time limit" in m and "--resume" in m for m in messages)
    assert torch.load(tmp_path / "timed" / LAST, weights_only=False)["step"] == 1

    # How often a resumed run validates may change; its training may not.
    resumed_model = TinyEnhancer()
    resumed = train(
        _cfg(tmp_path, pairs_dir, val_dir, "timed", resume=tmp_path / "timed" / LAST, val_every=5),
        model=resumed_model,
    )
    assert resumed.finished and resumed.step == 12
    assert [r["step"] for r in resumed.history if r["kind"] == "val"] == [1, 5, 10, 12]
    for (name, a), b in zip(
        straight.state_dict().items(), resumed_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_time_limit_must_be_positive(tmp_path: Path, pairs_dir: Path):
    from lowlight_cli.errors import UsageError

    with pytest.raises(UsageError, match="time limit"):
        train(_cfg(tmp_path, pairs_dir, None, "z", time_limit=0.0), model=_model())


def test_a_scene_split_is_kept_on_resume(tmp_path: Path) -> None:
    """--val-split scenes holds a scene out with all its pairs, records it, and a resumed run
    (which is not told again) validates on the same pairs."""
    data = _write_pairs(tmp_path / "pairs", 6, size=(48, 32))
    for copy in ("1", "4"):  # pairs 0-1 and 3-4 show one scene each (the same ground truth)
        prev = str(int(copy) - 1)
        (data / "high" / f"{copy}.png").write_bytes((data / "high" / f"{prev}.png").read_bytes())
    recipe = _recipe(iterations=4)
    cfg = _cfg(tmp_path, data, None, "s", recipe=recipe, val_holdout=2, stop_at=2)
    cfg.val_split = "scenes"
    train(cfg, model=_model())
    ckpt = torch.load(tmp_path / "s" / LAST, weights_only=False)
    assert ckpt["val_split"] == "scenes" and ckpt["val_names"] == ["0", "1", "5"]
    assert "held out (2 scenes): 0, 1, 5" in ckpt["data"]
    train(
        _cfg(tmp_path, data, None, "s", recipe=recipe, resume=tmp_path / "s" / LAST), model=_model()
    )
    resumed = torch.load(tmp_path / "s" / LAST, weights_only=False)
    assert resumed["step"] == 4 and resumed["val_names"] == ["0", "1", "5"]


def test_resume_refuses_other_model(tmp_path: Path, pairs_dir: Path):
    from lowlight_cli.errors import UsageError

    train(_cfg(tmp_path, pairs_dir, None, "a", recipe=_recipe(iterations=2)), model=_model())
    cfg = _cfg(tmp_path, pairs_dir, None, "a", resume=tmp_path / "a" / LAST)
    cfg.model = "neid"
    with pytest.raises(UsageError):
        train(cfg, model=_model())


def test_learning_rate_follows_schedule(tmp_path: Path, pairs_dir: Path):
    seen: dict[int, float] = {}

    class Spy(Reporter):
        def step(self, step, total, logs):
            seen[step] = logs["lr"]

    train(_cfg(tmp_path, pairs_dir, None, "lr"), model=_model(), reporter=Spy())
    # Milestone at step 6: steps 1..6 use 5e-3, 7..12 half of it.
    assert seen[6] == pytest.approx(5e-3) and seen[7] == pytest.approx(2.5e-3)
    assert len(seen) == 12


def test_warmup_ramps_the_learning_rate_then_keeps_the_schedule(tmp_path: Path, pairs_dir: Path):
    """--set warmup_steps=N: a linear ramp to the base rate, milestones where they were."""
    from lowlight_cli.errors import UsageError

    seen: dict[int, float] = {}

    class Spy(Reporter):
        def step(self, step, total, logs):
            seen[step] = logs["lr"]

    cfg = _cfg(tmp_path, pairs_dir, None, "warm", recipe=_recipe(warmup_steps=4))
    train(cfg, model=_model(), reporter=Spy())
    # Optimiser step k (0-based) is logged as step k + 1 and uses (k + 1) / 4 of 5e-3.
    assert [seen[s] for s in (1, 2, 3, 4)] == pytest.approx([1.25e-3, 2.5e-3, 3.75e-3, 5e-3])
    assert seen[6] == pytest.approx(5e-3) and seen[7] == pytest.approx(2.5e-3)
    # The checkpoint carries it, so a resumed run keeps the same schedule.
    ckpt = torch.load(tmp_path / "warm" / LAST, weights_only=False)
    assert ckpt["schedule"]["warmup_steps"] == 4
    # Longer than the run: cut to the run, so its last step reaches the base rate.
    whole = _recipe(warmup_steps=50, milestones=()).resolve(10, steps=12)
    assert whole.warmup_steps == 12 and whole.lr_at(11) == pytest.approx(5e-3)
    with pytest.raises(UsageError, match="warmup_steps"):
        _recipe(warmup_steps=-1).resolve(10, steps=12)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the heap tuning is for glibc's malloc",
)
def test_cpu_training_keeps_freed_memory_for_the_next_step(
    tmp_path: Path, pairs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each step re-allocates the last step's activations: the run tunes the heap to keep them."""
    from lowlight_cli import devices

    monkeypatch.delenv("LOWLIGHT_HEAP_TUNING", raising=False)
    monkeypatch.setattr(devices, "_heap_tuned", None)  # as in a fresh process
    train(_cfg(tmp_path, pairs_dir, None, "heap", recipe=_recipe(iterations=2)), model=_model())
    assert devices._heap_tuned is True


def test_interrupt_writes_checkpoint(tmp_path: Path, pairs_dir: Path):
    import os
    import signal

    class KillAt3(Reporter):
        def step(self, step, total, logs):
            if step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, pairs_dir, None, "int"), model=_model(), reporter=KillAt3())
    ckpt = torch.load(tmp_path / "int" / LAST, weights_only=False)
    assert ckpt["step"] == 3


def test_export_writes_fp16_safetensors(tmp_path: Path, pairs_dir: Path, val_dir: Path):
    from safetensors import safe_open

    model = _model()
    train(
        _cfg(tmp_path, pairs_dir, val_dir, "exp", recipe=_recipe(iterations=4, val_every=2)),
        model=model,
    )
    dest = tmp_path / "tiny.test.safetensors"
    exported = export_checkpoint(tmp_path / "exp" / BEST, dest, tag="test")
    assert exported["id"] == "tiny.test"
    entry = exported["entry"]
    assert entry["bytes"] == dest.stat().st_size and len(entry["sha256"]) == 64
    assert {"psnr", "ssim"} <= set(entry["metrics"]["validation"])
    best_step = torch.load(tmp_path / "exp" / BEST, weights_only=False)["step"]
    assert exported["details"]["steps"] == best_step
    with safe_open(str(dest), "pt") as fh:
        meta = fh.metadata()
        assert json.loads(meta["steps"]) == best_step
        for name in fh.keys():  # noqa: SIM118 (safe_open is not a dict)
            assert fh.get_tensor(name).dtype == torch.float16
        weight = fh.get_tensor("body.0.weight").float()
    saved = torch.load(tmp_path / "exp" / BEST, weights_only=False)["model_state"]["body.0.weight"]
    assert torch.allclose(weight, saved, atol=1e-3)


def test_export_scores_are_the_checkpoints_own_validation(
    tmp_path: Path, pairs_dir: Path, val_dir: Path
) -> None:
    """last.pt's entry carries the last validation's scores, best.pt's the best's; a checkpoint
    whose step was never validated (an older last.pt) carries none rather than another's."""
    train(
        _cfg(tmp_path, pairs_dir, val_dir, "own", recipe=_recipe(iterations=6, val_every=2)),
        model=_model(),
    )
    rows = [json.loads(x) for x in (tmp_path / "own" / "metrics.jsonl").read_text().splitlines()]
    vals = {r["step"]: r for r in rows if r["kind"] == "val"}
    for name in (LAST, BEST):
        ckpt = torch.load(tmp_path / "own" / name, weights_only=False)
        exported = export_checkpoint(tmp_path / "own" / name, tmp_path / f"{name}.safetensors")
        scores = exported["entry"]["metrics"]["validation"]
        assert scores["psnr"] == round(vals[ckpt["step"]]["psnr"], 4)
    ckpt = torch.load(tmp_path / "own" / LAST, weights_only=False)
    torch.save({**ckpt, "best": {"step": 2, "psnr": 99.0, "ssim": 0.9}}, tmp_path / "later.pt")
    exported = export_checkpoint(tmp_path / "later.pt", tmp_path / "later.safetensors")
    assert exported["entry"]["metrics"]["validation"]["psnr"] == round(
        vals[ckpt["step"]]["psnr"], 4
    )  # a last.pt behind the run's best keeps its own score
    ckpt.pop("validated")
    ckpt["best"] = {**ckpt["best"], "step": ckpt["step"] - 1}
    torch.save(ckpt, tmp_path / "old.pt")
    exported = export_checkpoint(tmp_path / "old.pt", tmp_path / "old.safetensors")
    assert "validation" not in exported["entry"].get("metrics", {})


def test_export_names_files_in_prepared_by_file_name_only(
    tmp_path: Path, pairs_dir: Path, val_dir: Path
) -> None:
    """``--init`` and VGG paths are the trainer's folders: the shipped file keeps their names."""
    from safetensors import safe_open

    train(
        _cfg(tmp_path, pairs_dir, val_dir, "exp", recipe=_recipe(iterations=2, val_every=2)),
        model=_model(),
    )
    ckpt = torch.load(tmp_path / "exp" / BEST, weights_only=False)
    ckpt["prepared"] = {
        "init": str(tmp_path / "runs" / "nrl.lol.safetensors"),
        "vgg": "../data/weights/vgg16.npz",
        "setting": "fp32/bf16",
        "lambda": 0.58,
    }
    torch.save(ckpt, tmp_path / "edited.pt")
    exported = export_checkpoint(tmp_path / "edited.pt", tmp_path / "t.test.safetensors")
    with safe_open(str(tmp_path / "t.test.safetensors"), "pt") as fh:
        prepared = json.loads(fh.metadata()["prepared"])
    assert prepared == {
        "init": "nrl.lol.safetensors",
        "vgg": "vgg16.npz",
        "setting": "fp32/bf16",
        "lambda": 0.58,
    }
    assert str(tmp_path) not in json.dumps(exported)


# ---- the registry's models, tiny -----------------------------------------------------------

TINY_KWARGS = {
    "symnet": {"num_blocks": 2, "rounds": 1, "width": 16, "reduction": 4},
    "nrl": {"channels": 16, "steps": 2, "fmsb_first": 8, "fmsb_second": 8, "map_hidden": 16},
    "frlie": {"width": 8, "num_blocks": 1},
    "neid": {"base_channels": 8, "depth": 2, "dr_blocks": 1},
}


@pytest.fixture
def fake_vgg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Random VGG-16 weights in place of the real file (the loop's use of them is under test)."""
    from lowlight_cli.models import vgg

    torch.manual_seed(5)
    state = {k: v * 0.5 for k, v in vgg.VGG16Features().state_dict().items()}
    monkeypatch.setattr(vgg, "load_vgg16_state", lambda path: dict(state))
    path = tmp_path / "vgg16.npz"
    path.write_bytes(b"")
    return path


def _model_recipe(name: str, **kw):
    from lowlight_cli.training.recipes import default_recipe

    changes = dict(
        epochs=None,
        iterations=10,
        milestones=(),
        milestone_every=None,
        batch_size=2,
        patch=32,
        hflip=False,
        vflip=False,
        rot90=False,
        val_every=5,
        log_every=1,
        model_kwargs=TINY_KWARGS[name],
    )
    if name == "nrl":
        changes["lambda_patches"] = 8
    if name == "frlie":
        changes["stage"] = 1
    changes.update(kw)
    # dataclasses.replace, not Recipe.override: override skips None (epochs=None here).
    return dataclasses.replace(default_recipe(name), **changes)


def _model_cfg(tmp: Path, data: Path, name: str, run: str, vgg: Path, **kw) -> TrainConfig:
    return TrainConfig(
        model=name,
        dataset="pairs",
        data=data,
        val=data,
        recipe=kw.pop("recipe", _model_recipe(name)),
        out=tmp / run,
        device="cpu",
        precision="fp32",
        seed=1,
        workers=1,
        vgg=vgg,
        **kw,
    )


@pytest.fixture
def small_pairs(tmp_path: Path) -> Path:
    return _write_pairs(tmp_path / "small", 2, size=(32, 32))


@pytest.mark.parametrize("name", ["symnet", "nrl", "frlie", "neid"])
def test_registry_model_trains_and_resumes(
    name: str, tmp_path: Path, small_pairs: Path, fake_vgg: Path
) -> None:
    from lowlight_cli.registry import NEURAL_MODELS

    assert name in NEURAL_MODELS
    lr = {"symnet": 2e-3, "nrl": 2e-3, "frlie": 3e-3, "neid": 2e-3}[name]
    recipe = _model_recipe(name, lr=lr)
    torch.manual_seed(0)
    straight = train(_model_cfg(tmp_path, small_pairs, name, "a", fake_vgg, recipe=recipe))
    losses = [r["loss"] for r in straight.history if r["kind"] == "train"]
    assert len(losses) == 10 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    assert straight.best is not None and np.isfinite(straight.best["psnr"])

    torch.manual_seed(0)
    train(_model_cfg(tmp_path, small_pairs, name, "b", fake_vgg, recipe=recipe, stop_at=4))
    torch.manual_seed(42)  # the resumed run must take everything from the checkpoint
    resumed = train(
        _model_cfg(tmp_path, small_pairs, name, "b", fake_vgg, resume=tmp_path / "b" / LAST)
    )
    a = torch.load(tmp_path / "a" / LAST, weights_only=False)
    b = torch.load(tmp_path / "b" / LAST, weights_only=False)
    assert resumed.step == 10 and a["step"] == b["step"] == 10
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key
    if name == "nrl":
        assert a["prepared"]["lambda"] == b["prepared"]["lambda"]
        assert 0.02 < a["model_state"]["lam"].item() < 1.0  # eq. 6 on dark inputs
        for key, value in a["task_state"]["disc"].items():
            assert torch.equal(value, b["task_state"]["disc"][key]), key


def test_frlie_stage2_trains_frnet_only(tmp_path: Path, small_pairs: Path, fake_vgg: Path) -> None:
    from lowlight_cli.errors import UsageError

    torch.manual_seed(0)
    train(
        _model_cfg(
            tmp_path,
            small_pairs,
            "frlie",
            "s1",
            fake_vgg,
            recipe=_model_recipe("frlie", iterations=3),
        )
    )
    stage2 = _model_recipe("frlie", stage=2, iterations=6, lr=3e-3)
    with pytest.raises(UsageError, match="stage 2"):
        train(_model_cfg(tmp_path, small_pairs, "frlie", "s2x", fake_vgg, recipe=stage2))
    result = train(
        _model_cfg(
            tmp_path,
            small_pairs,
            "frlie",
            "s2",
            fake_vgg,
            recipe=stage2,
            init=tmp_path / "s1" / BEST,
        )
    )
    s1 = torch.load(tmp_path / "s1" / BEST, weights_only=False)["model_state"]
    s2 = torch.load(tmp_path / "s2" / LAST, weights_only=False)["model_state"]
    for key, value in s1.items():
        if key.startswith(("encoder.", "decoder.")):
            assert torch.equal(value, s2[key]), key  # frozen, BN statistics included
    assert any(not torch.equal(s1[k], s2[k]) for k in s1 if k.startswith("frnet.")), (
        "FRNet did not train"
    )
    losses = [r["loss"] for r in result.history if r["kind"] == "train"]
    assert losses[-1] < losses[0]


_DDP_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from pathlib import Path
from test_training_loop import TinyEnhancer, _recipe
from lowlight_cli.training.loop import TrainConfig, train
torch.manual_seed(0)
model = TinyEnhancer()
out = Path({out!r})
cfg = TrainConfig(model="tiny", dataset="pairs", data=Path({data!r}), val=None,
                  recipe=_recipe(iterations=6, batch_size=4, val_every=3), out=out,
                  device="cpu", seed=3, workers=1)
train(cfg, model=model)
if os.environ.get("RANK", "0") == "0":
    torch.save(model.state_dict(), out / "final.pt")
assert not torch.distributed.is_initialized()  # train() shut down the group it started
"""


def _torchrun(script: Path) -> subprocess.CompletedProcess[str]:
    """``torchrun`` with 2 CPU processes on ``script``; fails the test unless both exit 0."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", str(script)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    # The processes' own errors come first; torchrun's summary after them names only the signal.
    assert done.returncode == 0, done.stderr[:3000]
    return done


@pytest.mark.slow
def test_two_processes_match_one(tmp_path: Path, pairs_dir: Path) -> None:
    """torchrun with 2 CPU (gloo) processes: averaged gradients equal the single-process ones."""
    single = _model()
    recipe = _recipe(iterations=6, batch_size=4, val_every=3)
    train(_cfg(tmp_path, pairs_dir, None, "ws1", recipe=recipe), model=single)
    out = tmp_path / "ws2"
    script = tmp_path / "run.py"
    tests = str(Path(__file__).parent)
    script.write_text(_DDP_SCRIPT.format(tests=tests, out=str(out), data=str(pairs_dir)))
    _torchrun(script)
    two = torch.load(out / "final.pt")
    for key, value in single.state_dict().items():
        # Same arithmetic in another order: equal up to float rounding.
        assert torch.allclose(value, two[key], atol=1e-6), key
    assert (tmp_path / "ws2" / "metrics.jsonl").read_text().count("\n") > 0  # rank 0 logged


_DDP_BUDGET_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from pathlib import Path
from test_training_loop import TinyEnhancer, _recipe
from lowlight_cli.training.loop import TrainConfig, train
torch.manual_seed(0)
cfg = TrainConfig(model="tiny", dataset="pairs", data=Path({data!r}), val=Path({val!r}),
                  recipe=_recipe(iterations=100_000, milestones=(50_000,), batch_size=4,
                                 val_every=5),
                  out=Path({out!r}), device="cpu", seed=3, workers=1, budget=4.0)
result = train(cfg, model=TinyEnhancer())
os.write(1, f"rank {{os.environ['RANK']}} ended at {{result.step}} of {{result.total_steps}}\\n"
         .encode())
"""


@pytest.mark.slow
def test_two_processes_fit_a_budget_alike(tmp_path: Path, pairs_dir: Path, val_dir: Path) -> None:
    """--budget under torchrun: the processes fit and re-fit the schedule at the same steps
    (each decision is all-reduced), so neither waits for the other forever, and they end alike."""
    script = tmp_path / "run.py"
    tests = str(Path(__file__).parent)
    script.write_text(
        _DDP_BUDGET_SCRIPT.format(
            tests=tests, out=str(tmp_path / "b2"), data=str(pairs_dir), val=str(val_dir)
        )
    )
    done = _torchrun(script)
    ends = sorted(line for line in done.stdout.splitlines() if line.startswith("rank "))
    assert len(ends) == 2, done.stdout
    assert ends[0].split(" ", 2)[2] == ends[1].split(" ", 2)[2], ends
    step, total = ends[0].split("ended at ")[1].split(" of ")
    assert int(step) == int(total) < 100_000


_HELD_SCRIPT = """
import os, torch
from lowlight_cli.training.distributed import _all_reduce
torch.distributed.init_process_group("gloo")
held = 0
for i in range(200):
    t = torch.ones(4096)
    _all_reduce(t, maximum=i % 2 == 1)
    held += t._use_count() > 1
os.write(1, f"still held by gloo: {held}\\n".encode())  # one write: ranks do not interleave
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_gloo_all_reduce_returns_once_the_worker_let_go(tmp_path: Path) -> None:
    """No tensor is left for gloo's worker thread to free (which aborts at interpreter exit).

    A plain ``all_reduce`` returned with the worker still holding the tensor in 5-55 % of calls
    (sums only: 28 and 11 of 200 per rank, and that torchrun ended in a SIGABRT; this script's
    alternating sum/max: 109 and 86).
    """
    script = tmp_path / "held.py"
    script.write_text(_HELD_SCRIPT)
    done = _torchrun(script)
    assert done.stdout.count("still held by gloo: 0") == 2, done.stdout


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("540", 540.0),
        ("540s", 540.0),
        ("9m", 540.0),
        ("1.5h", 5400.0),
        ("2h10m", 7800.0),
        ("1h 30m 20s", 5420.0),
        ("10m30s", 630.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    from lowlight_cli.cli.train import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "m", "0", "-5m", "nan", "inf", "5 min", "5d", "1m2h", "2h2h", "1h m", "1e3"]
)
def test_parse_duration_rejects(text: str) -> None:
    from lowlight_cli.cli.train import parse_duration
    from lowlight_cli.errors import UsageError

    with pytest.raises(UsageError):
        parse_duration(text)


def test_train_command_time_limit_then_resume_and_export(
    tmp_path: Path, val_dir: Path, run_cli
) -> None:
    """The CLI end to end: a timed-out run checkpoints; --resume finishes it; --export prints
    the manifest entry of the best checkpoint; a bad duration is a usage error."""
    from lowlight_cli.errors import ExitCode

    lowlight = run_cli
    data = _write_pairs(tmp_path / "pairs", 2, size=(32, 32))
    out = tmp_path / "neid-run"
    common = ["train", "--model", "neid", "--dataset", "pairs", "--data", str(data)]
    common += ["--val", str(val_dir), "--out", str(out), "--device", "cpu", "--threads", "1"]
    common += ["--batch-size", "2", "--patch", "32", "--workers", "1"]

    code, _, err = lowlight([*common, "--steps", "4", "--time-limit", "0.000001"])
    assert code == 0, err
    assert "time limit" in err and "--resume" in err
    assert torch.load(out / LAST, weights_only=False)["step"] == 1

    code, _, err = lowlight([*common, "--steps", "4", "--time-limit", "soon"])
    assert code == ExitCode.USAGE and "not a duration" in err

    code, stdout, err = lowlight([*common, "--resume", str(out / LAST), "--export"])
    assert code == 0, err
    assert torch.load(out / LAST, weights_only=False)["step"] == 4
    exported = out / "neid.pairs.safetensors"
    assert exported.is_file()
    assert exported.name in json.dumps(json.loads(stdout))


def test_resume_of_a_finished_run_says_so(tmp_path: Path, val_dir: Path, run_cli) -> None:
    """--resume of a run whose schedule is complete trains nothing and says why; with --budget
    (more training wanted) it is a usage error that points to --init."""
    from lowlight_cli.errors import ExitCode

    data = _write_pairs(tmp_path / "pairs", 2, size=(32, 32))
    out = tmp_path / "done"
    common = ["train", "--model", "neid", "--dataset", "pairs", "--data", str(data)]
    common += ["--val", str(val_dir), "--out", str(out), "--device", "cpu", "--threads", "1"]
    common += ["--batch-size", "2", "--patch", "32", "--workers", "1"]
    code, _, err = run_cli([*common, "--steps", "2"])
    assert code == 0, err
    before = (out / LAST).read_bytes()

    code, _, err = run_cli([*common, "--resume", str(out / LAST)])
    assert code == 0, err
    assert "finished its schedule (step 2 of 2)" in err and "--init" in err
    assert (out / LAST).read_bytes() == before

    code, _, err = run_cli([*common, "--resume", str(out / LAST), "--budget", "10m"])
    assert code == ExitCode.USAGE
    assert "finished its schedule" in err and f"--init {out / LAST}" in err


def test_train_with_identity_data_records_its_share_and_needs_it_to_resume(
    tmp_path: Path, val_dir: Path, run_cli
) -> None:
    from lowlight_cli.errors import ExitCode

    data = _write_pairs(tmp_path / "pairs", 2, size=(32, 32))
    photos = tmp_path / "lit"
    photos.mkdir()
    Image.fromarray(np.full((40, 40, 3), 230, np.uint8)).save(photos / "sky.png")
    out = tmp_path / "run"
    common = ["train", "--model", "neid", "--dataset", "pairs", "--data", str(data), "--val"]
    common += [str(val_dir), "--out", str(out), "--device", "cpu", "--threads", "1"]
    common += ["--batch-size", "2", "--patch", "32", "--workers", "1"]
    code, _, err = run_cli([*common, "--steps", "3", "--time-limit", "0.000001",
                            "--identity-data", str(photos)])  # fmt: skip
    assert code == 0, err
    ckpt = torch.load(out / LAST, weights_only=False)
    assert (
        ckpt["recipe"]["identity_prob"] == 0.25
        and f"identity pairs: {tmp_path.name}/lit" in ckpt["data"]
    )

    code, _, err = run_cli([*common, "--resume", str(out / LAST)])
    assert code == ExitCode.USAGE and "--identity-data" in err
    code, _, err = run_cli([*common, "--resume", str(out / LAST), "--identity-data", str(photos)])
    assert code == 0, err
    assert torch.load(out / LAST, weights_only=False)["step"] == 3


def test_weights_from_checkpoint_writes_a_file_enhance_accepts(
    tmp_path: Path, val_dir: Path, run_cli
) -> None:
    """A stopped run's checkpoint becomes a --weights file without training more: the file
    holds the checkpoint's weights, enhance runs with it, and nothing is overwritten unasked."""
    from safetensors import safe_open

    from lowlight_cli.errors import ExitCode

    lowlight = run_cli
    data = _write_pairs(tmp_path / "pairs", 2, size=(32, 32))
    out = tmp_path / "run"
    code, _, err = lowlight(
        ["train", "--model", "neid", "--dataset", "pairs", "--data", str(data), "--val",
         str(val_dir), "--out", str(out), "--device", "cpu", "--threads", "1", "--batch-size",
         "2", "--patch", "32", "--workers", "1", "--steps", "2"]
    )  # fmt: skip
    assert code == 0, err

    code, stdout, err = lowlight(["weights", "from-checkpoint", str(out / LAST)])
    assert code == 0, err
    dest = out / "neid.pairs.safetensors"
    assert json.loads(stdout)["entry"]["file"] == dest.name
    saved = torch.load(out / LAST, weights_only=False)["model_state"]
    with safe_open(str(dest), "pt") as fh:
        name = next(iter(fh.keys()))
        assert torch.allclose(fh.get_tensor(name).float(), saved[name].float(), atol=1e-3)

    before = dest.stat().st_mtime_ns
    code, _, err = lowlight(["weights", "from-checkpoint", str(out / LAST)])
    assert code == ExitCode.USAGE and "--force" in err
    assert dest.stat().st_mtime_ns == before
    code, _, err = lowlight(
        ["weights", "from-checkpoint", str(dest), "-o", str(tmp_path / "x.safetensors")]
    )
    assert code == ExitCode.USAGE and "checkpoint" in err

    photo = tmp_path / "dark.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 60, (24, 20, 3), np.uint8)).save(photo)
    result = tmp_path / "bright.png"
    code, _, err = lowlight(
        ["enhance", str(photo), "--model", "neid", "--weights", str(dest), "-o", str(result)]
    )
    assert code == 0, err
    assert Image.open(result).size == (20, 24)

    # The checkpoint itself is a --weights file too, and gives the exported file's picture
    # (up to its fp16 rounding).
    direct = tmp_path / "direct.png"
    code, _, err = lowlight(
        ["enhance", str(photo), "--model", "neid", "--weights", str(out / LAST), "-o", str(direct)]
    )
    assert code == 0, err
    a, b = (np.asarray(Image.open(p), np.int16) for p in (result, direct))
    assert np.abs(a - b).max() <= 2


class _Messages(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def test_budget_fits_the_whole_schedule_into_the_time(
    tmp_path: Path, pairs_dir: Path, val_dir: Path
) -> None:
    """--budget: the run's length comes from the measured s/step, and the schedule's decays
    are compressed into it, so the run ends at the last (lowest) learning rate."""
    recipe = _recipe(iterations=100_000, milestones=(50_000, 75_000), val_every=50)
    reporter = _Messages()
    result = train(
        _cfg(tmp_path, pairs_dir, val_dir, "budget", recipe=recipe, budget=3.0),
        model=_model(),
        reporter=reporter,
    )
    assert result.finished and 4 <= result.total_steps < 100_000
    fitted = [line for line in reporter.lines if line.startswith("budget:")]
    # One fit after the first steps, then re-fits at validations when the rate changed.
    assert fitted and "re-fitted" not in fitted[0]
    assert all("re-fitted" in line for line in fitted[1:])
    assert f"{result.total_steps} steps" in fitted[-1]
    ckpt = torch.load(tmp_path / "budget" / LAST, weights_only=False)
    schedule = ckpt["schedule"]
    assert schedule["total_steps"] == result.total_steps
    # Both decays happen inside the fitted run, at the recipe's proportions (50 % and 75 %).
    assert len(schedule["milestones"]) == 2
    assert all(m < result.total_steps for m in schedule["milestones"])
    lrs = [r["lr"] for r in result.history if r["kind"] == "train"]
    assert lrs[-1] == pytest.approx(recipe.lr * recipe.gamma**2)


class _Sleeps(TinyEnhancer):
    """TinyEnhancer that sleeps ``delay`` s in the training forwards numbered in ``calls``
    (from 1): a machine busy while --budget times its first steps, or a run that is stopped
    for a while (a sleep uses no CPU, like a stopped process)."""

    def __init__(self, calls: range | tuple[int, ...], delay: float) -> None:
        super().__init__()
        self.sleep_at, self.delay, self.calls = calls, delay, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls in self.sleep_at:
                time.sleep(self.delay)
        return super().forward(x)


class _SleepsAfterFit(TinyEnhancer):
    """TinyEnhancer that sleeps ``delay`` s once, in the first training forward after the
    budget's first fit was reported: a run stopped for a while, at the same point of the run
    whatever this machine's speed (a fixed step number may lie past a short fitted run)."""

    def __init__(self, reporter: _Messages, delay: float) -> None:
        super().__init__()
        self.reporter, self.delay, self.slept = reporter, delay, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.training
            and not self.slept
            and any(line.startswith("budget: ") for line in self.reporter.lines)
        ):
            self.slept = True
            time.sleep(self.delay)
        return super().forward(x)


def test_budget_refits_when_the_first_steps_were_slow(
    tmp_path: Path, pairs_dir: Path, val_dir: Path
) -> None:
    """The first fit times a minute of steps; when the machine was busy then, the run is
    re-fitted on the rate it really keeps, before its first decay, instead of ending early."""
    recipe = _recipe(iterations=100_000, milestones=(50_000, 75_000), val_every=4)
    reporter = _Messages()
    torch.manual_seed(0)
    result = train(
        _cfg(tmp_path, pairs_dir, val_dir, "refit", recipe=recipe, budget=12.0),
        model=_Sleeps(range(1, 5), delay=0.5),
        reporter=reporter,
    )
    first = [line for line in reporter.lines if line.startswith("budget: ") and "s/step" in line]
    refits = [line for line in reporter.lines if line.startswith("budget: re-fitted")]
    assert first and refits, reporter.lines
    first_total = int(first[0].split(" -> ")[1].split()[0])
    assert result.finished and result.total_steps > first_total
    lrs = [r["lr"] for r in result.history if r["kind"] == "train"]
    # The decays still come at the recipe's proportions of the final length, none skipped.
    ckpt = torch.load(tmp_path / "refit" / LAST, weights_only=False)
    assert all(m < result.total_steps for m in ckpt["schedule"]["milestones"])
    assert lrs[-1] == pytest.approx(recipe.lr * recipe.gamma**2)
    assert sorted(set(lrs), reverse=True) == pytest.approx(
        [recipe.lr, recipe.lr * recipe.gamma, recipe.lr * recipe.gamma**2]
    )


def test_a_stopped_run_neither_spends_its_budget_nor_logs_the_stop(
    tmp_path: Path, pairs_dir: Path, val_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop after the first fit is left out of the budget and the logged hours: the run
    trains for its budget besides the stop, and its train_seconds miss the idle stretch."""
    from lowlight_cli.training import clock

    # A busy machine's step uses more CPU time; the stop still dwarfs it.
    monkeypatch.setattr(clock, "STALL_SECONDS", 0.5)
    monkeypatch.setattr(clock, "STALL_CPU_SHARE", 0.3)
    recipe = _recipe(iterations=100_000, milestones=(50_000, 75_000), val_every=10)
    reporter = _Messages()
    torch.manual_seed(0)
    # Long enough that a busy machine still has steps to run after its first fit.
    budget, delay = 6.0, 3.0
    t0 = time.monotonic()
    result = train(
        _cfg(tmp_path, pairs_dir, val_dir, "stopped", recipe=recipe, budget=budget),
        model=_SleepsAfterFit(reporter, delay=delay),
        reporter=reporter,
    )
    wall = time.monotonic() - t0
    assert result.finished
    stops = [line for line in reporter.lines if "was stopped for" in line]
    assert len(stops) == 1, reporter.lines
    ckpt = torch.load(tmp_path / "stopped" / LAST, weights_only=False)
    # The logged time leaves the stop out (less the step that ran around it), and the stop
    # came on top of the budget instead of eating half of it (the fit is an estimate: at
    # least half is trained).
    assert ckpt["train_seconds"] <= wall - (delay - 0.6)
    assert wall - delay >= budget / 2


def test_run_clock_leaves_out_idle_gaps_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from lowlight_cli.training import clock

    wall, cpu = [1000.0], [5.0]
    monkeypatch.setattr(clock.time, "monotonic", lambda: wall[0])
    monkeypatch.setattr(clock.time, "process_time", lambda: cpu[0])
    c = clock.RunClock()
    # A busy minute (a slow validation on a shared machine): counted.
    wall[0] += 60.0
    cpu[0] += 20.0
    assert c.tick() == 0.0 and c.now() == 1060.0
    # Stopped for ten minutes while one 2 s step ran around it: the stop is left out.
    wall[0] += 602.0
    cpu[0] += 2.0
    assert c.tick() == pytest.approx(600.0)
    assert c.now() == pytest.approx(1062.0)
    # Short idle gaps (waiting on data, a sleep under the threshold) are not stops.
    wall[0] += 10.0
    assert c.tick() == 0.0 and c.stopped == pytest.approx(600.0)


def test_refit_never_moves_the_current_learning_rate() -> None:
    from lowlight_cli.training.loop import _budget_total, _refit_schedule

    recipe = _recipe(iterations=100, milestones=(50, 75))
    schedule = recipe.resolve(10, steps=100)
    now = time.monotonic()
    # 1 s per step measured since step 0; 150 s left of a 200 s budget -> about 170 steps.
    total = _budget_total(20, (now - 20.0, 0), 200.0, now - 50.0, now)
    assert abs(total - 170) <= 1
    longer = _refit_schedule(recipe, 10, schedule, 20, total)
    assert longer is not None and longer.total_steps == total
    assert longer.lr_at(20) == schedule.lr_at(20) and longer.milestones[0] > 50
    # At step 60 the first decay is taken; a longer run would move it past step 60.
    assert _refit_schedule(recipe, 10, schedule, 60, 200) is None
    # A shorter one that keeps it taken is fine.
    shorter = _refit_schedule(recipe, 10, schedule, 60, 90)
    assert shorter is not None and shorter.lr_at(60) == schedule.lr_at(60)
    # Within 5 % of the current length, or nothing measured: left alone.
    assert _refit_schedule(recipe, 10, schedule, 20, 104) is None
    assert _refit_schedule(recipe, 10, schedule, 20, 0) is None
    assert _budget_total(20, (now, 20), 200.0, now - 50.0, now) == 0


def test_budget_and_steps_are_exclusive(tmp_path: Path, pairs_dir: Path) -> None:
    from lowlight_cli.errors import UsageError

    with pytest.raises(UsageError, match="budget"):
        train(_cfg(tmp_path, pairs_dir, None, "x", budget=60.0, steps=5), model=_model())


def test_ema_is_validated_beside_the_live_weights_and_exported(
    tmp_path: Path, pairs_dir: Path, val_dir: Path
) -> None:
    result = train(
        _cfg(tmp_path, pairs_dir, val_dir, "ema", recipe=_recipe(ema_decay=0.5)),
        model=_model(),
    )
    vals = [r for r in result.history if r["kind"] == "val"]
    assert vals and all("psnr_live" in r and "ssim_live" in r for r in vals)
    ckpt = torch.load(tmp_path / "ema" / LAST, weights_only=False)
    live, ema = ckpt["model_state"], ckpt["ema"]
    assert any(not torch.equal(live[k], ema[k]) for k in ema)
    info = export_checkpoint(tmp_path / "ema" / LAST, tmp_path / "ema.safetensors")
    from safetensors.torch import load_file

    exported = load_file(tmp_path / "ema.safetensors")
    key = next(iter(ema))
    assert torch.equal(exported[key].float(), ema[key].half().float())
    assert info["details"]["steps"] == 12


def test_cpu_settings_are_measured_restored_and_kept_on_resume(
    tmp_path: Path, pairs_dir: Path, val_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """precision auto + no memory format on a CPU: each candidate is timed, the probe leaves the
    weights as they were, the choice is logged and stored, and --resume keeps it."""
    import lowlight_cli.training.precision as precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    reporter = _Messages()
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = _cfg(tmp_path, pairs_dir, val_dir, "auto", stop_at=1)
    cfg = dataclasses.replace(cfg, precision="auto", channels_last=None)
    train(cfg, model=model, reporter=reporter)
    probe = [line for line in reporter.lines if line.startswith("CPU settings")]
    assert len(probe) == 1
    for name in ("fp32 ", "fp32+channels_last", "bf16 ", "bf16+channels_last"):
        assert name in probe[0] + " "
    ckpt = torch.load(tmp_path / "auto" / LAST, weights_only=False)
    chosen = ckpt["prepared"]["cpu_settings"]
    assert chosen["precision"] in ("fp32", "bf16") and len(chosen["seconds"]) == 4
    # The probe itself leaves every weight and random state as it found them.
    from lowlight_cli.training.data import Augment, build_run_data
    from lowlight_cli.training.loop import _time_candidates
    from lowlight_cli.training.tasks import Task

    probed = _model()
    task = Task(probed, _recipe(), cfg, torch.device("cpu"))
    rng_before = torch.get_rng_state()
    timings = _time_candidates(
        task,
        build_run_data("pairs", pairs_dir, workers=1),
        Augment(patch=24),
        2,
        3,
        [(None, False), (torch.bfloat16, True)],
    )
    assert len(timings) == 2 and all(t > 0 for _, t in timings)
    assert all(torch.equal(before[k], v) for k, v in probed.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng_before)
    resumed = _Messages()
    train(
        dataclasses.replace(cfg, resume=tmp_path / "auto" / LAST, stop_at=2),
        model=_model(),
        reporter=resumed,
    )
    assert not [line for line in resumed.lines if line.startswith("CPU settings")]
    assert (
        torch.load(tmp_path / "auto" / LAST, weights_only=False)["prepared"]["cpu_settings"]
        == chosen
    )


def test_bf16_cpu_training_step_runs_and_matches_fp32(small_pairs: Path) -> None:
    """A real model's loss under CPU bf16 autocast, as `--precision bf16` trains, is close to
    fp32's, and its gradients are finite."""
    from lowlight_cli.training.precision import cpu_has_native_bf16

    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX-512 BF16 or AMX)")
    from lowlight_cli.registry import create_model
    from lowlight_cli.training.losses import neid_loss

    torch.manual_seed(0)
    model = create_model("neid", base_channels=8, depth=2, dr_blocks=1)
    model.reset_parameters()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    high = torch.rand(2, 3, 32, 32)
    low = torch.nn.functional.avg_pool2d(high * 0.2, 2)
    losses = {}
    for dtype in (None, torch.bfloat16):
        model.zero_grad()
        ctx = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
        with ctx:
            le, dr = model.forward_train(low)
            loss, _ = neid_loss(le.float(), dr.float(), high)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        losses[dtype] = float(loss.detach())
    assert losses[torch.bfloat16] == pytest.approx(losses[None], rel=0.03)


def test_neid_kaiming_init_keeps_the_signal(tmp_path: Path, small_pairs: Path, fake_vgg: Path):
    """The paper's N(0, 0.02) leaves neid's output ~1e-5 from an input of ~0.15 (no normalisation
    layers); --set init=kaiming starts with a signal of the input's order."""
    stds = {}
    for init in ("paper", "kaiming"):
        recipe = dataclasses.replace(_model_recipe("neid", lr=1e-3), init=init)
        result = train(
            _model_cfg(tmp_path, small_pairs, "neid", init, fake_vgg, recipe=recipe, stop_at=1)
        )
        from lowlight_cli.registry import create_model

        model = create_model("neid", **recipe.model_kwargs)
        model.load_state_dict(torch.load(result.last_checkpoint, weights_only=False)["model_state"])
        torch.manual_seed(0)
        with torch.no_grad():
            stds[init] = float(model(0.3 * torch.rand(1, 3, 64, 64)).std())
    assert stds["paper"] < 1e-3 < stds["kaiming"]


def test_train_finds_lol_in_the_data_folder_or_says_where_to_put_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    """`lowlight train --dataset lol --model neid` (the README's line) needs no --data once LOL
    is in the data folder; without it the error names the folder and where LOL comes from."""
    from lowlight_cli.errors import ExitCode

    lowlight = run_cli
    root = tmp_path / "datasets"
    monkeypatch.setenv("LOWLIGHT_DATA_DIR", str(root))
    small = ["--device", "cpu", "--threads", "1", "--batch-size", "2", "--patch", "32"]
    small += ["--workers", "1", "--steps", "2", "--val-holdout", "1", "--out"]
    code, _, err = lowlight(["train", "--dataset", "lol", "--model", "neid", *small, "x"])
    assert code == ExitCode.USAGE
    assert str(root / "lol") in " ".join(err.split()) and "--data" in err
    code, _, err = lowlight(["train", "--dataset", "pairs", "--model", "neid", *small, "x"])
    assert code == ExitCode.USAGE and "--data" in err

    _write_pairs(root / "lol" / "our485", 3, size=(32, 32))
    _write_pairs(root / "lol" / "eval15", 1, size=(32, 32))
    out = tmp_path / "run"
    code, _, err = lowlight(["train", "--dataset", "lol", "--model", "neid", *small, str(out)])
    assert code == 0, err
    ckpt = torch.load(out / LAST, weights_only=False)
    assert ckpt["step"] == 2 and "lol/our485" in ckpt["data"]


def test_init_from_a_checkpoint_takes_its_ema_weights(tmp_path: Path) -> None:
    """--init best.pt starts from the weights the run validated and would export (its EMA)."""
    from types import SimpleNamespace

    from lowlight_cli.registry import create_model
    from lowlight_cli.training.loop import _load_init

    live = create_model("neid").state_dict()
    ema = {k: v + 1 for k, v in live.items() if v.is_floating_point()}
    path = tmp_path / "best.pt"
    torch.save({"format": "lowlight-train", "model_state": live, "ema": ema}, path)
    task = SimpleNamespace(recipe=SimpleNamespace(model="neid"), model=create_model("neid"))
    _load_init(task, path)
    for name, value in task.model.state_dict().items():
        assert torch.equal(value, ema.get(name, live[name]))
