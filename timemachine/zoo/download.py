"""Downloads over HTTP(S) that survive bad networks and never leave a half-written or unverified file.

Downloads have bounded connect and read timeouts (:class:`DownloadSettings`), retry transient failures
(connection cut, read timeout, HTTP 5xx/408/425/429) with exponential backoff, resume from the ``.part`` file
(an HTTP Range request, with If-Range so that a file changed on the server is fetched whole), check free disk
space first, and move the file into place only once it is complete and its digest verified
(:mod:`timemachine.zoo.trust`).  Only failures that add no bytes count against the retries.  Failure to connect
at all (no route, DNS failure, connection refused, TLS) is not retried: the call fails at once with one sentence
naming the URL and the path where the user may put the file by hand.  One process at a time downloads a given
file (a lock under ``locks/``); another one fails at once instead of waiting.

Files in flight, beside the destination::

    <dest>.part         the bytes fetched so far (opened without following links)
    <dest>.part.json    {"url": ..., "validator": ETag or Last-Modified}: a .part of another URL is discarded

Nothing here prints: progress is reported through ``progress(done_bytes, total_bytes_or_None)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import requests
import urllib3.exceptions

from timemachine import __version__, fs
from timemachine.env import ENV_HOME, Paths
from timemachine.errors import WeightsError, first_line, printable, quoted
from timemachine.zoo.manifest import is_url, shown
from timemachine.zoo.trust import Checksums, sha256_file, trust_word

#: ``progress(done_bytes, total_bytes)``; ``total_bytes`` is None while the size is unknown.
ProgressCallback = Callable[[int, Optional[int]], None]

_DISK_MARGIN = 16 << 20  # leave a little room beyond the file itself
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)


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


#: What a download uses when it is given no settings (looked up at call time).
DEFAULT_SETTINGS = DownloadSettings()


def human_bytes(n: Optional[int]) -> str:
    """1234567 -> '1.2 MiB'; None -> 'unknown'."""
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024:
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def check_disk_space(directory: Path, needed: Optional[int], label: str) -> None:
    """Raise WeightsError unless ``directory`` has room for ``needed`` bytes (and a margin); None: no check."""
    if needed is None:
        return
    free = shutil.disk_usage(directory).free
    if free < needed + _DISK_MARGIN:
        raise WeightsError(f"not enough free disk space in {shown(directory)} for {label}: it needs "
                           f"{human_bytes(needed)}, {human_bytes(free)} are free")


def manual_hint(dest: Path, url: Optional[str] = None) -> str:
    """How to get a file in by hand; ``url`` only where the message has not named it yet."""
    return f"fetch {shown(url) if url else 'that URL'} by other means and place the file at {shown(dest)}"


def discard(*paths: Path) -> None:
    """Delete files if they exist."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# ----------------------------------------------------------------------------------------------------------
# Failures


class _Transient(Exception):
    """A failure after the server answered (cut connection, read timeout, 5xx): retried, resuming."""


class _Unreachable(Exception):
    """The server could not be reached at all (DNS, refused, connect timeout, TLS): not retried."""


def _reason(exc: BaseException) -> object:
    """The urllib3 cause inside a requests exception (or its first argument)."""
    reason = exc.args[0] if exc.args else None
    return getattr(reason, "reason", reason)


def _describe(exc: BaseException, settings: DownloadSettings) -> str:
    """One short phrase for a requests exception."""
    reason = _reason(exc)
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return "the host name could not be resolved (is this machine offline?)"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"no connection within {settings.connect_timeout:g} s"
    if isinstance(exc, requests.exceptions.SSLError):
        detail = first_line(reason) if isinstance(reason, BaseException) else printable(reason or "certificate")
        return f"TLS error ({detail})"
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        return "connection refused" if "refused" in str(reason).lower() else "no connection could be made"
    return _describe_cut(exc, reason, settings)


def _describe_cut(exc: BaseException, reason: object, settings: DownloadSettings) -> str:
    """:func:`_describe` for failures after the connection was made."""
    if isinstance(exc, requests.exceptions.ReadTimeout) or isinstance(reason, urllib3.exceptions.ReadTimeoutError):
        return f"the server sent nothing for {settings.read_timeout:g} s"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the connection was cut mid-transfer"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "the connection was cut"
    return first_line(exc)


def _is_connect_failure(exc: requests.RequestException) -> bool:
    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError)):
        return True
    return isinstance(_reason(exc), urllib3.exceptions.NewConnectionError)


