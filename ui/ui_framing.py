"""How the face is cut out of the photo on the video page: eyes found automatically, eyes marked, or a square.

* **Find the eyes automatically** (the default): the eye detector (when its weights are on the server) finds
  the pet's eyes and the face is framed the way AFHQ's faces are; without it, or when it finds no face, the
  centre square is used and the page says so and asks for the eyes.
* **Mark the eyes**: click the pet's left eye, then its right eye, on the photo (or type their positions);
  optionally the tip of the nose.  The aligned face is shown at once.
* **Choose a square**: size and position sliders (the square is cut as it is, not rotated).

Whatever is chosen becomes a :class:`timemachine.pipeline.AlignmentRequest`; the prepared photo records it
(run.json's ``photo.alignment``).
"""

from __future__ import annotations

import importlib.util
from typing import Any, Optional

import numpy as np
import streamlit as st
from PIL import Image, ImageDraw

import ui_common as ui
from timemachine import pipeline

MODES = {"auto": "Find the eyes automatically", "eyes": "Mark the eyes", "square": "Choose a square"}
#: Whether clicks on the photo can be read (the MIT-licensed streamlit-image-coordinates component).
CLICKABLE = importlib.util.find_spec("streamlit_image_coordinates") is not None
#: Colours of the marks: left eye, right eye, nose.
MARK_COLOURS = ((0, 200, 255), (255, 64, 160), (255, 196, 0))


def framing_section(photo: dict[str, Any], model: pipeline.LoadedModel) -> pipeline.Photo:
    """The framing controls and a live preview; returns the prepared photo (uint8 [R, R, 3] and its info)."""
    key = photo["digest"][:12]
    mode = st.radio("Framing", list(MODES), format_func=MODES.get, key=f"framing_{key}", horizontal=True,
                    help="The models were trained on faces framed the same way: eyes level, at the same place and "
                         "size. Framing your photo like that gives a closer likeness.")
    left, right = st.columns([3, 2])
    if mode == "eyes":
        with left:
            request = _eyes(photo, key)
    elif mode == "square":
        with right:
            request = _square(photo, key)
    else:
        request = pipeline.AlignmentRequest("auto", explicit=False)
    prepared = _prepared(photo, model, request)
    record = prepared.info["alignment"]
    if mode != "eyes":
        with left:
            st.image(_marked(photo, record), caption=_caption(photo, record), width="stretch")
    with right:
        st.image(prepared.image, caption=f"What the model sees: {model.G.img_resolution}x{model.G.img_resolution}",
                 width=200)
    for notice in prepared.notices:
        st.info(notice[:1].upper() + notice[1:] + ("" if mode == "eyes" else
                                                  ". Choose **Mark the eyes** above for a closer likeness."))
    return prepared


def _prepared(photo: dict[str, Any], model: pipeline.LoadedModel, request: pipeline.AlignmentRequest) -> pipeline.Photo:
    """The photo framed as ``request`` asks, for ``model``; kept across reruns while photo, model and request stay
    (framing runs the eye detector on the whole photo, and the page reruns on every click)."""
    key = (photo["digest"], model.spec, model.fingerprint, request)
    kept = st.session_state.get("framed_photo")
    if kept is None or kept[0] != key:
        pipe = ui.pipeline_for(model, with_perceptual=False)
        kept = st.session_state["framed_photo"] = (key, pipe.prepare_photo(photo["image"], alignment=request,
                                                                          name=photo["name"]))
    return kept[1]


def _caption(photo: dict[str, Any], record: dict[str, Any]) -> str:
    height, width = photo["image"].shape[:2]
    how = {"centre": "the centre square", "box": "your square", "auto": "aligned on the eyes found",
           "eyes": "aligned on the eyes marked"}[record["method"]]
    return f"{photo['name']}: {width}x{height} pixels, {how}"


