"""Files that are never half-written and never written around their directory; content-addressed stores.

Every writer of the package goes through here:

* :class:`PendingFile` - a file written under a temporary name beside its target and renamed over it in one
  step, so a reader sees the old file or the new one, never a part.  The temporary name is random
  (``.<name>.<16 hex>.tmp``) and the file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW``: a symlink or a
  file planted under that name makes the write fail instead of redirecting it.  Its data is flushed to disk
  (``fsync``) before the rename, and the directory after it.  Writers that must be given a *path* (ffmpeg)
  use ``PendingFile(target, private=True)``: the temporary file then lies in a fresh directory of its own
  (``mkdtemp``, mode 0700) beside the target, where nobody else can plant anything.
* :func:`atomic_write` (bytes or text), :func:`write_json` and :func:`atomic_directory` (a whole directory
  built beside its final place and renamed into it) are the short forms.
* :class:`ContentStore` - directories keyed by a hex SHA-256 (``<root>/<key[:2]>/<key>/``), filled
  atomically, least recently used entries pruned beyond a bound.  The projection cache, the UI's video cache
  and the discovery cache are stores.
* :func:`file_lock` - one process at a time, across processes.

The target itself may be a symlink: ``rename`` replaces the link, it does not write through it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_HEX = frozenset("0123456789abcdef")


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_quietly(path: str) -> None:
    """Remove a file, link or directory tree at ``path`` if it exists; never raises (for clean-up code that
    runs while another exception is being handled)."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


class PendingFile:
    """A file being written under a temporary name, renamed over ``target`` by :meth:`commit`.

    Use as a context manager (commit on success, :meth:`abort` on any exception, interrupts included)::

        with PendingFile(path) as pending:
            with pending.open("wb") as f:
                f.write(data)

    Args:
        target:  the final path; its directory must exist.  It is replaced if it exists (a symlink there is
                 replaced, not followed).
        private: put the temporary file in a fresh private directory (for writers that take a path).

    Attributes:
        path: where to write (the temporary file).
    """

    def __init__(self, target: PathLike, *, private: bool = False):
        self.target = os.path.abspath(os.fspath(target))
        directory, base = os.path.split(self.target)
        self._private_dir: Optional[str] = None
        if private:
            self._private_dir = tempfile.mkdtemp(prefix=f".{base[:80]}.", suffix=".tmp", dir=directory)
            self.path = os.path.join(self._private_dir, base)
        else:
            self.path = os.path.join(directory, f".{base[:80]}.{secrets.token_hex(8)}.tmp")
        self._created = False
        self._done = False

    def open(self, mode: str = "wb", encoding: Optional[str] = None) -> IO[Any]:
        """The temporary file, created exclusively (never through a link); ``mode`` 'wb' or 'w'."""
        if mode not in ("wb", "w"):
            raise ValueError("PendingFile.open writes: mode 'wb' or 'w'")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_BINARY
        fd = os.open(self.path, flags, 0o666)
        self._created = True
        return os.fdopen(fd, mode, encoding=encoding if mode == "w" else None)

    def commit(self) -> str:
        """Flush the temporary file to disk and rename it over the target; returns the target."""
        if self._done:
            return self.target
        st = os.lstat(self.path)   # raises if nothing was written
        if stat.S_ISLNK(st.st_mode):
            raise OSError(errno.ELOOP, "the temporary file was replaced by a link", self.path)
        if stat.S_ISREG(st.st_mode):
            fd = os.open(self.path, os.O_RDONLY | _O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(self.path, self.target)
        self._done = True
        if self._private_dir is not None:
            remove_quietly(self._private_dir)
        _fsync_directory(os.path.dirname(self.target))
        return self.target

    def abort(self) -> None:
        """Delete the temporary file (idempotent, never raises); the target is left as it was."""
        if self._done:
            return
        self._done = True
        remove_quietly(self._private_dir if self._private_dir is not None else self.path)

    def __enter__(self) -> "PendingFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


def atomic_write(path: PathLike, data: Union[bytes, str], encoding: str = "utf-8") -> None:
    """Write ``data`` to ``path`` atomically (see :class:`PendingFile`).  Raises OSError on failure, leaving
    nothing behind."""
    with PendingFile(path) as pending:
        if isinstance(data, str):
            with pending.open("w", encoding=encoding) as f:
                f.write(data)
        else:
            with pending.open("wb") as f:
                f.write(data)


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def json_text(data: Any) -> str:
    """``data`` as the package writes JSON: indented, sorted keys, no NaN, numpy scalars and paths allowed."""
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False, default=_json_default) + "\n"


