"""Requests carried out end to end; the CLI and the UI both call these functions and nothing deeper.

* :func:`load_model`        a ``--model`` spec -> generator + fingerprint (download/verify via weights).
* :func:`load_perceptual`   the LPIPS-VGG16 module (real weights unless ``random`` is asked for by name).
* :func:`project_images`    photos -> projections, through the projection cache, batched, optional PTI.
* :func:`write_projection`  a projection's files in an output directory.

Long operations report through callbacks and never print.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from timemachine import images as images_module
from timemachine import projector
from timemachine.cache import ProjectionCache, projection_key
from timemachine.checkpoint import model_fingerprint
from timemachine.device import prepare_device, resolve_precision
from timemachine.latents import LatentFile, save_latent
from timemachine.networks import Generator
from timemachine.perceptual import RANDOM, PerceptualDistance

DownloadProgress = Callable[[int, Optional[int]], None]


@dataclasses.dataclass
class LoadedModel:
    """A generator ready to use, with where it came from."""

    G: Generator
    fingerprint: str
    spec: str
    path: str

    @property
    def device(self) -> torch.device:
        return self.G.mapping.w_avg.device


def load_model(spec: Union[str, os.PathLike], device: Union[str, torch.device, None] = None,
               offline: Optional[bool] = None, progress: Optional[DownloadProgress] = None) -> LoadedModel:
    """Resolve ``spec`` (zoo name, imported name, file or URL), load it safely onto ``device``."""
    from timemachine import weights
    from timemachine.checkpoint import load_generator

    device = prepare_device(device)
    path = weights.resolve_model(spec, offline=offline, progress=progress)
    G = load_generator(path, device=device)
    return LoadedModel(G=G, fingerprint=model_fingerprint(G), spec=str(spec), path=str(path))


def load_perceptual(device: Union[str, torch.device, None] = None, vgg_weights: Optional[str] = None,
                    offline: Optional[bool] = None, progress: Optional[DownloadProgress] = None) -> PerceptualDistance:
    """LPIPS-VGG16 on ``device``; ``vgg_weights`` = a path, 'random', or None (see timemachine.perceptual)."""
    return PerceptualDistance(vgg_weights, offline=offline, progress=progress).to(prepare_device(device))


def with_resolved_precision(settings: Any, model: LoadedModel) -> Any:
    """A copy of projector or render ``settings`` with ``precision`` resolved for the model's device ('auto' ->
    'bf16', 'fp32' or 'fp16', see :func:`timemachine.device.resolve_precision`): what results record."""
    return dataclasses.replace(settings, precision=resolve_precision(settings.precision, model.device))


def perceptual_id(perceptual: PerceptualDistance) -> str:
    """What the perceptual network's identity is for cache keys: 'random' or the VGG16 file's name."""
    return RANDOM if perceptual.vgg_source == RANDOM else os.path.basename(perceptual.vgg_source)


@dataclasses.dataclass
class PhotoProjection:
    """One photo's projection and how good it is.

    Attributes:
        latent:         ws [num_ws, w_dim], noise {layer: [res, res]}, meta, pti_delta (see latents.LatentFile).
        target:         uint8 [R, R, 3], the photo as the projector saw it.
        reconstruction: uint8 [R, R, 3], the generator's image of the latent (with PTI weights if tuned).
        metrics:        {'lpips', 'psnr'} of the reconstruction (plus 'lpips_before_pti', 'psnr_before_pti'
                        after PTI), 'steps_run', 'seconds', 'cached'.
    """

    latent: LatentFile
    target: np.ndarray
    reconstruction: np.ndarray
    metrics: dict[str, Any]


def _settings_key(settings: projector.ProjectorSettings) -> dict:
    return {k: v for k, v in settings.to_dict().items() if k not in ("preview_every", "checkpoint_every")}


def _measure(model: LoadedModel, latent: LatentFile, target: torch.Tensor,
             perceptual: PerceptualDistance, precision: str) -> tuple[np.ndarray, float, float]:
    """Reconstruction uint8 [R, R, 3], its LPIPS and PSNR against target [1, 3, R, R], in the resolved
    ``precision`` (a render in the same precision starts with exactly this image)."""
    G = projector.apply_weight_delta(model.G, latent.pti_delta)
    device = model.device
    with torch.no_grad():
        img = G.synthesis(latent.ws.unsqueeze(0).to(device), noise_mode="const",
                          noise={k: v[None, None].to(device) for k, v in latent.noise.items()}, precision=precision)
        lpips = float(perceptual(img, target.to(device), precision)[0])
    psnr = float(projector.psnr(img, target.to(device))[0])
    return images_module.from_tensor(img)[0], lpips, psnr


def project_images(
    model: LoadedModel,
    photos: Sequence[np.ndarray],
    settings: projector.ProjectorSettings,
    perceptual: PerceptualDistance,
    pti_settings: Optional[projector.PTISettings] = None,
    cache: Optional[ProjectionCache] = None,
    callback: Optional[projector.ProgressCallback] = None,
    checkpoint_path: Optional[str] = None,
    resume: bool = False,
) -> list[PhotoProjection]:
    """Project prepared photos (uint8 [R, R, 3] each, R = model resolution).

    Photos found in ``cache`` are not projected again; the others are projected together as one batch,
    then tuned one by one when ``pti_settings`` is given, then stored in the cache.  ``settings.precision`` is
    resolved for the model's device first: the cache key and the latent's metadata hold the resolved value.
    """
    settings = with_resolved_precision(settings, model)
    R = model.G.img_resolution
    for image in photos:
        if image.shape != (R, R, 3) or image.dtype != np.uint8:
            raise ValueError(f"photos must be uint8 [{R}, {R}, 3]")
    keys = [projection_key(image, model.fingerprint, _settings_key(settings),
                           pti_settings.to_dict() if pti_settings else None, perceptual_id(perceptual))
            for image in photos]
    latents: list[Optional[LatentFile]] = [cache.get(k) if cache else None for k in keys]
    cached = [latent is not None for latent in latents]
    targets = images_module.to_tensor(np.stack(photos))                       # [N, 3, R, R]

    todo = [i for i, latent in enumerate(latents) if latent is None]
    # One batch, unless early stopping is on: it watches the batch's total loss, so a photo's result would
    # depend on its batch mates, and the cache must not.
    batches = [[i] for i in todo] if settings.early_stop_patience and len(todo) > 1 else ([todo] if todo else [])
    runs: dict[int, dict[str, Any]] = {}
    for batch in batches:
        started = time.perf_counter()
        result = projector.project(model.G, targets[batch], settings, perceptual=perceptual, callback=callback,
                                   checkpoint_path=checkpoint_path, resume=resume)
        for j, i in enumerate(batch):
            single = result.select(j)
            run = {"steps_run": single.steps_run, "seconds": round(time.perf_counter() - started, 3)}
            meta_before = {}
            if pti_settings is not None:
                pivot = LatentFile(ws=single.ws[0], noise={k: v[0, 0] for k, v in single.noise.items()})
                _, lpips0, psnr0 = _measure(model, pivot, targets[i:i + 1], perceptual, settings.precision)
                meta_before = {"lpips_before_pti": lpips0, "psnr_before_pti": psnr0}
                single = projector.pivotal_tuning(model.G, single, targets[i:i + 1], pti_settings,
                                                  perceptual=perceptual, callback=callback)
                run.update(pti_steps_run=single.pti_steps_run, pti_seconds=round(single.pti_seconds, 3))
            latent = LatentFile(
                ws=single.ws[0], noise={k: v[0, 0] for k, v in single.noise.items()}, pti_delta=single.pti_delta,
                meta={"format": "timemachine-projection", "model_fingerprint": model.fingerprint,
                      "settings": _settings_key(settings),
                      "pti_settings": pti_settings.to_dict() if pti_settings else None,
                      "perceptual": perceptual_id(perceptual), **run, **meta_before})
            if cache is not None:
                cache.put(keys[i], latent)
            latents[i] = latent
            runs[i] = run
        if checkpoint_path and os.path.exists(checkpoint_path):
            os.remove(checkpoint_path)  # this batch is done (and cached): nothing left to resume

    results = []
    for i, latent in enumerate(latents):
        reconstruction, lpips, psnr = _measure(model, latent, targets[i:i + 1], perceptual, settings.precision)
        metrics = {"lpips": lpips, "psnr": psnr, "cached": cached[i],
                   "steps_run": latent.meta.get("steps_run"), "seconds": runs.get(i, {}).get("seconds", 0.0)}
        for key in ("lpips_before_pti", "psnr_before_pti", "pti_steps_run"):
            if key in latent.meta:
                metrics[key] = latent.meta[key]
        results.append(PhotoProjection(latent=latent, target=photos[i], reconstruction=reconstruction,
                                       metrics=metrics))
    return results


def write_projection(out_dir: Union[str, os.PathLike], result: PhotoProjection, summary: dict[str, Any]) -> dict[str, str]:
    """Write ``projected_w.npz`` (+ ``.pti.safetensors``), ``projection.png``, ``target.png`` and
    ``projection.json`` (``summary`` + metrics) into ``out_dir``, each file atomically.  Returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"latent": str(out / "projected_w.npz"), "projection": str(out / "projection.png"),
             "target": str(out / "target.png"), "summary": str(out / "projection.json")}
    save_latent(paths["latent"], result.latent.ws, result.latent.noise, result.latent.meta,
                pti_delta=result.latent.pti_delta)
    images_module.save_png(result.reconstruction, paths["projection"])
    images_module.save_png(result.target, paths["target"])
    write_json(paths["summary"], {**summary, "metrics": result.metrics,
                                  "files": {k: os.path.basename(v) for k, v in paths.items()}})
    return paths


