"""Page 1: upload a photo, crop it, choose and tune an age vector, watch and download the puppyhood video."""

from __future__ import annotations

import hashlib
from typing import Any, Optional

import numpy as np
import streamlit as st
from PIL import Image, ImageDraw

import ui_common as ui
import ui_work
from timemachine import age, images, pipeline
from timemachine.device import cpu_bf16_support
from timemachine.projector import ProjectorSettings, PTISettings
from timemachine.render import EASINGS, RenderSettings
from timemachine.settings import DEFAULT_PRECISION, PRECISION_CHOICES

SLOT = "video"

#: Longest side of the photo as drawn on the page (the crop itself uses every pixel).
DISPLAY_SIDE = 640


# ----------------------------------------------------------------------------------------------------------
# 1. Photo and crop


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
        image = images.load_image(data, name=uploaded.name, max_bytes=images.DEFAULT_MAX_BYTES)  # ImageError
        display = Image.fromarray(image)
        display.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.LANCZOS)
        cached = {"image": image, "name": uploaded.name, "digest": hashlib.sha256(data).hexdigest(),
                  "file_id": uploaded.file_id, "display": np.asarray(display)}
        st.session_state["photo_decoded"] = cached
    return cached


def crop_section(photo: dict[str, Any], resolution: int) -> tuple[images.CropBox, np.ndarray]:
    """Square crop controls with a live preview; returns the box and the prepared photo uint8 [R, R, 3]."""
    image = photo["image"]
    height, width = image.shape[:2]
    side = min(height, width)
    key = photo["digest"][:12]
    left, right = st.columns([3, 2])
    with right:
        size = st.slider("Crop size (pixels)", images.MIN_SIDE, side, side, key=f"crop_size_{key}",
                         help="Side of the square that is cut out. Frame the face: ears to chin, little background.",
                         disabled=side == images.MIN_SIDE)
        x_pct = st.slider("Horizontal position (%)", 0, 100, 50, key=f"crop_x_{key}", disabled=width == size,
                          help="0 = the left edge of the photo, 100 = the right edge.")
        y_pct = st.slider("Vertical position (%)", 0, 100, 50, key=f"crop_y_{key}", disabled=height == size,
                          help="0 = the top of the photo, 100 = the bottom.")
    box = images.CropBox((width - size) * x_pct // 100, (height - size) * y_pct // 100, size)
    prepared = images.resize(images.square_crop(image, box, name=photo["name"]), resolution)
    display = photo["display"]
    scale = display.shape[1] / width
    with left:
        st.image(_draw_box(display, box, scale), caption=f"{photo['name']}: {width}x{height} pixels, crop {box} "
                                                        "(X,Y,SIZE)", width="stretch")
    with right:
        st.image(prepared, caption=f"What the model sees: {resolution}x{resolution}", width=200)
    return box, prepared


def _draw_box(display: np.ndarray, box: images.CropBox, scale: float) -> np.ndarray:
    """The photo with everything outside the crop dimmed and the crop outlined."""
    dimmed = (display.astype(np.float32) * 0.45).astype(np.uint8)
    x0, y0 = int(round(box.x * scale)), int(round(box.y * scale))
    x1, y1 = int(round((box.x + box.size) * scale)), int(round((box.y + box.size) * scale))
    dimmed[y0:y1, x0:x1] = display[y0:y1, x0:x1]
    out = Image.fromarray(dimmed)
    ImageDraw.Draw(out).rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=(255, 196, 0),
                                  width=max(2, display.shape[1] // 200))
    return np.asarray(out)


# ----------------------------------------------------------------------------------------------------------
# 2. Age vector


def vector_section(model: pipeline.LoadedModel) -> Optional[dict[str, Any]]:
    """Choice of library vector, strength and layers: {'vector', 'strength', 'layers', 'force'} or None."""
    entries = age.list_vectors()
    damaged = [e for e in entries if e.vector is None]
    usable = [e for e in entries if e.vector is not None]
    if damaged:
        with st.expander(f"{len(damaged)} damaged file(s) in the library"):
            for entry in damaged:
                st.write(f"`{entry.name}`: {entry.problem}")
    if not usable:
        st.info("Your age-vector library is empty. Build a vector for this model on the **Age vectors** page "
                "(from photos of puppies and adults of the breed), then come back.")
        return None
    ours = [e for e in usable if e.vector.model_fingerprint == model.fingerprint]
    ordered = ours + [e for e in usable if e not in ours]
    by_name = {e.name: e.vector for e in ordered}

    def label(name: str) -> str:
        v = by_name[name]
        species = f", {v.species}" if v.species else ""
        other = "" if v.model_fingerprint == model.fingerprint else " (built for another model)"
        return f"{name}{species}: {v.num_puppies} puppies / {v.num_adults} adults{other}"

    name = st.selectbox("Age vector", list(by_name), format_func=label, key="vector_name",
                        help="A direction in the model's latent space that turns adults into puppies, built for "
                             "one breed from puppy and adult photos. Vectors built for this model come first.")
    vector = by_name[name]
    if vector.notes:
        st.caption(vector.notes)
    force = False
    if vector.model_fingerprint != model.fingerprint:
        force_key = f"force_{name}"
        try:
            vector.check_model(model.fingerprint, model_name=model.spec)
        except age.AgeVectorError as exc:
            if st.session_state.get(force_key):
                st.warning(f"{exc}. You chose to apply it anyway.")
            else:
                st.error(str(exc))
        force = st.checkbox("Apply it anyway (the result is usually meaningless)", key=force_key)
        if not force:
            return None

    default = float(vector.default_strength)
    strength = st.slider("Strength", min(-2.0, default), max(3.0, default), default, step=0.05,
                         key=f"strength_{name}",
                         help=f"How far to walk along the vector. 1 moves by the average distance between the "
                              f"puppies and adults it was built from; 0 changes nothing; negative values age "
                              f"the pet instead. This vector's default: {default:g}.")
    num_ws = model.G.num_ws
    groups = {g: rows for g, rows in age.layer_groups(num_ws).items() if rows} if num_ws % 2 == 0 else {}
    meaning = {"coarse": "pose, head shape", "middle": "face proportions, ears, eyes", "fine": "fur texture, colour"}
    options = ["default", "all"] + list(groups) + ["range"]

    def layer_label(option: str) -> str:
        if option == "default":
            return f"The vector's default ({vector.default_layers})"
        if option == "all":
            return f"All layers (0-{num_ws - 1})"
        if option == "range":
            return "Index range…"
        return f"{option.capitalize()} {age.format_indices(groups[option])} ({meaning[option]})"

    choice = st.radio("Layers to change", options, format_func=layer_label, key=f"layers_{name}", horizontal=True,
                      help="Which of the generator's layers the vector edits. Coarse layers hold pose and head "
                           "shape, middle ones the proportions of the face, fine ones fur and colour.")
    if choice == "default":
        layers = None
    elif choice == "range":
        lo, hi = st.slider("Layer indices", 0, num_ws - 1, (0, num_ws - 1), key=f"layer_range_{name}")
        layers = f"{lo}-{hi}"
    else:
        layers = choice
    pipeline.age_direction(model, vector, layers, force_model=force)  # AgeVectorError, shown by the page
    return {"vector": vector, "strength": strength, "layers": layers, "force": force}


# ----------------------------------------------------------------------------------------------------------
# 3. Settings


def settings_section() -> tuple[ProjectorSettings, Optional[PTISettings], RenderSettings, bool]:
    with st.expander("Quality and video settings"):
        left, right = st.columns(2)
        with left:
            st.markdown("**Projection** (finding your pet in the model)")
            steps = st.number_input(
                "Steps", 1, 5000, ui.UI_STEPS, step=50, key="steps",
                help=f"Optimisation steps. The command line uses the official 1000; the UI defaults to {ui.UI_STEPS} "
                     "so you see a result sooner: the learning-rate schedule and the noise decay are spread over "
                     "whatever number of steps you choose, so fewer steps run the same schedule faster, with a "
                     "likeness a little softer in fine detail. Raise it (500-1000) for a closer likeness.")
            space = st.radio("Latent space", ["w", "w+"], key="space", horizontal=True,
                             format_func=lambda s: {"w": "W (edits best)", "w+": "W+ (closer fit)"}[s],
                             help="W: one latent for all layers, as the official projector; age edits behave "
                                  "best. W+: one latent per layer; closer to the photo, but edits can look odd.")
            pti = st.checkbox("Pivotal tuning (PTI)", key="pti",
                              help="After projecting, fine-tune the generator around your pet's latent (Roich et "
                                   "al. 2021): much closer to the photo, slower.")
            pti_steps = st.number_input("PTI steps", 1, 2000, ui.UI_PTI_STEPS, step=50, key="pti_steps", disabled=not pti,
                                        help=f"The PTI authors and the command line use 350; the UI {ui.UI_PTI_STEPS}. "
                                             f"Tuning stops early once LPIPS reaches {PTISettings().lpips_threshold}.")
            seed = st.number_input("Seed", 0, 2**31 - 1, 303, key="seed",
                                   help="Seeds the projection's random noise (303 as the official projector).")
            precision = st.radio("Precision", PRECISION_CHOICES, key="precision", horizontal=True,
                                 index=PRECISION_CHOICES.index(DEFAULT_PRECISION),
                                 help=f"auto: bf16 where the server's CPU has native BF16 ({_bf16_words()}), "
                                      "fp32 on other CPUs, the official float16 blocks on a GPU. bf16 projects and "
                                      "renders about twice as fast; its results differ from fp32 by rounding.")
        with right:
            st.markdown("**Video**")
            frames = st.number_input("Walk frames", 2, 960, ui.UI_FRAMES, step=8, key="frames",
                                     help=f"Frames from adult to young (the command line uses 96). Rendering time "
                                          f"grows with the frame count; {ui.UI_FRAMES} frames at 24 fps is a 2 s walk.")
            fps = st.number_input("Frames per second", 1, 60, 24, key="fps")
            easing = st.selectbox("Easing", EASINGS, index=EASINGS.index("smoothstep"), key="easing",
                                  help="Speed profile of the walk: smoothstep and cosine start and end gently.")
            hold_start = st.number_input("Hold the adult (frames)", 0, 240, ui.UI_HOLD_START, key="hold_start")
            hold_end = st.number_input("Hold the young animal (frames)", 0, 240, ui.UI_HOLD_END, key="hold_end")
            pingpong = st.checkbox("Walk back again (seamless loop)", key="pingpong")
            side_by_side = st.checkbox("Also a side-by-side video (photo | reconstruction | young)", key="side_by_side")
    projection = ProjectorSettings(space=space, steps=int(steps), seed=int(seed), preview_every=ui_work.PREVIEW_EVERY,
                                   precision=precision)
    projection.validate()
    pti_settings = PTISettings(steps=int(pti_steps)) if pti else None
    if pti_settings:
        pti_settings.validate()
    render_settings = RenderSettings(frames=int(frames), fps=float(fps), easing=easing, hold_start=int(hold_start),
                                     hold_end=int(hold_end), pingpong=bool(pingpong), precision=precision)
    return projection, pti_settings, render_settings, bool(side_by_side)


def _bf16_words() -> str:
    support = cpu_bf16_support()
    return f"{'detected' if support.native else 'not detected'} here: {support.detail}"


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


def show_result(result: ui_work.VideoResult, current_key: Optional[str]) -> None:
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
    resolution = model.G.img_resolution

    st.header("1. Photo")
    request: dict[str, Any] = {}
    with ui.shown_errors("reading the photo"):
        photo = photo_section()
        if photo is not None:
            box, prepared = crop_section(photo, resolution)
            request.update(photo=prepared, photo_info={"name": photo["name"], "crop": str(box)})

    st.header("2. Age vector")
    with ui.shown_errors("choosing the age vector"):
        choice = vector_section(model)
        if choice is not None:
            request.update(choice)

    st.header("3. Make it")
    settings = None
    with ui.shown_errors("checking the settings"):
        settings = settings_section()
    ready = settings is not None and "photo" in request and "vector" in request
    busy = ui.any_active_job() is not None
    req = None
    if ready:
        projection, pti, render_settings, side_by_side = settings
        render_settings.strength = request["strength"]
        with ui.shown_errors("checking the settings"):
            render_settings.validate()
            req = ui_work.VideoRequest(
                model=model, perceptual=None, photo=request["photo"], photo_info=request["photo_info"],
                vector=request["vector"], layers=request["layers"], force_model=request["force"],
                projection=projection, pti=pti, render=render_settings, side_by_side=side_by_side)
    left, right, _ = st.columns([1, 1, 2])
    preview = left.button("Preview frames", key="preview", disabled=req is None or busy,
                          help="Project the photo (or reuse its projection) and show a few frames along the walk.")
    make = right.button("Make the video", key="make", type="primary", disabled=req is None or busy,
                        help="Project the photo (or reuse its projection), then render the video.")
    if req is None and not busy:
        st.caption("Upload a photo and choose an age vector to start.")
    if (preview or make) and req is not None and not busy:
        submitted = False
        with ui.shown_errors("starting the job"):
            req.perceptual = ui.perceptual_for(model)
            req.preview_only = bool(preview)
            ui.submit(SLOT, lambda ctx, req=req: ui_work.make_video(req, ctx),
                      label="preview" if preview else "video")
            submitted = True
        if submitted:
            st.rerun()  # draw the page again with the buttons disabled and the job's progress
    ui.show_job_outcome(SLOT)
    ui.job_panel(SLOT, show_extras)

    result = st.session_state.get("video_result")
    if result is not None and ui.active_job(SLOT) is None:
        current_key = None
        if req is not None:
            with ui.shown_errors("comparing the settings"):
                if req.perceptual is None:
                    req.perceptual = ui.perceptual_for(model)  # loaded for the result already: a cache hit
                current_key = ui_work.video_key(req)
        show_result(result, current_key)

ui.run_page(main)
