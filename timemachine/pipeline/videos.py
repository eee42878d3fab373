"""Age videos: a projected photo (or a latent file) walked along an age vector, rendered into files.

:func:`age_video` is the whole product: project the photo (through the projection store), show a preview strip
of frames along the walk, render video.mp4, preview.gif, before.png, after.png (side_by_side.mp4, frames/
when asked), projected_w.npz and run.json.  With an output directory the files go there; without one they go
into the pipeline's video store, an entry per content key (:func:`video_key`: the projection's key plus
everything the render depends on), so asking again for the same video returns the stored one at once, from
any process that shares the store.  :func:`render` does the same for an existing latent file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import torch

from timemachine import images
from timemachine import render as render_module
from timemachine.device import memory_errors
from timemachine.errors import AgeVectorError, LatentError, RenderError, TimemachineError, printable
from timemachine.fs import write_json
from timemachine.latents import LatentFile, load_latent
from timemachine.pipeline import scoring
from timemachine.pipeline.components import with_resolved_precision
from timemachine.pipeline.progress import ProgressCallback, report
from timemachine.pipeline.projection import PhotoProjection, store_key
from timemachine.pipeline.requests import AgeEdit, AgeVideoRequest, RenderRequest
from timemachine.settings import RenderSettings, ScoreSettings

if TYPE_CHECKING:
    from timemachine.pipeline.components import LoadedModel, Pipeline

#: Times t of the preview strip shown before the full render.
STRIP_TIMES = (0.0, 0.25, 0.5, 0.75, 1.0)
#: The file in a stored video's entry that describes it (written last: an entry without it is incomplete).
ENTRY_INFO = "entry.json"


@dataclasses.dataclass
class AgeVideoResult:
    """What an age-video or render job produced.

    Attributes:
        files:       {kind: path}: 'video', 'gif', 'before', 'after', 'side_by_side', 'frames_dir' (those asked
                     for), 'latent' (projected_w.npz), 'pti' (its tuned weights, if any), 'run' (run.json).
                     Empty for a preview.
        run_info:    the contents of run.json ({} for a preview).
        strip:       [(t, uint8 [R, R, 3])] frames along the walk at :data:`STRIP_TIMES`.
        metrics:     the projection's metrics ('lpips', 'psnr', 'cached', ...); {} when rendering a latent file.
        projection:  the projection used (None when rendering a latent file or a stored video).
        key:         the video's content key (None when written to a directory of the caller's).
        reused:      True when the whole video came from the video store.
        latent:      the latent walked from.
        model_fingerprint: the model it belongs to.
    """

    files: dict[str, str]
    run_info: dict[str, Any]
    strip: list[tuple[float, np.ndarray]] = dataclasses.field(default_factory=list)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    projection: Optional[PhotoProjection] = None
    key: Optional[str] = None
    reused: bool = False
    latent: Optional[LatentFile] = None
    model_fingerprint: str = ""


# ----------------------------------------------------------------------------------------------------------
# Checks


def vector_direction(model: "LoadedModel", vector, layers: Optional[str] = None,
                     force_model: bool = False) -> torch.Tensor:
    """The vector's direction [num_ws, w_dim] on the selected layers (None: the vector's own), after checking
    that it belongs to ``model`` (:class:`AgeVectorError` with remedy FORCE_MODEL otherwise, unless forced) and
    fits its shape."""
    from timemachine.errors import quoted

    vector.check_model(model.fingerprint, model_name=model.spec, force=force_model, zoo=model.zoo)
    G = model.G
    if vector.num_ws != G.num_ws or vector.w_dim != G.w_dim:
        raise AgeVectorError(f"age vector {quoted(vector.name)} has shape [{vector.num_ws}, {vector.w_dim}], the model "
                             f"needs [{G.num_ws}, {G.w_dim}]")
    return vector.masked_direction(layers)


def edit_vector(pipe: "Pipeline", edit: AgeEdit) -> tuple[Any, str]:
    """(the AgeVector the edit names, how it was chosen: 'named', or for ``vector=None`` the model's default:
    'chosen' by the user or 'built-in'); AgeVectorError with remedy DISCOVER when the model has no default."""
    from timemachine.errors import DISCOVER
    from timemachine.pipeline.vectors import load_vector, vector_library

    if edit.vector is not None:
        return load_vector(pipe.env, edit.vector), "named"
    found = vector_library(pipe.env).default_vector(pipe.model.fingerprint, zoo=pipe.model.zoo)
    if found is None:
        raise AgeVectorError(f"no age vector was given, and the model {printable(pipe.model.spec)} has no default "
                             "age vector yet", remedy=DISCOVER)
    return found


def edit_direction(pipe: "Pipeline", edit: AgeEdit) -> tuple[Any, torch.Tensor, str]:
    """(the edit's AgeVector, its direction on the chosen layers, how it was chosen): :func:`vector_direction`
    of the vector the edit names (or of the model's default vector, see :func:`edit_vector`)."""
    vector, chosen = edit_vector(pipe, edit)
    return vector, vector_direction(pipe.model, vector, edit.layers, edit.force_model), chosen


def resolved_render(edit: AgeEdit, vector, settings: RenderSettings) -> RenderSettings:
    """``settings`` with the strength of the edit (the vector's default when the edit gives none, and until it
    is chosen when the edit asks for the automatic one), validated."""
    if edit.auto_strength and edit.strength != "auto":
        raise RenderError(f"the strength must be a number or 'auto', not {printable(edit.strength)!r}")
    strength = vector.default_strength if edit.strength is None or isinstance(edit.strength, str) else edit.strength
    resolved = dataclasses.replace(settings, strength=strength)
    resolved.validate()
    return resolved


def check(pipe: "Pipeline", request: AgeVideoRequest) -> tuple[Any, torch.Tensor, RenderSettings, str]:
    """Refuse an age-video request that cannot work (the vector, its fit to the model, the settings, the output
    directory) before any work; returns (the vector, its direction on the chosen layers, the render settings
    with the strength filled in, how the vector was chosen)."""
    from timemachine.pipeline.projection import check as check_projection

    vector, direction, chosen = edit_direction(pipe, request.edit)
    settings = resolved_render(request.edit, vector, request.render)
    request.scores.validate()
    check_projection(pipe, dataclasses.replace(request.projection, photos=[request.photo]))
    check_output_directory(request.outputs.directory)
    return vector, direction, settings, chosen


def check_render(pipe: "Pipeline", request: RenderRequest) -> tuple[Any, torch.Tensor, RenderSettings, str]:
    """Like :func:`check`, for rendering a latent file (which needs an output directory)."""
    vector, direction, chosen = edit_direction(pipe, request.edit)
    settings = resolved_render(request.edit, vector, request.render)
    if request.outputs.directory is None:
        raise ValueError("rendering a latent file needs an output directory")
    check_output_directory(request.outputs.directory)
    return vector, direction, settings, chosen


def check_output_directory(directory) -> None:
    """Refuse an output path that exists and is not a directory."""
    if directory is not None and os.path.exists(directory) and not os.path.isdir(directory):
        from timemachine.errors import RenderError

        raise RenderError(f"the output {directory} exists and is not a directory")


# ----------------------------------------------------------------------------------------------------------
# Keys and the store


def video_key(pipe: "Pipeline", request: AgeVideoRequest, vector, settings: RenderSettings) -> str:
    """Hex SHA-256 of everything the video of ``request`` depends on."""
    projection = dataclasses.replace(request.projection, photos=[request.photo])
    settings = with_resolved_precision(settings, pipe.model)
    h = hashlib.sha256(b"timemachine-video-v2\0")
    h.update(store_key(pipe, request.photo.image, projection).encode())
    h.update(vector.direction.contiguous().numpy().tobytes())
    outputs = request.outputs
    h.update(json.dumps({"vector": vector.metadata(), "layers": request.edit.layers,
                         "force": request.edit.force_model, "render": settings.to_dict(),
                         "strength_auto": request.edit.auto_strength, "scores": dataclasses.asdict(request.scores),
                         "gif": outputs.gif, "side_by_side": outputs.side_by_side, "png_frames": outputs.png_frames},
                        sort_keys=True, default=str).encode())
    return h.hexdigest()


def _strip_name(t: float) -> str:
    return f"strip_t{t:.2f}.png"


def _read_png(path: Path) -> np.ndarray:
    """A PNG the pipeline wrote, as uint8 [H, W, 3] (our own file: no photo checks)."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _stored_result(pipe: "Pipeline", key: str) -> Optional[AgeVideoResult]:
    """The video store's entry of ``key`` as a result, or None (an unreadable entry is removed)."""
    entry = pipe.videos.get(key, required=(ENTRY_INFO,))
    if entry is None:
        return None
    try:
        info = json.loads((entry / ENTRY_INFO).read_text(encoding="utf-8"))
        files = {kind: str(entry / rel) for kind, rel in info["files"].items()}
        if not all(Path(p).exists() for p in files.values()):
            raise ValueError("missing files")
        strip = [(float(t), _read_png(entry / name)) for t, name in info["strip"]]
        run_info = json.loads((entry / "run.json").read_text(encoding="utf-8"))
        latent = load_latent(files["latent"])
    except (OSError, ValueError, KeyError, TypeError, LatentError):
        pipe.videos.discard(key)
        return None
    return AgeVideoResult(files=files, run_info=run_info, strip=strip,
                          metrics=dict(info.get("metrics", {}), cached=True), key=key, reused=True, latent=latent,
                          model_fingerprint=info.get("model_fingerprint", ""))


# ----------------------------------------------------------------------------------------------------------
# Rendering


def _versions() -> dict[str, str]:
    import timemachine

    return {"timemachine": timemachine.__version__, "torch": torch.__version__, "python": platform.python_version()}


@dataclasses.dataclass
class Walk:
    """Everything a render of one walk needs.

    Attributes:
        latent:    the start (ws, noise, PTI weights).
        vector:    the AgeVector walked along; ``chosen`` how it was chosen ('named', 'chosen', 'built-in').
        edit:      the edit asked for (layers, force).
        direction: the vector's direction on the edit's layers, float32 [num_ws, w_dim].
        settings:  the render settings, strength filled in.
        outputs:   what to write.
        photo:     the photo for the side-by-side video's first panel, uint8 [R, R, 3], or None.
        scores:    thresholds of the scores.
        metrics:   the projection's metrics ({} for a latent file).
    """

    latent: LatentFile
    vector: Any
    chosen: str
    edit: AgeEdit
    direction: torch.Tensor
    settings: RenderSettings
    outputs: Any
    photo: Optional[np.ndarray]
    scores: ScoreSettings
    metrics: dict[str, Any]


def _render_files(pipe: "Pipeline", walk: Walk, out: Path, progress: Optional[ProgressCallback]):
    """Render the walk's frames into ``out``: video.mp4, preview.gif, before.png, after.png (and the others
    asked for); returns render's result."""
    def on_frame(done: int, total: int) -> None:
        report(progress, "render", done, total, f"rendering: frame {done} of {total}")

    targets = render_module.RenderOutputs.in_directory(out, gif=walk.outputs.gif,
                                                       side_by_side=walk.outputs.side_by_side,
                                                       frames=walk.outputs.png_frames)
    with memory_errors("rendering frames", walk.settings.batch_size):
        return render_module.render_video(pipe.G, walk.latent, walk.direction, targets, walk.settings,
                                          photo=walk.photo, progress=on_frame)


def _write_walk(pipe: "Pipeline", walk: Walk, out: Path, progress: Optional[ProgressCallback],
                run_info: dict[str, Any], job_started: Optional[float] = None) -> AgeVideoResult:
    """Render the walk into ``out`` (which exists), score it, and write projected_w.npz and run.json there
    (with the job's ``total_seconds`` when it started at ``job_started``, a time.perf_counter() value)."""
    started = time.perf_counter()
    result = _render_files(pipe, walk, out, progress)
    files = dict(result.files)
    files["latent"] = str(out / "projected_w.npz")
    latent = walk.latent
    latent.save(files["latent"])
    if latent.pti_delta:
        files["pti"] = str(out / "projected_w.pti.safetensors")
    files["run"] = str(out / "run.json")
    model, vector, edit = pipe.model, walk.vector, walk.edit
    info = dict(run_info)
    info.update({
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": _versions(),
        "model": {"spec": model.spec, "fingerprint": model.fingerprint, "resolution": model.G.img_resolution,
                  "zoo": model.zoo},
        "age_vector": {**vector.metadata(),
                       "layers_used": vector.default_layers if edit.layers is None else edit.layers,
                       "chosen": walk.chosen, "builtin": _is_builtin(pipe, walk),
                       "forced_onto_other_model": bool(edit.force_model
                                                       and vector.model_fingerprint != model.fingerprint)},
        "render": {**result.settings, "total_frames": result.total_frames, "walk_frames": result.walk_frames,
                   "synthesized_frames": result.synthesized_frames},
        "files": {k: os.path.relpath(v, out) for k, v in files.items()},
    })
    if "before" in files and "after" in files:
        info["scores"] = scoring.video_scores(pipe, vector, _read_png(Path(files["before"])),
                                              _read_png(Path(files["after"])), walk.metrics, walk.scores)
    timings = dict(info.get("timings", {}))
    timings.update({"render_seconds": round(time.perf_counter() - started, 3),
                    "render_synthesis_seconds": round(result.synthesis_seconds, 3),
                    "render_writing_seconds": round(result.writing_seconds, 3)})
    if job_started is not None:
        timings["total_seconds"] = round(time.perf_counter() - job_started, 3)
    info["timings"] = timings
    write_json(files["run"], info)
    return AgeVideoResult(files=files, run_info=info, latent=latent, model_fingerprint=model.fingerprint)


def _is_builtin(pipe: "Pipeline", walk: Walk) -> bool:
    """Whether the vector walked along is a built-in one (read-only, shipped with timemachine)."""
    from timemachine.pipeline.vectors import vector_library

    name = walk.edit.vector if walk.edit.vector is not None else walk.vector.name
    return walk.chosen == "built-in" or vector_library(pipe.env).is_builtin(name)


def _strip(pipe: "Pipeline", latent: LatentFile, direction: torch.Tensor, settings: RenderSettings) -> list:
    frames = render_module.frames_at(pipe.G, latent, direction, STRIP_TIMES, strength=settings.strength,
                                     easing=settings.easing, precision=settings.precision)
    return [(t, frame) for t, frame in zip(STRIP_TIMES, frames)]


def _store_video(pipe: "Pipeline", key: str, write, strip: list, metrics: dict[str, Any]) -> AgeVideoResult:
    """Render into the video store's entry of ``key`` (``write(directory) -> AgeVideoResult``) with the preview
    strip, and read the entry back."""
    def fill(entry: Path) -> None:
        written = write(entry)
        for t, frame in strip:
            images.save_png(frame, entry / _strip_name(t))
        write_json(entry / ENTRY_INFO, {
            "key": key, "model_fingerprint": pipe.model.fingerprint, "metrics": metrics,
            "strip": [[t, _strip_name(t)] for t in STRIP_TIMES],
            "files": {k: os.path.relpath(v, entry) for k, v in written.files.items()}})

    pipe.videos.put(key, fill)
    stored = _stored_result(pipe, key)
    if stored is None:
        raise TimemachineError(f"the finished video could not be read back from {pipe.videos.entry_dir(key)}")
    stored.reused = False
    return stored


def age_video(pipe: "Pipeline", request: AgeVideoRequest,
              progress: Optional[ProgressCallback] = None) -> AgeVideoResult:
    """Project the photo, choose the strength when asked to, show the preview strip, render the video and score
    it (see the module docstring).

    Everything that can be refused (the vector, its fit to the model, the settings, the output directory) is
    refused before any work.
    """
    vector, direction, settings, chosen = check(pipe, request)
    out_dir = request.outputs.directory
    key = video_key(pipe, request, vector, settings) if out_dir is None else None
    if key is not None and not request.preview_only:
        stored = _stored_result(pipe, key)
        if stored is not None:
            report(progress, "render", 1, 1, "this video was made before: shown from the cache", strip=stored.strip)
            return stored

    started = time.perf_counter()
    (projection,) = pipe.project(dataclasses.replace(request.projection, photos=[request.photo]), progress)
    project_seconds = time.perf_counter() - started
    report(progress, "pti", 1, 1, "projection done", preview=projection.reconstruction)
    run_info: dict[str, Any] = {
        "photo": projection.photo_info,
        "projection": {"settings": with_resolved_precision(request.projection.settings, pipe.model).to_dict(),
                       "pti_settings": request.projection.pti.to_dict() if request.projection.pti else None,
                       "perceptual": projection.latent.meta.get("perceptual"), "metrics": projection.metrics},
        "timings": {"project_seconds": round(project_seconds, 3)},
    }
    if request.edit.auto_strength:
        auto = scoring.choose_strength(pipe, projection.latent, vector, direction, projection.reconstruction,
                                       request.scores, progress)
        settings = dataclasses.replace(settings, strength=auto.strength)
        run_info["strength_auto"] = auto.to_dict()
    strip = _strip(pipe, projection.latent, direction, settings)
    report(progress, "strip", 1, 1, "preview frames ready" + ("" if request.preview_only else "; rendering the video"),
           strip=strip)
    result: AgeVideoResult
    if request.preview_only:
        result = AgeVideoResult(files={}, run_info=run_info, model_fingerprint=pipe.model.fingerprint)
    else:
        walk = Walk(projection.latent, vector, chosen, request.edit, direction, settings, request.outputs,
                    projection.target, request.scores, projection.metrics)

        def write(out: Path) -> AgeVideoResult:
            return _write_walk(pipe, walk, out, progress, run_info, job_started=started)

        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            result = write(Path(out_dir))
        else:
            assert key is not None   # made above for a video bound for the store
            result = _store_video(pipe, key, write, strip, projection.metrics)
    result.strip, result.metrics, result.projection, result.key = strip, projection.metrics, projection, key
    result.latent = projection.latent
    return result


def render(pipe: "Pipeline", request: RenderRequest, progress: Optional[ProgressCallback] = None) -> AgeVideoResult:
    """Render an existing latent file along the edit into ``request.outputs.directory``, and score it."""
    vector, direction, settings, chosen = check_render(pipe, request)
    G = pipe.G
    latent = load_latent(request.latent, num_ws=G.num_ws, w_dim=G.w_dim)
    fingerprint = latent.meta.get("model_fingerprint")
    if fingerprint and fingerprint != pipe.model.fingerprint and not request.edit.force_model:
        from timemachine.errors import FORCE_MODEL

        raise LatentError(f"{request.latent} was projected with another model (fingerprint {fingerprint}, this one "
                          f"is {pipe.model.fingerprint})", remedy=FORCE_MODEL)
    assert request.outputs.directory is not None   # check_render refused a request without one
    out = Path(request.outputs.directory)
    out.mkdir(parents=True, exist_ok=True)
    run_info = {"latent": os.path.abspath(os.fspath(request.latent)),
                "photo": request.photo.info.get("path") if request.photo is not None else None}
    if request.edit.auto_strength:
        first = render_module.frames_at(G, latent, direction, [0.0])[0]
        auto = scoring.choose_strength(pipe, latent, vector, direction, first, request.scores, progress)
        settings = dataclasses.replace(settings, strength=auto.strength)
        run_info["strength_auto"] = auto.to_dict()
    walk = Walk(latent, vector, chosen, request.edit, direction, settings,
                request.outputs, request.photo.image if request.photo is not None else None, request.scores, {})
    return _write_walk(pipe, walk, out, progress, run_info)


def check_preview_strip(pipe: "Pipeline", latent: LatentFile, edit: AgeEdit) -> torch.Tensor:
    """Refuse a preview strip whose latent does not fit the model or whose edit cannot work; returns the edit's
    direction on the chosen layers."""
    ws = getattr(latent, "ws", None)
    if ws is None or tuple(ws.shape) != (pipe.G.num_ws, pipe.G.w_dim):
        raise LatentError(f"the latent does not fit the model (it needs [{pipe.G.num_ws}, {pipe.G.w_dim}])")
    return edit_direction(pipe, edit)[1]


def preview_strip(pipe: "Pipeline", latent: LatentFile, edit: AgeEdit, strengths: Sequence[float],
                  progress: Optional[ProgressCallback] = None) -> list[tuple[float, np.ndarray]]:
    """The end frame (t = 1) of the walk along the edit's vector at each strength: [(strength, uint8 [R, R, 3])]."""
    direction = check_preview_strip(pipe, latent, edit)
    out = []
    for i, strength in enumerate(strengths):
        frame = render_module.frames_at(pipe.G, latent, direction, [1.0], strength=float(strength), easing="linear")[0]
        out.append((float(strength), frame))
        report(progress, "strip", i + 1, len(strengths), f"preview frame {i + 1} of {len(strengths)}")
    return out
