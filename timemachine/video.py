"""Streaming, atomic writers of frame sequences: MP4 (H.264), animated GIF, PNG sequences, PNG stills.

Every writer takes frames one at a time, uint8 [H, W, 3] RGB, and holds at most one of them: memory stays
flat however long the video.  Every writer has the same life cycle::

    writer = Mp4Writer("out/video.mp4", fps=24)   # nothing on disk yet; settings checked, ffmpeg found
    for frame in frames:
        writer.append(frame)                      # into a temporary file in the target directory
    writer.finish()                               # the temporary file is complete (encoder done, flushed)
    writer.commit()                               # flushed to disk, renamed to its final name
    # on any error or KeyboardInterrupt before commit(): writer.abort() removes the temporary file

so a final name never holds a half-written file.  Temporary files are :class:`timemachine.fs.PendingFile`
objects: hidden, random names created exclusively without following links (``.video.gif.<random>.tmp``);
ffmpeg, which must be given a path, and the PNG sequence directory are written inside a private temporary
directory (mode 0700) beside the target, where nothing can be planted.  :func:`commit_all` / :func:`abort_all`
drive several writers at once (as :func:`timemachine.render.render_video` does: all outputs are finished before
any is renamed).

What each format does with frames:

* :class:`Mp4Writer`  pipes raw RGB into ffmpeg (the binary that imageio-ffmpeg finds): H.264 (libx264),
  yuv420p, CRF rate control, BT.709 matrix and tags, ``+faststart`` (plays while downloading).  yuv420p
  needs even sides: an odd width or height is padded by one row/column repeating the edge pixels
  (the video is then one pixel larger than the frames; 512x512 is unchanged).
* :class:`GifWriter`  encodes each frame with its own 256-colour palette (Pillow's fast octree quantiser, no
  dither: dither noise that changes from frame to frame would shimmer),
  streamed frame by frame (each frame encoded by Pillow, its blocks appended to the file); loops forever;
  optional downscale and frame subsampling;
  consecutive identical frames (holds) become one frame shown longer.
* :class:`PngSequenceWriter`  ``frame_00000.png ...`` written into a temporary directory renamed at the end.
* :class:`PngStillWriter`  one image, written at :meth:`finish`.
* :class:`SideBySideWriter`  places fixed panels (photo, reconstruction) left of each frame, with an
  optional caption band on top, and passes the composite to another writer.
"""

from __future__ import annotations

import dataclasses
import fractions
import functools
import io
import os
import re
import secrets
import struct
import subprocess
import tempfile
from typing import IO, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from timemachine import fs
from timemachine.errors import RenderError, printable
from timemachine.settings import CRF_RANGE, X264_PRESETS, check_fps

PathLike = Union[str, os.PathLike]

#: GIF frame delays are whole 1/100 s, and browsers slow delays below 2/100 s down to 1/10 s: so a GIF
#: frame lasts at least this many centiseconds (GIFs play at 50 fps at most).
GIF_MIN_DELAY_CS = 2
#: The name pattern of PNG sequence frames (0-based output frame index).
PNG_FRAME_PATTERN = "frame_{:05d}.png"
_PNG_FRAME_RE = re.compile(r"frame_\d{5,}\.png")


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        description = f"{frame.dtype} {list(frame.shape)}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"frames must be uint8 [H, W, 3] arrays, got {description}")


def _aside_name(path: str) -> str:
    """A hidden random name beside ``path`` to move an old output to while the new one replaces it."""
    directory, base = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{base[:80]}.{secrets.token_hex(8)}.old")


