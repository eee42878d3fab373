"""Model zoo, cache, downloads, verification, import and conversion (timemachine.zoo + `timemachine weights`).

Downloads are tested against a real HTTP server on 127.0.0.1 (a ThreadingHTTPServer in a thread) that
honours Range/If-Range and can be told, request by request, to cut the connection, answer with an HTTP
error, stall past the client's read timeout, ignore ranges or serve other content.  Nothing here touches
the real network or the user's home: TIMEMACHINE_HOME, TORCH_HOME and the manifest are temporary.  The zoo is
built as the faces build it, from the environment the test set (:func:`zoo`).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from timemachine import errors, pipeline
from timemachine.cli import main
from timemachine.env import Environment
from timemachine.errors import AlreadyExists, CheckpointError, WeightsError
from timemachine.zoo import BACKBONE, GENERATOR, VGG16, DownloadSettings, Zoo
from timemachine.zoo import download as zoo_download

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Small timeouts and near-zero backoff so that failure paths take fractions of a second.
FAST = DownloadSettings(connect_timeout=2.0, read_timeout=0.4, retries=3, backoff=0.001, chunk_size=16384)
NVIDIA_LICENCE_MARK = "non-commercial"


# ----------------------------------------------------------------------------------------------------------
# A scriptable HTTP server


class FakeServer:
    """Files served by path, a per-path list of actions for successive requests, and a log of requests.

    Actions (dicts; an empty dict or an exhausted list = serve normally):
        {"status": 500}          answer with that status and no body
        {"cut_after": n}         send the headers and n body bytes, then close the connection
        {"stall": (n, seconds)}  send n body bytes, then go silent for `seconds`
        {"ignore_range": True}   answer 200 with the whole file even to a Range request
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.plans: dict[str, list[dict]] = {}
        self.requests: list[tuple[str, dict]] = []
        self.stop = threading.Event()
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def requests_for(self, path: str) -> list[dict]:
        return [headers for p, headers in self.requests if p == path]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_GET(self):
        fake: FakeServer = self.server.fake
        fake.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        plan = fake.plans.get(self.path)
        action = plan.pop(0) if plan else {}
        data = fake.files.get(self.path)
        if "status" in action or data is None:
            self.send_response(action.get("status", 404))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        start = 0
        range_header, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        if range_header and not action.get("ignore_range") and if_range in (None, etag):
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        body = data[start:]
        try:
            if "cut_after" in action:
                self.wfile.write(body[:action["cut_after"]])
                self.wfile.flush()
                self.close_connection = True
                return
            if "stall" in action:
                sent, seconds = action["stall"]
                self.wfile.write(body[:sent])
                self.wfile.flush()
                fake.stop.wait(seconds)
                body = body[sent:]
            self.wfile.write(body)
        except OSError:  # the client gave up (read timeout) and closed the connection
            self.close_connection = True


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """Clients that time out or give up reset their connections: expected here, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def server():
    fake = FakeServer()
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    httpd.fake = fake
    fake.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    fake.stop.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """A private TIMEMACHINE_HOME and TORCH_HOME, no offline switch, no proxies, the repository's manifest."""
    home = tmp_path / "tmhome"
    monkeypatch.setenv("TIMEMACHINE_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torchhome"))
    monkeypatch.delenv("TIMEMACHINE_OFFLINE", raising=False)
    monkeypatch.delenv("TIMEMACHINE_MANIFEST", raising=False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return home


def payload(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zoo(settings: DownloadSettings = FAST, **env_changes) -> Zoo:
    """The zoo as a face builds it: from the environment (as the test has set it) at the time of the call."""
    return Zoo(Environment.from_environ().replace(**env_changes), settings=settings)


def write_manifest(tmp_path: Path, monkeypatch, **entries: dict) -> Path:
    """A manifest with the given entries (name -> overrides of a generator entry), selected via TIMEMACHINE_MANIFEST."""
    models = {}
    for name, overrides in entries.items():
        models[name] = {"kind": "generator", "description": f"test model {name}", "url": "http://127.0.0.1:9/x",
                        "filename": f"{name}.pkl", "size": None, "sha256": None, "source": "test",
                        "licence": {"name": "NVIDIA Source Code License-NC (StyleGAN2-ADA)",
                                    "summary": "non-commercial use only", "url": "https://example.invalid/licence"},
                        **overrides}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"schema_version": 1, "models": models}))
    monkeypatch.setenv("TIMEMACHINE_MANIFEST", str(path))
    return path


