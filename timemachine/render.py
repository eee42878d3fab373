"""Rendering: a latent walk along an age direction, synthesised in batches and streamed into videos.

The walk.  With ``w`` [num_ws, w_dim] the projected latent (:class:`~timemachine.latents.LatentFile` ``.ws``),
``v`` [num_ws, w_dim] a direction (e.g. an age vector, zero on the layers it must not edit) and F walk frames
at ``t_i = i / (F - 1)``, i = 0 .. F-1::

    w(t) = w + strength * a(t) * v

where the easing ``a`` is one of (:data:`EASINGS`)::

    linear      a(t) = t                      constant speed
    smoothstep  a(t) = t^2 * (3 - 2 t)        starts and ends at rest (a'(0) = a'(1) = 0), fastest at t = 1/2
    cosine      a(t) = (1 - cos(pi t)) / 2    starts and ends at rest, slightly softer start than smoothstep

Every easing has a(0) = 0 and a(1) = 1 exactly: the first walk frame is the reconstruction of the photo (the
adult), the last is ``w + strength * v`` (the young animal).

The frames written (:func:`frame_plan`, :func:`total_frames`), in order::

    hold_start copies of walk frame 0      the adult, still (on screen hold_start + 1 frames with frame 0)
    walk frames 0, 1, ..., F-1             the walk
    hold_end copies of walk frame F-1      the young animal, still
    with pingpong: walk frames F-2, ..., 1 the way back, without either turning point: the puppy frame was
                                           just shown, and the adult frame is where the video starts again,
                                           so a looping player (GIFs, the UI) shows no frame twice in a row

    total = hold_start + F + hold_end (+ F - 2 with pingpong)  >=  F

Noise is the same for every frame, so nothing flickers: the projection's optimised noise maps for the layers
the latent file has them, the network's constant noise (``noise_mode='const'``) for the others.  A latent
with pivotal-tuning weights (``pti_delta``) is rendered with them (:func:`projector.apply_weight_delta`).

Synthesis runs on the device the generator is on, under ``torch.no_grad()``, in batches of
``batch_size`` walk frames.  Walk frame 0 is synthesised on its own, exactly as the projection's
reconstruction is, so it equals ``projection.png`` bit for bit whatever the batch size (when both use the same
precision, as they do by default); a walk frame whose
latent equals the one before it (e.g. every frame when strength is 0) is a copy, not synthesised again.
Other frames depend on the batch size only by float rounding (batched BLAS and convolutions sum in another
order: at most 1 level of 255 on a few pixels in float32, see tests/test_render.py).

Precision (``settings.precision``, resolved by :func:`timemachine.device.resolve_precision` for the
generator's device): 'bf16' synthesises in bfloat16 (see :meth:`timemachine.networks.SynthesisNetwork.forward`);
its frames differ from float32 frames of the same latents by rounding, PSNR >= 40 dB
(tests/test_precision.py).  :attr:`RenderResult.settings` records the resolved value.

Frames stream: synthesis yields uint8 frames one batch at a time and the writers
(:mod:`timemachine.video`) hold at most one frame each, so memory does not grow with the frame count.
The way back of a ping-pong re-reads walk frames from an anonymous temporary file (uint8, R*R*3 bytes per
walk frame) in the output directory instead of keeping them in memory or synthesising them twice.

Entry points::

    settings = RenderSettings(frames=96, strength=1.0, easing="smoothstep", hold_start=12, hold_end=24)
    outputs = RenderOutputs.in_directory("out/", gif=True, side_by_side=True)
    result = render_video(G, latent, direction, outputs, settings, photo=photo, progress=callback)

    for frame in iter_frames(G, latent, direction, settings): ...   # uint8 [R, R, 3], total_frames of them
    frames = frames_at(G, latent, direction, [0.0, 0.5, 1.0])        # uint8 [3, R, R, 3] (UI previews)
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from typing import Any, Callable, Iterator, Optional, Sequence, Union
from typing import Generator as PyGenerator

import numpy as np
import torch

from timemachine import images as images_module
from timemachine import video
from timemachine.device import prepare_device, resolve_precision
from timemachine.errors import RenderError
from timemachine.latents import LatentFile
from timemachine.networks import Generator
from timemachine.settings import (
    EASINGS,
    MAX_BATCH,
    MAX_FRAMES,
    RenderSettings,
    check_easing,
    check_int,
    check_precision,
    total_frames,
)

PathLike = Union[str, os.PathLike]
#: progress(frames_done, total_frames), called after each frame has been given to every writer.
RenderProgress = Callable[[int, int], None]

#: Captions of the side-by-side video's panels, with and without the photo.
SIDE_BY_SIDE_LABELS = ("photo", "reconstruction", "younger")
SIDE_BY_SIDE_LABELS_NO_PHOTO = ("reconstruction", "younger")


# ----------------------------------------------------------------------------------------------------------
# Settings


@dataclasses.dataclass
class RenderOutputs:
    """Which files to write; None = not written.  Parent directories are created.

    Attributes:
        video:        MP4 of the frames.
        gif:          animated GIF preview (see ``gif_every`` / ``gif_size`` in :class:`RenderSettings`).
        frames_dir:   directory of PNG frames ``frame_00000.png`` ...
        before:       PNG still of walk frame 0 (t = 0: the reconstruction).
        after:        PNG still of the last walk frame (t = 1).
        side_by_side: MP4 of ``photo | reconstruction | frame`` (without the photo panel when none is given).
    """

    video: Optional[PathLike] = None
    gif: Optional[PathLike] = None
    frames_dir: Optional[PathLike] = None
    before: Optional[PathLike] = None
    after: Optional[PathLike] = None
    side_by_side: Optional[PathLike] = None

    @classmethod
    def in_directory(cls, out_dir: PathLike, video: bool = True, gif: bool = True, frames: bool = False,
                     stills: bool = True, side_by_side: bool = False) -> "RenderOutputs":
        """The standard names in ``out_dir``: video.mp4, preview.gif, frames/, before.png, after.png,
        side_by_side.mp4."""
        out = os.fspath(out_dir)
        return cls(video=os.path.join(out, "video.mp4") if video else None,
                   gif=os.path.join(out, "preview.gif") if gif else None,
                   frames_dir=os.path.join(out, "frames") if frames else None,
                   before=os.path.join(out, "before.png") if stills else None,
                   after=os.path.join(out, "after.png") if stills else None,
                   side_by_side=os.path.join(out, "side_by_side.mp4") if side_by_side else None)

    def requested(self) -> dict[str, str]:
        """{output kind: absolute path} of the outputs asked for."""
        return {field.name: os.path.abspath(os.fspath(getattr(self, field.name)))
                for field in dataclasses.fields(self) if getattr(self, field.name) is not None}


@dataclasses.dataclass
class RenderResult:
    """What :func:`render_video` did.

    Attributes:
        files:              {output kind ('video', 'gif', 'frames_dir', 'before', 'after', 'side_by_side'): path}.
        total_frames:       frames in each video.
        walk_frames:        F.
        synthesized_frames: frames the generator made (<= F: copies and holds are not synthesised).
        seconds:            wall time of the whole render.
        synthesis_seconds:  time spent producing frames (synthesis, conversion to uint8, ping-pong re-reads).
        writing_seconds:    time spent in the writers (feeding ffmpeg, GIF quantisation, PNG compression,
                            waiting for the encoders to finish).  ffmpeg encodes in its own process, in
                            parallel: its CPU time shows here only when synthesis outpaces it.
        settings:           the settings used (:meth:`RenderSettings.to_dict`), precision resolved.
    """

    files: dict[str, str]
    total_frames: int
    walk_frames: int
    synthesized_frames: int
    seconds: float
    synthesis_seconds: float
    writing_seconds: float
    settings: dict[str, Any]


# ----------------------------------------------------------------------------------------------------------
# The path


def ease(t: Union[float, np.ndarray], easing: str) -> np.ndarray:
    """a(t) for t in [0, 1] (float or array; float64 result of the same shape).  Formulas: module docstring."""
    check_easing(easing)
    t = np.asarray(t, dtype=np.float64)
    if easing == "linear":
        return t.copy()
    if easing == "smoothstep":
        return t * t * (3.0 - 2.0 * t)
    return (1.0 - np.cos(np.pi * t)) / 2.0


def walk_coefficients(frames: int, strength: float = 1.0, easing: str = "smoothstep") -> np.ndarray:
    """``strength * a(t_i)`` for the F walk frames, t_i = i / (F - 1): float32 [F], first 0, last ``strength``."""
    check_int("the number of walk frames", frames, 2, MAX_FRAMES)
    return (float(strength) * ease(np.linspace(0.0, 1.0, frames), easing)).astype(np.float32)


def walk_latents(ws: torch.Tensor, direction: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """``ws + c * direction`` for each coefficient c: ws, direction [num_ws, w_dim], coefficients [N]
    -> [N, num_ws, w_dim] float32 (on ws's device).  c = 0 gives ``ws`` exactly."""
    coefficients = coefficients.to(ws.device, torch.float32).reshape(-1, 1, 1)
    return ws.unsqueeze(0) + coefficients * direction.unsqueeze(0)


def frame_plan(frames: int, hold_start: int = 0, hold_end: int = 0, pingpong: bool = False) -> np.ndarray:
    """The walk frame shown at each output frame: int64 [total_frames] of indices into 0 .. F-1.

    ``[0] * hold_start + [0 .. F-1] + [F-1] * hold_end`` (+ ``[F-2 .. 1]`` with pingpong); see the module
    docstring.
    """
    check_int("the number of walk frames", frames, 2, MAX_FRAMES)
    check_int("hold_start", hold_start, 0, MAX_FRAMES)
    check_int("hold_end", hold_end, 0, MAX_FRAMES)
    forward = [0] * hold_start + list(range(frames)) + [frames - 1] * hold_end
    back = list(range(frames - 2, 0, -1)) if pingpong else []
    return np.array(forward + back, dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------
# Frames


def generator_device(G: Generator) -> torch.device:
    """The device the generator's synthesis network is on."""
    return next(G.synthesis.parameters()).device


def check_inputs(G: Generator, latent: LatentFile, direction: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
    """Check that ``latent`` and ``direction`` fit ``G``; returns the direction as float32 [num_ws, w_dim] (CPU).

    Raises:
        RenderError: a shape that does not fit the model, non-finite values, noise maps of unknown layers.
    """
    expected = (G.num_ws, G.w_dim)
    if not isinstance(direction, (torch.Tensor, np.ndarray)):
        raise RenderError(f"the direction must be a tensor of shape [{G.num_ws}, {G.w_dim}], "
                          f"got {type(direction).__name__}")
    direction = torch.as_tensor(direction).detach().to("cpu", torch.float32)
    if tuple(direction.shape) != expected:
        raise RenderError(f"the direction has shape {list(direction.shape)} but this model needs "
                          f"[{G.num_ws}, {G.w_dim}] (num_ws, w_dim)")
    if not torch.isfinite(direction).all():
        raise RenderError("the direction contains NaN or infinite values")
    if tuple(latent.ws.shape) != expected:
        raise RenderError(f"the latent has shape {list(latent.ws.shape)} but this model needs "
                          f"[{G.num_ws}, {G.w_dim}] (num_ws, w_dim)")
    if not torch.isfinite(latent.ws).all():
        raise RenderError("the latent contains NaN or infinite values")
    layers = set(G.synthesis.noise_layer_names())
    for name, noise in latent.noise.items():
        resolution = int(name.split(".")[0][1:]) if name in layers else None
        fits = resolution is not None and tuple(noise.shape[-2:]) == (resolution, resolution) \
            and noise.numel() == resolution ** 2
        if not fits:
            raise RenderError(f"the latent's noise map {name!r} {list(noise.shape)} does not fit this model")
    return direction


def iter_walk_frames(G: Generator, latent: LatentFile, direction: Union[torch.Tensor, np.ndarray],
                     frames: int, strength: float = 1.0, easing: str = "smoothstep",
                     batch_size: int = 2, precision: str = RenderSettings.precision) -> Iterator[np.ndarray]:
    """The F walk frames in order, uint8 [R, R, 3] each (see the module docstring for the maths).

    Inputs are checked at once (:class:`RenderError`); frames are then made lazily, one batch at a time.
    A yielded frame is a view into the current batch: copy it to keep it past the next frame.
    ``precision``: as :attr:`RenderSettings.precision`.
    """
    direction = check_inputs(G, latent, direction)
    check_int("the batch size", batch_size, 1, MAX_BATCH)
    coefficients = walk_coefficients(frames, strength, easing)
    return _walk_frames(G, latent, direction, coefficients, batch_size, _resolve(G, precision))


def _resolve(G: Generator, precision: str) -> str:
    """``precision`` resolved for G's device (:class:`RenderError` for an unknown one)."""
    check_precision(precision, RenderError, allow_resolved=True)
    return resolve_precision(precision, generator_device(G))


def _walk_frames(G: Generator, latent: LatentFile, direction: torch.Tensor, coefficients: np.ndarray,
                 batch_size: int, precision: str) -> PyGenerator[np.ndarray, None, None]:
    from timemachine.projector import apply_weight_delta

    G_used = apply_weight_delta(G, latent.pti_delta)
    device = generator_device(G)
    ws = latent.ws.to(device, torch.float32)
    direction = direction.to(device)
    noise = latent.noise_maps(device)

    # Walk frames whose coefficient equals the previous one are copies: synthesise only the first of each run.
    count = len(coefficients)
    starts = [0] + [i for i in range(1, count) if coefficients[i] != coefficients[i - 1]]
    repeats = np.diff(starts + [count])
    # Frame 0 alone (as the projection's reconstruction was made), then batches of the rest.
    groups = [[0]] + [list(range(j, min(j + batch_size, len(starts)))) for j in range(1, len(starts), batch_size)]
    for group in groups:
        batch_coefficients = torch.from_numpy(coefficients[[starts[j] for j in group]])
        with torch.no_grad():
            images = G_used.synthesis(walk_latents(ws, direction, batch_coefficients), noise_mode="const",
                                      noise=noise, precision=precision)
            pixels = images_module.from_tensor(images)  # uint8 [B, R, R, 3] on the CPU
        del images
        for j, frame in zip(group, pixels):
            for _ in range(int(repeats[j])):
                yield frame


def frames_at(G: Generator, latent: LatentFile, direction: Union[torch.Tensor, np.ndarray],
              ts: Sequence[float], strength: float = 1.0, easing: str = "smoothstep",
              precision: str = RenderSettings.precision) -> np.ndarray:
    """Frames at arbitrary times t (e.g. a UI slider): uint8 [len(ts), R, R, 3], one synthesis batch.
    ``precision``: as :attr:`RenderSettings.precision`."""
    t = np.asarray(ts, dtype=np.float64).reshape(-1)
    if t.size == 0 or not np.all((t >= 0) & (t <= 1)):
        raise RenderError("times t must be between 0 and 1")
    if not math.isfinite(float(strength)):
        raise RenderError(f"the strength must be a finite number, got {strength!r}")
    return frames_for(G, latent, direction, float(strength) * ease(t, easing), batch_size=t.size,
                      precision=precision)


def frames_for(G: Generator, latent: LatentFile, direction: Union[torch.Tensor, np.ndarray],
               coefficients: Union[Sequence[float], np.ndarray], batch_size: int = 4,
               precision: str = RenderSettings.precision) -> np.ndarray:
    """The frames of ``latent`` moved by ``c * direction`` for each walk coefficient c (finite, any sign):
    uint8 [len(coefficients), R, R, 3], ``batch_size`` at a time (the first alone, as the walk renders it).
    ``precision``: as :attr:`RenderSettings.precision`."""
    direction = check_inputs(G, latent, direction)
    c = np.asarray(coefficients, dtype=np.float64).reshape(-1)
    if c.size == 0 or not np.all(np.isfinite(c)):
        raise RenderError("the walk's coefficients (strengths) must be finite numbers")
    return np.stack(list(_walk_frames(G, latent, direction, c.astype(np.float32), batch_size=max(1, batch_size),
                                      precision=_resolve(G, precision))))


class _FrameSpool:
    """Walk frames kept in an anonymous temporary file, for the way back of a ping-pong."""

    def __init__(self, directory: Optional[str]):
        self._file = tempfile.TemporaryFile(dir=directory)
        self._shape: Optional[tuple[int, ...]] = None

    def put(self, index: int, frame: np.ndarray) -> None:
        if self._shape is None:
            self._shape = frame.shape
        self._file.seek(index * frame.nbytes)
        self._file.write(np.ascontiguousarray(frame).data)

    def get(self, index: int) -> np.ndarray:
        if self._shape is None:
            raise RuntimeError(f"frame {index} was not spooled")
        size = int(np.prod(self._shape))
        self._file.seek(index * size)
        data = bytearray(size)
        if self._file.readinto(data) != size:
            raise RuntimeError(f"frame {index} was not spooled")
        return np.frombuffer(data, np.uint8).reshape(self._shape)

    def close(self) -> None:
        self._file.close()


def iter_frames(G: Generator, latent: LatentFile, direction: Union[torch.Tensor, np.ndarray],
                settings: Optional[RenderSettings] = None,
                spool_dir: Optional[PathLike] = None) -> Iterator[np.ndarray]:
    """All output frames in order (holds and ping-pong included): ``settings.total_frames`` uint8 [R, R, 3].

    Inputs and settings are checked at once (:class:`RenderError`).  A ping-pong keeps walk frames in an
    anonymous temporary file in ``spool_dir`` (default: the system's temporary directory).  A yielded frame
    may be reused by the next one: copy it to keep it.
    """
    settings = settings or RenderSettings()
    settings.validate()
    direction = check_inputs(G, latent, direction)
    return (frame for _, frame in _planned_frames(G, latent, direction, settings, spool_dir))


def _planned_frames(G: Generator, latent: LatentFile, direction: torch.Tensor, settings: RenderSettings,
                    spool_dir: Optional[PathLike]) -> PyGenerator[tuple[int, np.ndarray], None, None]:
    """(walk index, frame) for each output frame of :func:`frame_plan`."""
    plan = frame_plan(settings.frames, settings.hold_start, settings.hold_end, settings.pingpong)
    coefficients = walk_coefficients(settings.frames, settings.strength, settings.easing)
    walk = _walk_frames(G, latent, direction, coefficients, settings.batch_size, _resolve(G, settings.precision))
    spool = _FrameSpool(os.fspath(spool_dir) if spool_dir is not None else None) if settings.pingpong else None
    try:
        next_new, last_index, last_frame = 0, -1, np.zeros(0, np.uint8)
        for index in plan:
            if index == next_new:
                frame = next(walk)
                next_new += 1
                if spool is not None:
                    spool.put(index, frame)
            elif index == last_index:
                frame = last_frame
            elif spool is not None:
                frame = spool.get(index)
            else:
                raise RuntimeError(f"frame {index} comes back without a spool")
            last_index, last_frame = index, frame
            yield int(index), frame
    finally:
        walk.close()
        if spool is not None:
            spool.close()


# ----------------------------------------------------------------------------------------------------------
# Writing


def render_video(G: Generator, latent: LatentFile, direction: Union[torch.Tensor, np.ndarray],
                 outputs: RenderOutputs, settings: Optional[RenderSettings] = None,
                 photo: Optional[np.ndarray] = None, progress: Optional[RenderProgress] = None) -> RenderResult:
    """Render the walk into the files of ``outputs``.

    Args:
        G:         the generator (on its device; the PTI weights of ``latent`` are applied to a copy).
        latent:    the start: ws [num_ws, w_dim], optional noise maps and PTI delta.
        direction: float [num_ws, w_dim] (torch or numpy), zero on layers not to edit.
        outputs:   which files to write (at least one).
        settings:  :class:`RenderSettings` (defaults if None).
        photo:     the user's photo for the side-by-side video, uint8 [S, S, 3] (resized to R if S != R).
        progress:  ``progress(frames_done, total_frames)`` after each frame.  An exception it raises (or a
                   KeyboardInterrupt) stops the render.

    Every file is written under a temporary name in its directory and all are renamed once all are
    complete: an error or interruption leaves no new file under a final name (earlier files there stay).

    Raises:
        RenderError: bad settings, inputs that do not fit the model, no output, ffmpeg missing or failing.
    """
    started = time.perf_counter()
    settings = settings or RenderSettings()
    settings.validate()
    settings = dataclasses.replace(settings, precision=_resolve(G, settings.precision))
    direction = check_inputs(G, latent, direction)
    requested = outputs.requested()
    if not requested:
        raise RenderError("nothing to render: no output file was asked for")
    if len(set(requested.values())) != len(requested):
        raise RenderError("two outputs have the same file name")
    photo_panel = _photo_panel(photo, G.img_resolution) if "side_by_side" in requested else None
    for path in requested.values():
        os.makedirs(os.path.dirname(path), exist_ok=True)

    writers, stills = _open_writers(requested, settings)  # a missing ffmpeg fails before any synthesis
    prepare_device(generator_device(G))
    frames = _planned_frames(G, latent, direction, settings, os.path.dirname(next(iter(requested.values()))))
    try:
        synthesis_seconds, writing_seconds = _write_frames(frames, writers, stills, settings, photo_panel, progress)
        t0 = time.perf_counter()
        paths = video.commit_all(list(writers.values()) + list(stills.values()))
        writing_seconds += time.perf_counter() - t0
    except BaseException:
        video.abort_all(list(writers.values()) + list(stills.values()))
        raise
    finally:
        frames.close()

    return RenderResult(files=dict(zip(list(writers) + list(stills), paths)), total_frames=settings.total_frames,
                        walk_frames=settings.frames, synthesized_frames=_distinct_count(settings),
                        seconds=time.perf_counter() - started, synthesis_seconds=synthesis_seconds,
                        writing_seconds=writing_seconds, settings=settings.to_dict())


def _open_writers(requested: dict[str, str], settings: RenderSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """(video writers by output kind, still writers 'before'/'after'), all open; nothing left open on failure."""
    makers = {
        "video": lambda path: video.Mp4Writer(path, settings.fps, settings.crf, settings.preset),
        "side_by_side": lambda path: video.Mp4Writer(path, settings.fps, settings.crf, settings.preset),
        "gif": lambda path: video.GifWriter(path, settings.fps, settings.gif_every, settings.gif_size),
        "frames_dir": video.PngSequenceWriter,
        "before": video.PngStillWriter,
        "after": video.PngStillWriter,
    }
    opened: dict[str, Any] = {}
    try:
        for kind, make in makers.items():
            if kind in requested:
                opened[kind] = make(requested[kind])
    except BaseException:
        video.abort_all(list(opened.values()))
        raise
    stills: dict[str, Any] = {kind: opened.pop(kind) for kind in ("before", "after") if kind in opened}
    return opened, stills


def _write_frames(frames: Iterator[tuple[int, np.ndarray]], writers: dict[str, Any], stills: dict[str, Any],
                  settings: RenderSettings, photo_panel: Optional[np.ndarray],
                  progress: Optional[RenderProgress]) -> tuple[float, float]:
    """Feed every planned frame to the writers (and walk frames 0 and F-1 to the stills); returns the seconds
    spent producing frames and writing them."""
    total = settings.total_frames
    synthesis_seconds = writing_seconds = 0.0
    done = 0
    while True:
        t0 = time.perf_counter()
        item = next(frames, None)
        t1 = time.perf_counter()
        synthesis_seconds += t1 - t0
        if item is None:
            return synthesis_seconds, writing_seconds
        index, frame = item
        if done == 0 and "side_by_side" in writers:  # frame 0 is the reconstruction
            writers["side_by_side"] = _side_by_side(writers["side_by_side"], photo_panel, frame, settings.labels)
        for writer in writers.values():
            writer.append(frame)
        still = {0: stills.get("before"), settings.frames - 1: stills.get("after")}.get(index)
        if still is not None and still.frames_written == 0:
            still.append(frame)
        writing_seconds += time.perf_counter() - t1
        done += 1
        if progress is not None:
            progress(done, total)


def _side_by_side(writer, photo_panel: Optional[np.ndarray], reconstruction: np.ndarray, labels: bool):
    """The side-by-side writer around ``writer``: photo | reconstruction | frame (no photo panel without one)."""
    panels = ([photo_panel] if photo_panel is not None else []) + [reconstruction]
    captions = None
    if labels:
        captions = SIDE_BY_SIDE_LABELS if photo_panel is not None else SIDE_BY_SIDE_LABELS_NO_PHOTO
    return video.SideBySideWriter(writer, panels, captions)


def _distinct_count(settings: RenderSettings) -> int:
    coefficients = walk_coefficients(settings.frames, settings.strength, settings.easing)
    return 1 + int(np.count_nonzero(coefficients[1:] != coefficients[:-1]))


def _photo_panel(photo: Optional[np.ndarray], resolution: int) -> Optional[np.ndarray]:
    if photo is None:
        return None
    if not isinstance(photo, np.ndarray) or photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
        raise RenderError("the photo for the side-by-side video must be a uint8 [S, S, 3] RGB image")
    if photo.shape[0] != photo.shape[1]:
        raise RenderError(f"the photo for the side-by-side video must be square (crop it first), "
                          f"got {photo.shape[1]}x{photo.shape[0]}")
    return images_module.resize(photo, resolution)


__all__ = [
    "EASINGS", "MAX_FRAMES", "SIDE_BY_SIDE_LABELS", "SIDE_BY_SIDE_LABELS_NO_PHOTO",
    "RenderOutputs", "RenderProgress", "RenderResult", "RenderSettings",
    "check_easing", "check_inputs", "ease", "frame_plan", "frames_at", "generator_device", "iter_frames",
    "iter_walk_frames", "render_video", "total_frames", "walk_coefficients", "walk_latents",
]
