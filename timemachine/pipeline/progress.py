"""Progress of a job, reported the same way to every face: one event type, one callback.

A job calls ``progress(Progress(...))`` as it goes; the CLI draws bars, the UI a progress bar and live images,
a queue worker publishes the events to whoever waits.  The callback is also where a job stops: whatever it
raises (a cancellation, an interrupt) ends the job, and the pipeline leaves nothing half-written.

Stages, in the order a video job passes them (:data:`VIDEO_STAGES`): 'project' (steps of the projector),
'pti' (steps of pivotal tuning), 'strip' (preview frames along the walk), 'render' (frames of the video).
Other jobs: 'build' (a vector build after its projections), 'sample' and 'label' (direction discovery),
'strength' (the automatic strength search), 'download' (bytes).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

#: Relative durations of a video job's stages, for one overall fraction (projection dominates).
VIDEO_STAGES = {"project": 1.0, "pti": 0.6, "strip": 0.05, "render": 0.5}


@dataclasses.dataclass
class Progress:
    """One report.

    Attributes:
        stage:   what is running (see the module docstring).
        done:    units done in this stage (steps, frames, samples, bytes).
        total:   units planned in this stage; None when unknown (downloads without a size).
        message: one line for people, e.g. 'projecting: step 40 of 200 (LPIPS 0.412)'.
        extras:  what the stage can show: 'preview' uint8 [R, R, 3] (the projector's current image), 'strip'
                 [(t, uint8 [R, R, 3])] (frames along the walk), 'lpips' float, 'loss' float.
    """

    stage: str
    done: int
    total: Optional[int]
    message: str = ""
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """done / total in [0, 1] (0 while the total is unknown)."""
        if not self.total:
            return 0.0
        return min(1.0, max(0.0, self.done / self.total))


ProgressCallback = Callable[[Progress], None]


def overall_fraction(event: Progress, stages: dict[str, float]) -> float:
    """The job's overall fraction in [0, 1] when its stages take the relative times ``stages`` (a stage not
    in ``stages`` counts as finished work of zero length)."""
    total = sum(stages.values())
    if total <= 0 or event.stage not in stages:
        return 0.0
    before = 0.0
    for name, weight in stages.items():
        if name == event.stage:
            break
        before += weight
    return min(1.0, (before + stages[event.stage] * event.fraction) / total)


def report(progress: Optional[ProgressCallback], stage: str, done: int, total: Optional[int], message: str = "",
           **extras: Any) -> None:
    """Call ``progress`` (if any) with one event."""
    if progress is not None:
        progress(Progress(stage, done, total, message, extras))