def _parse_content_range(value: Optional[str]) -> tuple[int, Optional[int]]:
    """``'bytes 100-999/1000'`` -> (100, 1000); total None for ``/*``."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not match:
        raise _Transient(f"the server answered a resume request with a malformed Content-Range {quoted(value)}")
    return int(match.group(1)), None if match.group(3) == "*" else int(match.group(3))


# ----------------------------------------------------------------------------------------------------------
# One file in flight


class _Download:
    """One file being fetched into ``<dest>.part`` (+ ``<dest>.part.json``: URL and validator for If-Range).

    ``url`` and ``label`` are as messages show them already (``shown``) where they differ from the request's.
    """

    def __init__(self, url: str, dest: Path, size: Optional[int], label: str, progress: Optional[ProgressCallback],
                 settings: DownloadSettings):
        self.url, self.dest, self.size, self.label = url, dest, size, label
        self.progress, self.settings = progress, settings
        self.part = dest.with_name(dest.name + ".part")
        self.meta = dest.with_name(dest.name + ".part.json")

    def part_size(self) -> int:
        return self.part.lstat().st_size if self.part.exists() else 0

    def _resume_offset(self) -> tuple[int, Optional[str]]:
        """Bytes already fetched that may be reused, and the validator (ETag/Last-Modified) to resume with."""
        offset = self.part_size()
        if offset == 0:
            return 0, None
        try:
            meta = json.loads(self.meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = None
        if not isinstance(meta, dict) or meta.get("url") != self.url or (self.size is not None and offset > self.size):
            discard(self.part, self.meta)  # a leftover of another URL or version: start over
            return 0, None
        validator = meta.get("validator")
        return offset, validator if isinstance(validator, str) else None

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
                    raise WeightsError(f"cannot download {self.label} from {shown(self.url)}: {exc}; if this "
                                       f"machine has no internet access, {manual_hint(self.dest)}") from None
                except _Transient as exc:
                    failures = 0 if self.part_size() > before else failures + 1
                    if failures > self.settings.retries:
                        raise WeightsError(
                            f"cannot download {self.label} from {shown(self.url)}: {exc} (gave up after "
                            f"{self.settings.retries} retries; try again to resume, or {manual_hint(self.dest)})"
                        ) from None
                    time.sleep(min(self.settings.backoff * 2 ** max(failures - 1, 0), self.settings.max_backoff))

    def _attempt(self, session: requests.Session) -> None:
        """One request: append what the server sends to ``.part``; raises _Transient/_Unreachable/WeightsError."""
        offset, validator = self._resume_offset()
        if self.size is not None and offset == self.size:
            return  # complete already (interrupted before the rename); the checksum decides
        with self._get(session, offset, validator) as response:
            self._check_status(response)
            offset, total = self._span(response, offset)
            check_disk_space(self.part.parent, None if total is None else total - offset, self.label)
            validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
            fs.write_json(self.meta, {"url": self.url, "validator": validator})
            done = self._write_body(response, offset, total)
        if total is not None and done < total:
            raise _Transient(f"the connection closed after {done} of {total} bytes")
        if total is not None and done > total:
            discard(self.part, self.meta)
            raise _Transient(f"the server sent {done} bytes, more than the {total} it announced")

    def _get(self, session: requests.Session, offset: int, validator: Optional[str]) -> requests.Response:
        headers = {"User-Agent": f"timemachine/{__version__}", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if validator:
                headers["If-Range"] = validator
        timeout = (self.settings.connect_timeout, self.settings.read_timeout)
        try:
            return session.get(self.url, headers=headers, stream=True, timeout=timeout)
        except requests.RequestException as exc:
            if _is_connect_failure(exc):
                raise _Unreachable(_describe(exc, self.settings)) from None
            raise _Transient(_describe(exc, self.settings)) from None

    def _check_status(self, response: requests.Response) -> None:
        status, reason = response.status_code, printable(response.reason or "")
        if status == 416:  # our partial file does not fit the server's: start over
            discard(self.part, self.meta)
            raise _Transient("the server refused to resume the partial download (HTTP 416)")
        if status in _RETRY_STATUS or status >= 500:
            raise _Transient(f"HTTP {status} {reason}")
        if status not in (200, 206):
            raise WeightsError(f"cannot download {self.label} from {shown(self.url)}: HTTP {status} {reason}; "
                               f"{manual_hint(self.dest)}")

    def _span(self, response: requests.Response, offset: int) -> tuple[int, Optional[int]]:
        """(first byte the body holds, total size of the file or None) of a 200 or 206 answer."""
        length_text = response.headers.get("Content-Length")
        length = int(length_text) if length_text and length_text.isdigit() else None
        if response.status_code == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                discard(self.part, self.meta)
                raise _Transient(f"the server resumed at byte {start} instead of {offset}")
            if total is None and length is not None:
                total = offset + length
        else:  # 200: the whole file (the server ignores ranges, or the file changed since the partial one)
            offset, total = 0, length
        if total is None:
            total = self.size
        elif self.size is not None and total != self.size:
            raise WeightsError(f"{shown(self.url)} is {total} bytes but the manifest says {self.size}; "
                               "not downloading it")
        return offset, total

    def _write_body(self, response: requests.Response, offset: int, total: Optional[int]) -> int:
        """Write the body into ``.part`` from ``offset`` on (cutting what followed); returns the bytes now there."""
        fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | _O_NOFOLLOW | _O_BINARY, 0o666)
        done = offset
        with os.fdopen(fd, "wb") as f:
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
        return done

    def _report(self, done: int, total: Optional[int]) -> None:
        if self.progress is not None:
            self.progress(done, total)


@contextlib.contextmanager
def download_lock(paths: Paths, dest: Path, label: str) -> Iterator[None]:
    """Hold the lock of downloads into ``dest``; WeightsError at once when another process holds it."""
    name = "download-" + hashlib.sha256(str(dest.absolute()).encode()).hexdigest()[:16]
    with fs.file_lock(paths.lock(name), timeout=0, busy=lambda: WeightsError(
            f"another timemachine process is downloading {label} into {shown(dest)}; wait for it to finish, then "
            "try again")):
        yield


# ----------------------------------------------------------------------------------------------------------
# The entry point


def download_file(url: str, dest: Union[str, os.PathLike], checksums: Checksums, *, offline: bool,
                  sha256: Optional[str] = None, size: Optional[int] = None, label: Optional[str] = None,
                  progress: Optional[ProgressCallback] = None, settings: Optional[DownloadSettings] = None) -> Path:
    """Download ``url`` to ``dest`` (replacing it only once the new file is complete and verified).

    Args:
        url:       http(s) URL.
        dest:      final path; ``<dest>.part`` holds the bytes in flight and is resumed by later calls.
        checksums: the records of the home directory (trust on first use; its ``paths`` give the lock).
        offline:   True forbids network access: the call fails at once.
        sha256:    published digest; None = trust on first use (the digest recorded for ``dest`` and this URL
                   must match if there is one; otherwise the new digest is recorded).
        size:      published size in bytes, or None.
        label:     what to call the file in messages (default: its name).
        progress:  ``progress(done_bytes, total_bytes_or_None)``.
        settings:  timeouts, retries and backoff (default: :data:`DEFAULT_SETTINGS`).

    Returns:
        ``dest`` (absolute).

    Raises:
        WeightsError: offline, unreachable, HTTP error, too little disk space, size or checksum mismatch
            (the downloaded file is then deleted).  One sentence naming the URL and, where useful, the path
            where the file may be placed by hand.
    """
    dest = Path(dest).absolute()
    label = shown(label or dest.name)
    if not is_url(url):
        raise WeightsError(f"cannot download {quoted(url)}: only http:// and https:// URLs are supported")
    if offline:
        raise WeightsError(f"{label} is not available offline (network access is switched off); "
                           f"{manual_hint(dest, url)}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create {shown(dest.parent)}: {exc.strerror or exc}") from None
    job = _Download(url, dest, size, label, progress, settings or DEFAULT_SETTINGS)
    try:
        with download_lock(checksums.paths, dest, label):
            expected = checksums.expected(dest, url, sha256)
            job.run()
            digest = _verified_part(job, expected, published=sha256)
            with fs.PendingFile(dest) as pending:   # commit: fsync, rename over dest, fsync the directory
                os.replace(job.part, pending.path)  # same directory: a rename, not a copy
            discard(job.meta)
            checksums.record_verified(dest, digest, url, trust=trust_word(sha256, expected))
    except OSError as exc:  # the disk, not the network (requests' errors are OSErrors too: those pass)
        if isinstance(exc, requests.RequestException):
            raise
        where = shown(exc.filename or dest.parent)
        raise WeightsError(f"cannot write {label} to {where}: {exc.strerror or exc}; free some disk space or set "
                           f"{ENV_HOME} to a writable directory with room for it") from None
    return dest


def _verified_part(job: _Download, expected: Optional[str], published: Optional[str]) -> str:
    """The digest of a complete ``.part``; deletes it and raises WeightsError if its size or digest is wrong."""
    got_size = job.part_size()
    if job.size is not None and got_size != job.size:
        discard(job.part, job.meta)
        raise WeightsError(f"the download of {job.label} from {shown(job.url)} is {got_size} bytes, expected "
                           f"{job.size}; it was deleted")
    digest = sha256_file(job.part)
    if expected is not None and digest != expected:
        discard(job.part, job.meta)
        how = "published" if published else "recorded at its first download"
        raise WeightsError(f"the download of {job.label} from {shown(job.url)} has SHA-256 {digest[:12]}..., not "
                           f"the {how} {expected[:12]}...; it was deleted (the file on the server changed or was "
                           "corrupted on the way)")
    return digest


@dataclasses.dataclass(frozen=True)
class Downloader:
    """How files are fetched: the records to verify against (and whose home holds the locks), whether the
    network may be used, and the network settings (None: :data:`DEFAULT_SETTINGS` at the time of the call)."""

    checksums: Checksums
    offline: bool = False
    settings: Optional[DownloadSettings] = None

    @property
    def paths(self) -> Paths:
        return self.checksums.paths

    def fetch(self, url: str, dest: Union[str, os.PathLike], *, sha256: Optional[str] = None,
              size: Optional[int] = None, label: Optional[str] = None,
              progress: Optional[ProgressCallback] = None) -> Path:
        """:func:`download_file` with these settings."""
        return download_file(url, dest, self.checksums, offline=self.offline, sha256=sha256, size=size, label=label,
                             progress=progress, settings=self.settings)
