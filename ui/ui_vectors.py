"""Choosing the age vector on the video page, and discovering one when the model has none.

Vectors that fit the chosen model come first (built-in ones included), the model's default preselected.  A
model with no fitting vector is not a dead end: the page offers the built-ins of other models (applied anyway,
at the visitor's risk), and a **Discover this model's age direction** job, which samples the generator itself,
labels the samples young or adult with CLIP and fits the direction (progress and cancel as for videos, one job
at a time); the discovered vector becomes the model's default.
"""

from __future__ import annotations

from typing import Any, Optional

import streamlit as st

import ui_common as ui
import ui_work
from timemachine import pipeline
from timemachine.errors import AgeVectorError
from timemachine.settings import DiscoverySettings

DISCOVER = "discover"
#: What the layer groups hold, for people.
MEANING = {"coarse": "pose, head shape", "middle": "face proportions, ears, eyes", "fine": "fur texture, colour"}


def fits(vector, model: pipeline.LoadedModel) -> bool:
    """Whether ``vector`` belongs to ``model`` (its fingerprint, or the zoo name it was loaded under)."""
    try:
        vector.check_model(model.fingerprint, model_name=model.spec, zoo=model.zoo)
    except AgeVectorError:
        return False
    return vector.num_ws == model.G.num_ws and vector.w_dim == model.G.w_dim


def _label(entry, model: pipeline.LoadedModel) -> str:
    v = entry.vector
    species = f", {v.species}" if v.species else ""
    source = " (built-in)" if entry.builtin else ""
    made = f"{v.num_puppies} puppies / {v.num_adults} adults" if v.method != "discovered" else "discovered"
    other = "" if fits(v, model) else " (built for another model)"
    return f"{entry.name}{source}{species}: {made}{other}"


def vector_section(model: pipeline.LoadedModel) -> Optional[pipeline.AgeEdit]:
    """The choice of vector, strength and layers, as an :class:`AgeEdit`; None when nothing usable is chosen."""
    usable, damaged = ui.library_entries()
    if damaged:
        with st.expander(f"{len(damaged)} damaged file(s) in the library"):
            for entry in damaged:
                st.write(f"`{entry.name}`: {entry.problem}")
    ours = [e for e in usable if fits(e.vector, model)]
    if not ours:
        st.info("No age vector fits this model yet. Let timemachine **discover this model's age direction** from "
                "its own samples (no photos needed), or build one from puppy and adult photos of the breed on the "
                "**Age vectors** page.")
        discover_panel(model)
        if not usable:
            return None
        with st.expander("Or use a vector built for another model"):
            st.caption("A direction means something only in the latent space it was found in: on another model the "
                       "same numbers make arbitrary changes.")
            if not st.checkbox("Show the vectors of other models", key="use_foreign"):
                return None
            return _chosen(model, usable, None)
    return _chosen(model, ours + [e for e in usable if e not in ours], _default_name(ui.vector_library(), model))


def _chosen(model: pipeline.LoadedModel, entries: list, default_name: Optional[str]) -> Optional[pipeline.AgeEdit]:
    """The vector picked among ``entries`` (``default_name`` preselected), its strength and layers."""
    names = [e.name for e in entries]
    by_name = {e.name: e for e in entries}
    index = names.index(default_name) if default_name in names else 0
    name = st.selectbox("Age vector", names, index=index, format_func=lambda n: _label(by_name[n], model),
                        key="vector_name",
                        help="A direction in the model's latent space that turns adults into puppies. Vectors "
                             "that fit this model come first; the model's default is chosen for you.")
    vector = by_name[name].vector
    if vector.notes:
        st.caption(vector.notes)
    force = False
    if not fits(vector, model):
        force = _force(vector, model, name)
        if not force:
            return None
    strength = _strength(vector, name)
    layers = _layers(vector, model, name)
    pipeline.resolve_layers(vector.default_layers if layers is None else layers, vector.num_ws)  # AgeVectorError
    return pipeline.AgeEdit(vector=name, strength=strength, layers=layers, force_model=force)


def _default_name(library, model: pipeline.LoadedModel) -> Optional[str]:
    try:
        found = library.default_vector(model.fingerprint, zoo=model.zoo)
    except AgeVectorError as exc:
        st.warning(str(exc))
        return None
    return found[0].name if found else None


def _force(vector, model: pipeline.LoadedModel, name: str) -> bool:
    force_key = f"force_{name}"
    try:
        vector.check_model(model.fingerprint, model_name=model.spec, zoo=model.zoo)
        problem = f"age vector {name!r} has the shape of another model"
    except AgeVectorError as exc:
        problem = str(exc)
    if st.session_state.get(force_key):
        st.warning(f"{problem}. You chose to apply it anyway.")
    else:
        st.error(problem)
    return st.checkbox("Apply it anyway (the result is usually meaningless)", key=force_key)


