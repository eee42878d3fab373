"""Model weights: the zoo manifest, the local cache, verified downloads, imports and conversion.

A *model spec* (what users type after ``--model``) is one of

* a zoo name from the manifest (``afhqdog``, ``afhqcat``, ``afhqwild``): downloaded once into the cache;
* the name of a model the user registered with :func:`import_model` (``timemachine weights import``);
* a local file: an official network pickle or a timemachine ``.safetensors`` file;
* an ``http(s)://`` URL: downloaded once into the cache under a name derived from the URL.

:func:`resolve_model` turns a spec into a local path; :func:`load_model` also loads the generator.

Where things live (``home_dir()`` = ``$TIMEMACHINE_HOME``, or the platform's user data directory)::

    <home>/models/<filename>            zoo downloads (afhqdog.pkl, vgg16-397923af.pth ...)
    <home>/models/<filename>.part       an interrupted download, resumed with an HTTP Range request
    <home>/models/from-url/<id>-<name>  files downloaded from a URL spec
    <home>/models/imported/<name>.*     copies made by import_model
    <home>/checksums.json               SHA-256 of every file timemachine fetched or was given (see below)
    <home>/registry.json                models registered with import_model

Checksums.  A file is accepted only if its SHA-256 matches the manifest, or, where the manifest has none
(NVIDIA publishes no checksums), the digest recorded in ``checksums.json`` when the file was first
downloaded or first used: trust on first use, enforced on every later download and load.  So that loading
does not re-hash hundreds of megabytes every time, a record also keeps the size and modification time at
which the file last verified; a file whose size or mtime changed is hashed again.  :func:`verify` always
re-hashes.

Network.  Downloads have bounded connect and read timeouts, retry transient failures (connection cut,
read timeout, HTTP 5xx/408/429) with exponential backoff, resume from the ``.part`` file, check free disk
space first and move the file into place only once it is complete and verified.  Failure to connect at all
(no route, DNS failure, connection refused) is not retried: the call fails at once with one sentence naming
the URL and the path where the user may put the file by hand.  ``TIMEMACHINE_OFFLINE=1`` (or
``offline=True``) forbids network access altogether.

Nothing here prints: long operations report through ``progress(done_bytes, total_bytes_or_None)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import importlib.resources
import json
import os
import re
import shutil
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Union

import filelock
import platformdirs
import requests
import urllib3.exceptions

from timemachine import __version__
from timemachine.errors import WeightsError

if TYPE_CHECKING:  # torch is imported only when a network is actually loaded
    import torch

    from timemachine.networks import Generator

PathLike = Union[str, os.PathLike]
#: ``progress(done_bytes, total_bytes)``; ``total_bytes`` is None while the size is unknown.
ProgressCallback = Callable[[int, Optional[int]], None]

ENV_HOME = "TIMEMACHINE_HOME"
ENV_OFFLINE = "TIMEMACHINE_OFFLINE"
ENV_MANIFEST = "TIMEMACHINE_MANIFEST"

GENERATOR = "generator"
BACKBONE = "backbone"
KEYPOINTS = "keypoints"  # the animal box and keypoint networks of the eye detector (timemachine.detect)
VGG16 = "vgg16"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK = 1 << 20
_DISK_MARGIN = 16 << 20  # leave a little room beyond the file itself
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


# ----------------------------------------------------------------------------------------------------------
# Settings and manifest


@dataclasses.dataclass(frozen=True)
class DownloadSettings:
    """Network behaviour of downloads (tests shrink these).

    connect_timeout: seconds to establish a connection.
    read_timeout:    seconds the server may stay silent (before the headers or between body chunks).
    retries:         transient failures in a row (without any new bytes) before giving up.
    backoff:         first pause between retries, in seconds; doubles on each further failure.
    max_backoff:     longest pause.
    chunk_size:      bytes read per chunk (and per progress report).
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retries: int = 4
    backoff: float = 1.0
    max_backoff: float = 30.0
    chunk_size: int = 1 << 20


DEFAULT_SETTINGS = DownloadSettings()


