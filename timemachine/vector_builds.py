"""Age vectors from photos and latent files: read every example, project the photos, build the vector.

This is the pipeline's side of building (it projects photos through :func:`timemachine.pipeline.project_images`
and the projection cache); the direction itself is computed by :mod:`timemachine.age.build`.  In steps:
:func:`check_build_request` (refuse a build that cannot succeed before any work), :func:`prepare_inputs`
(read every photo and latent file), :func:`project_inputs` (through the projection cache),
:func:`build_vector_from_inputs`; or all at once, :func:`build_vector_from_files`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from timemachine.age import (AgeVector, build_vector, check_counts, check_notes, check_species, check_strength,
                             check_vector_name, resolve_layers)
from timemachine.errors import AgeVectorError, printable

if TYPE_CHECKING:
    from timemachine.cache import ProjectionCache
    from timemachine.latents import LatentFile
    from timemachine.perceptual import PerceptualDistance
    from timemachine.pipeline import LoadedModel
    from timemachine.projector import ProgressCallback, ProjectorSettings

PathLike = Union[str, os.PathLike]


def is_latent_file(path: PathLike) -> bool:
    """True for paths that name latent files (``.npz``) rather than photos."""
    return os.fspath(path).lower().endswith(".npz")


@dataclasses.dataclass
class VectorInput:
    """One puppy or adult example of a build.

    Attributes:
        path:    the photo or latent file as given.
        role:    'puppy' or 'adult'.
        kind:    'photo' or 'latent'.
        image:   for photos, the prepared photo uint8 [R, R, 3] (R = model resolution); else None.
        latent:  its :class:`timemachine.latents.LatentFile` (ws [num_ws, w_dim]); None for a photo not
                 projected yet.
        metrics: for projected photos, the projection's metrics ('lpips', 'psnr', 'cached', ...); else {}.
    """

    path: str
    role: str
    kind: str
    image: Optional[np.ndarray] = None
    latent: Optional["LatentFile"] = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)


def prepare_inputs(model: "LoadedModel", puppy_paths: Sequence[PathLike],
                   adult_paths: Sequence[PathLike]) -> list[VectorInput]:
    """Read every example, so that anything wrong is refused before a long projection starts.

    ``.npz`` files are read as latents and must fit the model's [num_ws, w_dim] and, where they record one,
    the model's fingerprint; anything else is a photo, read and prepared (centre crop, resize to the model's
    resolution) as :func:`timemachine.images.prepare_photo` does.

    Returns:
        the inputs, puppies first, each side in the order given; photos still need :func:`project_inputs`.
    """
    from timemachine import images
    from timemachine.latents import load_latent

    G = model.G
    inputs = []
    for role, paths in (("puppy", puppy_paths), ("adult", adult_paths)):
        for path in map(os.fspath, paths):
            if is_latent_file(path):
                latent = load_latent(path, num_ws=G.num_ws, w_dim=G.w_dim)
                recorded = latent.meta.get("model_fingerprint")
                if recorded is not None and recorded != model.fingerprint:
                    raise AgeVectorError(f"{role} latent {printable(path)} was projected with another model "
                                         f"({printable(recorded, 40)}), not with {printable(model.spec)} "
                                         f"({model.fingerprint})")
                inputs.append(VectorInput(path=path, role=role, kind="latent", latent=latent))
            else:
                inputs.append(VectorInput(path=path, role=role, kind="photo",
                                          image=images.prepare_photo(path, G.img_resolution)))
    return inputs


def project_inputs(model: "LoadedModel", inputs: Sequence[VectorInput], settings: "ProjectorSettings",
                   perceptual: "PerceptualDistance", *, cache: Optional["ProjectionCache"] = None,
                   callback: Optional["ProgressCallback"] = None, batch_size: int = 8) -> None:
    """Give every photo input its latent, projecting ``batch_size`` photos at a time (in place).

    Photos found in ``cache`` are not projected again and give no ``callback`` events; new projections are
    stored in it (see :func:`timemachine.pipeline.project_images`).  No pivotal tuning: it tunes the
    generator around a latent without changing the latent, so it cannot change an age vector.
    """
    from timemachine.pipeline import project_images

    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    todo = [item for item in inputs if item.kind == "photo" and item.latent is None]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        results = project_images(model, [item.image for item in chunk], settings, perceptual, cache=cache,
                                 callback=callback)
        for item, result in zip(chunk, results):
            item.latent = result.latent
            item.metrics = dict(result.metrics)


def build_vector_from_inputs(name: str, model: "LoadedModel", inputs: Sequence[VectorInput],
                             method: str = "mean", *, settings: Optional["ProjectorSettings"] = None,
                             species: str = "", notes: str = "", default_strength: float = 1.0,
                             default_layers: str = "all") -> AgeVector:
    """The age vector of prepared and projected inputs (see :func:`prepare_inputs`, :func:`project_inputs`).

    ``details['sources']`` records each input's file name, kind and, for photos, the projection's LPIPS and
    PSNR; ``details['projection']`` the projector settings used for photos.
    """
    missing = [item.path for item in inputs if item.latent is None]
    if missing:
        raise ValueError(f"inputs not projected yet: {', '.join(missing)}")
    sources = []
    for item in inputs:
        source: dict[str, Any] = {"role": item.role, "kind": item.kind, "file": os.path.basename(item.path)}
        if item.kind == "photo":
            source.update({k: item.metrics[k] for k in ("lpips", "psnr") if k in item.metrics})
        elif "model_fingerprint" not in item.latent.meta:
            source["model_unverified"] = True   # an official projected_w.npz records no model
        sources.append(source)
    details: dict[str, Any] = {"sources": sources}
    if settings is not None and any(item.kind == "photo" for item in inputs):
        details["projection"] = {"space": settings.space, "steps": settings.steps, "seed": settings.seed}
    return build_vector(name, [item.latent.ws for item in inputs if item.role == "puppy"],
                        [item.latent.ws for item in inputs if item.role == "adult"], method,
                        model_fingerprint=model.fingerprint, model_name=model.spec, species=species, notes=notes,
                        default_strength=default_strength, default_layers=default_layers, details=details)


def check_build_request(name: str, model: "LoadedModel", num_puppies: int, num_adults: int, method: str, *,
                        species: str = "", notes: str = "", default_strength: float = 1.0,
                        default_layers: str = "all") -> None:
    """Refuse a build that cannot succeed (bad name, counts, defaults) before any work is done."""
    check_vector_name(name)
    check_counts(method, num_puppies, num_adults)
    resolve_layers(default_layers, model.G.num_ws)
    check_strength(default_strength)
    check_species(species)
    check_notes(notes)


def build_vector_from_files(name: str, model: "LoadedModel", puppy_paths: Sequence[PathLike],
                            adult_paths: Sequence[PathLike], method: str = "mean", *,
                            settings: Optional["ProjectorSettings"] = None,
                            perceptual: Optional["PerceptualDistance"] = None,
                            cache: Optional["ProjectionCache"] = None,
                            callback: Optional["ProgressCallback"] = None, batch_size: int = 8,
                            species: str = "", notes: str = "", default_strength: float = 1.0,
                            default_layers: str = "all") -> tuple[AgeVector, list[VectorInput]]:
    """Build an age vector for ``model`` from photos and/or latent files of puppies and adults.

    The request is checked (:func:`check_build_request`) and every input read (:func:`prepare_inputs`)
    before anything is projected; photos are then projected through ``cache`` (:func:`project_inputs`,
    which needs ``settings`` and ``perceptual``).

    Returns:
        (the vector, not saved yet; the inputs with their latents and projection metrics).
    """
    check_build_request(name, model, len(puppy_paths), len(adult_paths), method, species=species, notes=notes,
                        default_strength=default_strength, default_layers=default_layers)
    inputs = prepare_inputs(model, puppy_paths, adult_paths)
    if any(item.kind == "photo" for item in inputs):
        if settings is None or perceptual is None:
            raise ValueError("projecting photos needs projector settings and a perceptual distance")
        project_inputs(model, inputs, settings, perceptual, cache=cache, callback=callback, batch_size=batch_size)
    vector = build_vector_from_inputs(name, model, inputs, method, settings=settings, species=species, notes=notes,
                                      default_strength=default_strength, default_layers=default_layers)
    return vector, inputs
