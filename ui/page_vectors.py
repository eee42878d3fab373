"""Page 2: build a breed's age vector from puppy and adult photos, save it, and tune its defaults."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import streamlit as st

import ui_common as ui
import ui_work
from timemachine import pipeline
from timemachine.errors import AgeVectorError
from timemachine.settings import ProjectorSettings, VectorSettings

BUILD, TUNE = "build", "tune"
METHOD_HELP = {
    "mean": "mean: average puppy minus average adult (any numbers of each)",
    "linear": "linear: the direction a classifier finds between puppies and adults; ignores pose and fur colour "
              "better (at least 2 of each, 5-20 work well)",
    "pair": "pair: one puppy and one adult photo of the same animal",
}


def build_section(model: pipeline.LoadedModel) -> None:
    st.header("Build an age vector")
    st.write("Upload photos of puppies and of adults of one breed. Each photo is projected into the model "
             "(centre-cropped; frame the faces before uploading), and the vector is the direction from the "
             "adults to the puppies. Latent files (projected_w.npz) of this model work too.")
    finished = ui.collect_finished(BUILD)
    if finished is not None and finished.status == "done":
        st.session_state["build_result"] = finished.result
    types = ui.PHOTO_TYPES + ["npz"]
    left, right = st.columns(2)
    puppies = left.file_uploader("Puppy photos", type=types, accept_multiple_files=True, key="puppies",
                                 max_upload_size=ui.PHOTO_MAX_MB)
    adults = right.file_uploader("Adult photos", type=types, accept_multiple_files=True, key="adults",
                                 max_upload_size=ui.PHOTO_MAX_MB)
    name = st.text_input("Name", key="build_name", placeholder="e.g. yorkshire",
                         help="How the library calls it: letters, digits, '.', '_' and '-'.")
    left, right = st.columns(2)
    with left:
        method = st.radio("Method", ["mean", "linear", "pair"], key="build_method", format_func=METHOD_HELP.get)
        species = st.text_input("Species", pipeline.ZOO_SPECIES.get(model.spec, ""), key="build_species")
        notes = st.text_area("Notes", key="build_notes", placeholder="breed, where the photos come from, …")
    with right:
        strength = st.number_input("Default strength", -pipeline.MAX_STRENGTH, pipeline.MAX_STRENGTH,
                                   VectorSettings().default_strength, step=0.1, key="build_strength",
                                   help="The strength the video page starts from.")
        layers = st.text_input("Default layers", VectorSettings().default_layers, key="build_layers",
                               help=f"all, coarse, middle, fine or index ranges such as 0-7. This model: "
                                    f"{_groups_text(model)}.")
        steps = st.number_input("Projection steps", 1, 5000, ui.UI_PROJECTOR.steps, step=50, key="build_steps",
                                help=f"Per photo (projected together in batches). The command line uses the "
                                     f"official {ProjectorSettings().steps}; see the video page's settings for the "
                                     f"UI's {ui.UI_PROJECTOR.steps}.")
        space = st.radio("Latent space", ["w", "w+"], key="build_space", horizontal=True,
                         format_func=lambda s: {"w": "W (edits best)", "w+": "W+"}[s],
                         help="W (as the official projector) gives directions that edit best.")
    busy = ui.any_active_job() is not None
    if st.button("Build the vector", key="build", type="primary", disabled=busy or not (puppies and adults)):
        with ui.shown_errors("starting the build"):
            examples = [pipeline.VectorExample(role=role, name=f.name, data=f.getvalue())
                        for role, files in (("puppy", puppies), ("adult", adults)) for f in files]
            request = pipeline.VectorBuildRequest(
                name=name.strip(), examples=examples,
                settings=VectorSettings(method=method, default_strength=float(strength),
                                        default_layers=layers.strip() or "all"),
                projection=pipeline.ProjectionRequest(
                    photos=[], settings=dataclasses.replace(ui.UI_PROJECTOR, space=space, steps=int(steps))),
                species=species.strip(), notes=notes, save=False)
            pipe = ui.pipeline_for(model)
            pipe.check(request)            # a bad name or too few photos: refused now, not after projecting
            st.session_state.pop("build_result", None)
            ui.submit(BUILD, "build_vector", request, model, pipe, label="vector", stages=ui_work.BUILD_STAGES)
            st.rerun()   # (a rerun passes through shown_errors)
    ui.show_job_outcome(BUILD)
    ui.job_panel(BUILD, _show_build_extras)
    result: Optional[pipeline.VectorBuildResult] = st.session_state.get("build_result")
    if result is not None and ui.active_job(BUILD) is None:
        _show_build_result(result)


def _groups_text(model: pipeline.LoadedModel) -> str:
    try:
        return pipeline.describe_layer_groups(model.G.num_ws)
    except AgeVectorError:
        return f"layers 0-{model.G.num_ws - 1}"


def _show_build_extras(extras: dict) -> None:
    if extras.get("preview") is not None:
        st.image(extras["preview"], caption="Reconstruction of the first photo so far", width=160)


def _show_build_result(result: pipeline.VectorBuildResult) -> None:
    vector = result.vector
    st.success(f"Built {vector.name!r} ({vector.method}, {vector.space.upper()} space) from {vector.num_puppies} "
               f"puppies and {vector.num_adults} adults.")
    classifier = vector.details.get("classifier")
    if classifier:
        st.caption(f"Classifier training accuracy: {classifier['training_accuracy']:.0%}")
    st.dataframe(ui_work.example_rows(result), hide_index=True)
    replace = st.checkbox(f"Replace the library's {vector.name!r} if there is one", key="build_replace")
    if st.button("Save to the library", key="build_save"):
        with ui.shown_errors("saving the vector"):
            path = ui.vector_library().save(vector, force=replace)
            st.session_state.pop("build_result", None)
            st.session_state["saved_message"] = f"Saved {vector.name!r} to the library ({path})."
            st.rerun()


def tune_section(model: pipeline.LoadedModel) -> None:
    st.header("Your library")
    if st.session_state.get("saved_message"):
        st.success(st.session_state.pop("saved_message"))
    finished = ui.collect_finished(TUNE)
    if finished is not None and finished.status == "done":
        st.session_state["tune_strip"] = finished.result
    usable = _readable_vectors()
    if not usable:
        st.info("No age vectors yet: build one above.")
        return
    name = st.selectbox("Age vector", list(usable), key="tune_name")
    vector = usable[name]
    _describe_vector(vector, model)
    _tune_form(name, vector, model)
    ui.show_job_outcome(TUNE)
    ui.job_panel(TUNE, lambda extras: None)
    strip = st.session_state.get("tune_strip")
    if strip and ui.active_job(TUNE) is None:
        st.image([frame for _, frame in strip], caption=[f"strength {s:g}" for s, _ in strip], width=128)


def _readable_vectors() -> dict[str, pipeline.AgeVector]:
    """The library's and the built-in vectors that can be read, by name; a warning for each that cannot."""
    usable, damaged = ui.library_entries()
    for entry in damaged:
        st.warning(f"`{entry.name}` cannot be read: {entry.problem}")
    return {e.name: e.vector for e in usable}