def closed_port() -> int:
    """A local port nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got: {text!r}"
    return lines[0]


# ----------------------------------------------------------------------------------------------------------
# The manifest and its packaging


def test_repository_manifest_lists_the_zoo_with_licences_and_sources():
    manifest = zoo().entries()
    for name in ("afhqdog", "afhqcat", "afhqwild"):
        entry = manifest[name]
        assert entry.kind == GENERATOR
        assert entry.url == f"https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/{name}.pkl"
        assert "NC" in entry.licence.name and NVIDIA_LICENCE_MARK in entry.licence.summary
    vgg = manifest[VGG16]
    assert vgg.kind == BACKBONE
    assert vgg.url == "https://download.pytorch.org/models/vgg16-397923af.pth"
    # torchvision names its files after the first hex digits of their SHA-256: the full digest must agree.
    prefix = re.search(r"-([0-9a-f]{8,})\.", vgg.filename).group(1)
    assert vgg.sha256.startswith(prefix)
    for entry in manifest.values():
        assert entry.source.strip(), f"{entry.name}: every figure needs a source"


def test_manifest_errors_are_one_sentence(tmp_path, monkeypatch):
    path = write_manifest(tmp_path, monkeypatch, good={})
    path.write_text("{not json")
    with pytest.raises(WeightsError, match="not valid JSON"):
        zoo().entries()
    write_manifest(tmp_path, monkeypatch, bad={"sha256": "1234"})
    with pytest.raises(WeightsError, match="sha256"):
        zoo().entries()
    write_manifest(tmp_path, monkeypatch, bad={"filename": "../escape.pkl"})
    with pytest.raises(WeightsError, match="file name"):
        zoo().entries()

    write_manifest(tmp_path, monkeypatch, bad={"kind": "discriminator\x1b[2J"})
    with pytest.raises(WeightsError, match="unknown kind") as info:
        zoo().entries()
    assert "\x1b" not in str(info.value) and "\\x1b" in str(info.value)   # manifest text is shown escaped


def test_every_kind_is_fetched_by_name_but_only_generators_are_models(server, tmp_path, monkeypatch):
    files = {kind: payload(3000, seed=i) for i, kind in enumerate(("clip", "keypoints", "backbone"))}
    entries = {}
    for kind, data in files.items():
        server.files[f"/{kind}.bin"] = data
        entries[f"my{kind}"] = {"kind": kind, "url": server.url(f"/{kind}.bin"), "filename": f"{kind}.bin",
                                "sha256": sha(data), "size": len(data)}
    write_manifest(tmp_path, monkeypatch, **entries)
    assert {e.kind for e in zoo().entries().values()} == {"clip", "keypoints", "backbone"}
    for kind, data in files.items():
        path = zoo().ensure(f"my{kind}")
        assert path == zoo().models_dir / f"{kind}.bin" and path.read_bytes() == data
        assert zoo().ensure(f"my{kind}") == path                       # verified copy: no second request
        assert len(server.requests_for(f"/{kind}.bin")) == 1
        with pytest.raises(WeightsError, match="not a generator"):
            zoo().resolve(f"my{kind}")
    with pytest.raises(WeightsError, match="has no 'nosuch'"):
        zoo().ensure("nosuch")


def test_a_link_planted_as_the_partial_download_is_not_written_through(server, tmp_path):
    server.files["/m.bin"] = payload(20_000)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    dest = tmp_path / "m.bin"
    (tmp_path / "m.bin.part").symlink_to(victim)
    (tmp_path / "m.bin.part.json").write_text(json.dumps({"url": server.url("/m.bin"), "validator": None}))
    with pytest.raises(WeightsError, match="cannot write m.bin") as info:
        zoo().download(server.url("/m.bin"), dest)
    assert "\n" not in str(info.value)
    assert victim.read_bytes() == b"precious" and not dest.exists()


def test_pyproject_lists_every_package():
    """pyproject lists packages by hand (ui/ is mapped to timemachine.ui): none may be forgotten, and the zoo's
    manifest is package data."""
    tomllib = pytest.importorskip("tomllib")
    setuptools = pytest.importorskip("setuptools")
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = set(setuptools.find_packages(str(REPO_ROOT), include=["timemachine*", "stylegan_ops*"]))
    assert "timemachine.zoo" in on_disk
    assert set(config["packages"]) == on_disk | {"timemachine.ui"}
    assert config["package-dir"] == {"timemachine.ui": "ui"}
    assert config["package-data"]["timemachine.zoo"] == ["manifest.json"]
    assert (REPO_ROOT / "timemachine" / "zoo" / "manifest.json").is_file()


@pytest.mark.slow
def test_built_wheel_carries_the_manifest_and_finds_it(tmp_path):
    """Build a wheel from a copy of the sources, install it into a directory and load the manifest from there."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    for name in ("timemachine", "stylegan_ops", "ui"):
        shutil.copytree(REPO_ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pkl", "*.pth"))
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheel_dir), str(src)], check=True, capture_output=True)
    wheel = next(wheel_dir.glob("timemachine-*.whl"))
    import zipfile

    assert "timemachine/zoo/manifest.json" in zipfile.ZipFile(wheel).namelist()
    assert "timemachine/age/builtin/yorkshire.safetensors" in zipfile.ZipFile(wheel).namelist()   # built-in vectors
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    probe = ("from timemachine.zoo import manifest as m; print(m.installed_manifest()); "
             "print(','.join(sorted(m.load_manifest())))")
    env = {k: v for k, v in os.environ.items() if k != "TIMEMACHINE_MANIFEST"}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert Path(out[0]).is_relative_to(site)
    assert out[1] == "afhqcat,afhqdog,afhqwild,animal-boxes,animal-keypoints,clip-vit-b-32,vgg16"


