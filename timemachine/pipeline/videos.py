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

from timemachine import images, render as render_module
from timemachine.errors import LatentError, TimemachineError
from timemachine.fs import write_json
from timemachine.latents import LatentFile, load_latent, save_latent
from timemachine.pipeline.progress import ProgressCallback, report
from timemachine.pipeline.projection import PhotoProjection, store_key
from timemachine.pipeline.requests import AgeEdit, AgeVideoRequest, RenderRequest
from timemachine.settings import RenderSettings

from timemachine.pipeline.components import memory_errors

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
    from timemachine.errors import AgeVectorError, quoted

    vector.check_model(model.fingerprint, model_name=model.spec, force=force_model, zoo=model.zoo)
    G = model.G
    if vector.num_ws != G.num_ws or vector.w_dim != G.w_dim:
        raise AgeVectorError(f"age vector {quoted(vector.name)} has shape [{vector.num_ws}, {vector.w_dim}], the model "
                             f"needs [{G.num_ws}, {G.w_dim}]")
    return vector.masked_direction(layers)


def edit_direction(pipe: "Pipeline", edit: AgeEdit) -> tuple[Any, torch.Tensor]:
    """(the edit's AgeVector, its direction on the chosen layers): :func:`vector_direction` of the vector the
    edit names."""
    from timemachine.pipeline.vectors import load_vector

    vector = load_vector(pipe.env, edit.vector)
    return vector, vector_direction(pipe.model, vector, edit.layers, edit.force_model)


def resolved_render(edit: AgeEdit, vector, settings: RenderSettings) -> RenderSettings:
    """``settings`` with the strength of the edit (the vector's default when the edit gives none), validated."""
    strength = vector.default_strength if edit.strength is None else edit.strength
    resolved = dataclasses.replace(settings, strength=strength)
    resolved.validate()
    return resolved


def check(pipe: "Pipeline", request: AgeVideoRequest) -> tuple[Any, torch.Tensor, RenderSettings]:
    """Refuse an age-video request that cannot work (the vector, its fit to the model, the settings, the output
    directory) before any work; returns (the vector, its direction on the chosen layers, the render settings
    with the strength filled in)."""
    from timemachine.pipeline.projection import check as check_projection

    vector, direction = edit_direction(pipe, request.edit)
    settings = resolved_render(request.edit, vector, request.render)
    check_projection(pipe, dataclasses.replace(request.projection, photos=[request.photo]))
    check_output_directory(request.outputs.directory)
    return vector, direction, settings


