"""The awkward-photo corpus through the command line (``timemachine project``), as a user would feed it.

Valid photos of every odd kind are projected (one batch, a directory each); every invalid one exits with
code 2, exactly one line on stderr, no traceback, and nothing under --out.  The files are generated here.
"""

from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from test_cli_project import env as cli_env  # noqa: F401  (the fixture, under another name)
from test_images import encode, gradient, png_bytes, rgb16_png
from timemachine.cli import main


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(gradient(120, 80)), "JPEG", quality=90, exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (80, 80), colour) for colour in ((200, 30, 30), (30, 200, 30))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


VALID = {
    "cmyk.jpg": lambda: encode(Image.fromarray(gradient()).convert("CMYK"), "JPEG"),
    "sixteen.png": lambda: rgb16_png(gradient().astype(np.uint16) * 257),
    "palette.png": lambda: encode(Image.fromarray(gradient()).convert("P"), "PNG"),
    "grey_alpha.png": lambda: encode(Image.fromarray(gradient()).convert("LA"), "PNG"),
    "rgba.png": lambda: encode(Image.fromarray(gradient()).convert("RGBA"), "PNG"),
    "rotated.jpg": _exif_rotated_jpeg,
    "animated.gif": _animated_gif,
    "photo.webp": lambda: encode(Image.fromarray(gradient()), "WEBP", lossless=True),
}

INVALID = {
    "empty.jpg": (lambda: b"", "empty"),
    "cut.jpg": (lambda: _cut(encode(Image.fromarray(gradient(256, 256)), "JPEG")), "truncated"),
    "cut.png": (lambda: _cut(encode(Image.fromarray(gradient(256, 256)), "PNG")), "truncated"),
    "notes.jpg": (lambda: b"Just some notes about my dog.\n", "not an image"),
    "page.png": (lambda: b"<!DOCTYPE html><html><body>dog</body></html>\n", "not an image"),
    "drawing.jpg": (lambda: b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>\n", "not an image"),
    "dot.png": (lambda: encode(Image.new("RGB", (1, 1)), "PNG"), "at least 64"),
    "bomb.png": (lambda: png_bytes(40000, 40000, 8, 2, b"\0" * 100), "decompression bomb"),
}


@pytest.fixture()
def env(cli_env):
    """test_cli_project's setup (home, offline, a small model file) plus an empty folder for the corpus."""
    photos = cli_env["tmp"] / "photos"
    photos.mkdir()
    return {**cli_env, "photos": photos}


def test_every_valid_kind_of_photo_is_projected(env):
    paths = []
    for name, make in VALID.items():
        path = env["photos"] / name
        path.write_bytes(make())
        paths.append(str(path))
    out = env["tmp"] / "out"
    rc = main(["project", *paths, "--model", env["model"], "--steps", "1", "--vgg-weights", "random",
               "--device", "cpu", "--out", str(out)])
    assert rc == 0
    for name in VALID:
        stem = pathlib.Path(name).stem
        assert (out / stem / "projected_w.npz").is_file(), name
        assert Image.open(out / stem / "target.png").size == (32, 32)


@pytest.mark.parametrize("name", sorted(INVALID))
def test_every_invalid_file_exits_2_with_one_line_and_writes_nothing(env, capsys, name):
    make, words = INVALID[name]
    path = env["photos"] / name
    path.write_bytes(make())
    out = env["tmp"] / "out"
    rc = main(["project", str(path), "--model", env["model"], "--steps", "1", "--vgg-weights", "random",
               "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2
    assert len(lines) == 1, err
    assert lines[0].startswith("timemachine: error:") and name in lines[0] and words in lines[0].lower()
    assert not out.exists()


def test_a_bad_photo_in_a_real_process_prints_no_traceback(env):
    path = env["photos"] / "cut.jpg"
    path.write_bytes(INVALID["cut.jpg"][0]())
    out = env["tmp"] / "out"
    proc = subprocess.run([sys.executable, "-m", "timemachine", "project", str(path), "--model", env["model"],
                           "--vgg-weights", "random", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env={**os.environ})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not out.exists()
