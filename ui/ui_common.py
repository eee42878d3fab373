"""What both pages share: configuration, heavy objects loaded once per process, the model picker, the job
panel and error display.

Configuration comes from the environment (read on every page run):

* ``TIMEMACHINE_MODEL``        default model: a zoo name (afhqdog, afhqcat, afhqwild), an imported name or a file;
* ``TIMEMACHINE_HOME``         weights, the age-vector library, the projection and render caches;
* ``TIMEMACHINE_OFFLINE``      never download (models and VGG16 must be present);
* ``TIMEMACHINE_VGG_WEIGHTS``  VGG16 file for LPIPS, or ``random`` (tests only; the page says so);
* ``TIMEMACHINE_DEVICE``       'cpu', 'cuda', 'cuda:N' (default: CUDA when available).

Loaded once per process (``st.cache_resource``): generators by model spec and device, the LPIPS network by
device and VGG16 choice, and the job queue (:mod:`ui_jobs`).  Heavy work runs only in the queue's worker,
one job at a time; pages submit jobs and show their state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import streamlit as st

import ui_jobs
from timemachine import images, pipeline, weights
from timemachine import errors
from timemachine.errors import TimemachineError

log = logging.getLogger("timemachine.ui")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (the server's log)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


if not log.handlers:
    _handler = _StderrHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False

ENV_MODEL = "TIMEMACHINE_MODEL"
ENV_VGG = "TIMEMACHINE_VGG_WEIGHTS"
ENV_DEVICE = "TIMEMACHINE_DEVICE"
DEFAULT_MODEL = "afhqdog"

#: Photo types offered by the uploader (HEIC/HEIF only when pillow-heif can read them).
PHOTO_TYPES = ["jpg", "jpeg", "png", "webp"] + (
    ["heic", "heif"] if importlib.util.find_spec("pillow_heif") is not None else [])
#: Largest photo upload in MB: the same limit that timemachine.images applies to any photo file.
PHOTO_MAX_MB = images.DEFAULT_MAX_BYTES // 2**20
#: Largest model upload in MB (NVIDIA's AFHQ pickles are about 350 MB; a timemachine .safetensors file of
#: the same generator about 120 MB).  `timemachine ui` sets server.maxUploadSize to this.
MODEL_MAX_MB = 1024
#: Seconds between refreshes of a running job's progress (each refresh is a little work for the server,
#: which shares the CPU with the job).
POLL_SECONDS = 1.0

# Fast defaults for the UI, against the CLI's (which follow the official projector and a 4 s walk):
#: Projection steps.  The official projector and the CLI run 1000.  The learning-rate ramps and the decay
#: of the noise added to w are fractions of the step count, so 200 steps run the same schedule, compressed:
#: a fifth of the time, a likeness that is a little softer in fine detail (fur).  Raise it for a closer fit.
UI_STEPS = 200
#: Pivotal-tuning steps when PTI is ticked (the PTI authors and the CLI: 350).  PTI stops early anyway once
#: LPIPS reaches 0.06 (PTISettings.lpips_threshold).
UI_PTI_STEPS = 100
#: Walk frames (CLI: 96): 2 s at 24 fps plus the holds; rendering time grows with the number of frames.
UI_FRAMES = 48
UI_HOLD_START, UI_HOLD_END = 6, 12
#: Friendly names of the zoo generators.
ZOO_LABELS = {"afhqdog": "Dogs (afhqdog)", "afhqcat": "Cats (afhqcat)", "afhqwild": "Wild animals (afhqwild)"}
UPLOAD = "upload a model file"
PATH = "a model file on this server"


# ----------------------------------------------------------------------------------------------------------
# Errors

#: How the UI words an error's remedy (see timemachine.errors): the control that does it.
REMEDY_WORDS = {
    errors.REPLACE: "tick the Replace box to replace it",
    errors.FORCE_MODEL: "tick \"Apply it anyway\" to use it with this model",
    errors.RESUME: "start the job again to continue where it stopped",
    errors.LOWER_BATCH: "try a smaller setting",
}


def error_text(exc: TimemachineError) -> str:
    """The error's sentence, followed by its remedy in the UI's words when it has one."""
    hint = REMEDY_WORDS.get(exc.remedy or "")
    return f"{exc}; {hint}" if hint else str(exc)


@contextlib.contextmanager
def shown_errors(what: str = "") -> Iterator[None]:
    """Show errors of the block with ``st.error`` in plain words instead of a traceback.

    A :class:`TimemachineError` shows its sentence; anything else is a bug: a plain sentence for the
    visitor, the traceback in the server log.  Streamlit's own control flow (reruns, stops) passes through.
    """
    try:
        yield
    except TimemachineError as exc:
        st.error(error_text(exc))
    except Exception:
        log.exception("UI error%s", f" while {what}" if what else "")
        st.error(ui_jobs.BUG_MESSAGE)


def vector_library():
    """The age-vector library of this server's home directory (read from the environment here, at the edge)."""
    from timemachine import age
    from timemachine.env import Environment

    return age.VectorLibrary(Environment.from_environ().paths)