def write_json(path: Union[str, os.PathLike], data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def cache_root() -> Path:
    """``$TIMEMACHINE_HOME/cache/projections``."""
    from timemachine import weights

    return Path(weights.home_dir()) / "cache" / "projections"


# ------------------------------------------------------------------------------------------------------
# Age videos


@dataclasses.dataclass
class AgeVideoResult:
    """What :func:`make_age_video` / :func:`render_age_video` wrote.

    Attributes:
        files:      {kind: path}: 'video', 'gif', 'before', 'after', 'side_by_side', 'frames_dir' (those asked
                    for), 'latent' (projected_w.npz), 'run' (run.json).
        run_info:   the contents of run.json.
        projection: the projection used (None when rendering an existing latent file).
    """

    files: dict[str, str]
    run_info: dict[str, Any]
    projection: Optional[PhotoProjection] = None


def age_direction(model: LoadedModel, vector, layers: Optional[str] = None, force_model: bool = False) -> torch.Tensor:
    """The vector's direction [num_ws, w_dim] on the selected layers (default: the vector's own), after
    checking that it belongs to ``model`` (:class:`AgeVectorError` otherwise, unless ``force_model``)."""
    vector.check_model(model.fingerprint, model_name=model.spec, force=force_model)
    if vector.num_ws != model.G.num_ws or vector.w_dim != model.G.w_dim:
        from timemachine.errors import AgeVectorError

        raise AgeVectorError(f"age vector {vector.name!r} has shape [{vector.num_ws}, {vector.w_dim}], the model "
                             f"needs [{model.G.num_ws}, {model.G.w_dim}]")
    return vector.masked_direction(layers)


def _versions() -> dict[str, str]:
    import platform

    import timemachine

    return {"timemachine": timemachine.__version__, "torch": torch.__version__, "python": platform.python_version()}


def render_age_video(
    model: LoadedModel,
    latent: LatentFile,
    vector,
    out_dir: Union[str, os.PathLike],
    render_settings,
    *,
    layers: Optional[str] = None,
    force_model: bool = False,
    photo: Optional[np.ndarray] = None,
    gif: bool = True,
    side_by_side: bool = False,
    frames: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
    run_info: Optional[dict[str, Any]] = None,
) -> AgeVideoResult:
    """Render ``latent`` walking along ``vector`` into ``out_dir``: video.mp4, preview.gif, before.png,
    after.png (and side_by_side.mp4, frames/ when asked), projected_w.npz and run.json.

    ``render_settings.strength`` is the strength used (callers fill in the vector's default).  ``run_info``
    adds entries to run.json (what the caller knows: photo, projection, timings).
    """
    from timemachine import render

    direction = age_direction(model, vector, layers, force_model)
    out = Path(out_dir)
    outputs = render.RenderOutputs.in_directory(out, gif=gif, side_by_side=side_by_side, frames=frames)
    started = time.perf_counter()
    result = render.render_video(model.G, latent, direction, outputs, render_settings, photo=photo, progress=progress)
    files = dict(result.files)
    files["latent"] = str(out / "projected_w.npz")
    save_latent(files["latent"], latent.ws, latent.noise, latent.meta, pti_delta=latent.pti_delta)
    files["run"] = str(out / "run.json")
    info = dict(run_info or {})
    info.update({
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": _versions(),
        "model": {"spec": model.spec, "fingerprint": model.fingerprint, "resolution": model.G.img_resolution},
        "age_vector": {**vector.metadata(), "layers_used": vector.default_layers if layers is None else layers,
                       "forced_onto_other_model": bool(force_model and vector.model_fingerprint != model.fingerprint)},
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
    return AgeVideoResult(files=files, run_info=info)


def make_age_video(
    model: LoadedModel,
    photo: np.ndarray,
    vector,
    out_dir: Union[str, os.PathLike],
    projection_settings: projector.ProjectorSettings,
    render_settings,
    perceptual: PerceptualDistance,
    *,
    pti_settings: Optional[projector.PTISettings] = None,
    cache: Optional[ProjectionCache] = None,
    layers: Optional[str] = None,
    force_model: bool = False,
    gif: bool = True,
    side_by_side: bool = False,
    frames: bool = False,
    project_callback: Optional[projector.ProgressCallback] = None,
    render_progress: Optional[Callable[[int, int], None]] = None,
    checkpoint_path: Optional[str] = None,
    resume: bool = False,
    photo_info: Optional[dict[str, Any]] = None,
) -> AgeVideoResult:
    """The whole product: project ``photo`` (uint8 [R, R, 3], prepared) through the cache, then render the
    walk along ``vector`` into ``out_dir`` (see :func:`render_age_video`).  The vector is checked against the
    model before any work."""
    age_direction(model, vector, layers, force_model)  # fail before projecting, not after
    projection_settings = with_resolved_precision(projection_settings, model)
    started = time.perf_counter()
    (projection,) = project_images(model, [photo], projection_settings, perceptual, pti_settings=pti_settings,
                                   cache=cache, callback=project_callback, checkpoint_path=checkpoint_path,
                                   resume=resume)
    project_seconds = time.perf_counter() - started
    run_info = {
        "photo": photo_info or {},
        "projection": {"settings": projection_settings.to_dict(),
                       "pti_settings": pti_settings.to_dict() if pti_settings else None,
                       "perceptual": perceptual_id(perceptual), "metrics": projection.metrics},
        "timings": {"project_seconds": round(project_seconds, 3)},
    }
    result = render_age_video(model, projection.latent, vector, out_dir, render_settings, layers=layers,
                              force_model=force_model, photo=projection.target, gif=gif, side_by_side=side_by_side,
                              frames=frames, progress=render_progress, run_info=run_info)
    result.run_info["timings"]["total_seconds"] = round(time.perf_counter() - started, 3)
    write_json(result.files["run"], result.run_info)
    result.projection = projection
    return result
