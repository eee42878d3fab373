"""Photos in, projections out: preparing photos, projecting them through the store, writing their files.

:func:`project` projects the photos of a :class:`~timemachine.pipeline.requests.ProjectionRequest`: photos
found in the projection store are not projected again; the others are projected together as one batch (photo
by photo when early stopping is on, since it watches the batch's total loss and a cached result must not
depend on its batch mates), then tuned one by one when PTI is asked for, then stored.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
import torch

from timemachine import images, projector
from timemachine.cache import projection_key
from timemachine.device import memory_errors
from timemachine.fs import write_json
from timemachine.latents import LatentFile
from timemachine.pipeline.progress import ProgressCallback, report
from timemachine.pipeline.requests import ProjectionRequest
from timemachine.projector import ProgressEvent

if TYPE_CHECKING:
    from timemachine.pipeline.components import Pipeline


@dataclasses.dataclass
class PhotoProjection:
    """One photo's projection and how good it is.

    Attributes:
        latent:         ws [num_ws, w_dim], noise {layer: [res, res]}, meta, pti_delta (see latents.LatentFile).
        target:         uint8 [R, R, 3], the photo as the projector saw it.
        reconstruction: uint8 [R, R, 3], the generator's image of the latent (with PTI weights if tuned).
        metrics:        {'lpips', 'psnr'} of the reconstruction (plus 'lpips_before_pti', 'psnr_before_pti'
                        after PTI), 'steps_run', 'seconds', 'cached'.
        photo_info:     the photo's :attr:`Photo.info`.
    """

    latent: LatentFile
    target: np.ndarray
    reconstruction: np.ndarray
    metrics: dict[str, Any]
    photo_info: dict[str, Any] = dataclasses.field(default_factory=dict)


def settings_key(settings: projector.ProjectorSettings) -> dict:
    """The projector settings that change a projection (how often to preview or checkpoint does not)."""
    return settings.result_key()


def store_key(pipe: "Pipeline", image: np.ndarray, request: ProjectionRequest) -> str:
    """The projection store's key of ``image`` projected as ``request`` says (precision resolved)."""
    from timemachine.pipeline.components import perceptual_id, with_resolved_precision

    return projection_key(image, pipe.model.fingerprint, settings_key(with_resolved_precision(request.settings,
                                                                                              pipe.model)),
                          request.pti.to_dict() if request.pti else None, perceptual_id(pipe.perceptual()))


def check(pipe: "Pipeline", request: ProjectionRequest) -> None:
    """Refuse a request that cannot work, before any work."""
    request.settings.validate()
    if request.pti is not None:
        request.pti.validate()
    R = pipe.resolution
    if not request.photos:
        raise ValueError("a projection request needs at least one photo")
    for photo in request.photos:
        if photo.image.shape != (R, R, 3) or photo.image.dtype != np.uint8:
            raise ValueError(f"photos must be uint8 [{R}, {R}, 3]")


def _measure(pipe: "Pipeline", latent: LatentFile, target: torch.Tensor,
             precision: str) -> tuple[np.ndarray, float, float]:
    """Reconstruction uint8 [R, R, 3], its LPIPS and PSNR against target [1, 3, R, R], in the resolved
    ``precision`` (a render in the same precision starts with exactly this image)."""
    device = pipe.model.device
    img = latent.synthesize(pipe.G, precision)
    with torch.no_grad():
        lpips = float(pipe.perceptual()(img, target.to(device), precision)[0])
    psnr = float(projector.psnr(img, target.to(device))[0])
    return images.from_tensor(img)[0], lpips, psnr


def _projector_callback(progress: Optional[ProgressCallback]):
    """The projector's per-step event as a pipeline :class:`Progress` report."""
    if progress is None:
        return None

    def on_step(event: ProgressEvent) -> None:
        what = "projecting" if event.stage == "project" else "pivotal tuning"
        lpips = float(event.lpips.mean())
        extras: dict[str, Any] = {"lpips": lpips, "loss": event.loss}
        if event.preview is not None:
            extras["preview"] = event.preview[0]
        report(progress, event.stage, event.step, event.total,
               f"{what}: step {event.step} of {event.total} (LPIPS {lpips:.3f})", **extras)

    return on_step


def _project_batch(pipe: "Pipeline", request: ProjectionRequest, targets: torch.Tensor, batch: list[int],
                   progress: Optional[ProgressCallback]) -> dict[int, LatentFile]:
    """Project photos ``batch`` (indices into ``targets``) together; tune each with PTI if asked."""
    on_step = _projector_callback(progress)
    started = time.perf_counter()
    result = projector.project(pipe.G, targets[batch], request.settings, perceptual=pipe.perceptual(),
                               callback=on_step, checkpoint_path=request.checkpoint, resume=request.resume)
    latents = {}
    for j, i in enumerate(batch):
        single = result.select(j)
        run: dict[str, Any] = {"steps_run": single.steps_run, "seconds": round(time.perf_counter() - started, 3)}
        if request.pti is not None:
            _, lpips0, psnr0 = _measure(pipe, single.latent(0), targets[i:i + 1], request.settings.precision)
            run.update(lpips_before_pti=lpips0, psnr_before_pti=psnr0)
            single = projector.pivotal_tuning(pipe.G, single, targets[i:i + 1], request.pti,
                                              perceptual=pipe.perceptual(), callback=on_step)
            run.update(pti_steps_run=single.pti_steps_run, pti_seconds=round(single.pti_seconds, 3))
        latents[i] = single.latent(0, meta=_latent_meta(pipe, request, run))
    if request.checkpoint and os.path.exists(request.checkpoint):
        os.remove(request.checkpoint)  # this batch is done (and stored): nothing left to resume
    return latents


def _latent_meta(pipe: "Pipeline", request: ProjectionRequest, run: dict[str, Any]) -> dict[str, Any]:
    from timemachine.pipeline.components import perceptual_id

    return {"format": "timemachine-projection", "model_fingerprint": pipe.model.fingerprint,
            "settings": settings_key(request.settings), "pti_settings": request.pti.to_dict() if request.pti else None,
            "perceptual": perceptual_id(pipe.perceptual()), **run}


def project(pipe: "Pipeline", request: ProjectionRequest,
            progress: Optional[ProgressCallback] = None) -> list[PhotoProjection]:
    """Project the request's photos (see the module docstring); one :class:`PhotoProjection` per photo."""
    check(pipe, request)
    from timemachine.pipeline.components import with_resolved_precision

    request = dataclasses.replace(request, settings=with_resolved_precision(request.settings, pipe.model))
    store = pipe.projections if request.use_cache else None
    photos = [photo.image for photo in request.photos]
    keys = [store_key(pipe, image, request) for image in photos]
    latents: list[Optional[LatentFile]] = [store.get(k) if store else None for k in keys]
    cached = [latent is not None for latent in latents]
    targets = images.to_tensor(np.stack(photos))                       # [N, 3, R, R]

    todo = [i for i, latent in enumerate(latents) if latent is None]
    size = 1 if request.settings.early_stop_patience else request.settings.batch_size
    batches = [todo[start:start + size] for start in range(0, len(todo), size)]
    for batch in batches:
        with memory_errors(f"projecting {len(batch)} photo{'s' if len(batch) > 1 else ''}", len(batch)):
            projected = _project_batch(pipe, request, targets, batch, progress)
        for i, new_latent in projected.items():
            if store is not None:
                store.put(keys[i], new_latent)
            latents[i] = new_latent

    results = []
    for i, latent in enumerate(latents):
        assert latent is not None
        reconstruction, lpips, psnr = _measure(pipe, latent, targets[i:i + 1], request.settings.precision)
        metrics = {"lpips": lpips, "psnr": psnr, "cached": cached[i], "steps_run": latent.meta.get("steps_run"),
                   "seconds": 0.0 if cached[i] else latent.meta.get("seconds", 0.0)}
        for key in ("lpips_before_pti", "psnr_before_pti", "pti_steps_run"):
            if key in latent.meta:
                metrics[key] = latent.meta[key]
        results.append(PhotoProjection(latent=latent, target=photos[i], reconstruction=reconstruction,
                                       metrics=metrics, photo_info=dict(request.photos[i].info)))
    return results


def write_projection(out_dir: Union[str, os.PathLike], result: PhotoProjection,
                     summary: dict[str, Any]) -> dict[str, str]:
    """Write ``projected_w.npz`` (+ ``.pti.safetensors``), ``projection.png``, ``target.png`` and
    ``projection.json`` (``summary`` + metrics) into ``out_dir``, each file atomically.  Returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"latent": str(out / "projected_w.npz"), "projection": str(out / "projection.png"),
             "target": str(out / "target.png"), "summary": str(out / "projection.json")}
    result.latent.save(paths["latent"])
    images.save_png(result.reconstruction, paths["projection"])
    images.save_png(result.target, paths["target"])
    write_json(paths["summary"], {**summary, "metrics": result.metrics,
                                  "files": {k: os.path.basename(v) for k, v in paths.items()}})
    return paths