# ----------------------------------------------------------------------------------------------------------
# Downloads


def test_download_reports_progress_and_verifies(server, tmp_path):
    data = payload(100_000)
    server.files["/m.bin"] = data
    calls = []
    dest = zoo().download(server.url("/m.bin"), tmp_path / "m.bin", sha256=sha(data), size=len(data),
                          progress=lambda done, total: calls.append((done, total)))
    assert dest.read_bytes() == data
    assert calls[0] == (0, len(data)) and calls[-1] == (len(data), len(data))
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))
    assert len(calls) >= len(data) // FAST.chunk_size
    assert not (tmp_path / "m.bin.part").exists() and not (tmp_path / "m.bin.part.json").exists()
    assert zoo().checksum_record(dest)["trust"] == "published"


def test_resume_after_cut_connection_within_one_call(server, tmp_path):
    data = payload(200_000)
    server.files["/m.bin"] = data
    server.plans["/m.bin"] = [{"cut_after": 70_000}]
    calls = []
    dest = zoo().download(server.url("/m.bin"), tmp_path / "m.bin", sha256=sha(data),
                          progress=lambda done, total: calls.append(done))
    assert dest.read_bytes() == data
    first, second = server.requests_for("/m.bin")
    assert "range" not in first
    # Resumed from the bytes written before the cut (the client drops the incomplete last chunk).
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", second["range"]).group(1))
    assert 0 < resumed_at <= 70_000 and resumed_at in calls
    assert second["if-range"].startswith('"')
    assert calls[-1] == len(data)


def test_resume_across_calls_from_the_part_file(server, tmp_path):
    data = payload(150_000)
    server.files["/m.bin"] = data
    # A cut after some progress is retried even with retries=0 (only failures without progress count);
    # the 500 that follows is the failure that ends this call.
    server.plans["/m.bin"] = [{"cut_after": 50_000}, {"status": 500}]
    no_retry = DownloadSettings(**{**FAST.__dict__, "retries": 0})
    with pytest.raises(WeightsError, match=r"HTTP 500.*try again to resume"):
        zoo(no_retry).download(server.url("/m.bin"), tmp_path / "m.bin")
    kept = (tmp_path / "m.bin.part").stat().st_size
    assert 0 < kept <= 50_000
    assert not (tmp_path / "m.bin").exists()
    zoo().download(server.url("/m.bin"), tmp_path / "m.bin", sha256=sha(data))
    assert (tmp_path / "m.bin").read_bytes() == data
    assert server.requests_for("/m.bin")[-1]["range"] == f"bytes={kept}-"


def test_server_ignoring_range_or_changed_file_restarts_cleanly(server, tmp_path):
    old, new = payload(60_000, seed=1), payload(80_000, seed=2)
    server.files["/m.bin"] = data = payload(90_000)
    server.plans["/m.bin"] = [{"cut_after": 30_000}, {"ignore_range": True}]
    zoo().download(server.url("/m.bin"), tmp_path / "a.bin", sha256=sha(data))
    assert (tmp_path / "a.bin").read_bytes() == data
    # The file changes on the server between the cut and the resume: If-Range makes the server send it whole.
    server.files["/c.bin"] = old
    server.plans["/c.bin"] = [{"cut_after": 20_000}, {"status": 500}]
    no_retry = DownloadSettings(**{**FAST.__dict__, "retries": 0})
    with pytest.raises(WeightsError):
        zoo(no_retry).download(server.url("/c.bin"), tmp_path / "c.bin")
    assert (tmp_path / "c.bin.part").exists()
    server.files["/c.bin"] = new
    zoo().download(server.url("/c.bin"), tmp_path / "c.bin")
    assert (tmp_path / "c.bin").read_bytes() == new
    assert "if-range" in server.requests_for("/c.bin")[-1]


def test_checksum_mismatch_deletes_the_download(server, tmp_path):
    server.files["/m.bin"] = payload(40_000)
    with pytest.raises(WeightsError) as info:
        zoo().download(server.url("/m.bin"), tmp_path / "m.bin", sha256=sha(b"something else"))
    message = one_line(str(info.value))
    assert "SHA-256" in message and "deleted" in message and server.url("/m.bin") in message
    assert not (tmp_path / "m.bin").exists() and not (tmp_path / "m.bin.part").exists()
    assert not (tmp_path / "m.bin.part.json").exists()


