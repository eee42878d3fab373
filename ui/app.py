"""timemachine's Streamlit UI: ``timemachine ui`` (or ``streamlit run ui/app.py``).

Two pages: the puppyhood video (page_video.py) and the age-vector library (page_vectors.py).  The sidebar,
drawn here for both, chooses and loads the model.  Helper modules (ui_common, ui_work) are
imported by their plain names: Streamlit puts this folder on ``sys.path`` when it runs the app, whether it
is a source checkout's ui/ or the installed package timemachine.ui.
"""

import importlib.util
import sys
from pathlib import Path

import streamlit as st

if importlib.util.find_spec("timemachine") is None:  # `streamlit run ui/app.py` in a checkout that was not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ui_common as ui  # noqa: E402

st.set_page_config(page_title="timemachine: your pet as a puppy", page_icon=":material/pets:", layout="wide")

pages = st.navigation([
    st.Page("page_video.py", title="Puppyhood video", icon=":material/movie:", default=True),
    st.Page("page_vectors.py", title="Age vectors", icon=":material/tune:"),
])
with ui.shown_errors("drawing the sidebar"):
    ui.sidebar()
pages.run()
