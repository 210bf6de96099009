"""Weights manifest, cache, downloads (against a loopback HTTP server), loading and saving."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import importlib.util
import json
import random
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lowlight_cli import weights as W
from lowlight_cli.constants import ExitCode
from lowlight_cli.errors import WeightsError
from lowlight_cli.registry import get_spec

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tiny delays and timeouts so failure paths stay fast.
FAST = W.DownloadOptions(
    connect_timeout=2.0,
    read_timeout=2.0,
    retries=2,
    backoff=0.01,
    max_backoff=0.02,
    lock_timeout=30.0,
    chunk_size=4096,
    progress=False,
)


def payload(size: int = 200_000, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Loopback server whose behaviour each test controls


class ServerState:
    """Files served and failure knobs; every request is logged as (path, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self.release = threading.Event()  # set at teardown: sleeping handlers return
        self.fail_first: int = 0  # answer the first N requests with fail_status
        self.fail_status: int = 503
        self.cut_first_body: bool = False  # close the connection half-way, once
        self.ignore_range: bool = False
        self.delay: float = 0.0  # sleep before answering (timeouts)
        self.chunk_delay: float = 0.0
        self.wait_for: list[Path] = []  # hold the first full GET until these files exist

    @property
    def full_gets(self) -> int:
        return sum(1 for _, rng in self.requests if rng is None)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Any

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def handle(self) -> None:
        # The client may give up first (timeout tests).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            super().handle()

    def do_GET(self) -> None:
        st: ServerState = self.server.state
        with st.lock:
            st.requests.append((self.path, self.headers.get("Range")))
            n = len(st.requests)
            cut = st.cut_first_body
            st.cut_first_body = False
        if n <= st.fail_first:
            self.send_error(st.fail_status)
            return
        data = st.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        if st.delay:
            st.release.wait(st.delay)
        if st.wait_for and n == 1:
            deadline = time.monotonic() + 20
            while not all(p.exists() for p in st.wait_for) and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)  # let the second process reach the lock
        start = 0
        rng = self.headers.get("Range")
        if rng and not st.ignore_range:
            start = int(rng.split("=", 1)[1].split("-", 1)[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if cut:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        for i in range(0, len(body), 16384):
            self.wfile.write(body[i : i + 16384])
            if st.chunk_delay:
                time.sleep(st.chunk_delay)


class LoopbackServer:
    def __init__(self) -> None:
        self.state = ServerState()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.state = self.state
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def close(self) -> None:
        self.state.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = LoopbackServer()
    yield srv
    srv.close()


def url_entry(data: bytes, file: str, url: str, **extra: Any) -> dict[str, Any]:
    entry = {
        "file": file,
        "format": "safetensors" if file.endswith(".safetensors") else "pth",
        "source": {"type": "url", "url": url},
        "sha256": sha(data),
        "bytes": len(data),
        "license": "MIT",
        "origin": "test fixture",
        "training": "none",
        "metrics": {},
    }
    entry.update(extra)
    return entry


def write_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: dict) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"schema_version": 1, "weights": entries}))
    monkeypatch.setenv("LOWLIGHT_MANIFEST", str(path))
    return path


@pytest.fixture
def served(server, tmp_path, monkeypatch):
    """One 200 kB file 'toy.a' on the server and in a manifest."""
    data = payload()
    server.state.files["/toy-a.safetensors"] = data
    write_manifest(
        tmp_path,
        monkeypatch,
        {"toy.a": url_entry(data, "toy-a.safetensors", server.url("toy-a.safetensors"))},
    )
    return server, data


# --------------------------------------------------------------------------------------------
# Manifest


