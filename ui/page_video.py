"""Page 1: upload a photo, crop it, choose and tune an age vector, watch and download the puppyhood video."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Optional

import numpy as np
import streamlit as st
from PIL import Image

import ui_common as ui
import ui_framing
import ui_vectors
import ui_work
from timemachine import pipeline
from timemachine.pipeline import system
from timemachine.settings import EASINGS, PRECISION_CHOICES, ProjectorSettings, PTISettings, RenderSettings

SLOT = "video"

#: Longest side of the photo as drawn on the page (the crop itself uses every pixel).
DISPLAY_SIDE = 640


# ----------------------------------------------------------------------------------------------------------
# 1. Photo (its framing: ui_framing; the age vector: ui_vectors)


def photo_section() -> Optional[dict[str, Any]]:
    """The uploaded photo, decoded once per upload: {'image': uint8 [H, W, 3], 'name', 'digest'} or None."""
    uploaded = st.file_uploader(
        "Photo of your adult pet", type=ui.PHOTO_TYPES, key="photo", max_upload_size=ui.PHOTO_MAX_MB,
        help=f"JPEG, PNG or WebP{' or HEIC' if 'heic' in ui.PHOTO_TYPES else ''}, up to {ui.PHOTO_MAX_MB} MB. "
             "A sharp, front-facing photo of the face works best: the models were trained on close-ups of "
             "animal faces.")
    if uploaded is None:
        st.session_state.pop("photo_decoded", None)
        return None
    cached = st.session_state.get("photo_decoded")
    if cached is None or cached["file_id"] != uploaded.file_id:   # a new upload: decode it once
        st.session_state.pop("photo_decoded", None)
        data = uploaded.getvalue()
        image = pipeline.load_photo(data, name=uploaded.name)  # ImageError
        display = Image.fromarray(image)
        display.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.LANCZOS)
        cached = {"image": image, "name": uploaded.name, "digest": hashlib.sha256(data).hexdigest(),
                  "file_id": uploaded.file_id, "display": np.asarray(display)}
        st.session_state["photo_decoded"] = cached
    return cached


# ----------------------------------------------------------------------------------------------------------
# 3. Settings


def settings_section() -> tuple[ProjectorSettings, Optional[PTISettings], RenderSettings, bool]:
    fast, fast_pti, short = ui.UI_PROJECTOR, ui.UI_PTI, ui.UI_RENDER
    official, authors, default = ProjectorSettings(), PTISettings(), RenderSettings()
    with st.expander("Quality and video settings"):
        left, right = st.columns(2)
        with left:
            st.markdown("**Projection** (finding your pet in the model)")
            steps = st.number_input(
                "Steps", 1, 5000, fast.steps, step=50, key="steps",
                help=f"Optimisation steps. The command line uses the official {official.steps}; the UI defaults to "
                     f"{fast.steps} so you see a result sooner: the learning-rate schedule and the noise decay are "
                     "spread over whatever number of steps you choose, so fewer steps run the same schedule faster, "
                     "with a likeness a little softer in fine detail. Raise it (500-1000) for a closer likeness.")
            space = st.radio("Latent space", ["w", "w+"], key="space", horizontal=True,
                             format_func=lambda s: {"w": "W (edits best)", "w+": "W+ (closer fit)"}[s],
                             help="W: one latent for all layers, as the official projector; age edits behave "
                                  "best. W+: one latent per layer; closer to the photo, but edits can look odd.")
            pti = st.checkbox("Pivotal tuning (PTI)", key="pti",
                              help="After projecting, fine-tune the generator around your pet's latent (Roich et "
                                   "al. 2021): much closer to the photo, slower.")
            pti_steps = st.number_input("PTI steps", 1, 2000, fast_pti.steps, step=50, key="pti_steps",
                                        disabled=not pti,
                                        help=f"The PTI authors and the command line use {authors.steps}; the UI "
                                             f"{fast_pti.steps}. Tuning stops early once LPIPS reaches "
                                             f"{authors.lpips_threshold}.")
            seed = st.number_input("Seed", 0, 2**31 - 1, official.seed, key="seed",
                                   help=f"Seeds the projection's random noise ({official.seed} as the official "
                                        "projector).")
            precision = st.radio("Precision", PRECISION_CHOICES, key="precision", horizontal=True,
                                 index=PRECISION_CHOICES.index(fast.precision),
                                 help=f"auto: bf16 where the server's CPU has native BF16 "
                                      f"({system.bf16_words()}), fp32 on other CPUs, the official float16 "
                                      "blocks on a GPU. bf16 projects and renders about twice as fast; its results "
                                      "differ from fp32 by rounding.")
        with right:
            st.markdown("**Video**")
            frames = st.number_input("Walk frames", 2, 960, short.frames, step=8, key="frames",
                                     help=f"Frames from adult to young (the command line uses {default.frames}). "
                                          f"Rendering time grows with the frame count; {short.frames} frames at "
                                          f"{short.fps:g} fps is a {short.frames / short.fps:g} s walk.")
            fps = st.number_input("Frames per second", 1, 60, int(short.fps), key="fps")
            easing = st.selectbox("Easing", EASINGS, index=EASINGS.index(short.easing), key="easing",
                                  help="Speed profile of the walk: smoothstep and cosine start and end gently.")
            hold_start = st.number_input("Hold the adult (frames)", 0, 240, short.hold_start, key="hold_start")
            hold_end = st.number_input("Hold the young animal (frames)", 0, 240, short.hold_end, key="hold_end")
            pingpong = st.checkbox("Walk back again (seamless loop)", key="pingpong")
            side_by_side = st.checkbox("Also a side-by-side video (photo | reconstruction | young)", key="side_by_side")
    projection = dataclasses.replace(fast, space=space, steps=int(steps), seed=int(seed), precision=precision)
    projection.validate()
    pti_settings = dataclasses.replace(fast_pti, steps=int(pti_steps)) if pti else None
    if pti_settings:
        pti_settings.validate()
    render_settings = dataclasses.replace(short, frames=int(frames), fps=float(fps), easing=easing,
                                          hold_start=int(hold_start), hold_end=int(hold_end), pingpong=bool(pingpong),
                                          precision=precision)
    render_settings.validate()
    return projection, pti_settings, render_settings, bool(side_by_side)


# ----------------------------------------------------------------------------------------------------------
# Results


def show_extras(extras: dict[str, Any]) -> None:
    """A running job's live images: the projector's reconstruction, then the preview strip."""
    cols = st.columns([1, 4])
    if extras.get("preview") is not None:
        cols[0].image(extras["preview"], caption="The model's reconstruction so far", width=160)
    if extras.get("strip"):
        with cols[1]:
            show_strip(extras["strip"])


def show_strip(strip) -> None:
    st.image([frame for _, frame in strip], caption=[f"t = {t:.2f}" for t, _ in strip], width=128)


def show_scores(info: dict[str, Any]) -> None:
    """How young the video ends, how close the likeness, whether the coat colour changed (run.json's scores)."""
    scores = info.get("scores")
    if not scores:
        return
    age, colour = scores.get("age", {}), scores.get("coat_colour", {})
    cols = st.columns(3)
    if age.get("p_young_first") == "unavailable":
        cols[0].metric("Looks young (CLIP)", "unavailable", help=age.get("reason"))
    else:
        cols[0].metric("Looks young (CLIP)", f"{age['p_young_last']:.0%}",
                       f"{age['p_young_last'] - age['p_young_first']:+.0%}",
                       help="CLIP's probability that the last frame shows a young animal, and its change from the "
                            "first frame.")
    likeness = scores.get("likeness", {})
    if "lpips" in likeness:
        cols[1].metric("Likeness (LPIPS)", f"{likeness['lpips']:.3f}", help="Lower is closer to your photo.")
    cols[2].metric("Coat colour change (ΔE)", f"{colour.get('delta_e_2000', float('nan')):.1f}",
                   help="CIEDE2000 between the coat colours of the first and last frames; above 10 is a clearly "
                        "different colour.")
    if colour.get("warning"):
        st.warning(colour["warning"][:1].upper() + colour["warning"][1:] + ".")
    auto = info.get("strength_auto")
    if auto:
        st.caption(f"Strength chosen for you: {auto['strength']:.2f} ({auto['reason']}).")


def show_result(result: pipeline.AgeVideoResult, current_key: Optional[str]) -> None:
    st.subheader("Your pet, younger")
    if current_key is not None and result.key != current_key:
        st.caption("These results were made with other settings than the ones above; press a button to update them.")
    show_strip(result.strip)
    m = result.metrics
    facts = []
    if m.get("lpips") is not None:
        facts.append(f"likeness: LPIPS {m['lpips']:.3f} (lower is closer), PSNR {m['psnr']:.1f} dB")
    if result.reused:
        facts.append("the same video was made before: shown from the cache")
    elif m.get("cached"):
        facts.append("projection reused from the cache")
    if facts:
        text = "; ".join(facts)
        st.caption(text[0].upper() + text[1:])
    show_scores(result.run_info)
    files = result.files
    if not files:
        st.info("These are preview frames along the walk. Press **Make the video** for the full video.")
        return
    left, right = st.columns([3, 2])
    with left:
        st.video(files["video"], loop=True, autoplay=True, muted=True)
        if files.get("side_by_side"):
            st.video(files["side_by_side"], loop=True, autoplay=True, muted=True)
    with right:
        st.markdown("**Downloads**")
        ui.download("Video (MP4)", files.get("video"), "video/mp4", "dl_mp4")
        ui.download("Side by side (MP4)", files.get("side_by_side"), "video/mp4", "dl_sbs")
        ui.download("Animation (GIF)", files.get("gif"), "image/gif", "dl_gif")
        ui.download("Before (PNG)", files.get("before"), "image/png", "dl_before")
        ui.download("After (PNG)", files.get("after"), "image/png", "dl_after")
        ui.download("Latent (projected_w.npz)", files.get("latent"), "application/octet-stream", "dl_latent")
        ui.download("Tuned weights (PTI)", files.get("pti"), "application/octet-stream", "dl_pti")
        ui.download("Settings and timings (run.json)", files.get("run"), "application/json", "dl_run")


# ----------------------------------------------------------------------------------------------------------


def main() -> None:
    st.title("Your pet as a puppy or kitten")
    st.write("Upload a photo of your adult dog or cat, frame its face, pick the age vector of its breed and "
             "watch it grow young.")
    finished = ui.collect_finished(SLOT)
    if finished is not None and finished.status == "done":
        st.session_state["video_result"] = finished.result
    model = ui.current_model()
    if model is None:
        st.warning("Choose a model in the sidebar first.")
        return

    st.header("1. Photo")
    photo = None
    with ui.shown_errors("reading the photo"):
        uploaded = photo_section()
        if uploaded is not None:
            photo = ui_framing.framing_section(uploaded, model)

    st.header("2. Age vector")
    edit = None
    with ui.shown_errors("choosing the age vector"):
        edit = ui_vectors.vector_section(model)

    st.header("3. Make it")
    settings = None
    with ui.shown_errors("checking the settings"):
        settings = settings_section()
    busy = ui.any_active_job() is not None
    request = None
    if settings is not None and photo is not None and edit is not None:
        projection, pti, render_settings, side_by_side = settings
        request = pipeline.AgeVideoRequest(
            photo=photo, edit=edit, render=render_settings,
            projection=pipeline.ProjectionRequest(photos=[], settings=projection, pti=pti),
            outputs=pipeline.VideoOutputs(directory=None, gif=True, side_by_side=side_by_side))
    left, right, _ = st.columns([1, 1, 2])
    preview = left.button("Preview frames", key="preview", disabled=request is None or busy,
                          help="Project the photo (or reuse its projection) and show a few frames along the walk.")
    make = right.button("Make the video", key="make", type="primary", disabled=request is None or busy,
                        help="Project the photo (or reuse its projection), then render the video.")
    if request is None and not busy:
        st.caption("Upload a photo and choose an age vector to start.")
    if (preview or make) and request is not None and not busy:
        with ui.shown_errors("starting the job"):
            pipe = ui.pipeline_for(model)
            request = dataclasses.replace(request, preview_only=bool(preview))
            pipe.check(request)
            ui.submit(SLOT, "age_video", request, model, pipe, label="preview" if preview else "video",
                      stages=ui_work.video_stages(request))
            # draw the page again with the buttons disabled and the job's progress (a rerun passes through
            # shown_errors)
            st.rerun()
    ui.show_job_outcome(SLOT)
    ui.job_panel(SLOT, show_extras)

    result = st.session_state.get("video_result")
    if result is not None and ui.active_job(SLOT) is None:
        current_key = None
        if request is not None:
            with ui.shown_errors("comparing the settings"):
                current_key = ui.pipeline_for(model).video_key(request)  # LPIPS is loaded already: a cache hit
        show_result(result, current_key)

ui.run_page(main)