def test_published_size_mismatch_is_refused_before_writing(server, tmp_path):
    server.files["/m.bin"] = payload(40_000)
    with pytest.raises(WeightsError, match="40000 bytes but the manifest says 1234"):
        zoo().download(server.url("/m.bin"), tmp_path / "m.bin", size=1234)
    assert not (tmp_path / "m.bin.part").exists() and not (tmp_path / "m.bin").exists()


def test_http_404_is_one_line_naming_the_url(server, tmp_path):
    with pytest.raises(WeightsError) as info:
        zoo().download(server.url("/missing.pkl"), tmp_path / "x.pkl")
    message = one_line(str(info.value))
    assert "HTTP 404" in message and server.url("/missing.pkl") in message and str(tmp_path / "x.pkl") in message
    assert len(server.requests) == 1  # a 404 is not retried


def test_transient_errors_are_retried_with_exponential_backoff(server, tmp_path, monkeypatch):
    data = payload(30_000)
    server.files["/m.bin"] = data
    server.plans["/m.bin"] = [{"status": 500}, {"status": 503}, {"status": 502}]
    pauses = []
    monkeypatch.setattr(zoo_download.time, "sleep", pauses.append)
    settings = DownloadSettings(read_timeout=2.0, retries=3, backoff=0.25, max_backoff=0.75)
    zoo(settings).download(server.url("/m.bin"), tmp_path / "m.bin", sha256=sha(data))
    assert (tmp_path / "m.bin").read_bytes() == data
    assert pauses == [0.25, 0.5, 0.75]  # doubling, capped at max_backoff
    assert len(server.requests_for("/m.bin")) == 4


def test_gives_up_after_the_retries(server, tmp_path):
    server.files["/m.bin"] = payload(1000)
    server.plans["/m.bin"] = [{"status": 500}] * 10
    settings = DownloadSettings(**{**FAST.__dict__, "retries": 2})
    with pytest.raises(WeightsError) as info:
        zoo(settings).download(server.url("/m.bin"), tmp_path / "m.bin")
    assert "HTTP 500" in one_line(str(info.value)) and "gave up after 2 retries" in str(info.value)
    assert len(server.requests_for("/m.bin")) == 3


def test_stalled_server_hits_the_read_timeout_quickly(server, tmp_path):
    server.files["/m.bin"] = payload(200_000)
    server.plans["/m.bin"] = [{"stall": (40_000, 60)}] + [{"stall": (1000, 60)}] * 10
    settings = DownloadSettings(**{**FAST.__dict__, "retries": 1})
    started = time.monotonic()
    with pytest.raises(WeightsError) as info:
        zoo(settings).download(server.url("/m.bin"), tmp_path / "m.bin")
    elapsed = time.monotonic() - started
    assert "sent nothing for 0.4 s" in one_line(str(info.value))
    assert elapsed < 5, f"took {elapsed:.1f} s"
    # The first attempt made progress, so it did not count against the retries; the second resumed after it.
    first, second, third = server.requests_for("/m.bin")
    assert "range" not in first and second["range"].startswith("bytes=") and second["range"] != "bytes=0-"
    assert third["range"] == second["range"]  # the second attempt added nothing


def test_a_stall_once_then_recovers(server, tmp_path):
    data = payload(50_000)
    server.files["/m.bin"] = data
    server.plans["/m.bin"] = [{"stall": (5000, 60)}]
    zoo().download(server.url("/m.bin"), tmp_path / "m.bin", sha256=sha(data))
    assert (tmp_path / "m.bin").read_bytes() == data


def test_offline_mode_makes_no_request(server, tmp_path, monkeypatch):
    write_manifest(tmp_path, monkeypatch, afhqdog={"url": server.url("/afhqdog.pkl")})
    server.files["/afhqdog.pkl"] = payload(1000)
    monkeypatch.setenv("TIMEMACHINE_OFFLINE", "1")
    with pytest.raises(WeightsError) as info:
        zoo().resolve("afhqdog")
    message = one_line(str(info.value))
    assert server.url("/afhqdog.pkl") in message
    assert str(zoo().models_dir / "afhqdog.pkl") in message
    monkeypatch.delenv("TIMEMACHINE_OFFLINE")
    with pytest.raises(WeightsError, match="offline"):
        zoo(offline=True).resolve("afhqdog")
    with pytest.raises(WeightsError, match="offline"):
        zoo(offline=True).resolve(server.url("/afhqdog.pkl"))
    assert server.requests == []


