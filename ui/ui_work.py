"""What the UI's jobs do, without Streamlit: age videos, preview strips and age-vector builds.

Each function takes a request and a :class:`ui_jobs.JobContext` (anything with ``report(stage, fraction,
**extras)``) and calls the library (:mod:`timemachine.pipeline`, :mod:`timemachine.age`,
:mod:`timemachine.render`) - never the CLI.

Re-renders are cheap.  The projection goes through the projection cache (same photo, model and projector
settings: no new projection).  A finished video is kept in a content-addressed render cache,
``$TIMEMACHINE_HOME/cache/ui-videos/<key>/``, where the key (:func:`video_key`) is the SHA-256 of the
projection key plus everything the render depends on (the vector's direction and metadata, the layers,
the render settings, the outputs asked for); asking again for the same video shows the stored one at once.
An entry is written into a temporary directory beside it and renamed into place, so a reader sees a
complete entry or none; the cache keeps the :data:`MAX_RENDERS` most recently used entries.

Progress: a video job reports ``preview`` (uint8 [R, R, 3], the projector's current reconstruction) while
projecting, then ``strip`` (a list of (t, uint8 [R, R, 3]) frames along the walk) before the full render.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from timemachine import age, images, pipeline, render
from timemachine.cache import ProjectionCache, projection_key
from timemachine.errors import TimemachineError
from timemachine.latents import LatentFile, load_latent
from timemachine.projector import ProgressEvent, ProjectorSettings, PTISettings

#: Times t of the preview strip shown before the full render.
STRIP_TIMES = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Finished videos kept in the render cache (least recently used ones are removed first).
MAX_RENDERS = 64
#: Projection previews: one reconstruction image every this many steps (not part of any cache key).
PREVIEW_EVERY = 10


def render_cache_root() -> Path:
    """``$TIMEMACHINE_HOME/cache/ui-videos``."""
    from timemachine import weights

    return Path(weights.home_dir()) / "cache" / "ui-videos"


# ----------------------------------------------------------------------------------------------------------
# Age videos


@dataclasses.dataclass
class VideoRequest:
    """Everything one video (or preview strip) depends on.

    Attributes:
        model, perceptual: loaded networks (shared by the process; a job only reads them).
        photo:       the prepared photo, uint8 [R, R, 3] (R = the model's resolution).
        photo_info:  for run.json: {'name': upload name, 'crop': 'X,Y,SIZE'}.
        vector:      the age vector; ``layers`` the layer selection (None = the vector's default);
                     ``force_model`` applies a vector of another model anyway.
        projection:  projector settings; ``pti`` pivotal-tuning settings or None.
        render:      render settings (``render.strength`` is the strength used).
        side_by_side: also write side_by_side.mp4.
        preview_only: stop after the preview strip (no video).
    """

    model: pipeline.LoadedModel
    perceptual: Any
    photo: np.ndarray
    photo_info: dict[str, Any]
    vector: age.AgeVector
    layers: Optional[str]
    force_model: bool
    projection: ProjectorSettings
    pti: Optional[PTISettings]
    render: render.RenderSettings
    side_by_side: bool = False
    preview_only: bool = False


@dataclasses.dataclass
class VideoResult:
    """What a video job produced.

    Attributes:
        key:          :func:`video_key` of the request.
        strip:        [(t, uint8 [R, R, 3])] frames along the walk at :data:`STRIP_TIMES`.
        metrics:      the projection's metrics ('lpips', 'psnr', 'cached', ...).
        files:        {kind: path} in the render cache ('video', 'gif', 'before', 'after', 'latent', 'run',
                      'side_by_side', 'pti'); empty for a preview.
        directory:    the render cache entry (None for a preview).
        reused:       True when the whole video came from the render cache.
        latent_path:  a projected_w.npz of the projection (the tuning page previews vectors on it).
        model_fingerprint: the model it belongs to.
    """

    key: str
    strip: list[tuple[float, np.ndarray]]
    metrics: dict[str, Any]
    files: dict[str, str]
    directory: Optional[Path]
    reused: bool
    latent_path: Optional[str]
    model_fingerprint: str


def _projector_key(settings: ProjectorSettings) -> dict[str, Any]:
    """Projector settings that change the result (how often to preview or checkpoint does not)."""
    return {k: v for k, v in settings.to_dict().items() if k not in ("preview_every", "checkpoint_every")}


def video_key(req: VideoRequest) -> str:
    """Hex SHA-256 of everything the video of ``req`` depends on (see the module docstring)."""
    h = hashlib.sha256(b"timemachine-ui-video-v1\0")
    projection = pipeline.with_resolved_precision(req.projection, req.model)  # what 'auto' runs as here
    h.update(projection_key(req.photo, req.model.fingerprint, _projector_key(projection),
                            req.pti.to_dict() if req.pti else None, pipeline.perceptual_id(req.perceptual)).encode())
    h.update(req.vector.direction.contiguous().numpy().tobytes())
    h.update(json.dumps({"vector": req.vector.metadata(), "layers": req.layers, "force": req.force_model,
                         "render": pipeline.with_resolved_precision(req.render, req.model).to_dict(),
                         "side_by_side": req.side_by_side},
                        sort_keys=True, default=str).encode())
    return h.hexdigest()


class _Stages:
    """Maps each stage's own progress onto one bar: projection, PTI, preview strip, render."""

    def __init__(self, req: VideoRequest):
        weights = {"project": 1.0, "pti": 0.6 if req.pti else 0.0, "strip": 0.05,
                   "render": 0.0 if req.preview_only else 0.5}
        total = sum(weights.values())
        start, self.span = 0.0, {}
        for name, weight in weights.items():
            self.span[name] = (start / total, weight / total)
            start += weight

    def at(self, stage: str, done: float) -> float:
        start, width = self.span[stage]
        return start + width * min(1.0, max(0.0, done))


def make_video(req: VideoRequest, ctx) -> VideoResult:
    """Project (through the cache), show a preview strip, render the video into the render cache."""
    model = req.model
    direction = pipeline.age_direction(model, req.vector, req.layers, req.force_model)  # refuse before work
    key = video_key(req)
    stages = _Stages(req)
    root = render_cache_root()
    final = root / key
    if not req.preview_only:
        reused = _load_entry(final, key, model.fingerprint)
        if reused is not None:
            ctx.report("This video was made before: shown from the cache", 1.0, strip=reused.strip)
            return reused

    ctx.report("Preparing the projection", 0.0)

    def on_step(event: ProgressEvent) -> None:
        what = "Finding your pet in the model" if event.stage == "project" else "Fine-tuning the model (PTI)"
        extras = {"preview": event.preview[0]} if event.preview is not None else {}
        ctx.report(f"{what}: step {event.step} of {event.total} (LPIPS {float(event.lpips.mean()):.3f})",
                   stages.at(event.stage, event.step / event.total), **extras)

    started = time.perf_counter()
    (projection,) = pipeline.project_images(model, [req.photo], req.projection, req.perceptual,
                                            pti_settings=req.pti, cache=ProjectionCache(pipeline.cache_root()),
                                            callback=on_step)
    project_seconds = time.perf_counter() - started
    ctx.report("Projection done", stages.at("pti", 1.0), preview=projection.reconstruction)

    settings = req.render
    frames = render.frames_at(model.G, projection.latent, direction, STRIP_TIMES, strength=settings.strength,
                              easing=settings.easing, precision=settings.precision)
    strip = [(t, frame) for t, frame in zip(STRIP_TIMES, frames)]
    ctx.report("Preview frames ready" + ("" if req.preview_only else "; rendering the video"),
               stages.at("strip", 1.0), strip=strip)
    if req.preview_only:
        latent_path = _stash_latent(projection.latent, key)
        return VideoResult(key=key, strip=strip, metrics=projection.metrics, files={}, directory=None,
                           reused=False, latent_path=latent_path, model_fingerprint=model.fingerprint)

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=root))
    try:
        def on_frame(done: int, total: int) -> None:
            ctx.report(f"Rendering the video: frame {done} of {total}", stages.at("render", done / total))

        run_info = {
            "photo": req.photo_info,
            "projection": {"settings": pipeline.with_resolved_precision(req.projection, model).to_dict(),
                           "pti_settings": req.pti.to_dict() if req.pti else None,
                           "perceptual": pipeline.perceptual_id(req.perceptual), "metrics": projection.metrics},
            "timings": {"project_seconds": round(project_seconds, 3)},
            "face": "ui",
        }
        video = pipeline.render_age_video(model, projection.latent, req.vector, tmp, settings, layers=req.layers,
                                          force_model=req.force_model, photo=projection.target, gif=True,
                                          side_by_side=req.side_by_side, progress=on_frame, run_info=run_info)
        for t, frame in strip:
            images.save_png(frame, tmp / _strip_name(t))
        _write_json(tmp / "ui.json", {"key": key, "model_fingerprint": model.fingerprint,
                                      "metrics": projection.metrics, "strip": [_strip_name(t) for t in STRIP_TIMES],
                                      "files": {k: os.path.relpath(v, tmp) for k, v in video.files.items()}})
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "ui.json").is_file():   # not a lost race with an identical job: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _prune(root, keep=final)
    result = _load_entry(final, key, model.fingerprint)
    if result is None:
        raise TimemachineError(f"the finished video could not be read back from {final}")
    result.reused = False
    result.metrics = projection.metrics
    return result