@dataclasses.dataclass(frozen=True)
class Licence:
    name: str
    summary: str
    url: str

    def __str__(self) -> str:
        return f"{self.name}: {self.summary} ({self.url})"


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One network of the manifest.

    ``size`` (bytes) and ``sha256`` (64 hex digits) are None where nobody publishes them; ``source`` says
    where the published figures come from.
    """

    name: str
    kind: str
    description: str
    url: str
    filename: str
    size: Optional[int]
    sha256: Optional[str]
    source: str
    licence: Licence


def manifest_path() -> Path:
    """The manifest in use: ``$TIMEMACHINE_MANIFEST``, the installed ``timemachine.zoo`` data, or weights/."""
    override = os.environ.get(ENV_MANIFEST)
    if override:
        return Path(override).expanduser()
    try:  # installed (wheel or editable): weights/ is the package timemachine.zoo
        return Path(str(importlib.resources.files("timemachine.zoo").joinpath("manifest.json")))
    except ModuleNotFoundError:  # running from a source checkout that was not installed
        return Path(__file__).resolve().parent.parent / "weights" / "manifest.json"


def load_manifest(path: Optional[PathLike] = None) -> dict[str, ZooEntry]:
    """Read and validate the manifest (default: :func:`manifest_path`); returns ``{name: ZooEntry}``."""
    path = Path(path) if path is not None else manifest_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WeightsError(f"cannot read the model manifest {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise WeightsError(f"the model manifest {path} is not valid JSON: {exc}") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise WeightsError(f"the model manifest {path} has no 'models' table")
    entries = {}
    for name, item in models.items():
        entries[name] = _parse_entry(name, item, path)
    return entries


def _parse_entry(name: str, item: object, path: Path) -> ZooEntry:
    def bad(what: str) -> WeightsError:
        return WeightsError(f"the model manifest {path}: entry {name!r} {what}")

    if not _NAME_RE.fullmatch(name):
        raise bad("has an invalid name")
    if not isinstance(item, dict):
        raise bad("is not a table")
    for key in ("kind", "description", "url", "filename", "source"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise bad(f"lacks a text field {key!r}")
    if item["kind"] not in (GENERATOR, BACKBONE, KEYPOINTS):
        raise bad(f"has unknown kind {item['kind']!r}")
    if not _is_url(item["url"]):
        raise bad("has a URL that is not http(s)")
    if not _NAME_RE.fullmatch(item["filename"]):
        raise bad("has a file name with forbidden characters")
    size, sha256 = item.get("size"), item.get("sha256")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise bad("has a size that is not a positive integer or null")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256)):
        raise bad("has a sha256 that is not 64 lowercase hex digits or null")
    licence = item.get("licence")
    if not isinstance(licence, dict) or not all(isinstance(licence.get(k), str) for k in ("name", "summary", "url")):
        raise bad("lacks a licence with name, summary and url")
    return ZooEntry(name=name, kind=item["kind"], description=item["description"], url=item["url"],
                    filename=item["filename"], size=size, sha256=sha256, source=item["source"],
                    licence=Licence(licence["name"], licence["summary"], licence["url"]))


def zoo_entry(name: str, manifest: Optional[dict[str, ZooEntry]] = None) -> ZooEntry:
    manifest = load_manifest() if manifest is None else manifest
    try:
        return manifest[name]
    except KeyError:
        raise WeightsError(f"the model zoo has no {name!r} (it has {', '.join(manifest)})") from None


# ----------------------------------------------------------------------------------------------------------
# Locations and switches


def home_dir() -> Path:
    """``$TIMEMACHINE_HOME`` or the platform's user data directory for timemachine (not created here)."""
    override = os.environ.get(ENV_HOME)
    if override:
        return Path(override).expanduser().absolute()
    return Path(platformdirs.user_data_dir("timemachine", appauthor=False))


def models_dir() -> Path:
    """Where downloaded and imported networks are kept: ``home_dir()/models``."""
    return home_dir() / "models"


def zoo_path(entry: ZooEntry) -> Path:
    """Where the zoo file lives (or will live) locally; also where users may put it by hand."""
    return models_dir() / entry.filename


def url_cache_path(url: str) -> Path:
    """Cache path of a file downloaded from a URL spec: ``models/from-url/<12 hex of sha256(url)>-<name>``."""
    basename = os.path.basename(urllib.parse.urlsplit(url).path) or "download"
    basename = re.sub(r"[^A-Za-z0-9_.-]", "_", basename)[-80:].lstrip(".") or "download"
    return models_dir() / "from-url" / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{basename}"


def is_offline(offline: Optional[bool] = None) -> bool:
    """An explicit ``offline`` wins; otherwise ``TIMEMACHINE_OFFLINE`` (anything but ''/0/false/no/off)."""
    if offline is not None:
        return bool(offline)
    return os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("", "0", "false", "no", "off")


def _is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def _manual_hint(dest: Path, url: Optional[str] = None) -> str:
    """How to get a file in by hand; ``url`` only where the message has not named it yet."""
    return f"fetch {url or 'that URL'} by other means and place the file at {dest}"


# ----------------------------------------------------------------------------------------------------------
# Small file utilities


