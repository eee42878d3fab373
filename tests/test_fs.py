"""timemachine.fs: atomic writes that never follow planted links, content-addressed stores; env and errors helpers."""

from __future__ import annotations

import hashlib
import os
import pickle

import pytest

from timemachine import fs
from timemachine.env import Environment, Paths
from timemachine.errors import REPLACE, AgeVectorError, AlreadyExists, TimemachineError, first_line, printable


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    fs.atomic_write(target, b"one")
    fs.write_json(target, {"b": 2, "a": 1})
    assert target.read_text() == '{\n  "a": 1,\n  "b": 2\n}\n'
    assert os.listdir(tmp_path) == ["a.json"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with fs.PendingFile(target) as pending:
            with pending.open() as f:
                f.write(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_a_symlink_planted_as_target_is_replaced_not_followed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "video.mp4").symlink_to(outside)
    fs.atomic_write(shared / "video.mp4", b"new")
    assert outside.read_text() == "precious"
    assert not (shared / "video.mp4").is_symlink() and (shared / "video.mp4").read_bytes() == b"new"


def test_a_symlink_planted_at_the_temporary_name_stops_the_write(tmp_path, monkeypatch):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    target = tmp_path / "out.bin"
    pending = fs.PendingFile(target)
    os.symlink(outside, pending.path)         # an attacker who guessed the random name
    with pytest.raises(OSError):
        with pending:
            with pending.open() as f:
                f.write(b"evil")
    assert outside.read_text() == "precious"
    assert not target.exists()


def test_private_pending_file_for_writers_that_take_a_path(tmp_path):
    target = tmp_path / "v.mp4"
    with fs.PendingFile(target, private=True) as pending:
        assert os.path.dirname(pending.path) != str(tmp_path)
        assert oct(os.stat(os.path.dirname(pending.path)).st_mode & 0o777) == "0o700"
        with open(pending.path, "wb") as f:
            f.write(b"data")
    assert target.read_bytes() == b"data"
    assert os.listdir(tmp_path) == ["v.mp4"]


def test_atomic_directory_lost_race_keeps_the_first(tmp_path):
    final = tmp_path / "entry"
    with fs.atomic_directory(final) as d:
        (d / "x").write_text("first")
    with fs.atomic_directory(final) as d:
        (d / "x").write_text("second")
    assert (final / "x").read_text() == "first"
    assert os.listdir(tmp_path) == ["entry"]


def test_content_store_get_put_prune(tmp_path):
    store = fs.ContentStore(tmp_path / "store", max_entries=2)
    keys = [_key(str(i)) for i in range(3)]
    for i, key in enumerate(keys):
        store.put(key, lambda d, i=i: (d / "data").write_text(str(i)))
        os.utime(store.entry_dir(key), (1000 + i, 1000 + i))
    store.prune()
    assert store.get(keys[0]) is None
    assert (store.get(keys[2]) / "data").read_text() == "2"
    assert store.get(keys[1], required=("missing",)) is None     # incomplete: removed
    assert not store.entry_dir(keys[1]).exists()
    with pytest.raises(ValueError):
        store.entry_dir("../../etc")


def test_environment_is_read_once_from_a_mapping(tmp_path):
    env = Environment.from_environ({"TIMEMACHINE_HOME": str(tmp_path), "TIMEMACHINE_OFFLINE": "yes",
                                    "TIMEMACHINE_VGG_WEIGHTS": " random ", "TIMEMACHINE_CPU_MALLOC_TUNING": "0"})
    assert env.home == tmp_path and env.offline and env.vgg_weights == "random" and not env.malloc_tuning
    assert env.paths == Paths(tmp_path)
    assert env.paths.projections == tmp_path / "cache" / "projections"
    assert not Environment.from_environ({"TIMEMACHINE_HOME": str(tmp_path), "TIMEMACHINE_OFFLINE": "0"}).offline


def test_printable_escapes_terminal_control_characters():
    assert printable("a\x1b[2Jb\rc\u202ed") == "a\\x1b[2Jb\\rc\\u202ed"
    assert printable("x" * 500).endswith("...") and len(printable("x" * 500)) == 203


def test_first_line_of_an_empty_exception_names_its_type():
    assert first_line(EOFError()) == "EOFError"
    assert first_line(ValueError("\n  \nsecond\nthird")) == "second"


def test_remedies_survive_pickling():
    error = pickle.loads(pickle.dumps(AlreadyExists("an age vector named 'x' already exists")))
    assert isinstance(error, AlreadyExists) and error.remedy == REPLACE and "'x'" in str(error)
    plain = pickle.loads(pickle.dumps(AgeVectorError("bad")))
    assert plain.remedy is None and str(plain) == "bad"
    with pytest.raises(ValueError):
        TimemachineError("x", remedy="dance")


def test_file_lock_says_busy_only_when_taking_the_lock(tmp_path):
    """``busy()`` is raised when another process holds the lock; an error raised while holding it passes through
    unchanged (a TimeoutError of the locked work is not 'busy')."""
    import subprocess
    import sys

    lock = tmp_path / "l.lock"
    hold = "import filelock, sys, time; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); print('held', " \
           "flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(KeyError, match="busy"):
            with fs.file_lock(lock, timeout=0, busy=lambda: KeyError("busy")):
                pass
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(TimeoutError, match="inside"):
        with fs.file_lock(lock, timeout=0, busy=lambda: KeyError("busy")):
            raise TimeoutError("inside")