def _marked(photo: dict[str, Any], record: Optional[dict[str, Any]], points: Optional[list] = None) -> np.ndarray:
    """The display-sized photo with the cut square outlined and the eyes (and nose) marked."""
    display = photo["display"]
    scale = display.shape[1] / photo["image"].shape[1]
    out = Image.fromarray(display)
    draw = ImageDraw.Draw(out)
    line = max(2, display.shape[1] // 200)
    if record is not None:
        corners = [tuple(float(v) * scale for v in corner) for corner in record["crop"]["corners"]]
        draw.polygon(corners, outline=(255, 196, 0), width=line)
        if record.get("eyes"):
            nose = [record["nose"]] if record.get("nose") else []
            points = [record["eyes"]["left"], record["eyes"]["right"]] + nose
    for (x, y), colour in zip(points or [], MARK_COLOURS):
        r = 3 * line
        draw.ellipse([x * scale - r, y * scale - r, x * scale + r, y * scale + r], outline=colour, width=line)
    return np.asarray(out)


def _eyes(photo: dict[str, Any], key: str) -> pipeline.AlignmentRequest:
    """Clicks on the photo (left eye, right eye, then optionally the nose) or typed positions."""
    height, width = photo["image"].shape[:2]
    names = [f"eye_{part}_{key}" for part in ("lx", "ly", "rx", "ry")]
    guesses = (0.4 * width, 0.45 * height, 0.6 * width, 0.45 * height)   # a start the visitor moves
    for name, guess in zip(names, guesses):
        st.session_state.setdefault(name, float(round(guess)))
    use_nose = st.session_state.get(f"nose_on_{key}", False)
    points = [(st.session_state[names[0]], st.session_state[names[1]]),
              (st.session_state[names[2]], st.session_state[names[3]])]
    if use_nose:
        points.append((st.session_state.get(f"nose_x_{key}", width / 2), st.session_state.get(f"nose_y_{key}",
                                                                                               0.6 * height)))
    marked = _marked(photo, None, points)
    if CLICKABLE:
        from streamlit_image_coordinates import streamlit_image_coordinates

        click = streamlit_image_coordinates(marked, key=f"clicks_{key}", width="stretch", cursor="crosshair")
        _take_click(click, photo, key, names, use_nose)
        st.caption("Click your pet's left eye (on your right as you look at the photo), then its right eye"
                   + (", then the tip of its nose." if use_nose else "."))
    else:
        st.image(marked, width="stretch")
    columns = st.columns(4)
    labels = ("Left eye x", "Left eye y", "Right eye x", "Right eye y")
    for column, name, label, limit in zip(columns, names, labels, (width, height, width, height)):
        column.number_input(label, 0.0, float(limit), key=name, step=1.0, format="%.0f")
    if st.checkbox("Also mark the nose (tells which way is up)", key=f"nose_on_{key}"):
        a, b = st.columns(2)
        st.session_state.setdefault(f"nose_x_{key}", float(round(width / 2)))
        st.session_state.setdefault(f"nose_y_{key}", float(round(0.6 * height)))
        a.number_input("Nose x", 0.0, float(width), key=f"nose_x_{key}", step=1.0, format="%.0f")
        b.number_input("Nose y", 0.0, float(height), key=f"nose_y_{key}", step=1.0, format="%.0f")
    left = (st.session_state[names[0]], st.session_state[names[1]])
    right = (st.session_state[names[2]], st.session_state[names[3]])
    nose = (st.session_state[f"nose_x_{key}"], st.session_state[f"nose_y_{key}"]) if use_nose else None
    return pipeline.AlignmentRequest("eyes", eyes=(left, right), nose=nose, explicit=True)


def _take_click(click: Optional[dict], photo: dict[str, Any], key: str, names: list[str], use_nose: bool) -> None:
    """Store a new click as the next mark (left eye, right eye, nose, in turn) and draw the page again."""
    if not click or click == st.session_state.get(f"last_click_{key}"):
        return
    st.session_state[f"last_click_{key}"] = click
    scale = photo["image"].shape[1] / float(click["width"])
    x, y = float(click["x"]) * scale, float(click["y"]) * scale
    turn = st.session_state.get(f"click_turn_{key}", 0) % (3 if use_nose else 2)
    targets = [(names[0], names[1]), (names[2], names[3]), (f"nose_x_{key}", f"nose_y_{key}")]
    st.session_state[targets[turn][0]] = float(round(x))
    st.session_state[targets[turn][1]] = float(round(y))
    st.session_state[f"click_turn_{key}"] = turn + 1
    st.rerun()


def _square(photo: dict[str, Any], key: str) -> pipeline.AlignmentRequest:
    """Size and position sliders of a square cut as it is."""
    height, width = photo["image"].shape[:2]
    side = min(height, width)
    size = st.slider("Crop size (pixels)", pipeline.MIN_PHOTO_SIDE, side, side, key=f"crop_size_{key}",
                     help="Side of the square that is cut out. Frame the face: ears to chin, little background.",
                     disabled=side == pipeline.MIN_PHOTO_SIDE)
    x_pct = st.slider("Horizontal position (%)", 0, 100, 50, key=f"crop_x_{key}", disabled=width == size,
                      help="0 = the left edge of the photo, 100 = the right edge.")
    y_pct = st.slider("Vertical position (%)", 0, 100, 50, key=f"crop_y_{key}", disabled=height == size,
                      help="0 = the top of the photo, 100 = the bottom.")
    box = pipeline.CropBox((width - size) * x_pct // 100, (height - size) * y_pct // 100, size)
    return pipeline.AlignmentRequest("box", box=box, explicit=True)