def check_render(pipe: "Pipeline", request: RenderRequest) -> tuple[Any, torch.Tensor, RenderSettings]:
    """Like :func:`check`, for rendering a latent file (which needs an output directory)."""
    vector, direction = edit_direction(pipe, request.edit)
    settings = resolved_render(request.edit, vector, request.render)
    if request.outputs.directory is None:
        raise ValueError("rendering a latent file needs an output directory")
    check_output_directory(request.outputs.directory)
    return vector, direction, settings


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
    h = hashlib.sha256(b"timemachine-video-v2\0")
    h.update(store_key(pipe, request.photo.image, projection).encode())
    h.update(vector.direction.contiguous().numpy().tobytes())
    outputs = request.outputs
    h.update(json.dumps({"vector": vector.metadata(), "layers": request.edit.layers,
                         "force": request.edit.force_model, "render": settings.to_dict(),
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
    return AgeVideoResult(files=files, run_info=run_info, strip=strip, metrics=dict(info.get("metrics", {}), cached=True),
                          key=key, reused=True, latent=latent, model_fingerprint=info.get("model_fingerprint", ""))


# ----------------------------------------------------------------------------------------------------------
# Rendering


def _versions() -> dict[str, str]:
    import timemachine

    return {"timemachine": timemachine.__version__, "torch": torch.__version__, "python": platform.python_version()}


def _write_walk(pipe: "Pipeline", latent: LatentFile, vector, edit: AgeEdit, direction: torch.Tensor,
                out: Path, settings: RenderSettings, outputs, photo: Optional[np.ndarray],
                progress: Optional[ProgressCallback], run_info: dict[str, Any]) -> AgeVideoResult:
    """Render the walk into ``out`` (which exists) and write projected_w.npz and run.json there."""
    def on_frame(done: int, total: int) -> None:
        report(progress, "render", done, total, f"rendering: frame {done} of {total}")

    targets = render_module.RenderOutputs.in_directory(out, gif=outputs.gif, side_by_side=outputs.side_by_side,
                                                       frames=outputs.png_frames)
    started = time.perf_counter()
    with memory_errors("rendering frames", settings.batch_size):
        result = render_module.render_video(pipe.G, latent, direction, targets, settings, photo=photo,
                                            progress=on_frame)
    files = dict(result.files)
    files["latent"] = str(out / "projected_w.npz")
    save_latent(files["latent"], latent.ws, latent.noise, latent.meta, pti_delta=latent.pti_delta)
    if latent.pti_delta:
        files["pti"] = str(out / "projected_w.pti.safetensors")
    files["run"] = str(out / "run.json")
    model = pipe.model
    info = dict(run_info)
    info.update({
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": _versions(),
        "model": {"spec": model.spec, "fingerprint": model.fingerprint, "resolution": model.G.img_resolution},
        "age_vector": {**vector.metadata(), "layers_used": vector.default_layers if edit.layers is None else edit.layers,
                       "forced_onto_other_model": bool(edit.force_model and vector.model_fingerprint != model.fingerprint)},
        "render": {**result.settings, "total_frames": result.total_frames, "walk_frames": result.walk_frames,
                   "synthesized_frames": result.synthesized_frames},
        "files": {k: os.path.relpath(v, out) for k, v in files.items()},
    })
    timings = dict(info.get("timings", {}))
    timings.update({"render_seconds": round(time.perf_counter() - started, 3),
                    "render_synthesis_seconds": round(result.synthesis_seconds, 3),
                    "render_writing_seconds": round(result.writing_seconds, 3)})
    info["timings"] = timings
    write_json(files["run"], info)
    return AgeVideoResult(files=files, run_info=info, latent=latent, model_fingerprint=model.fingerprint)


def _strip(pipe: "Pipeline", latent: LatentFile, direction: torch.Tensor, settings: RenderSettings) -> list:
    frames = render_module.frames_at(pipe.G, latent, direction, STRIP_TIMES, strength=settings.strength,
                                     easing=settings.easing)
    return [(t, frame) for t, frame in zip(STRIP_TIMES, frames)]


def age_video(pipe: "Pipeline", request: AgeVideoRequest,
              progress: Optional[ProgressCallback] = None) -> AgeVideoResult:
    """Project the photo, show the preview strip, render the video (see the module docstring).

    Everything that can be refused (the vector, its fit to the model, the settings, the output directory) is
    refused before any work.
    """
    vector, direction, settings = check(pipe, request)
    projection_request = dataclasses.replace(request.projection, photos=[request.photo])
    out_dir = request.outputs.directory
    key = None
    if out_dir is None:
        key = video_key(pipe, request, vector, settings)
        if not request.preview_only:
            stored = _stored_result(pipe, key)
            if stored is not None:
                report(progress, "render", 1, 1, "this video was made before: shown from the cache", strip=stored.strip)
                return stored

    started = time.perf_counter()
    (projection,) = pipe.project(projection_request, progress)
    project_seconds = time.perf_counter() - started
    report(progress, "pti", 1, 1, "projection done", preview=projection.reconstruction)
    strip = _strip(pipe, projection.latent, direction, settings)
    report(progress, "strip", 1, 1, "preview frames ready" + ("" if request.preview_only else "; rendering the video"),
           strip=strip)
    if request.preview_only:
        return AgeVideoResult(files={}, run_info={}, strip=strip, metrics=projection.metrics, projection=projection,
                              key=key, latent=projection.latent, model_fingerprint=pipe.model.fingerprint)

    run_info = {
        "photo": projection.photo_info,
        "projection": {"settings": request.projection.settings.to_dict(),
                       "pti_settings": request.projection.pti.to_dict() if request.projection.pti else None,
                       "perceptual": projection.latent.meta.get("perceptual"), "metrics": projection.metrics},
        "timings": {"project_seconds": round(project_seconds, 3)},
    }

    def write(out: Path) -> AgeVideoResult:
        result = _write_walk(pipe, projection.latent, vector, request.edit, direction, out, settings,
                             request.outputs, projection.target, progress, run_info)
        result.run_info["timings"]["total_seconds"] = round(time.perf_counter() - started, 3)
        write_json(result.files["run"], result.run_info)
        return result

    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        result = write(Path(out_dir))
    else:
        assert key is not None

        def fill(entry: Path) -> None:
            written = write(entry)
            for t, frame in strip:
                images.save_png(frame, entry / _strip_name(t))
            write_json(entry / ENTRY_INFO, {
                "key": key, "model_fingerprint": pipe.model.fingerprint, "metrics": projection.metrics,
                "strip": [[t, _strip_name(t)] for t in STRIP_TIMES],
                "files": {k: os.path.relpath(v, entry) for k, v in written.files.items()}})

        pipe.videos.put(key, fill)
        stored = _stored_result(pipe, key)
        if stored is None:
            raise TimemachineError(f"the finished video could not be read back from {pipe.videos.entry_dir(key)}")
        result = stored
        result.reused = False
    result.strip, result.metrics, result.projection, result.key = strip, projection.metrics, projection, key
    result.latent = projection.latent
    return result


def render(pipe: "Pipeline", request: RenderRequest, progress: Optional[ProgressCallback] = None) -> AgeVideoResult:
    """Render an existing latent file along the edit into ``request.outputs.directory``."""
    vector, direction, settings = check_render(pipe, request)
    out_dir = request.outputs.directory
    G = pipe.G
    latent = load_latent(request.latent, num_ws=G.num_ws, w_dim=G.w_dim)
    fingerprint = latent.meta.get("model_fingerprint")
    if fingerprint and fingerprint != pipe.model.fingerprint and not request.edit.force_model:
        from timemachine.errors import FORCE_MODEL

        raise LatentError(f"{request.latent} was projected with another model (fingerprint {fingerprint}, this one "
                          f"is {pipe.model.fingerprint})", remedy=FORCE_MODEL)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_info = {"latent": os.path.abspath(os.fspath(request.latent)),
                "photo": request.photo.info.get("path") if request.photo is not None else None}
    photo = request.photo.image if request.photo is not None else None
    result = _write_walk(pipe, latent, vector, request.edit, direction, out, settings, request.outputs, photo,
                         progress, run_info)
    result.strip = []
    return result


def preview_strip(pipe: "Pipeline", latent: LatentFile, edit: AgeEdit, strengths: Sequence[float],
                  progress: Optional[ProgressCallback] = None) -> list[tuple[float, np.ndarray]]:
    """The end frame (t = 1) of the walk along the edit's vector at each strength: [(strength, uint8 [R, R, 3])]."""
    _, direction = edit_direction(pipe, edit)
    out = []
    for i, strength in enumerate(strengths):
        frame = render_module.frames_at(pipe.G, latent, direction, [1.0], strength=float(strength), easing="linear")[0]
        out.append((float(strength), frame))
        report(progress, "strip", i + 1, len(strengths), f"preview frame {i + 1} of {len(strengths)}")
    return out