def _describe_vector(vector: pipeline.AgeVector, model: pipeline.LoadedModel) -> None:
    """How ``vector`` was built, whether for the sidebar's model, and the examples it was built from."""
    ours = vector.model_fingerprint == model.fingerprint
    built_for = f"`{vector.model_name}` (`{vector.model_fingerprint}`)" if vector.model_name else \
        f"`{vector.model_fingerprint}`"
    st.markdown(
        f"**{vector.method}** vector from {vector.num_puppies} puppies and {vector.num_adults} adults, "
        f"{vector.space.upper()} space, built {vector.created} for model {built_for}: "
        f"{'the model chosen in the sidebar' if ours else '**not the model chosen in the sidebar**'}.")
    sources = vector.details.get("sources")
    if sources:
        with st.expander("Examples it was built from"):
            st.dataframe(sources, hide_index=True)


def _tune_form(name: str, vector: pipeline.AgeVector, model: pipeline.LoadedModel) -> None:
    """The form of ``vector``'s defaults: save them to the library, or preview them on the video page's photo."""
    with st.form(f"tune_{name}"):
        left, right = st.columns(2)
        strength = left.number_input("Default strength", -pipeline.MAX_STRENGTH, pipeline.MAX_STRENGTH,
                                     float(vector.default_strength), step=0.05, key=f"tune_strength_{name}")
        layers = right.text_input("Default layers", vector.default_layers, key=f"tune_layers_{name}",
                                  help="all, coarse, middle, fine or index ranges such as 0-7 "
                                       f"({_groups_text(model)}).")
        species = left.text_input("Species", vector.species, key=f"tune_species_{name}")
        notes = right.text_area("Notes", vector.notes, key=f"tune_notes_{name}")
        save = st.form_submit_button("Save the defaults", type="primary")
        latent = _latent_for_preview(model)
        preview = st.form_submit_button("Preview on my photo",
                                        disabled=latent is None or ui.any_active_job() is not None,
                                        help="End frames of the walk at 0, half, full and 1.5x this strength, on the "
                                             "photo projected on the video page (make a preview or video there first).")
    if save:
        with ui.shown_errors("saving the defaults"):
            pipeline.resolve_layers(layers, vector.num_ws)
            ui.vector_library().update(name, strength=float(strength), layers=layers.strip() or "all",
                                       species=species.strip(), notes=notes)
            st.success(f"Saved the defaults of {name!r}.")
    if preview and latent is not None:
        _start_preview(name, vector, model, latent, float(strength), layers)


def _start_preview(name: str, vector: pipeline.AgeVector, model: pipeline.LoadedModel, latent: Any,
                   strength: float, layers: str) -> None:
    """Submit the tune preview: the walk's end frames at 0, half, full and 1.5x ``strength``."""
    with ui.shown_errors("starting the preview"):
        edit = pipeline.AgeEdit(vector=name, layers=layers.strip() or "all")
        pipe = ui.pipeline_for(model, with_perceptual=False)
        request = pipeline.PreviewStripRequest(latent=latent, edit=edit,
                                               strengths=[0.0, strength / 2, strength, 1.5 * strength])
        pipe.check(request)   # the vector, its layers and its fit to the model, before the job is queued
        ui.submit(TUNE, "preview_strip", request, model, pipe, label="tune preview", stages=ui_work.STRIP_STAGES)
        st.rerun()   # (a rerun passes through shown_errors)


def _latent_for_preview(model: pipeline.LoadedModel):
    """The latent of the video page's last result, if it belongs to ``model``."""
    result = st.session_state.get("video_result")
    if result is None or result.model_fingerprint != model.fingerprint or result.latent is None:
        return None
    return result.latent


def main() -> None:
    st.title("Age vectors")
    model = ui.current_model()
    if model is None:
        st.warning("Choose a model in the sidebar first: age vectors belong to one model.")
        return
    build_section(model)
    st.divider()
    tune_section(model)


ui.run_page(main)