class FrameWriter:
    """Base class: a file written under a temporary name (a :class:`timemachine.fs.PendingFile`), renamed into
    place by :meth:`commit`.

    Subclasses implement :meth:`_append`, :meth:`_finish` (complete the temporary file) and :meth:`_cleanup`
    (release processes and handles; called on abort); they write to :meth:`_open_temp` or, when another
    program needs a path (``private_temp``), to :attr:`temp_path`.  ``path`` is the final name; its directory
    must exist.  Nothing is created on disk before the first frame.
    """

    #: True for writers whose output is a directory (:class:`PngSequenceWriter`).
    writes_directory = False
    #: True for writers that hand :attr:`temp_path` to another program: it then lies in a private directory.
    private_temp = False

    def __init__(self, path: PathLike):
        self.path = os.path.abspath(os.fspath(path))
        if not os.path.isdir(os.path.dirname(self.path)):
            raise RenderError(f"cannot write {printable(self.path)}: its directory does not exist")
        if os.path.isdir(self.path) and not self.writes_directory:
            raise RenderError(f"cannot write {printable(self.path)}: it is a directory")
        self._temp: Optional[fs.PendingFile] = None
        self.frames_written = 0
        self._finished = False
        self._done = False

    def _pending_file(self) -> fs.PendingFile:
        if self._temp is None:
            self._temp = fs.PendingFile(self.path, private=self.private_temp)
        return self._temp

    @property
    def temp_path(self) -> str:
        """The temporary output's path (its private directory, if any, is created on first use)."""
        return self._pending_file().path

    def _open_temp(self):
        """The temporary file, created exclusively, never through a link; binary, for writing."""
        return self._pending_file().open("wb")

    def append(self, frame: np.ndarray) -> None:
        """Add one frame, uint8 [H, W, 3]; all frames must have the same size."""
        if self._finished or self._done:
            raise RuntimeError(f"{type(self).__name__}: append() after finish()/abort()")
        _check_frame(frame)
        self._append(frame)
        self.frames_written += 1

    def finish(self) -> None:
        """Complete the temporary file (flush, close the encoder and check it succeeded)."""
        if self._finished:
            return
        if self.frames_written == 0:
            raise RenderError(f"no frames were given for {printable(self.path)}")
        self._finish()
        self._finished = True

    def commit(self) -> str:
        """Flush the finished temporary file to disk and rename it to the final name; returns the final path."""
        if not self._finished:
            self.finish()
        try:
            self._pending_file().commit()
        except OSError as exc:
            raise RenderError(f"cannot write {printable(self.path)}: {exc.strerror or exc}") from exc
        self._done = True
        return self.path

    def abort(self) -> None:
        """Stop and delete the temporary output; the final name is left as it was.  Idempotent, never raises
        for a missing file (it is called while another exception is being handled)."""
        if self._done:
            return
        self._done = True
        try:
            self._cleanup()
        finally:
            if self._temp is not None:
                self._temp.abort()

    # -- for subclasses
    def _append(self, frame: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def _cleanup(self) -> None:
        pass


def commit_all(writers: Sequence["FrameWriter | SideBySideWriter"]) -> list[str]:
    """Finish every writer, then rename them all: no final name appears until every output is complete.

    On an error (or KeyboardInterrupt) all writers not yet committed are aborted and the error re-raised.
    """
    try:
        for writer in writers:
            writer.finish()
        return [writer.commit() for writer in writers]
    except BaseException:
        abort_all(writers)
        raise


def abort_all(writers: Sequence["FrameWriter | SideBySideWriter"]) -> None:
    """Abort every writer (those already committed are left alone)."""
    for writer in writers:
        writer.abort()


# ----------------------------------------------------------------------------------------------------------
# MP4 through ffmpeg


def find_ffmpeg() -> str:
    """Path of the ffmpeg binary imageio-ffmpeg uses (``$IMAGEIO_FFMPEG_EXE``, its bundled binary, or the
    system's), checked to exist and to have the libx264 encoder.

    Raises:
        RenderError: imageio-ffmpeg is not installed, no ffmpeg is found, or it cannot encode H.264.
    """
    try:
        import imageio_ffmpeg
    except ImportError:
        raise RenderError("writing MP4 needs the imageio-ffmpeg package (pip install imageio-ffmpeg)") from None
    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        raise RenderError("no ffmpeg found for writing MP4: reinstall imageio-ffmpeg, or set IMAGEIO_FFMPEG_EXE "
                          "to an ffmpeg binary") from None
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        raise RenderError(f"the ffmpeg binary {exe} does not exist or cannot be run (check IMAGEIO_FFMPEG_EXE)")
    if not _has_libx264(exe):
        raise RenderError(f"the ffmpeg binary {exe} cannot encode H.264 (no libx264 encoder)")
    return exe


@functools.lru_cache(maxsize=8)
def _has_libx264(exe: str) -> bool:
    try:
        result = subprocess.run([exe, "-hide_banner", "-encoders"], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0 and re.search(r"^\s*V\S*\s+libx264\s", result.stdout, re.MULTILINE) is not None


@dataclasses.dataclass
class _Ffmpeg:
    """A running ffmpeg encoder, started at the first frame of an :class:`Mp4Writer`."""

    process: subprocess.Popen
    stdin: IO[bytes]               # the process's standard input (frames)
    stderr: IO[bytes]              # a temporary file capturing its messages
    frame_size: tuple[int, int]    # (height, width) of incoming frames
    video_size: tuple[int, int]    # (height, width) encoded: even sides


class Mp4Writer(FrameWriter):
    """H.264 MP4 (libx264, yuv420p, BT.709), streamed into ffmpeg's standard input.

    Args:
        path:   final file name (the container is MP4 whatever the extension).
        fps:    frames per second (> 0; passed to ffmpeg as an exact fraction).
        crf:    constant rate factor, :data:`CRF_RANGE`; lower = better and larger. 18 is near-lossless.
        preset: one of :data:`X264_PRESETS` (speed against file size at the same quality).

    ffmpeg starts at the first frame, when the size is known, and writes into a private temporary directory.
    Its messages are captured, not printed; a failure becomes a :class:`RenderError` naming ffmpeg's last
    message.
    """

    private_temp = True

    def __init__(self, path: PathLike, fps: float = 24.0, crf: int = 18, preset: str = "medium"):
        check_fps(fps)
        if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not CRF_RANGE[0] <= crf <= CRF_RANGE[1]:
            raise RenderError(f"the MP4 quality (CRF) must be a whole number from {CRF_RANGE[0]} (best) to "
                              f"{CRF_RANGE[1]} (worst), got {crf!r}")
        if preset not in X264_PRESETS:
            raise RenderError(f"unknown x264 preset {preset!r}; use one of: {', '.join(X264_PRESETS)}")
        self.exe = find_ffmpeg()
        super().__init__(path)
        self.fps = fps
        self.crf = int(crf)
        self.preset = preset
        self._ffmpeg: Optional[_Ffmpeg] = None

    def _command(self, video_size: tuple[int, int]) -> list[str]:
        height, width = video_size
        rate = fractions.Fraction(self.fps).limit_denominator(1001)
        # BT.709 conversion and tags: players assume BT.709 for untagged video at some sizes and BT.601 at
        # others; converting with 709 and saying so gives the same colours in browsers, VLC and QuickTime.
        color = ("scale=out_color_matrix=bt709:out_range=tv,"
                 "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv,format=yuv420p")
        return [self.exe, "-hide_banner", "-loglevel", "error",
                "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", str(rate),
                "-i", "pipe:0", "-an",
                "-vf", color, "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf),
                "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4", "-y", self.temp_path]

    def _start(self, frame: np.ndarray) -> _Ffmpeg:
        height, width = frame.shape[:2]
        video_size = (height + height % 2, width + width % 2)
        stderr = tempfile.TemporaryFile()
        try:
            process = subprocess.Popen(self._command(video_size), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=stderr, start_new_session=(os.name == "posix"))
        except OSError as exc:
            stderr.close()
            raise RenderError(f"cannot start ffmpeg ({self.exe}): {exc.strerror or exc}") from exc
        assert process.stdin is not None   # stdin=PIPE
        return _Ffmpeg(process, process.stdin, stderr, (height, width), video_size)

    def _append(self, frame: np.ndarray) -> None:
        if self._ffmpeg is None:
            self._ffmpeg = self._start(frame)
        ffmpeg = self._ffmpeg
        if frame.shape[:2] != ffmpeg.frame_size:
            raise ValueError(f"frame of size {frame.shape[1]}x{frame.shape[0]} in a video of "
                             f"{ffmpeg.frame_size[1]}x{ffmpeg.frame_size[0]}")
        if ffmpeg.video_size != ffmpeg.frame_size:  # odd side: repeat the last row / column
            pad_h, pad_w = ffmpeg.video_size[0] - ffmpeg.frame_size[0], ffmpeg.video_size[1] - ffmpeg.frame_size[1]
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        try:
            ffmpeg.stdin.write(np.ascontiguousarray(frame).data)
        except (BrokenPipeError, OSError):
            ffmpeg.process.wait()
            raise RenderError(f"ffmpeg stopped while writing {printable(self.path)}: {self._ffmpeg_message()}") \
                from None

    def _finish(self) -> None:
        ffmpeg = self._ffmpeg
        assert ffmpeg is not None   # finish() runs after a frame, which started ffmpeg
        try:
            ffmpeg.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        returncode = ffmpeg.process.wait()
        if returncode != 0:
            raise RenderError(f"ffmpeg failed to write {printable(self.path)} (exit code {returncode}): "
                              f"{self._ffmpeg_message()}")
        ffmpeg.stderr.close()

    def _ffmpeg_message(self) -> str:
        if self._ffmpeg is None or self._ffmpeg.stderr.closed:
            return "no message"
        stderr = self._ffmpeg.stderr
        stderr.seek(0)
        lines = [line.strip() for line in stderr.read().decode("utf-8", "replace").splitlines() if line.strip()]
        return printable(lines[-1]) if lines else "no message"

    def _cleanup(self) -> None:
        ffmpeg = self._ffmpeg
        if ffmpeg is None:
            return
        if ffmpeg.process.poll() is None:
            ffmpeg.process.kill()
            ffmpeg.process.wait()
        try:
            ffmpeg.stdin.close()
        except OSError:
            pass
        ffmpeg.stderr.close()


# ----------------------------------------------------------------------------------------------------------
# GIF


class GifWriter(FrameWriter):
    """Animated GIF that loops forever, written frame by frame.

    Args:
        path:  final file name.
        fps:   rate of the frames given to :meth:`append` (the GIF lasts ``frames / fps`` seconds).
        every: keep one frame in ``every`` (1 = all); the last frame given is always kept, so a walk ends on
               its last image.  Each kept frame is shown until the next kept one.
        size:  if given, frames are shrunk (Lanczos) so that their longer side is at most ``size`` pixels.

    Timing: each frame's delay is rounded to 1/100 s so that the total never drifts (frame k starts at
    ``round(100 * k / fps)`` cs), and is at least :data:`GIF_MIN_DELAY_CS`.  A frame equal to the one before
    it (a hold) only lengthens that frame's delay.
    """

    def __init__(self, path: PathLike, fps: float = 24.0, every: int = 1, size: Optional[int] = None):
        check_fps(fps)
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise RenderError(f"the GIF frame step must be a whole number of at least 1, got {every!r}")
        if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8):
            raise RenderError(f"the GIF size must be a whole number of pixels of at least 8, got {size!r}")
        super().__init__(path)
        self.fps = float(fps)
        self.every = int(every)
        self.size = None if size is None else int(size)
        self.gif_frames = 0            # frames actually stored in the file
        self._file: Optional[IO[bytes]] = None     # the temporary file, from the first frame to finish()
        self._frame_size: Optional[tuple[int, int]] = None
        self._pending: Optional[tuple[np.ndarray, int]] = None    # (shrunk frame, index where it starts)
        self._skipped: Optional[tuple[np.ndarray, int]] = None    # last frame not kept (copy), its index

    def _shrink(self, frame: np.ndarray) -> np.ndarray:
        height, width = frame.shape[:2]
        if self.size is None or max(height, width) <= self.size:
            return np.array(frame, copy=True)
        scale = self.size / max(height, width)
        new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize(new_size, Image.Resampling.LANCZOS))

    def _append(self, frame: np.ndarray) -> None:
        if self._frame_size is None:
            self._frame_size = frame.shape[:2]
            self._file = self._open_temp()
        elif frame.shape[:2] != self._frame_size:
            raise ValueError("all frames of a GIF must have the same size")
        index = self.frames_written
        if index % self.every == 0:
            self._keep(self._shrink(frame), index)
            self._skipped = None
        else:
            self._skipped = (np.array(frame, copy=True), index)

    def _keep(self, small: np.ndarray, index: int) -> None:
        if self._pending is not None and np.array_equal(self._pending[0], small):
            return  # a hold: the pending frame just lasts longer
        if self._pending is not None:
            self._write(self._pending[0], self._pending[1], index)
        self._pending = (small, index)

    def _write(self, small: np.ndarray, start: int, end: int) -> None:
        """Encode one GIF frame shown from input frame ``start`` until ``end`` (exclusive)."""
        delay_cs = round(100 * end / self.fps) - round(100 * start / self.fps)
        delay_cs = min(max(delay_cs, GIF_MIN_DELAY_CS), 65535)
        # Fast octree: measured here ~2000x faster than median cut on a 256x256 photo (0.4 ms vs 0.76 s) for a
        # mean error of 3.9 instead of 3.3 levels.
        image = Image.fromarray(small).quantize(colors=256, method=Image.Quantize.FASTOCTREE)
        single = io.BytesIO()
        image.save(single, format="GIF", interlace=False)
        table, table_bits, interlaced, image_data = _split_single_frame_gif(single.getvalue())
        height, width = small.shape[:2]
        out = self._file
        assert out is not None   # opened at the first frame
        if self.gif_frames == 0:
            out.write(b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80 | table_bits, 0, 0) + table)
            # NETSCAPE2.0 application extension: loop count 0 = forever
            out.write(b"\x21\xff\x0bNETSCAPE2.0\x03\x01" + struct.pack("<H", 0) + b"\x00")
        disposal = 1  # leave the frame in place (every frame covers the whole image anyway)
        out.write(b"\x21\xf9\x04" + bytes([disposal << 2]) + struct.pack("<H", delay_cs) + b"\x00\x00")
        flags = 0x80 | (0x40 if interlaced else 0) | table_bits  # local colour table, interlace, table size
        out.write(b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, flags) + table)
        out.write(image_data)
        self.gif_frames += 1

    def _finish(self) -> None:
        if self._skipped is not None:  # always end on the last frame given
            self._keep(self._shrink(self._skipped[0]), self._skipped[1])
            self._skipped = None
        assert self._pending is not None and self._file is not None   # the first frame is always kept
        self._write(self._pending[0], self._pending[1], self.frames_written)
        self._pending = None
        self._file.write(b";")  # GIF trailer
        self._file.close()      # flushed to disk by commit()
        self._file = None

    def _cleanup(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._pending = self._skipped = None


def _split_single_frame_gif(data: bytes) -> tuple[bytes, int, bool, bytes]:
    """Take apart a one-frame GIF (as Pillow writes it) to reuse its frame in an animation.

    Returns (colour table, its size bits N (3 * 2**(N+1) bytes), whether the rows are interlaced, image data =
    LZW minimum code size + data sub-blocks + terminator).  Extensions are dropped.  Streaming an animation
    frame by frame this way keeps memory flat (Pillow's own multi-frame writer holds every frame until the end).
    """
    if data[:6] not in (b"GIF87a", b"GIF89a"):
        raise ValueError("not a GIF")
    packed = data[10]
    position = 13
    table, table_bits = b"", 0
    if packed & 0x80:
        table_bits = packed & 0x07
        size = 3 * 2 ** (table_bits + 1)
        table, position = data[position:position + size], position + size
    while position < len(data):
        block = data[position]
        if block == 0x21:  # extension: introducer, label, sub-blocks
            position = _skip_sub_blocks(data, position + 2)
        elif block == 0x2C:  # image descriptor (10 bytes), optional local table, LZW data
            descriptor_packed = data[position + 9]
            position += 10
            if descriptor_packed & 0x80:
                table_bits = descriptor_packed & 0x07
                size = 3 * 2 ** (table_bits + 1)
                table, position = data[position:position + size], position + size
            start = position
            position = _skip_sub_blocks(data, position + 1)  # after the LZW minimum code size byte
            if not table:
                raise ValueError("GIF frame without a colour table")
            return table, table_bits, bool(descriptor_packed & 0x40), data[start:position]
        else:
            break
    raise ValueError("no image in the GIF")


def _skip_sub_blocks(data: bytes, position: int) -> int:
    """Position after the data sub-blocks starting at ``position`` (each: size byte + data; 0 ends them)."""
    while data[position] != 0:
        position += data[position] + 1
    return position + 1


# ----------------------------------------------------------------------------------------------------------
# PNG


class PngSequenceWriter(FrameWriter):
    """A directory of ``frame_00000.png, frame_00001.png, ...``, built in a private temporary directory beside
    it; every frame is flushed to disk before the directory is renamed into place.

    ``path`` is the directory.  If it already exists it must hold only such frames (an earlier render's):
    they are replaced as a whole at :meth:`commit`.  A directory holding anything else is refused, so a
    mistyped path never deletes a user's files.
    """

    writes_directory = True
    private_temp = True

    def __init__(self, path: PathLike, compress_level: int = 6):
        super().__init__(path)
        self._check_replaceable()
        self.compress_level = compress_level
        self._created = False

    def _check_replaceable(self) -> None:
        if os.path.lexists(self.path):
            if not os.path.isdir(self.path) or os.path.islink(self.path):
                raise RenderError(f"cannot write PNG frames to {printable(self.path)}: it exists and is not a "
                                  "directory")
            others = [name for name in os.listdir(self.path) if not _PNG_FRAME_RE.fullmatch(name)]
            if others:
                raise RenderError(f"cannot write PNG frames to {printable(self.path)}: the directory holds other "
                                  f"files (e.g. {printable(others[0], 80)}); choose an empty or new directory")

    def _append(self, frame: np.ndarray) -> None:
        if not self._created:
            os.mkdir(self.temp_path)     # inside the pending file's private directory
            self._created = True
        name = os.path.join(self.temp_path, PNG_FRAME_PATTERN.format(self.frames_written))
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(np.ascontiguousarray(frame)).save(f, format="PNG", compress_level=self.compress_level)
            f.flush()
            os.fsync(f.fileno())

    def _finish(self) -> None:
        fd = os.open(self.temp_path, os.O_RDONLY)
        try:
            os.fsync(fd)     # the directory's entries
        finally:
            os.close(fd)

    def commit(self) -> str:
        if not self._finished:
            self.finish()
        self._check_replaceable()
        old = None
        try:
            if os.path.lexists(self.path):
                aside = _aside_name(self.path)
                os.rename(self.path, aside)  # fails, rather than following it, if a link was planted there
                old = aside
            self._pending_file().commit()
        except OSError as exc:
            if old is not None and not os.path.lexists(self.path):
                os.replace(old, self.path)
                old = None
            raise RenderError(f"cannot write {printable(self.path)}: {exc.strerror or exc}") from exc
        finally:
            if old is not None:
                fs.remove_quietly(old)
        self._done = True
        return self.path


class PngStillWriter(FrameWriter):
    """One PNG image: :meth:`append` keeps (a copy of) the latest frame given; :meth:`finish` writes it."""

    def __init__(self, path: PathLike):
        super().__init__(path)
        self._image: Optional[np.ndarray] = None

    def _append(self, frame: np.ndarray) -> None:
        self._image = np.array(frame, copy=True)

    def _finish(self) -> None:
        assert self._image is not None   # finish() runs after a frame
        with self._open_temp() as f:     # flushed to disk by commit()
            Image.fromarray(self._image).save(f, format="PNG")

    def _cleanup(self) -> None:
        self._image = None


# ----------------------------------------------------------------------------------------------------------
# Side by side


class SideBySideWriter:
    """Composite frames ``panel_1 | ... | panel_k | frame`` (+ a caption band on top) into another writer.

    Args:
        target: the writer that receives the composites (usually an :class:`Mp4Writer`).
        panels: fixed images shown left of every frame, uint8 [H, W, 3] of the frames' size.
        labels: captions, one per panel plus one for the frame, or None for no caption band.

    The composite is built in one reused buffer, so a frame costs one copy of the frame.  It has the same
    life cycle methods as a :class:`FrameWriter` (which it forwards to ``target``).
    """

    def __init__(self, target: FrameWriter, panels: Sequence[np.ndarray],
                 labels: Optional[Sequence[str]] = None):
        for panel in panels:
            _check_frame(panel)
        if labels is not None and len(labels) != len(panels) + 1:
            raise ValueError(f"{len(panels) + 1} labels needed (one per panel and one for the frame), "
                             f"got {len(labels)}")
        sizes = {panel.shape[:2] for panel in panels}
        if len(sizes) > 1:
            raise ValueError("all side-by-side panels must have the same size")
        self.target = target
        self.path = target.path
        self.panels = [np.array(panel, copy=True) for panel in panels]
        self.labels = list(labels) if labels is not None else None
        self._canvas: Optional[np.ndarray] = None
        self._band = 0

    @property
    def frames_written(self) -> int:
        return self.target.frames_written

    def _build_canvas(self, height: int, width: int) -> np.ndarray:
        if self.panels and self.panels[0].shape[:2] != (height, width):
            raise ValueError(f"side-by-side panels are {self.panels[0].shape[1]}x{self.panels[0].shape[0]}, "
                             f"frames {width}x{height}")
        count = len(self.panels) + 1
        self._band = caption_band_height(height) if self.labels else 0
        canvas = np.zeros((self._band + height, count * width, 3), np.uint8)
        for i, panel in enumerate(self.panels):
            canvas[self._band:, i * width:(i + 1) * width] = panel
        if self.labels:
            canvas[:self._band] = draw_captions(self.labels, width, self._band)
        self._canvas = canvas
        return canvas

    def compose(self, frame: np.ndarray) -> np.ndarray:
        """The composite of ``frame``: uint8 [band + H, (panels + 1) * W, 3].  The returned array is reused
        by the next call: copy it to keep it."""
        _check_frame(frame)
        height, width = frame.shape[:2]
        canvas = self._canvas if self._canvas is not None else self._build_canvas(height, width)
        if canvas.shape[0] - self._band != height or canvas.shape[1] != (len(self.panels) + 1) * width:
            raise ValueError("all frames must have the same size")
        canvas[self._band:, len(self.panels) * width:] = frame
        return canvas

    def append(self, frame: np.ndarray) -> None:
        self.target.append(self.compose(frame))

    def finish(self) -> None:
        self.target.finish()

    def commit(self) -> str:
        return self.target.commit()

    def abort(self) -> None:
        self.target.abort()


def caption_band_height(frame_height: int) -> int:
    """Height in pixels of the caption band above side-by-side frames: about 7 % of the frame, even, >= 12."""
    height = max(12, round(frame_height * 0.07))
    return height + height % 2


@functools.lru_cache(maxsize=16)
def _caption_font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


def draw_captions(labels: Sequence[str], panel_width: int, band_height: int) -> np.ndarray:
    """A caption band uint8 [band_height, len(labels) * panel_width, 3]: white text centred over each panel
    on black."""
    band = Image.new("RGB", (len(labels) * panel_width, band_height), (0, 0, 0))
    draw = ImageDraw.Draw(band)
    font = _caption_font(max(8, int(band_height * 0.7)))
    for i, label in enumerate(labels):
        centre = (i * panel_width + panel_width / 2, band_height / 2)
        if isinstance(font, ImageFont.FreeTypeFont):
            # 'mm': centred between ascender and descender, so all captions sit on one baseline
            draw.text(centre, label, fill=(255, 255, 255), font=font, anchor="mm")
        else:  # Pillow's bitmap font takes no anchor
            left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
            draw.text((centre[0] - (left + right) / 2, centre[1] - (top + bottom) / 2), label,
                      fill=(255, 255, 255), font=font)
    return np.asarray(band)


__all__ = [
    "CRF_RANGE", "GIF_MIN_DELAY_CS", "PNG_FRAME_PATTERN", "X264_PRESETS",
    "FrameWriter", "GifWriter", "Mp4Writer", "PngSequenceWriter", "PngStillWriter", "SideBySideWriter",
    "abort_all", "caption_band_height", "check_fps", "commit_all", "draw_captions", "find_ffmpeg",
]