def run_page(body: Callable[[], None]) -> None:
    """Run a page's body with :func:`shown_errors` around it."""
    with shown_errors("showing the page"):
        body()


# ----------------------------------------------------------------------------------------------------------
# The job queue


def _session_alive(session_id: str) -> bool:
    """Whether a browser is still connected to ``session_id`` (True when that cannot be told)."""
    from streamlit.runtime import Runtime

    if not Runtime.exists():
        return True
    return bool(Runtime.instance().is_active_session(session_id))


@st.cache_resource(show_spinner=False)
def job_queue() -> ui_jobs.JobQueue:
    """The process's one job queue (one worker: one projection or render at a time)."""
    return ui_jobs.JobQueue(owner_alive=_session_alive)


def session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "no-session"


def active_job(slot: str) -> Optional[ui_jobs.Job]:
    """This session's unfinished job in ``slot`` ('video', 'build', 'tune'), if any."""
    job = st.session_state.get(f"job_{slot}")
    return job if job is not None and not job.finished else None


def any_active_job() -> Optional[ui_jobs.Job]:
    """This session's unfinished job, whatever its slot: a visitor has one job at a time."""
    for key, job in list(st.session_state.items()):
        if str(key).startswith("job_") and isinstance(job, ui_jobs.Job) and not job.finished:
            return job
    return None


def submit(slot: str, fn: Callable[[ui_jobs.JobContext], Any], label: str) -> ui_jobs.Job:
    """Queue ``fn`` as this session's job in ``slot``."""
    job = job_queue().submit(fn, label=label, owner=session_id())
    st.session_state[f"job_{slot}"] = job         # until its outcome has been shown (collect_finished)
    st.session_state[f"last_job_{slot}"] = job    # the latest job, kept (tests wait on it)
    st.session_state.pop(f"error_{slot}", None)
    return job


def collect_finished(slot: str) -> Optional[ui_jobs.Job]:
    """The job of ``slot`` if it has finished since the last run (it is then removed from the session);
    a failure's sentence is kept under ``error_<slot>`` for :func:`show_job_outcome`."""
    job = st.session_state.get(f"job_{slot}")
    if job is None or not job.finished:
        return None
    del st.session_state[f"job_{slot}"]
    if job.status == ui_jobs.FAILED:
        st.session_state[f"error_{slot}"] = job.error
    elif job.status == ui_jobs.CANCELLED:
        st.session_state[f"error_{slot}"] = None
        st.session_state[f"cancelled_{slot}"] = True
    return job


def show_job_outcome(slot: str) -> None:
    """The last failure (st.error) or cancellation (st.info) of ``slot``."""
    error = st.session_state.get(f"error_{slot}")
    if error:
        st.error(error)
    if st.session_state.pop(f"cancelled_{slot}", False):
        st.info("The job was cancelled.")


