"""What the UI's jobs are, without Streamlit: their stages, and their progress in the visitor's words.

A page builds a request, submits it to the executor as a job of one kind ('age_video', 'build_vector',
'preview_strip'; see :func:`ui_common.submit`), and shows its progress with :func:`describe`: one line and
one overall fraction over the job's stages (:func:`video_stages`, :data:`BUILD_STAGES`, :data:`STRIP_STAGES`).

Re-renders are cheap: the projection goes through the projection store, and a finished video is kept in the
pipeline's video store (content-addressed), so asking again for the same video shows the stored one at once.

Progress extras: ``preview`` (uint8 [R, R, 3], the projector's current reconstruction) while projecting, then
``strip`` (a list of (t, uint8 [R, R, 3]) frames along the walk) before the full render.
"""

from __future__ import annotations

from typing import Any, Optional

from timemachine.pipeline import VIDEO_STAGES, AgeVideoRequest, Progress, VectorBuildResult, overall_fraction

#: Stages of a vector build: projecting its photos, then the fit.
BUILD_STAGES = {"project": 1.0, "build": 0.05}
#: Stages of a strip of preview frames.
STRIP_STAGES = {"strip": 1.0}
#: Stages of a discovery: sampling, rendering and labelling (one stage, by samples).
DISCOVER_STAGES = {"sample": 1.0}
#: What the visitor reads for each stage of a video job.
STAGE_WORDS = {"project": "Finding your pet in the model", "pti": "Fine-tuning the model (PTI)",
               "strip": "Preview frames", "render": "Rendering the video", "build": "Building the vector",
               "sample": "Discovering the age direction", "strength": "Choosing the strength"}


def describe(event: Optional[Progress], stages: dict[str, float]) -> tuple[str, float]:
    """(one line for the visitor, the job's overall fraction in [0, 1]) of its latest progress report."""
    if event is None:
        return "Starting", 0.0
    words = STAGE_WORDS.get(event.stage, event.stage)
    detail = event.message.split(": ", 1)[-1] if event.message else ""
    text = f"{words}: {detail}" if detail and event.stage in ("project", "pti", "render", "sample") else \
        (event.message[:1].upper() + event.message[1:] if event.message else words)
    return text, overall_fraction(event, stages)


def video_stages(request: AgeVideoRequest) -> dict[str, float]:
    """The stages a video job passes, with their relative durations."""
    stages = dict(VIDEO_STAGES)
    if request.projection.pti is None:
        stages.pop("pti")
    if request.preview_only:
        stages.pop("render")
    return stages


def stages_of_label(label: str) -> dict[str, float]:
    """The stages of a job found again by its label (after a reload, when its request is not at hand)."""
    if label == "vector":
        return dict(BUILD_STAGES)
    if label == "tune preview":
        return dict(STRIP_STAGES)
    if label == "discovery":
        return dict(DISCOVER_STAGES)
    stages = dict(VIDEO_STAGES)
    if label == "preview":
        stages.pop("render")
    return stages


def example_rows(result: VectorBuildResult) -> list[dict[str, Any]]:
    """One table row per example: role, file, kind and the projection's quality."""
    return [{"role": item.role, "file": item.name, "kind": item.kind, "LPIPS": item.metrics.get("lpips"),
             "PSNR (dB)": item.metrics.get("psnr"), "from cache": item.metrics.get("cached")}
            for item in result.examples]