def test_packaged_manifest_is_valid_and_has_upstream_vgg16():
    manifest = W.load_manifest()
    assert manifest.schema_version == W.SCHEMA_VERSION
    vgg = manifest.get(W.VGG16_ID)
    assert vgg.url == "https://download.pytorch.org/models/vgg16-397923af.pth"
    # torchvision publishes only the hash prefix, in the file name.
    assert vgg.sha256 is None and vgg.sha256_prefix == "397923af"
    assert vgg.sha256_prefix in vgg.file
    assert vgg.cache_subset is not None and vgg.cache_subset.keep_prefix == "features."
    # The file the package reads is the repo's top-level one (editable install) or the copy.
    assert json.loads(W.manifest_path().read_text()) == json.loads(
        (REPO_ROOT / "weights_manifest.json").read_text()
    )


def test_manifest_env_override(tmp_path, monkeypatch):
    data = payload(10)
    path = write_manifest(
        tmp_path, monkeypatch, {"private.v1": url_entry(data, "p.safetensors", "https://x/p")}
    )
    assert W.manifest_path() == path
    assert list(W.load_manifest().entries) == ["private.v1"]


@pytest.mark.parametrize(
    "name",
    [
        "../evil.safetensors",
        "a/b.safetensors",
        "..\\evil.safetensors",
        "/abs.safetensors",
        "..",
        ".hidden.safetensors",
        "c:evil.safetensors",
        "x\x00.safetensors",
    ],
)
def test_malicious_file_names_rejected(tmp_path, monkeypatch, name):
    entry = url_entry(b"x", name, "https://example.invalid/x")
    entry["format"] = "safetensors"
    write_manifest(tmp_path, monkeypatch, {"neid.evil": entry})
    with pytest.raises(WeightsError, match="unsafe file name"):
        W.load_manifest()


def test_malicious_subset_name_rejected(tmp_path, monkeypatch):
    entry = url_entry(b"x", "v.pth", "https://example.invalid/v.pth")
    entry["cache_subset"] = {"file": "../v.safetensors", "keep_prefix": "features."}
    write_manifest(tmp_path, monkeypatch, {"vgg16.x": entry})
    with pytest.raises(WeightsError, match="unsafe cache_subset file name"):
        W.load_manifest()


def _bad(**change: Any) -> dict[str, Any]:
    entry = url_entry(b"x", "m.safetensors", "https://example.invalid/m.safetensors")
    for key, value in change.items():
        if value is None:
            entry.pop(key)
        else:
            entry[key] = value
    return entry


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (_bad(sha256=None), "exactly one of 'sha256' and 'sha256_prefix'"),
        (_bad(sha256="abc"), "64 lowercase hex"),
        (_bad(format="pickle"), "format must be one of"),
        (_bad(file="m.pth"), "does not end with .safetensors"),
        (_bad(bytes=0), "positive integer"),
        (_bad(license=""), "'license' must be a non-empty string"),
        (_bad(source={"type": "ftp"}), "'source' must be"),
        (_bad(source={"type": "url", "url": "file:///etc/passwd"}), "must start with https://"),
        (
            _bad(sha256=None, sha256_prefix="397923af", source={"type": "bundled"}),
            "only allowed for upstream",
        ),
        (_bad(extra_field=1), "unknown keys"),
        (_bad(metrics={"lol": "good"}), "'metrics' must map"),
    ],
)
def test_manifest_validation_errors(tmp_path, monkeypatch, entry, message):
    write_manifest(tmp_path, monkeypatch, {"neid.x": entry})
    with pytest.raises(WeightsError, match=message) as info:
        W.load_manifest()
    assert info.value.exit_code == ExitCode.WEIGHTS
    assert "neid.x" in info.value.message