def job_panel(slot: str, show_extras: Callable[[dict[str, Any]], None]) -> None:
    """Progress of this session's job in ``slot`` while it waits or runs, refreshed every POLL_SECONDS.

    Waiting shows how many jobs are ahead ("waiting for another visitor's job"); running shows a progress
    bar, the stage and what the job reported (``show_extras``: the live reconstruction, preview frames).
    Only this part of the page refreshes; when the job ends the whole page is run again to show the result.
    """
    if active_job(slot) is None:
        return

    @st.fragment(run_every=POLL_SECONDS)
    def panel() -> None:
        with shown_errors("showing the job's progress"):   # the fragment reruns on its own, outside the page's
            panel_body()

    def panel_body() -> None:
        job = st.session_state.get(f"job_{slot}")
        if job is None:
            return
        if job.finished:
            st.rerun()
        queue = job_queue()
        if job.status == ui_jobs.QUEUED:
            ahead = queue.jobs_ahead(job) or 0
            others = "another visitor's job" if ahead <= 1 else f"{ahead} jobs of other visitors"
            st.info(f"Waiting for {others} to finish: this machine runs one job at a time. Yours starts "
                    "automatically; keep this page open.", icon=":material/hourglass_top:")
        else:
            st.progress(job.fraction, text=job.stage)
            show_extras(dict(job.extras))
        if st.button("Cancel", key=f"cancel_{slot}"):
            queue.cancel(job)
            st.rerun()

    panel()


# ----------------------------------------------------------------------------------------------------------
# Heavy objects, once per process


class _DownloadBar:
    """A ``progress(done_bytes, total_bytes)`` callback drawing a Streamlit progress bar."""

    def __init__(self, what: str):
        self.what = what
        self.bar = None

    def __call__(self, done: int, total: Optional[int]) -> None:
        text = f"Downloading {self.what}: {weights.human_bytes(done)}" + (f" of {weights.human_bytes(total)}"
                                                                         if total else "")
        if self.bar is None:
            self.bar = st.progress(0.0, text=text)
        self.bar.progress(min(1.0, done / total) if total else 0.0, text=text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.empty()


@st.cache_resource(max_entries=3, show_spinner="Loading the model…")
def _model_by_spec(spec: str, device: Optional[str], file_state: Optional[tuple], _progress) -> pipeline.LoadedModel:
    # file_state (size, mtime) is only part of the key: a file replaced on disk is loaded again.
    return pipeline.load_model(spec, device=device, progress=_progress)


@st.cache_resource(max_entries=2, show_spinner="Loading the uploaded model…")
def _model_by_upload(digest: str, name: str, device: Optional[str], _data: bytes) -> pipeline.LoadedModel:
    with tempfile.TemporaryDirectory(prefix="timemachine-ui-model-") as tmp:
        path = Path(tmp) / "model"
        path.write_bytes(_data)
        try:
            model = pipeline.load_model(str(path), device=device, offline=True)  # the safe loader; no code runs
        except TimemachineError as exc:  # name the upload, not the temporary file
            raise type(exc)(str(exc).replace(str(path), name)) from None
    return dataclasses.replace(model, spec=f"uploaded file {name}", path=f"upload:{digest[:16]}")


@st.cache_resource(max_entries=2, show_spinner="Loading the perceptual network (LPIPS, VGG16)…")
def _perceptual(device: str, vgg_choice: Optional[str], _progress):
    import warnings

    from timemachine.perceptual import RandomWeightsWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)  # the page shows its own warning
        return pipeline.load_perceptual(device, progress=_progress)


def perceptual_for(model: pipeline.LoadedModel):
    """The LPIPS network on the model's device (loaded once per process; may download VGG16)."""
    bar = _DownloadBar("VGG16 (LPIPS)")
    try:
        return _perceptual(str(model.device), os.environ.get(ENV_VGG), bar)
    finally:
        bar.close()


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """The model picked in the sidebar: a spec for pipeline.load_model, or an uploaded file."""

    label: str
    spec: Optional[str] = None
    upload_name: Optional[str] = None
    upload_digest: Optional[str] = None

    @property
    def zoo_name(self) -> Optional[str]:
        return self.spec if self.spec in _zoo_generators() else None


def _zoo_generators() -> dict[str, "weights.ZooEntry"]:
    try:
        return {n: e for n, e in weights.load_manifest().items() if e.kind == weights.GENERATOR}
    except TimemachineError:
        return {}


def _imported_names() -> list[str]:
    try:
        return sorted(weights.imported_models())
    except TimemachineError:
        return []