def test_unreachable_host_fails_fast_with_one_line(tmp_path, monkeypatch, capsys):
    url = f"http://127.0.0.1:{closed_port()}/afhqdog.pkl"
    write_manifest(tmp_path, monkeypatch, afhqdog={"url": url})
    started = time.monotonic()
    code = main(["weights", "download", "afhqdog"])  # default settings: not retried, no backoff
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2
    error = [line for line in err.splitlines() if line.startswith("timemachine: error:")]
    assert len(error) == 1 and "Traceback" not in err
    assert "connection refused" in error[0] and url in error[0]
    assert str(zoo().models_dir / "afhqdog.pkl") in error[0]
    assert elapsed < 3, f"took {elapsed:.1f} s"


def test_failed_name_lookup_fails_fast_with_one_line(tmp_path, monkeypatch, capsys):
    import socket

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    url = "http://models.example.invalid/afhqdog.pkl"
    write_manifest(tmp_path, monkeypatch, afhqdog={"url": url})
    started = time.monotonic()
    assert main(["weights", "download", "afhqdog"]) == 2
    err = capsys.readouterr().err
    error = [line for line in err.splitlines() if line.startswith("timemachine: error:")]
    assert len(error) == 1 and "Traceback" not in err and url in error[0]
    assert str(zoo().models_dir / "afhqdog.pkl") in error[0]
    assert time.monotonic() - started < 3


def test_a_full_disk_during_the_download_is_one_sentence(server, tmp_path, monkeypatch):
    server.files["/m.bin"] = payload(100_000)

    def disk_full(self):
        raise OSError(28, "No space left on device", str(tmp_path / "m.bin.part"))

    monkeypatch.setattr(zoo_download._Download, "run", disk_full)
    with pytest.raises(WeightsError, match=r"cannot write m\.bin to .*m\.bin\.part: No space left on device; "
                                           r"free some disk space or set TIMEMACHINE_HOME") as caught:
        zoo().download(server.url("/m.bin"), tmp_path / "m.bin")
    assert "\n" not in str(caught.value) and not (tmp_path / "m.bin").exists()


def test_not_enough_disk_space_is_refused_before_writing(server, tmp_path, monkeypatch):
    server.files["/m.bin"] = payload(100_000)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(zoo_download.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 50_000, 50_000))
    with pytest.raises(WeightsError, match="not enough free disk space"):
        zoo().download(server.url("/m.bin"), tmp_path / "m.bin")
    assert not (tmp_path / "m.bin.part").exists() and not (tmp_path / "m.bin").exists()


def test_a_second_process_cannot_download_the_same_file(server, tmp_path):
    server.files["/m.bin"] = payload(1000)
    dest = tmp_path / "m.bin"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, pathlib\nfrom timemachine.env import Environment\n"
         "from timemachine.zoo.download import download_lock\n"
         "with download_lock(Environment.from_environ().paths, pathlib.Path(sys.argv[1]), 'x'):"
         "\n    print('held', flush=True); sys.stdin.readline()", str(dest)],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WeightsError, match="another timemachine process is downloading"):
            zoo().download(server.url("/m.bin"), dest)
    finally:
        holder.communicate("\n", timeout=30)
    zoo().download(server.url("/m.bin"), dest)
    assert dest.exists()


# ----------------------------------------------------------------------------------------------------------
# Trust on first use


def test_tofu_digest_is_recorded_then_enforced(server, tmp_path, monkeypatch):
    first, changed = payload(20_000, seed=3), payload(20_000, seed=4)
    write_manifest(tmp_path, monkeypatch, afhqdog={"url": server.url("/afhqdog.pkl")})
    server.files["/afhqdog.pkl"] = first
    path = zoo().ensure("afhqdog")
    record = zoo().checksum_record(path)
    assert record["sha256"] == sha(first) and record["trust"] == "first use" and record["size"] == len(first)
    # Upstream changes: a forced re-download must match the recorded digest; the verified copy stays.
    server.files["/afhqdog.pkl"] = changed
    with pytest.raises(WeightsError, match="recorded at its first download"):
        zoo().ensure("afhqdog", force=True)
    assert path.read_bytes() == first
    # The local copy is tampered with: loading notices (size/mtime changed -> re-hash).
    path.write_bytes(changed)
    with pytest.raises(WeightsError, match="expected"):
        zoo().resolve("afhqdog")
    # Removing forgets the record: the new upstream file is then trusted on its first use.
    zoo().remove("afhqdog")
    assert zoo().checksum_record(path) is None
    zoo().ensure("afhqdog")
    assert path.read_bytes() == changed