def test_manifest_version_json_and_id_errors(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    monkeypatch.setenv("LOWLIGHT_MANIFEST", str(path))
    path.write_text(json.dumps({"schema_version": 2, "weights": {}}))
    with pytest.raises(WeightsError, match="schema_version 2"):
        W.load_manifest()
    path.write_text('{"schema_version": 1,\n "weights": {,}}')
    with pytest.raises(WeightsError, match="not valid JSON: line 2"):
        W.load_manifest()
    path.write_text(json.dumps({"schema_version": 1, "weights": {"NoTag": _bad()}}))
    with pytest.raises(WeightsError, match=r"model\.tag"):
        W.load_manifest()
    same = _bad()
    path.write_text(json.dumps({"schema_version": 1, "weights": {"a.x": same, "b.x": same}}))
    with pytest.raises(WeightsError, match="both use the file name"):
        W.load_manifest()
    with pytest.raises(WeightsError, match=r"unknown weights 'nope\.x'"):
        W.parse_manifest({"schema_version": 1, "weights": {}}).get("nope.x")


def test_manifest_entry_helper_round_trips():
    entry = W.manifest_entry(
        "neid.lol.safetensors",
        sha256="a" * 64,
        size=1234,
        license="MIT",
        origin="lowlight train neid, commit abc",
        training="LOL our485 210 pairs, 2000 epochs",
        metrics={"lol_eval15": {"psnr": 21.5, "ssim": 0.8}},
    )
    assert entry["source"] == {"type": "bundled"}
    parsed = W.parse_manifest({"schema_version": 1, "weights": {"neid.lol": entry}})
    assert parsed.get("neid.lol").to_dict() == entry
    with pytest.raises(WeightsError):
        W.manifest_entry(
            "../x.safetensors", sha256="a" * 64, size=1, license="x", origin="x", training="x"
        )


# --------------------------------------------------------------------------------------------
# Downloads


def test_clean_download(served):
    server, data = served
    path = W.resolve_weights("toy.a", options=FAST)
    assert path == W.cache_dir() / "toy-a.safetensors"
    assert path.read_bytes() == data
    assert server.state.requests == [("/toy-a.safetensors", None)]
    assert not path.with_name(path.name + ".part").exists()
    # Second resolve: from the cache, no request.
    assert W.resolve_weights("toy.a", options=FAST) == path
    assert len(server.state.requests) == 1


def test_cut_download_resumes_with_range(served):
    server, data = served
    server.state.cut_first_body = True
    path = W.resolve_weights("toy.a", options=FAST)
    assert path.read_bytes() == data
    (_, rng1), (_, rng2) = server.state.requests
    assert rng1 is None
    # Resumed from what was written before the cut (the server sent half the file).
    assert rng2 is not None and rng2.startswith("bytes=") and rng2.endswith("-")
    resumed_at = int(rng2[len("bytes=") : -1])
    assert 0 < resumed_at <= len(data) // 2
    assert server.state.full_gets == 1


def test_partial_file_from_earlier_run_is_resumed(served):
    server, data = served
    part = W.cache_dir() / "toy-a.safetensors.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(data[:12345])
    assert W.resolve_weights("toy.a", options=FAST).read_bytes() == data
    assert server.state.requests == [("/toy-a.safetensors", "bytes=12345-")]


def test_complete_partial_file_needs_no_request(served):
    server, data = served
    part = W.cache_dir() / "toy-a.safetensors.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(data)
    assert W.resolve_weights("toy.a", options=FAST).read_bytes() == data
    assert server.state.requests == []
    assert not part.exists()


def test_server_ignoring_range_restarts_from_scratch(served):
    server, data = served
    server.state.cut_first_body = True
    server.state.ignore_range = True
    path = W.resolve_weights("toy.a", options=FAST)
    assert path.read_bytes() == data  # not the first half twice
    assert len(server.state.requests) == 2 and server.state.requests[1][1] is not None


def test_checksum_mismatch_deletes_partial(server, tmp_path, monkeypatch):
    data = payload()
    server.state.files["/bad.safetensors"] = data
    wrong = sha(b"something else")
    entry = url_entry(data, "bad.safetensors", server.url("bad.safetensors"), sha256=wrong)
    write_manifest(tmp_path, monkeypatch, {"toy.bad": entry})
    with pytest.raises(WeightsError) as info:
        W.resolve_weights("toy.bad", options=FAST)
    msg = str(info.value)
    assert wrong in msg and sha(data) in msg  # expected and actual
    assert info.value.exit_code == ExitCode.WEIGHTS == 4
    cache = W.cache_dir()
    assert not (cache / "bad.safetensors").exists()
    assert not (cache / "bad.safetensors.part").exists()
    assert len(server.state.requests) == 1  # a mismatch is not retried


def test_sha256_prefix_is_checked(server, tmp_path, monkeypatch):
    data = payload(5000)
    server.state.files["/up.pth"] = data
    good = url_entry(data, "up.pth", server.url("up.pth"), sha256=None, sha256_prefix=sha(data)[:8])
    bad = url_entry(data, "up2.pth", server.url("up.pth"), sha256=None, sha256_prefix="00000000")
    write_manifest(tmp_path, monkeypatch, {"up.good": good, "up.bad": bad})
    assert W.resolve_weights("up.good", options=FAST).read_bytes() == data
    with pytest.raises(WeightsError, match="expected sha256 00000000"):
        W.resolve_weights("up.bad", options=FAST)


def test_404_is_not_retried(server, tmp_path, monkeypatch):
    entry = url_entry(b"x", "gone.safetensors", server.url("gone.safetensors"))
    write_manifest(tmp_path, monkeypatch, {"toy.gone": entry})
    with pytest.raises(WeightsError, match="HTTP 404"):
        W.resolve_weights("toy.gone", options=FAST)
    assert len(server.state.requests) == 1


def test_5xx_is_retried_then_succeeds(served):
    server, data = served
    server.state.fail_first = 2
    server.state.fail_status = 503
    assert W.resolve_weights("toy.a", options=FAST).read_bytes() == data
    assert len(server.state.requests) == 3


def test_5xx_gives_up_after_retries(served):
    server, _ = served
    server.state.fail_first = 100
    with pytest.raises(WeightsError, match=r"HTTP 503.*after 3 attempts"):
        W.resolve_weights("toy.a", options=FAST)
    assert len(server.state.requests) == FAST.retries + 1


def test_read_timeout(served):
    server, _ = served
    server.state.delay = 5.0
    opts = W.DownloadOptions(read_timeout=0.2, retries=1, backoff=0.01, progress=False)
    start = time.monotonic()
    with pytest.raises(WeightsError, match="timed out"):
        W.resolve_weights("toy.a", options=opts)
    assert time.monotonic() - start < 3.0
    assert len(server.state.requests) == 2  # timeouts are retried


def test_mirror_variable_replaces_base_url(tmp_path, monkeypatch):
    primary, mirror = LoopbackServer(), LoopbackServer()
    try:
        data = payload(3000)
        mirror.state.files["/toy-m.safetensors"] = data
        entry = url_entry(data, "toy-m.safetensors", primary.url("models/toy-m.safetensors"))
        write_manifest(tmp_path, monkeypatch, {"toy.m": entry})
        monkeypatch.setenv("LOWLIGHT_WEIGHTS_URL", mirror.base + "/")
        assert W.resolve_weights("toy.m", options=FAST).read_bytes() == data
        assert primary.state.requests == []
        assert mirror.state.requests == [("/toy-m.safetensors", None)]
    finally:
        primary.close()
        mirror.close()


def test_manifest_mirrors_used_after_primary_fails(server, tmp_path, monkeypatch):
    data = payload(3000)
    server.state.files["/mirror/toy.safetensors"] = data
    entry = url_entry(data, "toy.safetensors", server.url("missing/toy.safetensors"))
    entry["source"]["mirrors"] = [server.url("mirror/toy.safetensors")]
    write_manifest(tmp_path, monkeypatch, {"toy.x": entry})
    assert W.resolve_weights("toy.x", options=FAST).read_bytes() == data
    assert [p for p, _ in server.state.requests] == [
        "/missing/toy.safetensors",
        "/mirror/toy.safetensors",
    ]


def test_offline_makes_no_request_and_says_how(served, monkeypatch):
    server, _ = served
    monkeypatch.setenv("LOWLIGHT_OFFLINE", "1")
    with pytest.raises(WeightsError) as info:
        W.resolve_weights("toy.a", options=FAST)
    text = str(info.value)
    assert "toy-a.safetensors" in text  # which file
    assert server.url("toy-a.safetensors") in text  # where from
    assert "lowlight weights download toy.a" in text
    assert str(W.cache_dir()) in text  # where to put it
    assert info.value.exit_code == 4
    assert server.state.requests == []


def test_two_processes_download_once(served, tmp_path):
    server, data = served
    markers = [tmp_path / "p0.started", tmp_path / "p1.started"]
    server.state.wait_for = markers
    server.state.chunk_delay = 0.005
    script = (
        "import sys, pathlib\n"
        "from lowlight_cli import weights as W\n"
        "opts = W.DownloadOptions(read_timeout=30, retries=0, chunk_size=4096, progress=False)\n"
        "pathlib.Path(sys.argv[1]).touch()\n"
        "print(W.resolve_weights('toy.a', options=opts))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(m)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for m in markers
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
    paths = {Path(out.strip()) for out, _ in outs}
    assert paths == {W.cache_dir() / "toy-a.safetensors"}
    assert paths.pop().read_bytes() == data
    assert server.state.full_gets == 1
    assert len(server.state.requests) == 1


# --------------------------------------------------------------------------------------------
# Bundled files, loading, saving


def _bundle(tmp_path, monkeypatch, state: dict[str, torch.Tensor], weights_id: str = "neid.tiny"):
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    file = f"{weights_id}.safetensors"
    digest, size = W.save_safetensors_fp16(state, bundled / file, {"note": "test"})
    entry = W.manifest_entry(
        file, sha256=digest, size=size, license="MIT", origin="test", training="none"
    )
    write_manifest(tmp_path, monkeypatch, {weights_id: entry})
    monkeypatch.setattr(W.store, "bundled_dir", lambda: bundled)
    return bundled / file


def test_bundled_file_wins_even_offline(tmp_path, monkeypatch):
    state = {"conv.weight": torch.randn(4, 3, 3, 3), "steps": torch.tensor(6)}
    path = _bundle(tmp_path, monkeypatch, state)
    monkeypatch.setenv("LOWLIGHT_OFFLINE", "1")
    assert W.resolve_weights("neid.tiny") == path
    loaded = W.load_state_dict("neid.tiny", spec=get_spec("neid"))
    assert loaded["conv.weight"].dtype == torch.float32
    assert loaded["steps"].dtype == torch.int64 and int(loaded["steps"]) == 6
    assert torch.allclose(loaded["conv.weight"], state["conv.weight"], atol=2e-3, rtol=1e-3)
    # A bare tag means "<model>.<tag>"; a path works too.
    assert set(W.load_state_dict("tiny", spec=get_spec("neid"))) == set(state)
    assert set(W.load_state_dict(path, spec=get_spec("neid"))) == set(state)
    assert W.verify_entry(W.load_manifest().get("neid.tiny"))["status"] == "ok"


def test_load_state_dict_refuses_other_models_weights(tmp_path, monkeypatch):
    _bundle(tmp_path, monkeypatch, {"w": torch.zeros(2)})
    with pytest.raises(WeightsError, match="for model 'neid', not 'symnet'"):
        W.load_state_dict("neid.tiny", spec=get_spec("symnet"))
    with pytest.raises(WeightsError, match="not found"):
        W.load_state_dict(tmp_path / "missing.safetensors", spec=get_spec("neid"))


def test_save_safetensors_fp16(tmp_path):
    w = torch.randn(8, 8)
    state = {"a.weight": w, "b.weight": w, "count": torch.tensor([1, 2], dtype=torch.int32)}
    digest, size = W.save_safetensors_fp16(state, tmp_path / "m.safetensors", {"epochs": 3})
    path = tmp_path / "m.safetensors"
    assert (digest, size) == (W.file_sha256(path), path.stat().st_size)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        assert fh.metadata() == {"epochs": "3"}
        assert fh.get_tensor("a.weight").dtype == torch.float16
        assert fh.get_tensor("count").dtype == torch.int32
    with pytest.raises(WeightsError, match="overflows float16"):
        W.save_safetensors_fp16({"big": torch.tensor([1e6])}, tmp_path / "big.safetensors")
    assert not (tmp_path / "big.safetensors").exists()


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pth_loading_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(1), "x": _Exploit(marker)}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="cannot read weights"):
        W.read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()
    # A plain checkpoint dict with a DataParallel prefix loads.
    torch.save({"state_dict": {"module.w": torch.ones(2, dtype=torch.float64)}}, tmp_path / "ok.pt")
    loaded = W.read_state_dict(tmp_path / "ok.pt")
    assert list(loaded) == ["w"] and loaded["w"].dtype == torch.float32