def model_picker() -> Optional[ModelChoice]:
    """The sidebar's model choice (zoo, imported, configured, uploaded or a path); None if incomplete."""
    zoo = _zoo_generators()
    configured = os.environ.get(ENV_MODEL, "").strip() or DEFAULT_MODEL
    options = list(zoo) + [n for n in _imported_names() if n not in zoo]
    if configured not in options:
        options.insert(0, configured)
    options += [UPLOAD, PATH]

    def label(option: str) -> str:
        if option in zoo:
            return ZOO_LABELS.get(option, f"{option}: {zoo[option].description}")
        if option in (UPLOAD, PATH):
            return option[0].upper() + option[1:] + "…"
        return f"{option} (configured)" if option == configured else f"{option} (imported)"

    choice = st.sidebar.selectbox("Model", options, index=options.index(configured), format_func=label,
                                  key="model_option",
                                  help="The generator your pet is projected into. The AFHQ models are NVIDIA's "
                                       "StyleGAN2-ADA networks trained on dogs, cats and wild animals; the first "
                                       "use downloads the file. Age vectors belong to one model.")
    if choice in zoo:
        entry = zoo[choice]
        st.sidebar.caption(f"Licence: {entry.licence.name}: **{entry.licence.summary}** ([terms]({entry.licence.url}))")
        return ModelChoice(label=label(choice), spec=choice)
    if choice == UPLOAD:
        uploaded = st.sidebar.file_uploader("Network file (.pkl or .safetensors)", type=["pkl", "safetensors"],
                                            key="model_upload", max_upload_size=MODEL_MAX_MB,
                                            help="An official StyleGAN2-ADA network pickle or a timemachine "
                                                 ".safetensors generator. It is read with timemachine's safe "
                                                 "loader, which never runs code from the file.")
        if uploaded is None:
            st.sidebar.info("Upload a network file to use it.")
            return None
        data = uploaded.getvalue()
        return ModelChoice(label=uploaded.name, upload_name=uploaded.name,
                           upload_digest=hashlib.sha256(data).hexdigest())
    if choice == PATH:
        path = st.sidebar.text_input("Path of the network file on the server", key="model_path",
                                     help="A .pkl or .safetensors file on the machine that runs timemachine.")
        if not path.strip():
            return None
        return ModelChoice(label=path.strip(), spec=path.strip())
    return ModelChoice(label=label(choice), spec=choice)


def load_model(choice: ModelChoice) -> pipeline.LoadedModel:
    """The generator of ``choice``, loaded once per process (downloads show a progress bar)."""
    device = os.environ.get(ENV_DEVICE) or None
    if choice.upload_digest is not None:
        uploaded = st.session_state.get("model_upload")
        if uploaded is None:
            raise TimemachineError("the uploaded model file is gone; upload it again")
        return _model_by_upload(choice.upload_digest, choice.upload_name, device, uploaded.getvalue())
    spec = choice.spec
    path = Path(spec).expanduser()
    file_state = (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None
    bar = _DownloadBar(spec)
    try:
        return _model_by_spec(spec, device, file_state, bar)
    finally:
        bar.close()


def sidebar() -> None:
    """The sidebar of every page: model choice, device, test-mode and licence notes.  Stores the loaded
    model (or None) in ``st.session_state['model']``."""
    st.sidebar.title("timemachine")
    choice = model_picker()
    model = None
    if choice is not None:
        with st.sidebar:
            with shown_errors("loading the model"):
                model = load_model(choice)
        if model is not None:
            G = model.G
            st.sidebar.caption(f"{G.img_resolution}x{G.img_resolution} pixels, {G.num_ws} layers, "
                               f"fingerprint `{model.fingerprint}`, on {model.device}")
    st.session_state["model"] = model
    if os.environ.get(ENV_VGG, "").strip() == "random":
        st.sidebar.warning("Test mode: LPIPS uses a randomly initialised VGG16 (TIMEMACHINE_VGG_WEIGHTS=random), "
                           "so projections will not look like the photo.")
    st.sidebar.divider()
    st.sidebar.caption("The AFHQ models (afhqdog, afhqcat, afhqwild) are NVIDIA's, under the NVIDIA Source Code "
                       "License-NC: **non-commercial use only**. timemachine's own code is MIT-licensed.")


def current_model() -> Optional[pipeline.LoadedModel]:
    return st.session_state.get("model")


def download(label: str, path: Optional[str], mime: str, key: str) -> None:
    """A download button for the file at ``path`` (nothing when there is no such file)."""
    if path and os.path.isfile(path):
        st.download_button(label, data=Path(path).read_bytes(), file_name=os.path.basename(path), mime=mime, key=key)
