"""Age vectors as jobs: building one from puppy and adult examples (photos are projected), and finding one.

:func:`build_vector` reads every example first (so a bad file is refused before a long projection starts),
projects the photos through the projection store, computes the direction with :mod:`timemachine.age`, and
stores the vector in the library.  Latent files (``.npz``) are used as they are, and must fit the model.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from timemachine import age
from timemachine.align import AlignmentRequest
from timemachine.env import Environment
from timemachine.errors import AgeVectorError, AlreadyExists, TimemachineError, printable
from timemachine.latents import LatentFile, load_latent
from timemachine.pipeline.progress import ProgressCallback, report
from timemachine.pipeline.requests import Photo, VectorBuildRequest, VectorExample

if TYPE_CHECKING:
    from timemachine.pipeline.components import Pipeline

from timemachine.pipeline.components import ZOO_SPECIES


def vector_library(env: Environment) -> age.VectorLibrary:
    """The age-vector library of the environment's home (with the built-in vectors)."""
    return age.VectorLibrary(env.paths)


def load_vector(env: Environment, spec: str) -> age.AgeVector:
    """An age vector by library or built-in name, or a ``.safetensors`` file (:meth:`VectorLibrary.load`)."""
    return vector_library(env).load(spec)


@dataclasses.dataclass
class BuiltExample:
    """One example of a build and what became of it.

    Attributes:
        role, name: as in :class:`VectorExample`.
        kind:     'photo' or 'latent'.
        latent:   its latent (ws [num_ws, w_dim]).
        metrics:  the projection's metrics for photos ('lpips', 'psnr', 'cached'); {} for latent files.
        image:    the prepared photo while the build runs (None afterwards).
        info:     how the photo was framed (its ``Photo.info``: 'crop', 'alignment').
    """

    role: str
    name: str
    kind: str
    latent: Optional[LatentFile] = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    image: Optional[np.ndarray] = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class VectorBuildResult:
    """The built vector (stored in the library when the request said so) and its examples."""

    vector: Any
    examples: list[BuiltExample]
    path: Optional[Path] = None


def _is_latent(example: VectorExample) -> bool:
    return example.name.lower().endswith(".npz") or os.fspath(example.path or "").lower().endswith(".npz")


def precheck(env: Environment, request: VectorBuildRequest) -> str:
    """Refuse a build that cannot succeed, before the model is even loaded: the name (and whether it is taken),
    the counts for the method, the stored defaults, missing files.  Returns the method to use."""
    settings = request.settings
    settings.validate()
    age.check_vector_name(request.name)
    roles = [example.role for example in request.examples]
    if any(role not in ("puppy", "adult") for role in roles):
        raise AgeVectorError("every example must be a 'puppy' or an 'adult'")
    puppies, adults = roles.count("puppy"), roles.count("adult")
    method = settings.resolved_method(puppies, adults)
    age.check_counts(method, puppies, adults)
    age.check_strength(settings.default_strength)
    age.normalize_layers(settings.default_layers)
    if request.species is not None:
        age.check_species(request.species)
    age.check_notes(request.notes)
    request.projection.settings.validate()
    if request.save and vector_library(env).path(request.name).exists() and not request.replace:
        raise AlreadyExists(f"an age vector named {request.name!r} already exists")
    for example in request.examples:
        if example.data is None and not (example.path is not None and os.path.isfile(example.path)):
            shown = example.path if example.path is not None else example.name
            raise AgeVectorError(f"no such file: {printable(shown)}")
    return method


def check(pipe: "Pipeline", request: VectorBuildRequest) -> str:
    """:func:`precheck`, plus what needs the model (the default layers exist); returns the method to use."""
    method = precheck(pipe.env, request)
    age.resolve_layers(request.settings.default_layers, pipe.G.num_ws)
    return method


