"""Atomic writes: whole files with ordinary permissions, nothing left behind on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lowlight_cli.files import atomic_file


@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_file_gets_umask_permissions_not_the_temp_files(tmp_path: Path, umask_022) -> None:
    dest = tmp_path / "sub" / "w.safetensors"
    with atomic_file(dest) as fh:
        fh.write(b"abc")
    assert dest.read_bytes() == b"abc"
    assert _mode(dest) == 0o644
    assert sorted(p.name for p in dest.parent.iterdir()) == ["w.safetensors"]


def test_replaced_file_keeps_its_permissions(tmp_path: Path, umask_022) -> None:
    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"old")
    dest.chmod(0o600)
    with atomic_file(dest) as fh:
        fh.write(b"new")
    assert dest.read_bytes() == b"new" and _mode(dest) == 0o600


def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "last.pt"
    dest.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_file(dest) as fh:
        fh.write(b"half")
        raise KeyboardInterrupt
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_weights_and_checkpoints_are_written_through_it(tmp_path: Path, umask_022) -> None:
    """The shipped-weights writer and the trainer's checkpoints give readable files (they were
    0600 when the temporary file's mode leaked through)."""
    import torch

    from lowlight_cli.training.checkpoint import atomic_torch_save
    from lowlight_cli.weights import save_safetensors_fp16

    save_safetensors_fp16({"w": torch.ones(2)}, tmp_path / "m.t.safetensors", {"k": 1})
    atomic_torch_save({"x": 1}, tmp_path / "last.pt")
    assert _mode(tmp_path / "m.t.safetensors") == 0o644
    assert _mode(tmp_path / "last.pt") == 0o644