def test_a_training_checkpoint_reads_as_its_exported_weights(tmp_path):
    """best.pt/last.pt of `lowlight train` give the EMA where the run kept one, the live weights
    for the rest; numpy values in a checkpoint (older runs kept numpy's RNG state) are data."""
    from lowlight_cli.training.checkpoint import rng_state, set_rng_state

    live = {"a": torch.zeros(2), "b": torch.ones(2), "n": torch.tensor(3)}
    ema = {"a": torch.full((2,), 0.5), "b": torch.full((2,), 0.75)}
    numpy_state = np.random.get_state()
    tensor_form = rng_state()["numpy"]
    ckpt = {
        "format": "lowlight-train",
        "model": "neid",
        "model_state": live,
        "ema": ema,
        "rng": {**rng_state(), "numpy": numpy_state},
        "best": {"psnr": np.float64(17.5)},
    }
    torch.save(ckpt, tmp_path / "old.pt")
    loaded = W.read_state_dict(tmp_path / "old.pt")
    assert torch.equal(loaded["a"], ema["a"]) and torch.equal(loaded["b"], ema["b"])
    assert loaded["n"] == 3
    torch.save({**ckpt, "ema": None}, tmp_path / "no_ema.pt")
    assert torch.equal(W.read_state_dict(tmp_path / "no_ema.pt")["a"], live["a"])

    # New checkpoints keep numpy's state as a tensor; both forms restore the same generator.
    np.random.set_state(numpy_state)
    first = np.random.random(3)
    assert isinstance(tensor_form[1], torch.Tensor)
    for state in (numpy_state, tensor_form):
        np.random.set_state(numpy_state)
        set_rng_state({**rng_state(), "numpy": state})
        assert np.array_equal(np.random.random(3), first)