def test_a_file_placed_by_hand_is_trusted_on_first_use(tmp_path, monkeypatch):
    write_manifest(tmp_path, monkeypatch, afhqdog={"url": f"http://127.0.0.1:{closed_port()}/afhqdog.pkl"})
    data = payload(5000)
    path = zoo().models_dir / "afhqdog.pkl"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    assert zoo(offline=True).resolve("afhqdog") == path
    assert zoo().checksum_record(path)["sha256"] == sha(data)
    path.write_bytes(data[:-1] + b"x")
    with pytest.raises(WeightsError, match="SHA-256"):
        zoo(offline=True).resolve("afhqdog")


def test_published_digest_is_checked_for_a_file_placed_by_hand(tmp_path, monkeypatch):
    data = payload(5000)
    write_manifest(tmp_path, monkeypatch, afhqdog={"sha256": sha(b"official"), "url": "http://127.0.0.1:9/a.pkl"})
    path = zoo().models_dir / "afhqdog.pkl"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    with pytest.raises(WeightsError, match=r"not the published file: download it again"):
        zoo(offline=True).resolve("afhqdog")


# ----------------------------------------------------------------------------------------------------------
# --model resolution and loading


def _same_outputs(G1, G2) -> bool:
    torch.manual_seed(1)
    z = torch.randn(2, G1.z_dim)
    with torch.no_grad():
        a = G1(z, None, noise_mode="const")
        b = G2(z, None, noise_mode="const")
    return torch.equal(a, b)


def test_model_specs_resolve_names_paths_and_urls(server, tmp_path, monkeypatch, tiny_pkl):
    data = tiny_pkl.read_bytes()
    server.files["/afhqdog.pkl"] = data
    server.files["/nets/snapshot-000123.pkl"] = data
    write_manifest(tmp_path, monkeypatch, afhqdog={"url": server.url("/afhqdog.pkl")},
                   vgg16={"kind": "backbone", "url": server.url("/vgg.pth"), "filename": "vgg.pth"})
    # zoo name: downloaded into the cache, then found there without a request
    path = zoo().resolve("afhqdog")
    assert path == zoo().models_dir / "afhqdog.pkl" and path.read_bytes() == data
    assert zoo().resolve("afhqdog") == path
    assert len(server.requests_for("/afhqdog.pkl")) == 1
    # local path
    assert zoo().resolve(str(tiny_pkl)) == tiny_pkl
    # URL: cached under a name derived from the URL, trusted on first use
    url = server.url("/nets/snapshot-000123.pkl")
    by_url = zoo().resolve(url)
    assert by_url.parent == zoo().models_dir / "from-url" and by_url.name.endswith("-snapshot-000123.pkl")
    assert zoo().resolve(url) == by_url
    assert len(server.requests_for("/nets/snapshot-000123.pkl")) == 1
    assert zoo().checksum_record(by_url)["origin"] == url
    # what is not a generator spec
    with pytest.raises(WeightsError, match="not a generator"):
        zoo().resolve("vgg16")
    with pytest.raises(WeightsError, match=r"unknown model 'afhqdgo'.*afhqdog"):
        zoo().resolve("afhqdgo")
    with pytest.raises(WeightsError, match="no network file at"):
        zoo().resolve(str(tmp_path / "nothing.pkl"))
    with pytest.raises(WeightsError, match="is a directory"):
        zoo().resolve(str(tmp_path))


def test_load_model_by_zoo_name(server, tmp_path, monkeypatch, tiny_pkl, tiny_G):
    server.files["/afhqdog.pkl"] = tiny_pkl.read_bytes()
    write_manifest(tmp_path, monkeypatch, afhqdog={"url": server.url("/afhqdog.pkl")})
    calls = []
    G = pipeline.load_model("afhqdog", Environment.from_environ(), device="cpu",
                             progress=lambda d, t: calls.append((d, t))).G
    assert calls[-1] == (tiny_pkl.stat().st_size,) * 2
    assert _same_outputs(G, tiny_G)


def test_vgg16_weights_come_from_the_cache_or_torch_hub(server, tmp_path, monkeypatch):
    data = payload(30_000)
    server.files["/vgg16-0123abcd.pth"] = data
    write_manifest(tmp_path, monkeypatch, vgg16={"kind": "backbone", "url": server.url("/vgg16-0123abcd.pth"),
                                                 "filename": "vgg16-0123abcd.pth", "sha256": sha(data),
                                                 "size": len(data)})
    # a verified copy in torch's hub cache is used in place, without any request
    hub = tmp_path / "torchhome" / "hub" / "checkpoints" / "vgg16-0123abcd.pth"
    hub.parent.mkdir(parents=True)
    hub.write_bytes(data)
    assert zoo().vgg16_path() == hub
    assert server.requests == []
    # a damaged hub copy is ignored: timemachine downloads its own
    hub.write_bytes(data[:-1] + b"\0")
    path = zoo().vgg16_path()
    assert path == zoo().models_dir / "vgg16-0123abcd.pth" and path.read_bytes() == data
    assert hub.read_bytes() != data  # torch's file is left alone


