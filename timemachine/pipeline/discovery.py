"""Discovering a model's age direction from its own samples, as a job (see :mod:`timemachine.discover`).

:func:`precheck` refuses a request before the model or CLIP load (name, settings, species, breed, prompts);
:func:`discover` loads the CLIP labeller (the pipeline keeps it), samples, renders, labels (through the
discovery cache under ``Paths.discovery``: interrupted runs resume, new prompts relabel without rendering)
and stores the vector.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from timemachine import age, clip_labeller
from timemachine import discover as discover_module
from timemachine.env import Environment
from timemachine.errors import AgeVectorError, AlreadyExists, quoted
from timemachine.pipeline.progress import ProgressCallback, report
from timemachine.pipeline.requests import DiscoverRequest

if TYPE_CHECKING:
    from timemachine.pipeline.components import Pipeline

from timemachine.pipeline.components import ZOO_SPECIES


@dataclasses.dataclass
class DiscoverResult:
    """The discovered vector (stored when the request said so), where, and what discovery found."""

    vector: Any
    path: Optional[Path]
    info: dict[str, Any]


def species_of(request: DiscoverRequest, model_spec: Optional[str]) -> str:
    """The request's species, or the zoo model's; an error naming the choices when neither is known."""
    species = request.species or ZOO_SPECIES.get(str(model_spec or ""))
    if species is None:
        raise AgeVectorError("which animals does this model make? give the species: dog, cat or wild")
    return species


def precheck(env: Environment, request: DiscoverRequest, model_spec: Optional[str]) -> str:
    """Refuse a request that cannot succeed, before the model or CLIP load; returns the species."""
    library = age.VectorLibrary(env.paths)
    age.check_vector_name(request.name)
    if request.save and library.path(request.name).exists() and not request.replace:
        raise AlreadyExists(f"an age vector named {quoted(request.name)} already exists")
    request.settings.validate()
    age.check_strength(request.vector.default_strength)
    age.normalize_layers(request.vector.default_layers)
    age.check_notes(request.notes)
    species = species_of(request, model_spec)
    clip_labeller.resolve_breed(species, request.breed)
    if request.young is not None:
        clip_labeller.check_prompts(request.young, "young", species)
    if request.adult is not None:
        clip_labeller.check_prompts(request.adult, "adult", species)
    return species


def discover(pipe: "Pipeline", request: DiscoverRequest,
             progress: Optional[ProgressCallback] = None) -> DiscoverResult:
    """Discover, and store unless ``request.save`` is off (see the module docstring)."""
    species = precheck(pipe.env, request, pipe.model.spec)
    age.resolve_layers(request.vector.default_layers, pipe.G.num_ws)
    labeller = pipe.labeller(species, young=request.young, adult=request.adult, breed=request.breed)
    total = request.settings.samples

    def on_chunk(done: int, _total: int) -> None:
        report(progress, "sample", done, total, f"discovering: sample {done} of {total}")

    vector = discover_module.discover_vector(
        pipe.model, labeller, samples=total, name=request.name, settings=request.settings,
        cache_dir=pipe.env.paths.discovery if request.use_cache else None, progress=on_chunk, species=species,
        notes=request.notes, default_strength=request.vector.default_strength,
        default_layers=request.vector.default_layers)
    path = age.VectorLibrary(pipe.env.paths).save(vector, force=request.replace) if request.save else None
    return DiscoverResult(vector=vector, path=path, info=dict(vector.details.get("discovery", {})))