# --------------------------------------------------------------------------------------------
# VGG-16


def _fake_vgg(tmp_path) -> bytes:
    state = {
        "features.0.weight": torch.randn(4, 3, 3, 3),
        "features.0.bias": torch.randn(4),
        "features.2.weight": torch.randn(4, 4, 3, 3),
        "classifier.0.weight": torch.randn(64, 32),  # stands in for the 490 MB classifier
    }
    path = tmp_path / "fake_vgg.pth"
    torch.save(state, path)
    return path.read_bytes()


def test_vgg16_download_keeps_only_conv_subset(server, tmp_path, monkeypatch):
    data = _fake_vgg(tmp_path)
    server.state.files["/vgg16-397923af.pth"] = data
    entry = url_entry(
        data,
        "vgg16-397923af.pth",
        server.url("vgg16-397923af.pth"),
        sha256=None,
        sha256_prefix=sha(data)[:8],
        cache_subset={"file": "vgg16-397923af.features.safetensors", "keep_prefix": "features."},
    )
    write_manifest(tmp_path, monkeypatch, {W.VGG16_ID: entry})
    monkeypatch.setattr(W.download, "DEFAULT_DOWNLOAD", FAST)
    path = W.resolve_vgg16()
    assert path == W.cache_dir() / "vgg16-397923af.features.safetensors"
    state = W.read_state_dict(path)
    assert set(state) == {"features.0.weight", "features.0.bias", "features.2.weight"}
    assert not (W.cache_dir() / "vgg16-397923af.pth").exists()  # the big file is gone
    assert W.resolve_vgg16() == path and len(server.state.requests) == 1
    assert W.verify_entry(W.load_manifest().get(W.VGG16_ID))["status"] == "ok"
    # Offline and explicit paths.
    monkeypatch.setenv("LOWLIGHT_VGG16_PATH", str(tmp_path / "fake_vgg.pth"))
    assert W.resolve_vgg16() == tmp_path / "fake_vgg.pth"
    assert W.resolve_vgg16(tmp_path / "fake_vgg.pth") == tmp_path / "fake_vgg.pth"
    with pytest.raises(WeightsError, match="--vgg"):
        W.resolve_vgg16(tmp_path / "nope.npz")


