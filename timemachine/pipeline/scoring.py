"""Scores on every video, and the automatic strength, as the pipeline computes them (see :mod:`timemachine.scores`).

* age: CLIP's P(young) of the first and the last frame, or 'unavailable' with the reason (no CLIP weights
  offline, a species CLIP has no prompts for);
* likeness: the projection's LPIPS and PSNR (what the projector measured);
* coat colour: CIEDE2000 between the central mean colours of the first and the last frame, with a warning
  above the settings' limit.

The automatic strength (``AgeEdit(strength="auto")``) renders last frames only, before the video.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from timemachine import scores
from timemachine.clip_labeller import SPECIES
from timemachine.errors import AgeVectorError, TimemachineError, first_line
from timemachine.pipeline.components import ZOO_SPECIES
from timemachine.pipeline.progress import ProgressCallback, report
from timemachine.settings import ScoreSettings

if TYPE_CHECKING:
    from timemachine.latents import LatentFile
    from timemachine.pipeline.components import Pipeline

def labeller_for(pipe: "Pipeline", vector) -> tuple[Optional[Any], Optional[str]]:
    """(the CLIP labeller for the vector's species, None) or (None, why there is none)."""
    species = (vector.species or ZOO_SPECIES.get(pipe.model.spec, "")).strip().lower()
    if species not in SPECIES:
        return None, (f"CLIP has no prompts for the species {species!r}" if species else
                      "the species of this model and vector is not known")
    try:
        return pipe.labeller(species), None
    except TimemachineError as exc:
        return None, first_line(exc)


def choose_strength(pipe: "Pipeline", latent: "LatentFile", vector, direction: torch.Tensor,
                    reconstruction: np.ndarray, settings: ScoreSettings,
                    progress: Optional[ProgressCallback] = None) -> scores.AutoStrength:
    """The smallest strength that reaches the settings' P(young) within the coat-colour limit (last frames
    only); AgeVectorError when CLIP is unavailable."""
    labeller, reason = labeller_for(pipe, vector)
    if labeller is None:
        raise AgeVectorError(f"the automatic strength needs the CLIP labeller, which is unavailable: {reason}")
    report(progress, "strength", 0, 1, "choosing the strength")
    chosen = scores.auto_strength(scores.end_frame_renderer(pipe.G, latent, direction), labeller, reconstruction,
                                  settings)
    report(progress, "strength", 1, 1, f"strength {chosen.strength:.2f}: {chosen.reason}")
    return chosen


def video_scores(pipe: "Pipeline", vector, first: np.ndarray, last: np.ndarray, metrics: dict[str, Any],
                 settings: ScoreSettings) -> dict[str, Any]:
    """The three scores of a video whose first and last frames are ``first`` and ``last`` (uint8 [R, R, 3])."""
    labeller, reason = labeller_for(pipe, vector)
    age = scores.age_score(labeller, first, last, unavailable=reason)
    colour = scores.coat_colour_score(first, last, settings)
    likeness = {k: metrics[k] for k in ("lpips", "psnr") if metrics.get(k) is not None} if metrics else {}
    return {"age": age.to_dict(), "likeness": likeness or {"reason": "rendered from a latent file: no photo"},
            "coat_colour": colour.to_dict()}


def summary(scores_: dict[str, Any]) -> str:
    """One line for people: 'age P(young) 0.12 -> 0.87; coat colour delta E 4.2' (+ the warning)."""
    age = scores_.get("age", {})
    if age.get("p_young_first") == "unavailable":
        age_text = f"age score unavailable ({age.get('reason')})"
    else:
        age_text = f"P(young) {age['p_young_first']:.2f} -> {age['p_young_last']:.2f}"
    colour = scores_.get("coat_colour", {})
    text = f"{age_text}; coat colour delta E {colour.get('delta_e_2000', float('nan')):.1f}"
    return text + (f" ({colour['warning']})" if colour.get("warning") else "")
