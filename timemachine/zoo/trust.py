"""Checksums: which files are the ones expected, trusted on first use where nobody publishes a digest.

A file is accepted only if its SHA-256 matches the published one (the manifest's), or, where none is published
(NVIDIA publishes no checksums), the digest recorded in ``checksums.json`` when the file was first downloaded,
imported or used: trust on first use, enforced on every later download and load.  A record is tied to an
*origin* (the URL a file came from, or ``import:<name>``): a digest recorded for another origin does not count.

So that loading does not re-hash hundreds of megabytes every time, a record also keeps a *verification stamp*:
the size and modification time at which the file last verified.  A file whose size or mtime changed is hashed
again; :func:`verify_file` always re-hashes.

A record (``checksums.json``, table ``files``, keyed as :func:`timemachine.zoo.state.record_key` says)::

    {"sha256": hex, "size": bytes, "origin": url or "import:<name>",
     "trust": "published" | "recorded" | "first use" | "import",
     "recorded_at": ISO time the digest was first recorded,
     "verified": {"size": bytes, "mtime_ns": int, "at": ISO time} or null}
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Optional, Union

from timemachine.env import Paths
from timemachine.errors import WeightsError
from timemachine.zoo import state
from timemachine.zoo.manifest import shown

_HASH_CHUNK = 1 << 20
_TABLE = "files"

#: What each state of :class:`VerifyResult` means.
OK, RECORDED, MISMATCH, MISSING = "ok", "recorded", "mismatch", "missing"


def sha256_file(path: Union[str, os.PathLike]) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Checksums:
    """The records of ``checksums.json`` under ``paths.home`` (read on every call: other processes write too)."""

    def __init__(self, paths: Paths):
        self.paths = paths

    def all(self) -> dict[str, dict]:
        """Every record, by record key."""
        return state.read_table(self.paths.checksums, _TABLE)

    def get(self, path: Path) -> Optional[dict]:
        """What is recorded for ``path`` (see the module docstring), or None."""
        record = self.all().get(state.record_key(self.paths, path))
        return record if isinstance(record, dict) else None

    def put(self, path: Path, record: Optional[dict]) -> None:
        """Replace (or with None: forget) the record of ``path``."""
        key = state.record_key(self.paths, path)
        with state.state_lock(self.paths):
            files = self.all()
            if record is None:
                files.pop(key, None)
            else:
                files[key] = record
            state.write_table(self.paths.checksums, _TABLE, files)

    def expected(self, path: Path, origin: str, published: Optional[str] = None) -> Optional[str]:
        """The digest ``path`` must have: the published one, else the one recorded for the same origin, else None."""
        if published:
            return published
        record = self.get(path)
        if record and record.get("origin") == origin and isinstance(record.get("sha256"), str):
            return record["sha256"]
        return None

    def record_verified(self, path: Path, digest: str, origin: str, trust: str) -> None:
        """Record that ``path`` (as it is now) has ``digest`` and came from ``origin``; stamps it verified."""
        stat = path.stat()
        previous = self.get(path) or {}
        same = previous.get("sha256") == digest and previous.get("origin") == origin
        self.put(path, {
            "sha256": digest, "size": stat.st_size, "origin": origin, "trust": trust,
            "recorded_at": previous.get("recorded_at", state.now()) if same else state.now(),
            "verified": {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "at": state.now()},
        })

    def unstamp(self, path: Path) -> None:
        """Drop the verification stamp of ``path`` (it failed a check), keeping its digest."""
        record = self.get(path)
        if record and record.get("verified"):
            self.put(path, {**record, "verified": None})

    def stamp_valid(self, path: Path, expected: Optional[str] = None) -> bool:
        """True when ``path`` verified earlier (against ``expected``, if given) and has not changed since (same
        size and mtime)."""
        record = self.get(path)
        if not record or not isinstance(record.get("verified"), dict):
            return False
        if expected is not None and record.get("sha256") != expected:
            return False
        stat = path.stat()
        return record["verified"].get("size") == stat.st_size and record["verified"].get("mtime_ns") == stat.st_mtime_ns


def trust_word(published: Optional[str], expected: Optional[str]) -> str:
    """How a digest that matched was trusted: 'published', 'recorded' (an earlier record) or 'first use'."""
    return "published" if published else ("recorded" if expected else "first use")


def check_file(checksums: Checksums, path: Path, *, origin: str, published_sha256: Optional[str] = None,
               published_size: Optional[int] = None, label: Optional[str] = None, fix: str = "") -> None:
    """Make sure a local file is the one expected; re-hashes only when it changed since it last verified.

    With nothing published and nothing recorded for ``origin``, the file's digest is recorded now (first use).

    Raises:
        WeightsError: size or digest differ from what was published or recorded (``fix`` tells what to do;
            default: delete it).
    """
    label = label or shown(path)
    expected = checksums.expected(path, origin, published_sha256)
    if checksums.stamp_valid(path, expected):
        return
    size = path.stat().st_size
    if published_size is not None and size != published_size:
        raise WeightsError(f"{label} at {shown(path)} is {size} bytes, expected {published_size}; "
                           f"{fix or 'delete it'}")
    digest = sha256_file(path)
    if expected is not None and digest != expected:
        checksums.unstamp(path)
        raise WeightsError(f"{label} at {shown(path)} has SHA-256 {digest[:12]}..., expected {expected[:12]}...; "
                           f"{fix or 'delete it'}")
    checksums.record_verified(path, digest, origin, trust=trust_word(published_sha256, expected))


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """One re-hashed file.  ``state``: 'ok', 'recorded' (no reference existed: digest recorded now),
    'mismatch' or 'missing'; ``expected``/``actual`` hex digests where known."""

    label: str
    path: Path
    state: str
    expected: Optional[str]
    actual: Optional[str]


def verify_file(checksums: Checksums, label: str, path: Path, origin: str, published: Optional[str],
                trust: str) -> VerifyResult:
    """Re-hash ``path`` against ``published`` or the digest recorded for ``origin``; updates the record (a
    match is stamped with ``trust``, a mismatch loses its stamp, a file without reference is recorded)."""
    if not path.is_file():
        return VerifyResult(label, path, MISSING, published, None)
    expected = checksums.expected(path, origin, published)
    actual = sha256_file(path)
    if expected is None:
        checksums.record_verified(path, actual, origin, trust="first use")
        return VerifyResult(label, path, RECORDED, None, actual)
    if actual != expected:
        checksums.unstamp(path)
        return VerifyResult(label, path, MISMATCH, expected, actual)
    checksums.record_verified(path, actual, origin, trust=trust)
    return VerifyResult(label, path, OK, expected, actual)