# ----------------------------------------------------------------------------------------------------------
# The CLI


def test_cli_download_list_verify_path(server, tmp_path, monkeypatch, capsys):
    data = payload(64_000)
    server.files["/afhqdog.pkl"] = data
    write_manifest(tmp_path, monkeypatch, afhqdog={"url": server.url("/afhqdog.pkl")},
                   afhqcat={"url": server.url("/afhqcat.pkl")})
    monkeypatch.setattr(zoo_download, "DEFAULT_SETTINGS", FAST)

    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"afhqdog\s+generator\s+unknown\s+not downloaded", out)
    assert NVIDIA_LICENCE_MARK in out

    assert main(["weights", "download", "afhqdog"]) == 0
    captured = capsys.readouterr()
    assert NVIDIA_LICENCE_MARK in captured.err  # the licence is shown where the download happens
    assert str(zoo().models_dir / "afhqdog.pkl") in captured.out and "recorded now" in captured.out

    assert main(["weights", "download", "afhqdog"]) == 0
    assert "already present" in capsys.readouterr().out

    assert main(["weights", "list"]) == 0
    assert re.search(r"afhqdog\s+generator\s+62\.5 KiB\s+verified", capsys.readouterr().out)

    assert main(["weights", "verify"]) == 0
    assert re.search(r"^OK\s+afhqdog", capsys.readouterr().out, re.M)

    assert main(["weights", "path", "afhqdog"]) == 0
    assert capsys.readouterr().out.strip() == str(zoo().models_dir / "afhqdog.pkl")
    assert main(["weights", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(zoo().models_dir)

    (zoo().models_dir / "afhqdog.pkl").write_bytes(data[::-1])
    assert main(["weights", "verify", "afhqdog"]) == 1
    assert re.search(r"^MISMATCH\s+afhqdog", capsys.readouterr().out, re.M)

    for argv, expected in ((["weights", "download", "afhqcat"], "HTTP 404"),
                           (["weights", "download", "nosuch"], "no 'nosuch'"),
                           (["weights", "verify", "afhqcat"], "not downloaded"),
                           (["weights", "download", "afhqcat", "--offline"], "offline")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in [line for line in err.splitlines() if line.startswith("timemachine: error:")][0]
        assert "Traceback" not in err
        if "--offline" in argv:
            assert err.count("\n") == 1, err          # no licence notice before it: nothing is downloaded


def test_doctor_reports_the_zoo(server, tmp_path, monkeypatch, capsys):
    server.files["/afhqdog.pkl"] = payload(1000)
    write_manifest(tmp_path, monkeypatch, afhqdog={"url": server.url("/afhqdog.pkl")},
                   afhqcat={"url": server.url("/afhqcat.pkl")})
    zoo().ensure("afhqdog")
    assert main(["doctor"]) == 0
    line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("weights ")][0]
    assert "afhqdog verified" in line and "afhqcat not downloaded" in line


def test_cli_convert_round_trip(tmp_path, capsys, tiny_pkl, tiny_G):
    from timemachine.checkpoint import is_safetensors_file, load_generator, model_fingerprint

    dst = tmp_path / "tiny.safetensors"
    assert main(["weights", "convert", str(tiny_pkl), str(dst)]) == 0
    assert model_fingerprint(tiny_G) in capsys.readouterr().out
    assert is_safetensors_file(dst)
    G = load_generator(dst, device="cpu")
    assert model_fingerprint(G) == model_fingerprint(tiny_G)
    assert _same_outputs(G, tiny_G)
    assert [p.name for p in tmp_path.iterdir() if p.name != "tmhome"] == ["tiny.safetensors"]  # no temp file

    before = dst.stat().st_mtime_ns
    assert main(["weights", "convert", str(tiny_pkl), str(dst)]) == 2
    error = one_line(capsys.readouterr().err)
    assert "already exists" in error and "pass --force" in error       # the library's remedy in the CLI's words
    with pytest.raises(AlreadyExists) as info:
        zoo().convert(tiny_pkl, dst)
    assert info.value.remedy == errors.REPLACE and "--force" not in str(info.value)
    assert dst.stat().st_mtime_ns == before
    assert main(["weights", "convert", str(tiny_pkl), str(dst), "--force"]) == 0
    assert main(["weights", "convert", str(tiny_pkl), str(tmp_path / "tiny.pkl")]) == 2
    assert ".safetensors" in one_line(capsys.readouterr().err)
    assert main(["weights", "convert", str(tiny_pkl), str(tmp_path / "no" / "dir.safetensors")]) == 2
    assert "does not exist" in one_line(capsys.readouterr().err)


def test_convert_a_file_that_is_not_a_network(tmp_path, capsys):
    bogus = tmp_path / "bogus.pkl"
    bogus.write_bytes(b"\x80\x04K\x01.")  # a pickle of the number 1
    assert main(["weights", "convert", str(bogus), str(tmp_path / "out.safetensors")]) == 2
    assert "not a network snapshot" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "out.safetensors").exists()


def test_cli_import_then_model_name(tmp_path, capsys, tiny_pkl, tiny_G):
    original = tmp_path / "my-dog-snapshot.pkl"
    shutil.copy(tiny_pkl, original)
    assert main(["weights", "import", str(original), "--name", "mydog"]) == 0
    assert "--model mydog" in capsys.readouterr().out
    copy = zoo().models_dir / "imported" / "mydog.pkl"
    assert copy.read_bytes() == tiny_pkl.read_bytes()
    registry = json.loads(zoo().paths.registry.read_text())
    assert registry["models"]["mydog"]["copied"] is True

    original.unlink()  # the copy keeps the model working
    assert zoo().resolve("mydog") == copy
    assert _same_outputs(pipeline.load_model("mydog", Environment.from_environ(), device="cpu").G, tiny_G)
    assert main(["weights", "list"]) == 0
    assert re.search(r"mydog\s+.*verified", capsys.readouterr().out)

    # names are sanitised, zoo names reserved, duplicates need --force
    for argv, expected in ((["--name", "../evil"], "invalid model name"),
                           (["--name", "a/b"], "invalid model name"),
                           (["--name", "afhqdog"], "zoo model"),
                           (["--name", "mydog"], "already imported")):
        assert main(["weights", "import", str(tiny_pkl), *argv]) == 2, argv
        assert expected in one_line(capsys.readouterr().err)
    assert not (zoo().models_dir / "evil.pkl").exists()
    assert main(["weights", "import", str(tiny_pkl), "--name", "mydog"]) == 2
    assert "pass --force" in one_line(capsys.readouterr().err)
    with pytest.raises(AlreadyExists) as info:
        zoo().import_model(tiny_pkl, "mydog")
    assert info.value.remedy == errors.REPLACE and "--force" not in str(info.value)

    # a changed copy is refused at load time
    copy.write_bytes(copy.read_bytes() + b"\0")
    with pytest.raises(WeightsError, match="changed since it was imported"):
        zoo().resolve("mydog")
    assert main(["weights", "verify", "mydog"]) == 1

    # --force replaces it; remove forgets it and deletes only timemachine's copy
    assert main(["weights", "import", str(tiny_pkl), "--name", "mydog", "--force"]) == 0
    assert zoo().resolve("mydog") == copy
    assert main(["weights", "remove", "mydog"]) == 0
    assert not copy.exists() and tiny_pkl.exists()
    with pytest.raises(WeightsError, match="unknown model 'mydog'"):
        zoo().resolve("mydog")


def test_import_in_place_and_import_of_a_non_network(tmp_path, capsys, tiny_pkl):
    in_place = tmp_path / "keep-here.pkl"
    shutil.copy(tiny_pkl, in_place)
    assert main(["weights", "import", str(in_place), "--name", "here", "--no-copy"]) == 0
    capsys.readouterr()
    assert zoo().resolve("here") == in_place
    in_place.rename(tmp_path / "moved.pkl")
    with pytest.raises(WeightsError, match=r"the file it was imported from is gone"):
        zoo().resolve("here")
    assert main(["weights", "remove", "here"]) == 0
    assert (tmp_path / "moved.pkl").exists()

    bogus = tmp_path / "notes.pkl"
    bogus.write_bytes(b"hello")
    with pytest.raises(CheckpointError):
        zoo().import_model(bogus, "notes")
    assert "notes" not in zoo().imported()
    assert main(["weights", "import", str(tmp_path / "absent.pkl"), "--name", "x"]) == 2
    assert "no network file" in one_line(capsys.readouterr().err)


def test_cli_helper_for_other_commands_shows_the_licence_when_it_downloads(server, tmp_path, monkeypatch, capsys,
                                                                            tiny_pkl, tiny_G):
    import argparse

    from timemachine.cli.common import load_pipeline

    def load_model_for_cli(spec, device):
        return load_pipeline(argparse.Namespace(model=spec, device=device, offline=None)).G

    server.files["/afhqdog.pkl"] = tiny_pkl.read_bytes()
    write_manifest(tmp_path, monkeypatch, afhqdog={"url": server.url("/afhqdog.pkl")})
    monkeypatch.setattr(zoo_download, "DEFAULT_SETTINGS", FAST)
    G = load_model_for_cli("afhqdog", device="cpu")
    assert NVIDIA_LICENCE_MARK in capsys.readouterr().err
    assert _same_outputs(G, tiny_G)
    load_model_for_cli("afhqdog", device="cpu")
    assert NVIDIA_LICENCE_MARK not in capsys.readouterr().err  # nothing downloaded: no notice