def _strip_name(t: float) -> str:
    return f"strip_t{t:.2f}.png"


def _write_json(path: Path, data: dict) -> None:
    pipeline.write_json(path, data)


def _load_entry(directory: Path, key: str, fingerprint: str) -> Optional[VideoResult]:
    """The render cache entry at ``directory`` as a result, or None if absent or unreadable (then removed)."""
    info_path = directory / "ui.json"
    if not info_path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        files = {kind: str(directory / rel) for kind, rel in info["files"].items()}
        if not all(Path(p).exists() for p in files.values()):
            raise ValueError("missing files")
        pti = Path(files["latent"]).with_suffix(".pti.safetensors")
        if pti.is_file():
            files["pti"] = str(pti)
        strip = [(t, _read_png(directory / name)) for t, name in zip(STRIP_TIMES, info["strip"])]
    except (OSError, ValueError, KeyError, TypeError):
        shutil.rmtree(directory, ignore_errors=True)
        return None
    os.utime(directory)  # most recently used
    metrics = dict(info.get("metrics", {}), cached=True)
    return VideoResult(key=key, strip=strip, metrics=metrics, files=files, directory=directory, reused=True,
                       latent_path=files.get("latent"), model_fingerprint=info.get("model_fingerprint", fingerprint))


def _read_png(path: Path) -> np.ndarray:
    """A PNG this module wrote, as uint8 [H, W, 3] (our own file: no photo checks such as the minimum size)."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _stash_latent(latent: LatentFile, key: str) -> str:
    """Keep a preview's latent (the tuning page previews vectors on it) in the render cache's scratch area."""
    from timemachine.latents import save_latent

    scratch = render_cache_root() / "latents"
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / f"{key}.npz"
    save_latent(path, latent.ws, latent.noise, latent.meta, pti_delta=latent.pti_delta)
    _prune(scratch, pattern="*.npz", keep=path)
    return str(path)


def _prune(root: Path, keep: Path, pattern: Optional[str] = None) -> None:
    """Remove the least recently used entries of ``root`` beyond :data:`MAX_RENDERS` (never ``keep``)."""
    try:
        if pattern:
            entries = [p for p in root.glob(pattern) if p.is_file()]
        else:
            entries = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "latents"]
        entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in entries[MAX_RENDERS:]:
        if old == keep:
            continue
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
            Path(str(old)[:-4] + ".pti.safetensors").unlink(missing_ok=True)


def preview_strip(model: pipeline.LoadedModel, latent_path: str, vector: age.AgeVector, layers: Optional[str],
                  strengths: Sequence[float], ctx, force_model: bool = False) -> list[tuple[float, np.ndarray]]:
    """The end frame (t = 1) of the walk along ``vector`` at each strength: [(strength, uint8 [R, R, 3])]."""
    direction = pipeline.age_direction(model, vector, layers, force_model)
    latent = load_latent(latent_path, num_ws=model.G.num_ws, w_dim=model.G.w_dim)
    ctx.report("Rendering preview frames", 0.1)
    out = []
    for i, strength in enumerate(strengths):
        frame = render.frames_at(model.G, latent, direction, [1.0], strength=float(strength), easing="linear")[0]
        out.append((float(strength), frame))
        ctx.report(f"Preview frame {i + 1} of {len(strengths)}", (i + 1) / len(strengths))
    return out


# ----------------------------------------------------------------------------------------------------------
# Age-vector builds


@dataclasses.dataclass
class UploadedExample:
    """A puppy or adult example uploaded by the visitor: its file name and content."""

    name: str
    data: bytes


@dataclasses.dataclass
class BuildRequest:
    model: pipeline.LoadedModel
    perceptual: Any
    name: str
    puppies: list[UploadedExample]
    adults: list[UploadedExample]
    method: str
    projection: ProjectorSettings
    species: str = ""
    notes: str = ""
    default_strength: float = 1.0
    default_layers: str = "all"


@dataclasses.dataclass
class BuildResult:
    """A built (not yet saved) vector and, per example, its role, file name, kind and projection metrics."""

    vector: age.AgeVector
    examples: list[dict[str, Any]]


def _safe_file_name(name: str) -> str:
    base = os.path.basename(name.replace("\\", "/")) or "upload"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", base)[-100:].lstrip(".") or "upload"


def check_build(req: BuildRequest) -> None:
    """Refuse a build that cannot succeed, before it is queued (see :func:`age.check_build_request`)."""
    age.check_build_request(req.name, req.model, len(req.puppies), len(req.adults), req.method, species=req.species,
                            notes=req.notes, default_strength=req.default_strength,
                            default_layers=req.default_layers)


def build_vector(req: BuildRequest, ctx) -> BuildResult:
    """Read the examples, project the photos (through the cache), build the vector (not saved)."""
    check_build(req)
    with tempfile.TemporaryDirectory(prefix="timemachine-ui-build-") as tmp:
        paths: dict[str, list[str]] = {"puppy": [], "adult": []}
        names: dict[str, str] = {}
        for role, examples in (("puppy", req.puppies), ("adult", req.adults)):
            for i, example in enumerate(examples):
                folder = Path(tmp) / role / str(i)
                folder.mkdir(parents=True)
                path = folder / _safe_file_name(example.name)
                path.write_bytes(example.data)
                paths[role].append(str(path))
                names[str(path)] = example.name
        ctx.report("Reading the photos", 0.02)
        try:
            inputs = age.prepare_inputs(req.model, paths["puppy"], paths["adult"])
        except TimemachineError as exc:
            raise _with_upload_names(exc, names) from None
        photos = sum(1 for item in inputs if item.kind == "photo")

        def on_step(event: ProgressEvent) -> None:
            ctx.report(f"Projecting {photos} photo{'s' if photos != 1 else ''}: step {event.step} of {event.total}",
                       0.05 + 0.9 * event.step / event.total,
                       **({"preview": event.preview[0]} if event.preview is not None else {}))

        age.project_inputs(req.model, inputs, req.projection, req.perceptual,
                           cache=ProjectionCache(pipeline.cache_root()), callback=on_step)
        for item in inputs:
            item.path = names.get(item.path, item.path)
        ctx.report("Building the vector", 0.97)
        vector = age.build_vector_from_inputs(req.name, req.model, inputs, req.method, settings=req.projection,
                                              species=req.species, notes=req.notes,
                                              default_strength=req.default_strength,
                                              default_layers=req.default_layers)
    examples = [{"role": item.role, "file": item.path, "kind": item.kind,
                 "LPIPS": item.metrics.get("lpips"), "PSNR (dB)": item.metrics.get("psnr"),
                 "from cache": item.metrics.get("cached")} for item in inputs]
    return BuildResult(vector=vector, examples=examples)


def _with_upload_names(exc: TimemachineError, names: dict[str, str]) -> TimemachineError:
    """The same error with temporary paths replaced by the names the visitor uploaded."""
    message = str(exc)
    for path, name in names.items():
        message = message.replace(path, name)
    return type(exc)(message)