def _strength(vector, name: str):
    """The strength slider, or 'auto' when the visitor lets CLIP choose it."""
    default = float(vector.default_strength)
    auto = st.checkbox("Choose the strength for me", key=f"strength_auto_{name}",
                       help="The smallest strength whose last frame CLIP finds young, without changing the coat "
                            "colour (needs CLIP's weights on the server).")
    strength = st.slider("Strength", min(-2.0, default), max(3.0, default), default, step=0.05,
                         key=f"strength_{name}", disabled=auto,
                         help=f"How far to walk along the vector. 1 moves by the average distance between the "
                              f"puppies and adults it was built from; 0 changes nothing; negative values age "
                              f"the pet instead. This vector's default: {default:g}.")
    return "auto" if auto else strength


def _layers(vector, model: pipeline.LoadedModel, name: str) -> Optional[str]:
    num_ws = model.G.num_ws
    groups = {g: rows for g, rows in pipeline.layer_groups(num_ws).items() if rows} if num_ws % 2 == 0 else {}
    options = ["default", "all"] + list(groups) + ["range"]

    def layer_label(option: str) -> str:
        if option == "default":
            return f"The vector's default ({vector.default_layers})"
        if option == "all":
            return f"All layers (0-{num_ws - 1})"
        if option == "range":
            return "Index range…"
        return f"{option.capitalize()} {pipeline.format_indices(groups[option])} ({MEANING[option]})"

    choice = st.radio("Layers to change", options, format_func=layer_label, key=f"layers_{name}", horizontal=True,
                      help="Which of the generator's layers the vector edits. Coarse layers hold pose and head "
                           "shape, middle ones the proportions of the face, fine ones fur and colour.")
    if choice == "default":
        return None
    if choice == "range":
        lo, hi = st.slider("Layer indices", 0, num_ws - 1, (0, num_ws - 1), key=f"layer_range_{name}")
        return f"{lo}-{hi}"
    return choice


# ----------------------------------------------------------------------------------------------------------
# Discovery


def discovered_name(model: pipeline.LoadedModel) -> str:
    """The library name of the direction discovered for ``model``."""
    return f"discovered-{model.zoo or model.fingerprint[:12]}"


def discover_panel(model: pipeline.LoadedModel) -> None:
    """The discovery job's button, progress and outcome; a finished discovery becomes the model's default."""
    finished = ui.collect_finished(DISCOVER)
    if finished is not None and finished.status == pipeline.DONE:
        with ui.shown_errors("marking the discovered vector as the default"):
            ui.vector_library().set_default(finished.result.vector.name)
        st.session_state["discovered_message"] = _done_text(finished.result)
        st.rerun()
    if st.session_state.get("discovered_message"):
        st.success(st.session_state.pop("discovered_message"))
    species = pipeline.ZOO_SPECIES.get(model.spec)
    defaults = DiscoverySettings()
    left, right = st.columns([2, 1])
    if species is None:
        species = right.selectbox("Which animals does this model make?", ["dog", "cat", "wild"], key="discover_species")
    with st.expander("Discovery settings"):
        a, b = st.columns(2)
        samples = a.number_input("Samples", 20, 20_000, defaults.samples, step=100, key="discover_samples",
                                 help="Animals rendered and labelled; more give a steadier direction and take longer.")
        confidence = b.number_input("Confidence", 0.501, 0.99, defaults.confidence, step=0.05,
                                    key="discover_confidence",
                                    help="How sure CLIP must be that an animal is young (or adult) for it to count.")
    settings = DiscoverySettings(samples=int(samples), confidence=float(confidence))
    busy = ui.any_active_job() is not None
    if left.button("Discover this model's age direction", key="discover", disabled=busy,
                   help=f"Renders {settings.samples} of the model's own animals, asks CLIP which look young and which "
                        "adult, and fits the direction between them. Minutes on a GPU, longer on a CPU; samples are "
                        "kept, so a cancelled discovery continues where it stopped."):
        with ui.shown_errors("starting the discovery"):
            request = pipeline.DiscoverRequest(name=discovered_name(model), species=species, settings=settings,
                                               replace=True)
            pipe = ui.pipeline_for(model, with_perceptual=False)
            pipe.check(request)
            ui.submit(DISCOVER, "discover", request, model, pipe, label="discovery",
                      stages=dict(ui_work.DISCOVER_STAGES))
            st.rerun()   # (a rerun passes through shown_errors)
    ui.show_job_outcome(DISCOVER)
    ui.job_panel(DISCOVER, lambda extras: None)


def _done_text(result: Any) -> str:
    info = result.info
    try:
        return (f"Discovered {result.vector.name!r} from {info['samples']} samples ({info['young']} young, "
                f"{info['adult']} adult; held-out accuracy {info['heldout_accuracy']:.0%}). It is now this model's "
                "default age vector.")
    except (KeyError, TypeError, ValueError):
        return f"Discovered {result.vector.name!r}; it is now this model's default age vector."
