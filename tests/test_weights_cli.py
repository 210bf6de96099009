"""``lowlight weights list | download | verify | path | clear`` through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_weights import FAST, payload, sha, url_entry, write_manifest

from lowlight_cli import weights as W
from lowlight_cli.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``lowlight ARGV`` in-process; return (exit code, stdout, stderr)."""
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def two_files(server, tmp_path, monkeypatch):
    """'toy.a' (served) and 'toy.b' (served with a wrong sha256 in the manifest)."""
    monkeypatch.setattr(W.download, "DEFAULT_DOWNLOAD", FAST)
    a, b = payload(30_000, seed=1), payload(20_000, seed=2)
    server.state.files["/a.safetensors"] = a
    server.state.files["/b.safetensors"] = b
    write_manifest(
        tmp_path,
        monkeypatch,
        {
            "toy.a": url_entry(a, "a.safetensors", server.url("a.safetensors")),
            "toy.b": url_entry(
                b, "b.safetensors", server.url("b.safetensors"), sha256=sha(b"not b")
            ),
        },
    )
    return server, a, b


@pytest.fixture
def server():
    from test_weights import LoopbackServer

    srv = LoopbackServer()
    yield srv
    srv.close()


def test_list_shows_missing_then_cached(capsys, two_files):
    code, out, _ = run(capsys, "weights", "list", "--json")
    assert code == 0
    rows = {r["id"]: r for r in json.loads(out)["weights"]}
    assert rows["toy.a"]["status"] == rows["toy.b"]["status"] == "missing"
    assert rows["toy.a"]["bytes"] == 30_000
    assert run(capsys, "weights", "download", "toy.a")[0] == 0
    rows = {r["id"]: r for r in json.loads(run(capsys, "weights", "list", "--json")[1])["weights"]}
    assert rows["toy.a"]["status"] == "cached" and rows["toy.a"]["local_bytes"] == 30_000
    code, out, _ = run(capsys, "weights", "list")
    assert code == 0 and "toy.a" in out and "cached" in out


def test_download_json_and_checksum_mismatch_exit_4(capsys, two_files):
    _, a, b = two_files
    code, out, _ = run(capsys, "weights", "download", "toy.a", "--json")
    assert code == 0
    (result,) = json.loads(out)["downloaded"]
    assert result["sha256"] == sha(a) and result["bytes"] == len(a)
    code, _, err = run(capsys, "weights", "download", "toy.b")
    assert code == 4
    assert sha(b"not b") in err and sha(b) in err  # expected and actual
    assert not (W.cache_dir() / "b.safetensors.part").exists()
    code, _, err = run(capsys, "weights", "download")
    assert code == 2 and "--all" in err


def test_download_404_exit_4_single_request(capsys, server, tmp_path, monkeypatch):
    write_manifest(
        tmp_path, monkeypatch, {"toy.x": url_entry(b"x", "x.safetensors", server.url("x"))}
    )
    code, _, err = run(capsys, "weights", "download", "toy.x")
    assert code == 4 and "HTTP 404" in err
    assert len(server.state.requests) == 1


def test_offline_download_names_file(capsys, two_files, monkeypatch):
    server, _, _ = two_files
    monkeypatch.setenv("LOWLIGHT_OFFLINE", "1")
    code, _, err = run(capsys, "weights", "download", "toy.a")
    assert code == 4
    assert "a.safetensors" in err and "LOWLIGHT_OFFLINE" in err
    assert server.state.requests == []


def test_verify_detects_corruption(capsys, two_files):
    assert run(capsys, "weights", "download", "toy.a")[0] == 0
    code, out, _ = run(capsys, "weights", "verify", "--json")
    assert code == 0
    status = {r["id"]: r["status"] for r in json.loads(out)["verified"]}
    assert status == {"toy.a": "ok", "toy.b": "missing"}
    cached = W.cache_dir() / "a.safetensors"
    data = bytearray(cached.read_bytes())
    data[100] ^= 0xFF  # same size, different bytes
    cached.write_bytes(bytes(data))
    code, out, err = run(capsys, "weights", "verify", "toy.a")
    assert code == 4
    assert "mismatch" in out and "download --force toy.a" in err
    assert run(capsys, "weights", "download", "--force", "toy.a")[0] == 0
    assert run(capsys, "weights", "verify", "toy.a")[0] == 0


def test_path_command(capsys, two_files):
    code, _, err = run(capsys, "weights", "path", "toy.a")
    assert code == 4 and "lowlight weights download toy.a" in err
    run(capsys, "weights", "download", "toy.a")
    code, out, _ = run(capsys, "weights", "path", "toy.a")
    assert code == 0 and out.strip() == str(W.cache_dir() / "a.safetensors")
    code, out, _ = run(capsys, "weights", "path", "toy.a", "--json")
    assert json.loads(out)["path"] == str(W.cache_dir() / "a.safetensors")
    code, _, err = run(capsys, "weights", "path", "toy.zzz")
    assert code == 4 and "toy.a" in err  # lists the known ids


def test_clear_needs_yes_off_terminal_and_only_removes_cache(capsys, two_files, tmp_path):
    run(capsys, "weights", "download", "toy.a")
    cached = W.cache_dir() / "a.safetensors"
    stranger = W.cache_dir() / "not-ours.txt"  # a user's file in a custom cache dir
    stranger.write_text("keep me")
    code, _, err = run(capsys, "weights", "clear")  # stdin is not a terminal under pytest
    assert code == 2 and "--yes" in err and cached.exists()
    code, out, _ = run(capsys, "weights", "clear", "--yes", "--json")
    assert code == 0
    assert str(cached) in json.loads(out)["removed"]
    assert not cached.exists() and stranger.exists()
    assert (tmp_path / "manifest.json").exists()


def test_weights_list_does_not_import_torch(two_files):
    code = (
        "import sys\n"
        "from lowlight_cli.cli import main\n"
        "try:\n"
        "    main(['weights', 'list', '--json'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["weights"][0]["id"] == "toy.a"
    assert proc.stderr.strip().endswith("False")