def _read_example(pipe: "Pipeline", example: VectorExample) -> BuiltExample:
    """Read one example: a latent file (checked against the model) or a photo (prepared for the model)."""
    G = pipe.G
    source = example.data if example.data is not None else example.path
    if source is None:
        raise AgeVectorError(f"the {example.role} example {printable(example.name)} has no content")
    if _is_latent(example):
        if example.data is not None:
            with tempfile.TemporaryDirectory(prefix="timemachine-example-") as tmp:
                path = Path(tmp) / "example.npz"
                path.write_bytes(example.data)
                try:
                    latent = load_latent(path, num_ws=G.num_ws, w_dim=G.w_dim)
                except TimemachineError as exc:
                    raise type(exc)(str(exc).replace(str(path), example.name)) from None
        else:
            assert example.path is not None   # the source, when there is no data
            latent = load_latent(example.path, num_ws=G.num_ws, w_dim=G.w_dim)
        recorded = latent.meta.get("model_fingerprint")
        if recorded is not None and recorded != pipe.model.fingerprint:
            raise AgeVectorError(f"{example.role} latent {printable(example.name)} was projected with another "
                                 f"model ({printable(recorded)}), "
                                 f"not with {pipe.model.spec} ({pipe.model.fingerprint})")
        return BuiltExample(example.role, example.name, "latent", latent=latent)
    photo = pipe.prepare_photo(source, alignment=example.alignment or AlignmentRequest(), name=example.name)
    return BuiltExample(example.role, example.name, "photo", image=photo.image, info=photo.info)


def _project(pipe: "Pipeline", request: VectorBuildRequest, examples: list[BuiltExample],
             progress: Optional[ProgressCallback]) -> None:
    """Give every photo example its latent (projected ``batch_size`` at a time), through the projection store.
    No pivotal tuning: it changes the generator around a latent, not the latent, so not the vector."""
    todo = [item for item in examples if item.kind == "photo"]
    if not todo:
        return
    projection = dataclasses.replace(request.projection, pti=None, checkpoint=None, resume=False,
                                     photos=[_photo(item) for item in todo])
    for item, result in zip(todo, pipe.project(projection, progress)):
        item.latent = result.latent
        item.metrics = dict(result.metrics)


def _photo(item: BuiltExample) -> Photo:
    """A photo example as the projection takes it."""
    assert item.image is not None   # a photo example holds its prepared image while the build runs
    return Photo(image=item.image, info={**item.info, "name": item.name})


def _ws(examples: list[BuiltExample], role: str) -> list[torch.Tensor]:
    """The latents ws [num_ws, w_dim] of the examples of ``role``."""
    ws = []
    for item in examples:
        if item.role == role:
            assert item.latent is not None   # every example has its latent once _project has run
            ws.append(item.latent.ws)
    return ws


def _details(request: VectorBuildRequest, examples: list[BuiltExample]) -> dict[str, Any]:
    sources = []
    for item in examples:
        source: dict[str, Any] = {"role": item.role, "kind": item.kind, "file": os.path.basename(item.name)}
        if item.kind == "photo":
            source.update({k: item.metrics[k] for k in ("lpips", "psnr") if k in item.metrics})
            source["crop"] = item.info.get("crop", "centre")
        elif item.latent is not None and "model_fingerprint" not in item.latent.meta:
            source["model_unverified"] = True   # an official projected_w.npz records no model
        sources.append(source)
    details: dict[str, Any] = {"sources": sources}
    if any(item.kind == "photo" for item in examples):
        settings = request.projection.settings
        details["projection"] = {"space": settings.space, "steps": settings.steps, "seed": settings.seed}
    return details


def build_vector(pipe: "Pipeline", request: VectorBuildRequest,
                 progress: Optional[ProgressCallback] = None) -> VectorBuildResult:
    """Build (and, unless ``request.save`` is off, store) an age vector from the request's examples."""
    method = check(pipe, request)
    others = [load_vector(pipe.env, spec) for spec in request.orthogonal_to]
    for other in others:
        other.check_model(pipe.model.fingerprint, pipe.model.spec, zoo=pipe.model.zoo)
    examples = [_read_example(pipe, example) for example in request.examples]
    _project(pipe, request, examples, progress)
    report(progress, "build", 0, 1, "building the vector")
    species = request.species if request.species is not None else ZOO_SPECIES.get(pipe.model.spec, "")
    settings = request.settings
    vector = age.build_vector(
        request.name, _ws(examples, "puppy"), _ws(examples, "adult"), method,
        model_fingerprint=pipe.model.fingerprint, model_name=pipe.model.spec, species=species, notes=request.notes,
        default_strength=settings.default_strength, default_layers=settings.default_layers,
        details=_details(request, examples))
    if others:
        vector = vector.orthogonalized(others)
    path = vector_library(pipe.env).save(vector, force=request.replace) if request.save else None
    report(progress, "build", 1, 1, "vector built")
    for item in examples:
        item.image = None
    return VectorBuildResult(vector=vector, examples=examples, path=path)
