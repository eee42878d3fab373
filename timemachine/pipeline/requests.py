"""What a face asks the pipeline for: one request dataclass per job, built from the settings dataclasses.

Requests are plain data (numbers, text, arrays, settings), so a face can build them, a queue can carry them to
a worker, and the pipeline checks them before any work (:meth:`Pipeline.check`).  Defaults are those of
:mod:`timemachine.settings`; nothing here repeats a number.

Shapes: a :class:`Photo`'s ``image`` is uint8 [R, R, 3], R = the model's resolution, as the projector sees it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Union

import numpy as np

from timemachine.align import AlignmentRequest
from timemachine.settings import (
    DiscoverySettings,
    ProjectorSettings,
    PTISettings,
    RenderSettings,
    ScoreSettings,
    VectorSettings,
)

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass
class Photo:
    """A photo prepared for a model (see :meth:`Pipeline.prepare_photo`).

    Attributes:
        image: uint8 [R, R, 3], cropped and resized as the projector will see it.
        info:  where it came from, for projection.json/run.json: 'path' or 'name', 'crop' (the square cut:
               'centre', 'X,Y,SIZE', or 'eyes' for a square turned to level the eyes) and 'alignment' (the
               record of :class:`timemachine.align.Alignment`: method, eyes, crop, notices).
    """

    image: np.ndarray
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def notices(self) -> list[str]:
        """One-line notices about how the photo was framed (a fallback to the centre square, say)."""
        alignment = self.info.get("alignment") or {}
        return [str(n) for n in alignment.get("notices", [])]


@dataclasses.dataclass
class ProjectionRequest:
    """Project photos into the model's latent space.

    Attributes:
        photos:     one or more :class:`Photo` (projected together as one batch, unless early stopping is on).
        settings:   the projector's settings.
        pti:        pivotal-tuning settings, or None for no tuning.
        use_cache:  read and write the projection store (the same photo, model and settings: projected once).
        checkpoint: a file to keep the optimisation's state in (resumable), or None.
        resume:     continue from ``checkpoint`` if it exists.
    """

    photos: list[Photo]
    settings: ProjectorSettings = dataclasses.field(default_factory=ProjectorSettings)
    pti: Optional[PTISettings] = None
    use_cache: bool = True
    checkpoint: Optional[str] = None
    resume: bool = False


@dataclasses.dataclass
class AgeEdit:
    """Which way to walk: an age vector (by library name, built-in name or file) and how to apply it.

    Attributes:
        vector:      a name from the library or the built-ins, or a ``.safetensors`` file; None = the model's
                     default vector (one the user marked, else the model's built-in).
        strength:    how far to walk; None = the vector's default strength; ``"auto"`` = the smallest strength
                     whose last frame CLIP finds young, within the coat-colour limit (:class:`ScoreSettings`).
        layers:      rows to edit ('coarse,middle', '0-7', 'all'); None = the vector's default layers.
        force_model: apply a vector that was built for another model anyway.
    """

    vector: Optional[str] = None
    strength: Union[float, str, None] = None
    layers: Optional[str] = None
    force_model: bool = False

    @property
    def auto_strength(self) -> bool:
        return isinstance(self.strength, str)


@dataclasses.dataclass
class VideoOutputs:
    """Where and what to write.

    Attributes:
        directory:    the output directory; None = the pipeline's video store (content-addressed: asking
                      again for the same video returns the stored one).
        gif, side_by_side, png_frames: optional outputs besides video.mp4, before.png and after.png.
    """

    directory: Optional[PathLike] = None
    gif: bool = True
    side_by_side: bool = False
    png_frames: bool = False


@dataclasses.dataclass
class AgeVideoRequest:
    """The whole product: project a photo, walk it along an age vector, write the video.

    Attributes:
        photo:      the prepared photo.
        edit:       the age vector and how to apply it.
        projection: how to project (its ``photos`` are ignored: ``photo`` is projected).
        render:     how to render (its ``strength`` is replaced by the edit's).
        outputs:    where to write.
        preview_only: stop after the preview strip (no video, nothing written but the projection store).
        scores:     thresholds of the scores and of the automatic strength.
    """

    photo: Photo
    edit: AgeEdit
    projection: ProjectionRequest = dataclasses.field(default_factory=lambda: ProjectionRequest(photos=[]))
    render: RenderSettings = dataclasses.field(default_factory=RenderSettings)
    outputs: VideoOutputs = dataclasses.field(default_factory=VideoOutputs)
    preview_only: bool = False
    scores: ScoreSettings = dataclasses.field(default_factory=ScoreSettings)


@dataclasses.dataclass
class RenderRequest:
    """Render an existing latent file (``projected_w.npz``) walking along an age vector.

    Attributes:
        latent:  the latent file.
        edit, render, outputs: as in :class:`AgeVideoRequest`.
        photo:   the photo, for the side-by-side video's first panel; None = no photo panel.
        scores:  thresholds of the scores and of the automatic strength.
    """

    latent: PathLike
    edit: AgeEdit
    render: RenderSettings = dataclasses.field(default_factory=RenderSettings)
    outputs: VideoOutputs = dataclasses.field(default_factory=VideoOutputs)
    photo: Optional[Photo] = None
    scores: ScoreSettings = dataclasses.field(default_factory=ScoreSettings)


@dataclasses.dataclass
class VectorExample:
    """One puppy or adult example of a vector build: a photo or a latent file (``.npz``).

    Attributes:
        role:   'puppy' or 'adult'.
        name:   the name to show and record (a path, or an upload's file name).
        data:   the file's bytes (uploads), or None to read ``path``.
        path:   the file to read when ``data`` is None.
        alignment: how to frame a photo (:class:`~timemachine.align.AlignmentRequest`); None = the default
                'auto' (the eye detector when its weights are present, else the centre square).
    """

    role: str
    name: str
    data: Optional[bytes] = None
    path: Optional[PathLike] = None
    alignment: Optional[AlignmentRequest] = None


@dataclasses.dataclass
class VectorBuildRequest:
    """Build an age vector from puppy and adult examples of one breed (photos are projected, cached).

    Attributes:
        name:       the library name of the new vector.
        examples:   puppies and adults (:class:`VectorExample`).
        settings:   method, stored defaults and batch size (:class:`~timemachine.settings.VectorSettings`).
        projection: settings for projecting the photos (its ``photos`` are ignored).
        species:    stored with the vector; None = the species of the zoo model, if known.
        notes:      stored with the vector.
        orthogonal_to: names of vectors whose directions the new one must not change.
        replace:    replace a library vector of the same name.
        save:       store the vector in the library (False: return it only).
    """

    name: str
    examples: list[VectorExample]
    settings: VectorSettings = dataclasses.field(default_factory=VectorSettings)
    projection: ProjectionRequest = dataclasses.field(default_factory=lambda: ProjectionRequest(photos=[]))
    species: Optional[str] = None
    notes: str = ""
    orthogonal_to: list[str] = dataclasses.field(default_factory=list)
    replace: bool = False
    save: bool = True


@dataclasses.dataclass
class DiscoverRequest:
    """Discover a model's age direction from its own samples, labelled young/adult by CLIP.

    Attributes:
        name:       the library name of the new vector.
        settings:   samples, seed, truncation, resolution, confidence
                    (:class:`~timemachine.settings.DiscoverySettings`).
        species:    'dog', 'cat' or 'wild' (the prompt ensembles); None = the zoo model's species.
        breed:      keep only the samples CLIP assigns to this breed; None = every sample.
        young, adult: prompts replacing the species' ensembles; None = the ensembles.
        notes:      stored with the vector.
        vector:     the stored defaults (strength, layers; its method is ignored: discovery fits 'linear').
        use_cache:  read and write the discovery cache (samples and labels; resumable).
        replace:    replace a library vector of the same name.
        save:       store the vector in the library (False: return it only).
    """

    name: str
    settings: DiscoverySettings = dataclasses.field(default_factory=DiscoverySettings)
    species: Optional[str] = None
    breed: Optional[str] = None
    young: Optional[list[str]] = None
    adult: Optional[list[str]] = None
    notes: str = ""
    vector: VectorSettings = dataclasses.field(default_factory=VectorSettings)
    use_cache: bool = True
    replace: bool = False
    save: bool = True


@dataclasses.dataclass
class PreviewStripRequest:
    """End frames (t = 1) of the walk from a latent along an age vector, one per strength.

    Attributes:
        latent:    the latent to walk from (a :class:`~timemachine.latents.LatentFile`).
        edit:      the age vector and layers (its ``strength`` is ignored: ``strengths`` are used).
        strengths: the strengths to show.
    """

    latent: Any
    edit: AgeEdit
    strengths: list[float] = dataclasses.field(default_factory=list)
