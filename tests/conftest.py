"""Shared fixtures: where ../shared is, small synthetic images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOWLIGHT_SHARED", REPO_ROOT.parent / "shared"))
SHARED_DATA = SHARED / "data"


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with a clear reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the project's shared data, absent on this machine)")
    return path


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test gets its own weights cache and data folder (empty: no default LOL) and never
    touches the network by accident."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("LOWLIGHT_CACHE_DIR", str(cache))
    monkeypatch.setenv("LOWLIGHT_DATA_DIR", str(tmp_path_factory.mktemp("datasets")))
    monkeypatch.delenv("LOWLIGHT_MANIFEST", raising=False)
    monkeypatch.delenv("LOWLIGHT_WEIGHTS_URL", raising=False)
    yield


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """``lowlight ARGS`` in-process through ``main`` (errors -> exit codes): (code, out, err)."""
    from lowlight_cli.cli import main

    def invoke(args: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke
