"""What the UI's jobs do, without Streamlit: each builds nothing itself and calls one pipeline method.

Each function takes a pipeline, a request and a :class:`ui_jobs.JobContext` (anything with ``report(stage,
fraction, **extras)``); pipeline progress events become the context's reports (one overall fraction over the
job's stages), and a cancelled job stops at its next report.

Re-renders are cheap: the projection goes through the projection store, and a finished video is kept in the
pipeline's video store (content-addressed), so asking again for the same video shows the stored one at once.

Progress extras: ``preview`` (uint8 [R, R, 3], the projector's current reconstruction) while projecting, then
``strip`` (a list of (t, uint8 [R, R, 3]) frames along the walk) before the full render.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from timemachine.pipeline import (VIDEO_STAGES, AgeEdit, AgeVideoRequest, AgeVideoResult, Pipeline, Progress,
                                  VectorBuildRequest, VectorBuildResult, overall_fraction)

#: Stages of a vector build: projecting its photos, then the fit.
BUILD_STAGES = {"project": 1.0, "build": 0.05}
#: What the visitor reads for each stage of a video job.
STAGE_WORDS = {"project": "Finding your pet in the model", "pti": "Fine-tuning the model (PTI)",
               "strip": "Preview frames", "render": "Rendering the video", "build": "Building the vector"}


def reporter(ctx, stages: dict[str, float]) -> Callable[[Progress], None]:
    """A pipeline progress callback that reports to ``ctx`` with one overall fraction over ``stages``."""

    def on_progress(event: Progress) -> None:
        words = STAGE_WORDS.get(event.stage, event.stage)
        detail = event.message.split(": ", 1)[-1] if event.message else ""
        stage = f"{words}: {detail}" if detail and event.stage in ("project", "pti", "render") else \
            (event.message[:1].upper() + event.message[1:] if event.message else words)
        extras = {k: v for k, v in event.extras.items() if k in ("preview", "strip")}
        ctx.report(stage, overall_fraction(event, stages), **extras)

    return on_progress


def video_stages(request: AgeVideoRequest) -> dict[str, float]:
    """The stages a video job passes, with their relative durations."""
    stages = dict(VIDEO_STAGES)
    if request.projection.pti is None:
        stages.pop("pti")
    if request.preview_only:
        stages.pop("render")
    return stages


def make_video(pipe: Pipeline, request: AgeVideoRequest, ctx) -> AgeVideoResult:
    """Project (through the store), show a preview strip, render the video into the video store."""
    ctx.report("Preparing the projection", 0.0)
    return pipe.age_video(request, progress=reporter(ctx, video_stages(request)))


def preview_strip(pipe: Pipeline, latent, edit: AgeEdit, strengths: Sequence[float], ctx) -> list[tuple[float, Any]]:
    """The end frame (t = 1) of the walk at each strength: [(strength, uint8 [R, R, 3])]."""
    ctx.report("Rendering preview frames", 0.1)
    return pipe.preview_strip(latent, edit, strengths, progress=reporter(ctx, {"strip": 1.0}))


def build_vector(pipe: Pipeline, request: VectorBuildRequest, ctx) -> VectorBuildResult:
    """Read the examples, project the photos (through the store), build the vector (saved when asked)."""
    ctx.report("Reading the photos", 0.02)
    return pipe.build_vector(request, progress=reporter(ctx, BUILD_STAGES))


def example_rows(result: VectorBuildResult) -> list[dict[str, Any]]:
    """One table row per example: role, file, kind and the projection's quality."""
    return [{"role": item.role, "file": item.name, "kind": item.kind, "LPIPS": item.metrics.get("lpips"),
             "PSNR (dB)": item.metrics.get("psnr"), "from cache": item.metrics.get("cached")}
            for item in result.examples]


def frames_only(strip) -> list[np.ndarray]:
    return [frame for _, frame in strip]