def test_vgg16_offline_message(monkeypatch):
    monkeypatch.setenv("LOWLIGHT_OFFLINE", "1")
    monkeypatch.delenv("LOWLIGHT_VGG16_PATH", raising=False)
    with pytest.raises(WeightsError) as info:
        W.resolve_vgg16()
    text = str(info.value)
    assert "vgg16-397923af.pth" in text and "LOWLIGHT_VGG16_PATH" in text and "--vgg" in text


def test_vgg16_env_path_to_shared_arrays(monkeypatch):
    from conftest import shared_path

    npz = shared_path("weights", "vgg16_imagenet", "vgg16_keras_imagenet_conv_oihw_fp16.npz")
    monkeypatch.setenv("LOWLIGHT_VGG16_PATH", str(npz))
    monkeypatch.setenv("LOWLIGHT_OFFLINE", "1")
    assert W.resolve_vgg16() == npz


# --------------------------------------------------------------------------------------------
# Packaging


def test_wheel_contains_manifest_and_bundled(tmp_path):
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("hatchling is not installed (pip install -e '.[dev]')")
    out = tmp_path / "wheel"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            ".",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("lowlight-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        packaged = json.loads(zf.read("lowlight_cli/weights_manifest.json"))
    assert packaged == json.loads((REPO_ROOT / "weights_manifest.json").read_text())
    bundled_in_repo = {
        f"lowlight_cli/bundled/{p.name}"
        for p in (REPO_ROOT / "lowlight_cli" / "bundled").iterdir()
        if p.is_file()
    }
    assert bundled_in_repo, "lowlight_cli/bundled/ should exist in the repository"
    assert bundled_in_repo <= names
    for entry in W.parse_manifest(packaged).entries.values():
        if entry.source == "bundled":
            assert f"lowlight_cli/bundled/{entry.file}" in names, entry.id


def _absolute_paths(text: str) -> list[str]:
    import re

    without_urls = re.sub(r"[a-z]+://\S+", "", text)
    return re.findall(r"(?<![\w.~])/[\w.-]+/[\w./-]*", without_urls)


def test_shipped_manifest_and_weights_name_no_machine_paths() -> None:
    """What ships describes data by name (``lol/our485``), never by the absolute folder of the
    machine that trained it."""
    from safetensors import safe_open

    assert _absolute_paths("pairs:/home/me/data/lol/our485 (210 pairs)")  # the check works
    assert not _absolute_paths("pairs:lol/our485; https://example.org/a/b.pth")
    manifest = Path(W.manifest_path()).read_text()
    assert not _absolute_paths(manifest)
    assert "../" not in manifest
    for path in sorted(Path(W.bundled_dir()).glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            meta = json.dumps(f.metadata() or {})
        assert not _absolute_paths(meta), path.name
        assert "../" not in meta, path.name  # nor the trainer's folder layout (../data/...)


def test_weights_of_another_model_are_a_weights_error_naming_it(tmp_path, run_cli):
    """A file made for another model is refused with exit 4 and the model it fits, not a
    traceback; a file that fits no model says how far off it is."""
    from lowlight_cli.registry import create_model, load_model

    neid = create_model("neid").state_dict()
    torch.save(neid, tmp_path / "neid.pt")
    with pytest.raises(WeightsError, match="are for model 'neid', not 'nrl'"):
        load_model("nrl", tmp_path / "neid.pt")
    partial = {k: v for i, (k, v) in enumerate(neid.items()) if i}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(WeightsError, match="do not fit model 'neid' \\(1 tensors missing"):
        load_model("neid", tmp_path / "partial.pt")

    photo = tmp_path / "dark.png"
    from PIL import Image

    Image.fromarray(np.full((16, 16, 3), 20, np.uint8)).save(photo)
    code, _, err = run_cli(
        ["enhance", str(photo), "--model", "nrl", "--weights", str(tmp_path / "neid.pt")]
    )
    assert code == ExitCode.WEIGHTS and "--model neid" in err
    assert not (tmp_path / "dark_enhanced.png").exists()


def test_weights_that_record_another_width_load_at_that_width(tmp_path, run_cli):
    """A file that records the width it was trained at (``lowlight train --set
    model_kwargs=...`` exports do) runs at that width; the run mode stays the caller's, and a
    setting that would change the size multiple (depth) is not taken from the file."""
    from PIL import Image

    from lowlight_cli.registry import create_model, load_model
    from lowlight_cli.weights.state import TRAINING_CHECKPOINT_FORMAT

    narrow = create_model("neid", base_channels=8)
    recorded = {"upscale": True, "base_channels": 8, "depth": 3, "dr_blocks": 2}
    W.save_safetensors_fp16(
        narrow.state_dict(), tmp_path / "narrow.safetensors", {"kwargs": recorded}
    )
    model = load_model("neid", tmp_path / "narrow.safetensors")
    assert model.base_channels == 8 and model.upscale is False
    expected = create_model("neid", base_channels=8)
    expected.load_state_dict(W.read_state_dict(tmp_path / "narrow.safetensors"))
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(model(x), expected(x))
    assert load_model("neid", tmp_path / "narrow.safetensors", upscale=True).upscale is True

    # A training checkpoint records its model_kwargs.
    ckpt = {
        "format": TRAINING_CHECKPOINT_FORMAT,
        "model_state": narrow.state_dict(),
        "model_kwargs": recorded,
    }
    torch.save(ckpt, tmp_path / "last.pt")
    assert load_model("neid", tmp_path / "last.pt").base_channels == 8

    # The same tensors without the record, or with another depth, do not fit.
    torch.save(narrow.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(WeightsError, match="do not fit model 'neid'"):
        load_model("neid", tmp_path / "bare.pt")
    shallow = create_model("neid", base_channels=8, depth=2)
    W.save_safetensors_fp16(
        shallow.state_dict(),
        tmp_path / "shallow.safetensors",
        {"kwargs": {"base_channels": 8, "depth": 2}},
    )
    with pytest.raises(WeightsError, match="do not fit model 'neid'"):
        load_model("neid", tmp_path / "shallow.safetensors")

    photo = tmp_path / "dark.png"
    Image.fromarray(np.full((40, 56, 3), 20, np.uint8)).save(photo)
    code, _, err = run_cli(
        [
            "enhance",
            str(photo),
            "--model",
            "neid",
            "--weights",
            str(tmp_path / "narrow.safetensors"),
        ]
    )
    assert code == 0, err
    assert Image.open(tmp_path / "dark_enhanced.png").size == (56, 40)
