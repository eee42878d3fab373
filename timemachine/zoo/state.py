"""The zoo's state files under the home directory: ``checksums.json`` and ``registry.json``.

Each is a JSON object ``{"version": 1, <table>: {key: record}}``, rewritten atomically (:func:`timemachine.fs.
write_json`) under the inter-process lock ``locks/state.lock``, so that two processes changing records at once
both keep their changes.  Files are named in records by their path relative to the home directory when they lie
under it (the home may move), else by their absolute path.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from pathlib import Path
from typing import Iterator

from timemachine import fs
from timemachine.env import Paths
from timemachine.errors import WeightsError, first_line, quoted
from timemachine.zoo.manifest import shown

VERSION = 1


def read_table(path: Path, table: str) -> dict:
    """``data[table]`` of the state file at ``path``; {} when the file does not exist yet.

    Raises:
        WeightsError: the file is damaged (not JSON, or no such table).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:   # ValueError: JSON and UTF-8 decoding errors
        raise WeightsError(f"{shown(path)} is damaged ({first_line(exc)}); move it away to start a fresh "
                           "record") from None
    found = data.get(table) if isinstance(data, dict) else None
    if not isinstance(found, dict):
        raise WeightsError(f"{shown(path)} is damaged (no {quoted(table)} table); move it away to start a fresh "
                           "record")
    return found


def write_table(path: Path, table: str, records: dict) -> None:
    """Replace the state file at ``path`` by one holding ``records`` as ``table`` (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fs.write_json(path, {"version": VERSION, table: records})


@contextlib.contextmanager
def state_lock(paths: Paths) -> Iterator[None]:
    """Serialises read-modify-write of the state files across processes."""
    with fs.file_lock(paths.lock("state")):
        yield


def record_key(paths: Paths, path: Path) -> str:
    """How records name ``path``: relative to the home directory when under it, else absolute."""
    path = path.absolute()
    try:
        return path.relative_to(paths.home).as_posix()
    except ValueError:
        return str(path)


def key_path(paths: Paths, key: str) -> Path:
    """The file a record key names (inverse of :func:`record_key`)."""
    return Path(key) if os.path.isabs(key) else paths.home / key


def now() -> str:
    """The current UTC time, ISO 8601 to the second (for records)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