def sha256_file(path: PathLike) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _read_json(path: Path, top_key: str) -> dict:
    """``data[top_key]`` of a state file, {} when the file does not exist yet."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path} is damaged ({exc}); move it away to start a fresh record") from None
    table = data.get(top_key) if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise WeightsError(f"{path} is damaged (no {top_key!r} table); move it away to start a fresh record")
    return table


@contextlib.contextmanager
def _state_lock() -> Iterator[None]:
    """Serialises read-modify-write of checksums.json and registry.json across processes."""
    lock_dir = home_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(lock_dir / "state.lock"), timeout=60):
        yield


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def human_bytes(n: Optional[int]) -> str:
    """1234567 -> '1.2 MiB'; None -> 'unknown'."""
    if n is None:
        return "unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------------------
# Checksum records (trust on first use) and verification stamps


def _checksums_path() -> Path:
    return home_dir() / "checksums.json"


def _record_key(path: Path) -> str:
    path = path.absolute()
    try:
        return path.relative_to(home_dir()).as_posix()
    except ValueError:
        return str(path)


def checksum_record(path: Path) -> Optional[dict]:
    """What checksums.json holds for ``path``: sha256, size, origin, trust, recorded_at, verified; or None."""
    record = _read_json(_checksums_path(), "files").get(_record_key(path))
    return record if isinstance(record, dict) else None


def _put_record(path: Path, record: Optional[dict]) -> None:
    with _state_lock():
        files = _read_json(_checksums_path(), "files")
        if record is None:
            files.pop(_record_key(path), None)
        else:
            files[_record_key(path)] = record
        _write_json_atomic(_checksums_path(), {"version": 1, "files": files})


def expected_sha256(path: Path, origin: str, published: Optional[str] = None) -> Optional[str]:
    """The digest ``path`` must have: the published one, else the one recorded for the same origin, else None."""
    if published:
        return published
    record = checksum_record(path)
    if record and record.get("origin") == origin and isinstance(record.get("sha256"), str):
        return record["sha256"]
    return None


def _record_verified(path: Path, digest: str, origin: str, trust: str) -> None:
    stat = path.stat()
    previous = checksum_record(path) or {}
    same = previous.get("sha256") == digest and previous.get("origin") == origin
    _put_record(path, {
        "sha256": digest, "size": stat.st_size, "origin": origin, "trust": trust,
        "recorded_at": previous.get("recorded_at", _now()) if same else _now(),
        "verified": {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "at": _now()},
    })


def stamp_valid(path: Path, expected: Optional[str] = None) -> bool:
    """True when ``path`` verified earlier and has not changed since (same size and mtime)."""
    record = checksum_record(path)
    if not record or not isinstance(record.get("verified"), dict):
        return False
    if expected is not None and record.get("sha256") != expected:
        return False
    stat = path.stat()
    return record["verified"].get("size") == stat.st_size and record["verified"].get("mtime_ns") == stat.st_mtime_ns


def check_file(path: Path, *, origin: str, published_sha256: Optional[str] = None,
               published_size: Optional[int] = None, label: Optional[str] = None, fix: str = "") -> None:
    """Make sure a local file is the one expected; re-hashes only when it changed since it last verified.

    With nothing published and nothing recorded for ``origin``, the file's digest is recorded now (first use).

    Raises:
        WeightsError: size or digest differ from what was published or recorded (``fix`` tells what to do).
    """
    label = label or str(path)
    expected = expected_sha256(path, origin, published_sha256)
    if stamp_valid(path, expected):
        return
    size = path.stat().st_size
    if published_size is not None and size != published_size:
        raise WeightsError(f"{label} at {path} is {size} bytes, expected {published_size}; {fix or 'delete it'}")
    digest = sha256_file(path)
    if expected is not None and digest != expected:
        record = checksum_record(path)
        if record and record.get("verified"):
            _put_record(path, {**record, "verified": None})
        raise WeightsError(f"{label} at {path} has SHA-256 {digest[:12]}..., expected {expected[:12]}...; "
                           f"{fix or 'delete it'}")
    _record_verified(path, digest, origin, trust="published" if published_sha256 else
                     ("recorded" if expected else "first use"))


# ----------------------------------------------------------------------------------------------------------
# Downloads


class _Transient(Exception):
    """A failure after the server answered (cut connection, read timeout, 5xx): retried, resuming."""


class _Unreachable(Exception):
    """The server could not be reached at all (DNS, refused, connect timeout, TLS): not retried."""


def _describe(exc: BaseException, settings: DownloadSettings) -> str:
    """One short phrase for a requests exception."""
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return "the host name could not be resolved (is this machine offline?)"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"no connection within {settings.connect_timeout:g} s"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS error ({str(reason).splitlines()[0] if reason else 'certificate'})"
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        if "refused" in str(reason).lower():
            return "connection refused"
        return "no connection could be made"
    if isinstance(exc, requests.exceptions.ReadTimeout) or isinstance(reason, urllib3.exceptions.ReadTimeoutError):
        return f"the server sent nothing for {settings.read_timeout:g} s"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the connection was cut mid-transfer"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "the connection was cut"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _is_connect_failure(exc: requests.RequestException) -> bool:
    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError)):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def _parse_content_range(value: Optional[str]) -> tuple[int, Optional[int]]:
    """``'bytes 100-999/1000'`` -> (100, 1000); total None for ``/*``."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not match:
        raise _Transient(f"the server answered a resume request with a malformed Content-Range {value!r}")
    return int(match.group(1)), None if match.group(3) == "*" else int(match.group(3))


def _check_disk_space(directory: Path, needed: Optional[int], label: str) -> None:
    if needed is None:
        return
    free = shutil.disk_usage(directory).free
    if free < needed + _DISK_MARGIN:
        raise WeightsError(f"not enough free disk space in {directory} for {label}: it needs "
                           f"{human_bytes(needed)}, {human_bytes(free)} are free")


def _discard(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class _Download:
    """One file being fetched into ``<dest>.part`` (+ ``<dest>.part.json``: URL and validator for If-Range)."""

    def __init__(self, url: str, dest: Path, size: Optional[int], label: str, progress: Optional[ProgressCallback],
                 settings: DownloadSettings):
        self.url, self.dest, self.size, self.label = url, dest, size, label
        self.progress, self.settings = progress, settings
        self.part = dest.with_name(dest.name + ".part")
        self.meta = dest.with_name(dest.name + ".part.json")

    def part_size(self) -> int:
        return self.part.stat().st_size if self.part.exists() else 0

    def _resume_offset(self) -> tuple[int, Optional[str]]:
        """Bytes already fetched that may be reused, and the validator (ETag/Last-Modified) to resume with."""
        offset = self.part_size()
        if offset == 0:
            return 0, None
        try:
            meta = json.loads(self.meta.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            meta = None
        if not isinstance(meta, dict) or meta.get("url") != self.url or (self.size is not None and offset > self.size):
            _discard(self.part, self.meta)  # a leftover of another URL or version: start over
            return 0, None
        return offset, meta.get("validator")

    def run(self) -> None:
        """Fetch until ``.part`` is complete; retries transient failures, resuming where the last one stopped."""
        failures = 0
        with requests.Session() as session:
            while True:
                before = self.part_size()
                try:
                    self._attempt(session)
                    return
                except _Unreachable as exc:
                    raise WeightsError(f"cannot download {self.label} from {self.url}: {exc}; if this machine has "
                                       f"no internet access, {_manual_hint(self.dest)}") from None
                except _Transient as exc:
                    failures = 0 if self.part_size() > before else failures + 1
                    if failures > self.settings.retries:
                        raise WeightsError(
                            f"cannot download {self.label} from {self.url}: {exc} (gave up after "
                            f"{self.settings.retries} retries; run the command again to resume, or "
                            f"{_manual_hint(self.dest)})") from None
                    time.sleep(min(self.settings.backoff * 2 ** max(failures - 1, 0), self.settings.max_backoff))

    def _attempt(self, session: requests.Session) -> None:
        offset, validator = self._resume_offset()
        if self.size is not None and offset == self.size:
            return  # complete already (interrupted before the rename); the checksum decides
        headers = {"User-Agent": f"timemachine/{__version__}", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if validator:
                headers["If-Range"] = validator
        timeout = (self.settings.connect_timeout, self.settings.read_timeout)
        try:
            response = session.get(self.url, headers=headers, stream=True, timeout=timeout)
        except requests.RequestException as exc:
            if _is_connect_failure(exc):
                raise _Unreachable(_describe(exc, self.settings)) from None
            raise _Transient(_describe(exc, self.settings)) from None
        with response:
            status = response.status_code
            if status == 416:  # our partial file does not fit the server's: start over
                _discard(self.part, self.meta)
                raise _Transient("the server refused to resume the partial download (HTTP 416)")
            if status in _RETRY_STATUS or status >= 500:
                raise _Transient(f"HTTP {status} {response.reason}")
            if status not in (200, 206):
                raise WeightsError(f"cannot download {self.label} from {self.url}: HTTP {status} {response.reason}; "
                                   f"{_manual_hint(self.dest)}")
            length = response.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            if status == 206:
                start, total = _parse_content_range(response.headers.get("Content-Range"))
                if start != offset:
                    _discard(self.part, self.meta)
                    raise _Transient(f"the server resumed at byte {start} instead of {offset}")
                if total is None and length is not None:
                    total = offset + length
            else:  # 200: the whole file (the server ignores ranges, or the file changed since the partial one)
                offset, total = 0, length
            if total is None:
                total = self.size
            elif self.size is not None and total != self.size:
                raise WeightsError(f"{self.url} is {total} bytes but the manifest says {self.size}; not downloading it")
            _check_disk_space(self.part.parent, None if total is None else total - offset, self.label)
            new_validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
            _write_json_atomic(self.meta, {"url": self.url, "validator": new_validator})
            done = offset
            with open(self.part, "r+b" if offset else "wb") as f:
                f.seek(offset)
                f.truncate()
                self._report(done, total)
                try:
                    for chunk in response.iter_content(chunk_size=self.settings.chunk_size):
                        f.write(chunk)
                        done += len(chunk)
                        self._report(done, total)
                except requests.RequestException as exc:
                    raise _Transient(_describe(exc, self.settings)) from None
            if total is not None and done < total:
                raise _Transient(f"the connection closed after {done} of {total} bytes")
            if total is not None and done > total:
                _discard(self.part, self.meta)
                raise _Transient(f"the server sent {done} bytes, more than the {total} it announced")

    def _report(self, done: int, total: Optional[int]) -> None:
        if self.progress is not None:
            self.progress(done, total)


@contextlib.contextmanager
def _download_lock(dest: Path, label: str) -> Iterator[None]:
    lock_dir = home_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock_name = hashlib.sha256(str(dest.absolute()).encode()).hexdigest()[:16] + ".lock"
    try:
        with filelock.FileLock(str(lock_dir / lock_name), timeout=0):
            yield
    except filelock.Timeout:
        raise WeightsError(f"another timemachine process is downloading {label} into {dest}; "
                           "wait for it to finish, then try again") from None


def download_file(url: str, dest: PathLike, *, sha256: Optional[str] = None, size: Optional[int] = None,
                  label: Optional[str] = None, progress: Optional[ProgressCallback] = None,
                  offline: Optional[bool] = None, settings: Optional[DownloadSettings] = None) -> Path:
    """Download ``url`` to ``dest`` (replacing it only once the new file is complete and verified).

    Args:
        url:      http(s) URL.
        dest:     final path; ``<dest>.part`` holds the bytes in flight and is resumed by later calls.
        sha256:   published digest; None = trust on first use (the digest recorded for ``dest`` and this URL
                  must match if there is one; otherwise the new digest is recorded).
        size:     published size in bytes, or None.
        label:    what to call the file in messages (default: its name).
        progress: ``progress(done_bytes, total_bytes_or_None)``.
        offline:  True forbids network access; None = ``TIMEMACHINE_OFFLINE``.
        settings: timeouts, retries and backoff.

    Returns:
        ``dest``.

    Raises:
        WeightsError: offline, unreachable, HTTP error, too little disk space, size or checksum mismatch
            (the downloaded file is then deleted).  One sentence naming the URL and, where useful, the path
            where the file may be placed by hand.
    """
    dest = Path(dest).absolute()
    label = label or dest.name
    settings = settings or DEFAULT_SETTINGS
    if not _is_url(url):
        raise WeightsError(f"cannot download {url!r}: only http:// and https:// URLs are supported")
    if is_offline(offline):
        raise WeightsError(f"{label} is not available offline: network access is off ({ENV_OFFLINE} or --offline); "
                           f"{_manual_hint(dest, url)}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create {dest.parent}: {exc.strerror or exc}") from None
    try:
        with _download_lock(dest, label):
            expected = expected_sha256(dest, url, sha256)
            job = _Download(url, dest, size, label, progress, settings)
            job.run()
            got_size = job.part_size()
            if size is not None and got_size != size:
                _discard(job.part, job.meta)
                raise WeightsError(f"the download of {label} from {url} is {got_size} bytes, expected {size}; "
                                   "it was deleted")
            digest = sha256_file(job.part)
            if expected is not None and digest != expected:
                _discard(job.part, job.meta)
                how = "published" if sha256 else "recorded at its first download"
                raise WeightsError(f"the download of {label} from {url} has SHA-256 {digest[:12]}..., not the {how} "
                                   f"{expected[:12]}...; it was deleted (the file on the server changed or was "
                                   "corrupted on the way)")
            os.replace(job.part, dest)
            _discard(job.meta)
            _record_verified(dest, digest, url, trust="published" if sha256 else ("recorded" if expected else "first use"))
    except OSError as exc:  # the disk, not the network (requests' errors are OSErrors too: those pass)
        if isinstance(exc, requests.RequestException):
            raise
        where = exc.filename or dest.parent
        raise WeightsError(f"cannot write {label} to {where}: {exc.strerror or exc}; free some disk space or set "
                           f"{ENV_HOME} to a writable directory with room for it") from None
    return dest


# ----------------------------------------------------------------------------------------------------------
# The zoo


def ensure_zoo_file(name: str, *, force: bool = False, offline: Optional[bool] = None,
                    progress: Optional[ProgressCallback] = None, settings: Optional[DownloadSettings] = None,
                    manifest: Optional[dict[str, ZooEntry]] = None) -> Path:
    """Local path of a zoo file, downloaded and verified if needed (``force``: download again)."""
    entry = zoo_entry(name, manifest)
    dest = zoo_path(entry)
    if dest.is_file() and not force:
        check_file(dest, origin=entry.url, published_sha256=entry.sha256, published_size=entry.size, label=name,
                   fix=f"run 'timemachine weights download {name} --force' to fetch it again")
        return dest
    return download_file(entry.url, dest, sha256=entry.sha256, size=entry.size, label=name, progress=progress,
                         offline=offline, settings=settings)


def vgg16_weights_path(offline: Optional[bool] = None, progress: Optional[ProgressCallback] = None,
                       settings: Optional[DownloadSettings] = None) -> Path:
    """Path of torchvision's ImageNet VGG16 weights (the LPIPS backbone), verified; downloads when allowed.

    A verified copy in torch's own hub cache (``torch.hub.get_dir()/checkpoints``) is used in place, so users
    of torchvision do not fetch 528 MiB twice.  Load it with ``torch.load(path, weights_only=True)``.
    """
    entry = zoo_entry(VGG16)
    dest = zoo_path(entry)
    if not dest.is_file():
        hub_copy = _torch_hub_checkpoint(entry.filename)
        if hub_copy is not None:
            try:
                check_file(hub_copy, origin=entry.url, published_sha256=entry.sha256, published_size=entry.size)
                return hub_copy
            except (WeightsError, OSError):
                pass  # a damaged copy in torch's cache is not ours to repair: fetch our own
    return ensure_zoo_file(VGG16, offline=offline, progress=progress, settings=settings)


def _torch_hub_checkpoint(filename: str) -> Optional[Path]:
    import torch.hub

    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return path if path.is_file() else None


@dataclasses.dataclass(frozen=True)
class LocalStatus:
    """What is on disk for a zoo entry: ``state`` is 'verified', 'unverified', 'partial' or 'missing'."""

    entry: ZooEntry
    path: Path
    state: str
    size: Optional[int]  # bytes on disk (or of the .part file), else the published or recorded size


def zoo_status(manifest: Optional[dict[str, ZooEntry]] = None) -> list[LocalStatus]:
    """Local state of every zoo entry, from file stats and records only (nothing is hashed)."""
    manifest = load_manifest() if manifest is None else manifest
    result = []
    for entry in manifest.values():
        path = zoo_path(entry)
        part = path.with_name(path.name + ".part")
        record = checksum_record(path)
        known_size = entry.size or (record or {}).get("size")
        if path.is_file():
            expected = expected_sha256(path, entry.url, entry.sha256)
            state = "verified" if stamp_valid(path, expected) else "unverified"
            result.append(LocalStatus(entry, path, state, path.stat().st_size))
        elif part.is_file():
            result.append(LocalStatus(entry, path, "partial", part.stat().st_size))
        else:
            result.append(LocalStatus(entry, path, "missing", known_size))
    return result


# ----------------------------------------------------------------------------------------------------------
# Imported models


@dataclasses.dataclass(frozen=True)
class ImportedModel:
    name: str
    path: Path
    copied: bool       # True: a copy under models/imported owned by timemachine; False: the user's file in place
    source: str        # where it was imported from
    sha256: str
    fingerprint: str   # checkpoint.model_fingerprint of the generator
    imported_at: str


def _registry_path() -> Path:
    return home_dir() / "registry.json"


def imported_models() -> dict[str, ImportedModel]:
    models = {}
    for name, item in _read_json(_registry_path(), "models").items():
        try:
            path = Path(item["path"])
            models[name] = ImportedModel(name=name, path=path if path.is_absolute() else home_dir() / path,
                                         copied=bool(item["copied"]), source=str(item["source"]),
                                         sha256=str(item["sha256"]), fingerprint=str(item.get("fingerprint", "")),
                                         imported_at=str(item.get("imported_at", "")))
        except (KeyError, TypeError):
            raise WeightsError(f"{_registry_path()} is damaged (entry {name!r}); move it away to start afresh") from None
    return models


def check_model_name(name: str) -> str:
    """A name for import_model: letters, digits, '.', '_', '-', starting with a letter or digit, <= 64 chars."""
    if not _NAME_RE.fullmatch(name or ""):
        raise WeightsError(f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' (at most 64), "
                           "starting with a letter or digit")
    return name


def import_model(path: PathLike, name: str, *, copy: bool = True, replace: bool = False) -> ImportedModel:
    """Register a user's network file (official pickle or timemachine safetensors) so ``--model NAME`` finds it.

    The file is loaded once (safely) to make sure it is a generator.  With ``copy`` (the default) timemachine
    keeps its own copy under ``models/imported/``, so the model keeps working when the original is moved or
    deleted; with ``copy=False`` the file is used where it is, and loading fails clearly if it moves or
    changes.  Either way its SHA-256 is recorded and checked on every later load.

    Raises:
        WeightsError: bad or reserved name, name already taken (without ``replace``), missing file.
        CheckpointError: the file is not a loadable generator.
    """
    from timemachine.checkpoint import is_safetensors_file, load_generator, model_fingerprint

    check_model_name(name)
    if name in load_manifest():
        raise WeightsError(f"{name!r} is the name of a zoo model; choose another name")
    source = Path(path).expanduser().absolute()
    if not source.is_file():
        raise WeightsError(f"no network file at {source}")
    if name in imported_models() and not replace:
        raise WeightsError(f"a model named {name!r} is already imported; pass --force to replace it")
    fingerprint = model_fingerprint(load_generator(source, device="cpu"))
    suffix = ".safetensors" if is_safetensors_file(source) else ".pkl"
    if copy:
        stored = models_dir() / "imported" / f"{name}{suffix}"
        digest = _copy_with_digest(source, stored)
    else:
        stored, digest = source, sha256_file(source)
    with _state_lock():
        registry = _read_json(_registry_path(), "models")
        old = registry.get(name)
        registry[name] = {"path": _record_key(stored), "copied": copy, "source": str(source), "sha256": digest,
                          "fingerprint": fingerprint, "imported_at": _now()}
        _write_json_atomic(_registry_path(), {"version": 1, "models": registry})
    if old and old.get("path") != _record_key(stored):  # replaced by a file stored elsewhere
        old_path = Path(old["path"]) if os.path.isabs(old["path"]) else home_dir() / old["path"]
        _put_record(old_path, None)
        if old.get("copied"):
            _discard(old_path)
    _record_verified(stored, digest, f"import:{name}", trust="import")
    return imported_models()[name]


def _copy_with_digest(source: Path, dest: Path) -> str:
    dest.parent.mkdir(parents=True, exist_ok=True)
    _check_disk_space(dest.parent, source.stat().st_size, source.name)
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with open(source, "rb") as fin, open(tmp, "wb") as fout:
            for chunk in iter(lambda: fin.read(_HASH_CHUNK), b""):
                digest.update(chunk)
                fout.write(chunk)
        os.replace(tmp, dest)
    finally:
        _discard(tmp)
    return digest.hexdigest()


def remove_model(name: str) -> list[Path]:
    """Forget an imported model (deleting timemachine's copy) or delete a downloaded zoo file.

    The checksum record goes too, so a zoo model whose server copy legitimately changed can be fetched again.
    Returns the files deleted.
    """
    deleted: list[Path] = []
    imported = imported_models()
    if name in imported:
        model = imported[name]
        with _state_lock():
            registry = _read_json(_registry_path(), "models")
            registry.pop(name, None)
            _write_json_atomic(_registry_path(), {"version": 1, "models": registry})
        _put_record(model.path, None)
        if model.copied and model.path.exists():
            model.path.unlink()
            deleted.append(model.path)
        return deleted
    entry = zoo_entry(name)
    path = zoo_path(entry)
    with _download_lock(path, name):
        for candidate in (path, path.with_name(path.name + ".part"), path.with_name(path.name + ".part.json")):
            if candidate.exists():
                candidate.unlink()
                deleted.append(candidate)
        _put_record(path, None)
    return deleted


# ----------------------------------------------------------------------------------------------------------
# Resolution and loading


def resolve_model(spec: Union[str, os.PathLike], *, offline: Optional[bool] = None,
                  progress: Optional[ProgressCallback] = None,
                  settings: Optional[DownloadSettings] = None) -> Path:
    """Local path of the network a ``--model`` spec names, downloading and verifying it if needed.

    Order: an http(s) URL; an existing file; a zoo generator name; an imported model name.

    Raises:
        WeightsError: unknown name, missing file, offline with nothing local, download or checksum failure.
    """
    spec = os.fspath(spec)
    if _is_url(spec):
        dest = url_cache_path(spec)
        if dest.is_file():
            check_file(dest, origin=spec, label=spec,
                       fix=f"delete it to download it again (it was recorded from {spec} at the first download)")
            return dest
        return download_file(spec, dest, label=spec, progress=progress, offline=offline, settings=settings)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    manifest = load_manifest()
    if spec in manifest:
        entry = manifest[spec]
        if entry.kind != GENERATOR:
            raise WeightsError(f"{spec} is not a generator ({entry.description}); choose one of "
                               f"{', '.join(n for n, e in manifest.items() if e.kind == GENERATOR)}")
        return ensure_zoo_file(spec, offline=offline, progress=progress, settings=settings, manifest=manifest)
    imported = imported_models()
    if spec in imported:
        return _imported_path(imported[spec])
    if path.exists():
        raise WeightsError(f"{path} is a directory, not a network file")
    if os.sep in spec or "/" in spec or path.suffix.lower() in (".pkl", ".pickle", ".safetensors", ".pt", ".pth"):
        raise WeightsError(f"no network file at {path}")
    generators = [n for n, e in manifest.items() if e.kind == GENERATOR]
    raise WeightsError(f"unknown model {spec!r}: it is not a file, a zoo model ({', '.join(generators)}) or an "
                       f"imported model ({', '.join(imported) or 'none yet'})")


def _imported_path(model: ImportedModel) -> Path:
    if not model.path.is_file():
        how = "its copy" if model.copied else "the file it was imported from"
        raise WeightsError(f"imported model {model.name!r}: {how} is gone ({model.path}); import it again")
    check_file(model.path, origin=f"import:{model.name}", published_sha256=model.sha256,
               label=f"imported model {model.name!r}", fix="the file changed since it was imported; import it again")
    return model.path


def load_model(spec: Union[str, os.PathLike], device: Optional[Union[str, "torch.device"]] = None,
               offline: Optional[bool] = None, progress: Optional[ProgressCallback] = None,
               settings: Optional[DownloadSettings] = None) -> "Generator":
    """The generator a ``--model`` spec names (see :func:`resolve_model`), loaded safely.

    Returns:
        :class:`timemachine.networks.Generator`, float32, eval mode, gradients off, on ``device``
        (None = CUDA if available, else CPU).
    """
    from timemachine.checkpoint import load_generator

    return load_generator(resolve_model(spec, offline=offline, progress=progress, settings=settings), device=device)


# ----------------------------------------------------------------------------------------------------------
# Verification of everything local


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """``state``: 'ok', 'recorded' (no reference existed: digest recorded now), 'mismatch' or 'missing'."""

    label: str
    path: Path
    state: str
    expected: Optional[str]
    actual: Optional[str]


def _verify_one(label: str, path: Path, origin: str, published: Optional[str], trust: str) -> VerifyResult:
    if not path.is_file():
        return VerifyResult(label, path, "missing", published, None)
    expected = expected_sha256(path, origin, published)
    actual = sha256_file(path)
    if expected is None:
        _record_verified(path, actual, origin, trust="first use")
        return VerifyResult(label, path, "recorded", None, actual)
    if actual != expected:
        record = checksum_record(path)
        if record:
            _put_record(path, {**record, "verified": None})
        return VerifyResult(label, path, "mismatch", expected, actual)
    _record_verified(path, actual, origin, trust=trust)
    return VerifyResult(label, path, "ok", expected, actual)


def verify(name: Optional[str] = None) -> list[VerifyResult]:
    """Re-hash local files against the manifest or the recorded digests.

    ``name``: one zoo or imported model; None = every zoo file present, every imported model and every file
    downloaded from a URL spec.
    """
    manifest = load_manifest()
    imported = imported_models()
    results = []
    if name is not None:
        if name in manifest:
            entry = manifest[name]
            results.append(_verify_one(name, zoo_path(entry), entry.url, entry.sha256,
                                       "published" if entry.sha256 else "recorded"))
        elif name in imported:
            model = imported[name]
            results.append(_verify_one(name, model.path, f"import:{name}", model.sha256, "import"))
        else:
            raise WeightsError(f"no zoo or imported model named {name!r}")
        return results
    for entry in manifest.values():
        if zoo_path(entry).is_file():
            results.append(_verify_one(entry.name, zoo_path(entry), entry.url, entry.sha256,
                                       "published" if entry.sha256 else "recorded"))
    for model in imported.values():
        results.append(_verify_one(model.name, model.path, f"import:{model.name}", model.sha256, "import"))
    records = _read_json(_checksums_path(), "files")
    url_dir = models_dir() / "from-url"
    for key, record in sorted(records.items()):
        path = home_dir() / key if not os.path.isabs(key) else Path(key)
        if path.parent == url_dir and isinstance(record, dict) and _is_url(str(record.get("origin", ""))):
            results.append(_verify_one(record["origin"], path, record["origin"], None, "recorded"))
    return results


# ----------------------------------------------------------------------------------------------------------
# Conversion to the safe format


@dataclasses.dataclass(frozen=True)
class ConvertResult:
    source: Path
    path: Path
    fingerprint: str   # checkpoint.model_fingerprint, identical for source and result


def convert_to_safetensors(spec: Union[str, os.PathLike], dst: PathLike, *, force: bool = False,
                           offline: Optional[bool] = None, progress: Optional[ProgressCallback] = None,
                           settings: Optional[DownloadSettings] = None) -> ConvertResult:
    """Write the generator ``spec`` names as a timemachine ``.safetensors`` file (no pickle, no code).

    The file is written under a temporary name and renamed; it is then loaded back and must give the same
    :func:`~timemachine.checkpoint.model_fingerprint` as the source.

    Raises:
        WeightsError: ``dst`` exists (without ``force``), its directory is missing, its name does not end in
            ``.safetensors``, or it cannot be written; plus everything :func:`resolve_model` raises.
        CheckpointError: the source is not a loadable generator.
    """
    from timemachine.checkpoint import load_generator, model_fingerprint, save_generator

    dst = Path(dst).expanduser().absolute()
    if dst.suffix != ".safetensors":
        raise WeightsError(f"the converted file's name must end in .safetensors (got {dst.name})")
    if dst.exists() and not force:
        raise WeightsError(f"{dst} already exists; pass --force to overwrite it")
    if not dst.parent.is_dir():
        raise WeightsError(f"cannot write {dst}: directory {dst.parent} does not exist")
    source = resolve_model(spec, offline=offline, progress=progress, settings=settings)
    G = load_generator(source, device="cpu")
    fingerprint = model_fingerprint(G)
    metadata = {"source_file": source.name, "source_sha256": sha256_file(source), "fingerprint": fingerprint,
                "converted_by": f"timemachine {__version__}"}
    try:
        save_generator(G, dst, extra_metadata=metadata)
    except OSError as exc:
        raise WeightsError(f"cannot write {dst}: {exc.strerror or exc}") from None
    if model_fingerprint(load_generator(dst, device="cpu")) != fingerprint:
        dst.unlink()
        raise AssertionError(f"the converted file {dst} does not reproduce its source (bug); it was deleted")
    return ConvertResult(source=source, path=dst, fingerprint=fingerprint)