def write_json(path: PathLike, data: Any) -> None:
    """Write ``data`` as JSON (:func:`json_text`) atomically."""
    atomic_write(path, json_text(data))


@contextlib.contextmanager
def atomic_directory(final: PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name beside ``final`` and rename it into place on success.

    Yields the temporary directory to fill.  If ``final`` appeared meanwhile (another process made the same
    entry: content-addressed directories are equal), the new copy is discarded and ``final`` kept.  On any
    exception the temporary directory is removed and ``final`` is left as it was.
    """
    final = Path(os.path.abspath(os.fspath(final)))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name[:40]}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():   # not a lost race: a real failure
                raise
        else:
            _fsync_directory(str(final.parent))
    finally:
        remove_quietly(str(tmp))


@contextlib.contextmanager
def file_lock(path: PathLike, timeout: float = 60.0,
              busy: Optional[Callable[[], BaseException]] = None) -> Iterator[None]:
    """Hold an inter-process lock on ``path`` (created with its directory if needed), waiting at most ``timeout``
    seconds for it; when another process holds it longer, raise ``busy()`` (default: TimeoutError).  Errors
    raised while the lock is held pass through unchanged."""
    import filelock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path), timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise (busy() if busy is not None else TimeoutError(f"{path} is locked by another process")) from None
    try:
        yield
    finally:
        lock.release()


def is_hex_key(key: Any) -> bool:
    """True for a lowercase hex SHA-256 (64 characters)."""
    return isinstance(key, str) and len(key) == 64 and set(key) <= _HEX


class ContentStore:
    """Directories addressed by content: ``<root>/<key[:2]>/<key>/``, key = hex SHA-256 of what they hold.

    Entries are written with :meth:`put` (atomically: a reader sees a complete entry or none; of two
    processes filling one key, the first rename wins) and read with :meth:`get`, which also marks the entry
    as recently used.  With ``max_entries`` the least recently used entries beyond it are removed after each
    put.  Names starting with '.' are temporary and never entries.
    """

    def __init__(self, root: PathLike, max_entries: Optional[int] = None):
        if max_entries is not None and max_entries < 1:
            raise ValueError("max_entries must be >= 1 or None")
        self.root = Path(root)
        self.max_entries = max_entries

    def entry_dir(self, key: str) -> Path:
        """Where the entry of ``key`` lives (whether or not it exists)."""
        if not is_hex_key(key):
            raise ValueError("a store key is a lowercase hex SHA-256")
        return self.root / key[:2] / key

    def get(self, key: str, required: tuple[str, ...] = ()) -> Optional[Path]:
        """The entry's directory if it exists and holds every file in ``required``; else None (an incomplete
        entry is removed).  Marks it as recently used."""
        entry = self.entry_dir(key)
        if not entry.is_dir():
            return None
        if not all((entry / name).is_file() for name in required):
            self.discard(key)
            return None
        with contextlib.suppress(OSError):
            os.utime(entry)
        return entry

    def put(self, key: str, fill: Callable[[Path], None], keep: bool = True) -> Path:
        """Create the entry of ``key`` by calling ``fill(directory)`` on a temporary directory; returns the
        entry's directory.  Then prunes (never the new entry) when ``keep`` and ``max_entries`` say so."""
        final = self.entry_dir(key)
        with atomic_directory(final) as tmp:
            fill(tmp)
        with contextlib.suppress(OSError):
            os.utime(final)
        if keep and self.max_entries is not None:
            self.prune(keep=final)
        return final

    def discard(self, key: str) -> None:
        """Remove the entry of ``key`` if present."""
        remove_quietly(str(self.entry_dir(key)))

    def entries(self) -> list[Path]:
        """Every entry's directory, most recently used first."""
        found: list[Path] = []
        try:
            shards = [p for p in self.root.iterdir() if len(p.name) == 2 and p.is_dir()]
        except OSError:
            return []
        for shard in shards:
            with contextlib.suppress(OSError):
                found.extend(p for p in shard.iterdir() if is_hex_key(p.name) and p.is_dir())

        def mtime(p: Path) -> float:
            try:
                return p.stat().st_mtime
            except OSError:
                return 0.0

        return sorted(found, key=mtime, reverse=True)

    def prune(self, keep: Optional[Path] = None) -> list[Path]:
        """Remove the least recently used entries beyond ``max_entries`` (never ``keep``); returns them."""
        if self.max_entries is None:
            return []
        removed = []
        for entry in self.entries()[self.max_entries:]:
            if keep is not None and entry == keep:
                continue
            remove_quietly(str(entry))
            removed.append(entry)
        return removed
