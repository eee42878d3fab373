"""What both pages share: configuration, heavy objects loaded once per process, the model picker, the job
panel and error display.

Configuration comes from the environment, read once per page run into a
:class:`timemachine.env.Environment` (:func:`environment`) and passed down:

* ``TIMEMACHINE_MODEL``        default model: a zoo name (afhqdog, afhqcat, afhqwild), an imported name or a file;
* ``TIMEMACHINE_HOME``         weights, the age-vector library, the projection and render caches;
* ``TIMEMACHINE_OFFLINE``      never download (models and VGG16 must be present);
* ``TIMEMACHINE_VGG_WEIGHTS``  VGG16 file for LPIPS, or ``random`` (tests only; the page says so);
* ``TIMEMACHINE_DEVICE``       'cpu', 'cuda', 'cuda:N' (default: CUDA when available);
* ``TIMEMACHINE_BROKER_URL``   redis://host:port/db: send jobs to queue workers instead of running them here.

Loaded once per process (``st.cache_resource``): generators by model spec and device, the LPIPS network by
device and VGG16 choice, and the executor (:func:`timemachine.pipeline.make_executor`).  A
:class:`timemachine.pipeline.Pipeline` joins them for each job.  Heavy work runs only in the executor: without
a broker in this process's one worker thread, one job at a time; with ``TIMEMACHINE_BROKER_URL`` on the queue
workers (``timemachine worker``), whose jobs outlive the visitor's tab (the page's address names them).
Pages submit jobs and show their state.  The UI imports the pipeline (and the settings, errors and
environment) only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import logging
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

import ui_work
from timemachine import errors, pipeline
from timemachine.env import ENV_UI_SERVER_MODELS, Environment
from timemachine.errors import TimemachineError
from timemachine.settings import (
    MAX_MODEL_UPLOAD_MB,
    PROJECTOR_PRESETS,
    PTI_PRESETS,
    RENDER_PRESETS,
)

log = logging.getLogger("timemachine.ui")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (the server's log)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


_server_log = logging.getLogger("timemachine")   # the UI's log and the jobs' (timemachine.jobs)
if not _server_log.handlers:
    _handler = _StderrHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _server_log.addHandler(_handler)
    _server_log.setLevel(logging.INFO)
    _server_log.propagate = False

DEFAULT_MODEL = "afhqdog"

#: Photo types offered by the uploader (HEIC/HEIF only when pillow-heif can read them).
PHOTO_TYPES = ["jpg", "jpeg", "png", "webp"] + (
    ["heic", "heif"] if importlib.util.find_spec("pillow_heif") is not None else [])
#: Largest photo upload in MB: the same limit that timemachine.images applies to any photo file.
PHOTO_MAX_MB = pipeline.MAX_PHOTO_BYTES // 2**20
#: Largest model upload in MB: follows the loader's memory bound (timemachine.settings.MAX_MODEL_UPLOAD_MB);
#: `timemachine ui` sets server.maxUploadSize to it.
MODEL_MAX_MB = MAX_MODEL_UPLOAD_MB
#: Seconds between refreshes of a running job's progress (each refresh is a little work for the server,
#: which shares the CPU with the job).
POLL_SECONDS = 1.0

#: The UI's settings: the named 'ui' presets of timemachine.settings (a faster projection, a shorter walk).
UI_PROJECTOR = PROJECTOR_PRESETS["ui"]
UI_PTI = PTI_PRESETS["ui"]
UI_RENDER = RENDER_PRESETS["ui"]
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
    errors.DISCOVER: "press \"Discover this model's age direction\" to make one",
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
        st.error(pipeline.BUG_MESSAGE)


def vector_library() -> pipeline.VectorLibrary:
    """The age-vector library of this server's home directory (with the built-in vectors)."""
    return pipeline.vector_library(environment())


def library_entries() -> tuple[list, list]:
    """The vectors a visitor can choose from, as (usable, damaged) library entries: the library's and the
    built-ins, without the built-ins that a library vector of the same name hides."""
    entries = [e for e in vector_library().entries(builtins=True) if not e.shadowed]
    return [e for e in entries if e.vector is not None], [e for e in entries if e.vector is None]


def run_page(body: Callable[[], None]) -> None:
    """Run a page's body with :func:`shown_errors` around it."""
    with shown_errors("showing the page"):
        body()


# ----------------------------------------------------------------------------------------------------------
# Jobs: the executor (in this process, or queue workers when TIMEMACHINE_BROKER_URL is set)

#: Characters of a visitor token or job id in the page's address.
_TOKEN_CHARS = frozenset("0123456789abcdef")


def _session_alive(session_id: str) -> bool:
    """Whether a browser is still connected to ``session_id`` (True when that cannot be told)."""
    from streamlit.runtime import Runtime

    if not Runtime.exists():
        return True
    return bool(Runtime.instance().is_active_session(session_id))


@st.cache_resource(show_spinner=False)
def _executor(broker_url: Optional[str], _env: Environment) -> pipeline.Executor:
    return pipeline.make_executor(_env, owner_alive=_session_alive)


def executor() -> pipeline.Executor:
    """The process's executor: the in-process queue (one job at a time) or, with a broker configured, the
    queue workers."""
    env = environment()
    return _executor(env.broker_url, env)


def session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "no-session"


def _token(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and 16 <= len(value) <= 64 and set(value) <= _TOKEN_CHARS else None


def visitor_id() -> str:
    """Who owns this page's jobs (per-visitor limits count by it).  In this process: the browser session (its
    jobs stop once it has gone).  With queue workers: a random token kept in the page's address, so that a
    visitor who reloads the page, or comes back to the address later, finds their jobs again."""
    if not executor().remote:
        return session_id()
    token = _token(st.query_params.get("visitor"))
    if token is None:
        token = secrets.token_hex(16)
        st.query_params["visitor"] = token
    return token


def _reattach(slot: str) -> None:
    """With queue workers: find the job of ``slot`` named in the page's address again (after a reload)."""
    if st.session_state.get(f"job_{slot}") is not None or not executor().remote:
        return
    job_id = _token(st.query_params.get(f"job_{slot}"))
    if job_id is None:
        return
    handle = executor().find(job_id, owner=visitor_id())
    if handle is None:
        del st.query_params[f"job_{slot}"]
        return
    st.session_state[f"job_{slot}"] = handle
    st.session_state[f"last_job_{slot}"] = handle
    st.session_state.setdefault(f"stages_{slot}", ui_work.stages_of_label(handle.label))


def active_job(slot: str) -> Optional[pipeline.JobHandle]:
    """This session's unfinished job in ``slot`` ('video', 'build', 'tune'), if any."""
    _reattach(slot)
    job = st.session_state.get(f"job_{slot}")
    return job if job is not None and not job.finished else None


def any_active_job() -> Optional[pipeline.JobHandle]:
    """This session's unfinished job, whatever its slot: a visitor has one job at a time."""
    for key, job in list(st.session_state.items()):
        if str(key).startswith("job_") and isinstance(job, pipeline.JobHandle) and not job.finished:
            return job
    return None


def submit(slot: str, kind: str, request: Any, model: pipeline.LoadedModel, pipe: Optional[pipeline.Pipeline],
           label: str, stages: dict[str, float]) -> pipeline.JobHandle:
    """Queue a job of ``kind`` as this session's job in ``slot`` (``pipe``: the pipeline to run it with in
    this process; queue workers load ``model`` by its spec)."""
    ex = executor()
    if ex.remote and model.path.startswith("upload:"):
        raise TimemachineError("a model file uploaded here can be used only when jobs run in this server's own "
                               "process; this server sends jobs to queue workers, so ask its operator to import "
                               "the model there (timemachine weights import)")
    spec = pipeline.JobSpec(kind, request, model=model.spec, label=label, owner=visitor_id(),
                            pipeline=None if ex.remote else pipe)
    job = ex.submit(spec)
    st.session_state[f"job_{slot}"] = job         # until its outcome has been shown (collect_finished)
    st.session_state[f"last_job_{slot}"] = job    # the latest job, kept (tests wait on it)
    st.session_state[f"stages_{slot}"] = stages
    st.session_state.pop(f"error_{slot}", None)
    if ex.remote:
        st.query_params[f"job_{slot}"] = job.id   # a reload finds it again
    return job


def collect_finished(slot: str) -> Optional[pipeline.JobHandle]:
    """The job of ``slot`` if it has finished since the last run (it is then removed from the session);
    a failure's sentence is kept under ``error_<slot>`` for :func:`show_job_outcome`."""
    _reattach(slot)
    job = st.session_state.get(f"job_{slot}")
    if job is None or not job.finished:
        return None
    del st.session_state[f"job_{slot}"]
    if f"job_{slot}" in st.query_params:
        del st.query_params[f"job_{slot}"]
    if job.status == pipeline.FAILED:
        exc = job.exception
        st.session_state[f"error_{slot}"] = error_text(exc) if exc is not None else job.error
    elif job.status == pipeline.CANCELLED:
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


def _waiting_text(job: pipeline.JobHandle) -> str:
    ahead = job.jobs_ahead() or 0
    if executor().remote:
        where = "Yours is next: it starts as soon as a worker is free." if ahead == 0 else \
            f"{ahead} job{'s' if ahead > 1 else ''} ahead of you; the workers take them in order."
        return where + " You may close this page: the job keeps running, and this page's address finds it again."
    others = ahead + 1   # the running job, and those waiting before this one
    who = "another visitor's job" if others <= 1 else f"{others} jobs of other visitors"
    return (f"Waiting for {who} to finish: this machine runs one job at a time. Yours starts automatically; "
            "keep this page open.")


def job_panel(slot: str, show_extras: Callable[[dict[str, Any]], None]) -> None:
    """Progress of this session's job in ``slot`` while it waits or runs, refreshed every POLL_SECONDS.

    Waiting shows how many jobs are ahead; running shows a progress bar, the stage and what the job reported
    (``show_extras``: the live reconstruction, preview frames).  Only this part of the page refreshes; when the
    job ends the whole page is run again to show the result.
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
        if job.status == pipeline.QUEUED:
            st.info(_waiting_text(job), icon=":material/hourglass_top:")
        else:
            event = job.progress()
            text, fraction = ui_work.describe(event, st.session_state.get(f"stages_{slot}") or {})
            st.progress(fraction, text=text)
            show_extras(dict(event.extras) if event is not None else {})
        if st.button("Cancel", key=f"cancel_{slot}"):
            job.cancel()
            st.rerun()

    panel()


# ----------------------------------------------------------------------------------------------------------
# Heavy objects, once per process


def environment() -> Environment:
    """The environment (``TIMEMACHINE_*``), read on every page run so that a changed setting takes effect
    without restarting the server; everything below the UI receives it from here."""
    return Environment.from_environ()



class _DownloadBar:
    """A ``progress(done_bytes, total_bytes)`` callback drawing a Streamlit progress bar."""

    def __init__(self, what: str):
        self.what = what
        self.bar: Optional[DeltaGenerator] = None

    def __call__(self, done: int, total: Optional[int]) -> None:
        text = f"Downloading {self.what}: {pipeline.human_bytes(done)}" + (f" of {pipeline.human_bytes(total)}"
                                                                         if total else "")
        if self.bar is None:
            self.bar = st.progress(0.0, text=text)
        self.bar.progress(min(1.0, done / total) if total else 0.0, text=text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.empty()


@st.cache_resource(max_entries=3, show_spinner="Loading the model…")
def _model_by_spec(spec: str, _env: Environment, env_key: tuple, file_state: Optional[tuple],
                   _progress) -> pipeline.LoadedModel:
    # file_state (size, mtime) is only part of the key: a file replaced on disk is loaded again.
    return pipeline.load_model(spec, _env, progress=_progress)


@st.cache_resource(max_entries=2, show_spinner="Loading the uploaded model…")
def _model_by_upload(digest: str, name: str, _env: Environment, env_key: tuple, _data: bytes) -> pipeline.LoadedModel:
    with tempfile.TemporaryDirectory(prefix="timemachine-ui-model-") as tmp:
        path = Path(tmp) / "model"
        path.write_bytes(_data)
        try:
            model = pipeline.load_model(str(path), _env, offline=True)  # the safe loader; no code runs
        except TimemachineError as exc:  # name the upload, not the temporary file
            raise type(exc)(str(exc).replace(str(path), name)) from None
    return dataclasses.replace(model, spec=f"uploaded file {name}", path=f"upload:{digest[:16]}")


@st.cache_resource(max_entries=2, show_spinner="Loading the perceptual network (LPIPS, VGG16)…")
def _perceptual(device: str, _env: Environment, env_key: tuple, _progress):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pipeline.RandomWeightsWarning)  # the page shows its own warning
        return pipeline.load_perceptual(_env, device, progress=_progress)


def _env_key(env: Environment) -> tuple:
    """What of the environment a cached object depends on (its cache key)."""
    return (str(env.home), env.offline, env.device, env.vgg_weights, str(env.manifest))


def perceptual_for(model: pipeline.LoadedModel):
    """The LPIPS network on the model's device (loaded once per process; may download VGG16)."""
    env = environment()
    bar = _DownloadBar("VGG16 (LPIPS)")
    try:
        return _perceptual(str(model.device), env, _env_key(env), bar)
    finally:
        bar.close()


@st.cache_resource(max_entries=2, show_spinner=False)
def _shared_networks(device: str, env_key: tuple) -> pipeline.SharedNetworks:
    return pipeline.SharedNetworks()


def pipeline_for(model: pipeline.LoadedModel, with_perceptual: bool = True) -> pipeline.Pipeline:
    """A pipeline of ``model`` with the process's shared LPIPS network (loaded now, with a download bar) and its
    shared CLIP labellers and eye detector (loaded on first need)."""
    env = environment()
    return pipeline.Pipeline(env, model, perceptual=perceptual_for(model) if with_perceptual else None,
                             shared=_shared_networks(str(model.device), _env_key(env)))


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """The model picked in the sidebar: a spec for pipeline.load_model, or an uploaded file."""

    spec: Optional[str] = None
    upload_name: Optional[str] = None
    upload_digest: Optional[str] = None


def _zoo_generators() -> dict[str, pipeline.ZooEntry]:
    try:
        return pipeline.open_zoo(environment()).generators()
    except TimemachineError:
        return {}


def _imported_names() -> list[str]:
    try:
        return sorted(pipeline.open_zoo(environment()).imported())
    except TimemachineError:
        return []


def model_picker() -> Optional[ModelChoice]:
    """The sidebar's model choice (zoo, imported, configured, uploaded or a path); None if incomplete."""
    zoo = _zoo_generators()
    configured = environment().model or DEFAULT_MODEL
    options = list(zoo) + [n for n in _imported_names() if n not in zoo]
    if configured not in options:
        options.insert(0, configured)
    options += [UPLOAD] + ([PATH] if environment().ui_server_models else [])

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
        return ModelChoice(spec=choice)
    if choice == UPLOAD:
        uploaded = st.sidebar.file_uploader("Network file (.pkl or .safetensors)", type=["pkl", "safetensors"],
                                            key="model_upload", max_upload_size=MODEL_MAX_MB,
                                            help="An official StyleGAN2-ADA network pickle or a timemachine "
                                                 ".safetensors generator. It is read with timemachine's safe "
                                                 "loader, which never runs code from the file.")
        if uploaded is None:
            st.sidebar.info("Upload a network file to use it.")
            return None
        return ModelChoice(upload_name=uploaded.name, upload_digest=_upload_digest(uploaded))
    if choice == PATH:
        models = environment().paths.models
        path = st.sidebar.text_input("Network file in the server's models directory", key="model_path",
                                     help=f"A .pkl or .safetensors file under {models} (the operator enabled "
                                          f"this with {ENV_UI_SERVER_MODELS}=1).")
        if not path.strip():
            return None
        return ModelChoice(spec=str(server_model_path(path.strip(), models)))
    return ModelChoice(spec=choice)


def _upload_digest(uploaded) -> str:
    """SHA-256 of an uploaded file, hashed once per upload (the page reruns on every click; models are large)."""
    digests = st.session_state.setdefault("model_upload_digests", {})   # file_id -> digest of the latest upload
    if uploaded.file_id not in digests:
        digests.clear()
        digests[uploaded.file_id] = hashlib.sha256(uploaded.getvalue()).hexdigest()
    return digests[uploaded.file_id]


def server_model_path(text: str, models: Path) -> Path:
    """The file a visitor named by ``text`` (relative to ``models``, or absolute), if it is a model file inside
    the models directory (symlinks resolved).  Anything else - a URL, a path outside, a missing file - is refused
    with the same sentence, so a visitor learns nothing about the server's other files."""
    refusal = TimemachineError(f"{errors.quoted(text)} is not a model file in the server's models directory; "
                               "give the name of a .pkl or .safetensors file there")
    if "://" in text or "\x00" in text:
        raise refusal
    root = models.resolve()
    try:
        candidate = (root / text).resolve()
    except (OSError, RuntimeError, ValueError):
        raise refusal from None
    if not candidate.is_relative_to(root) or candidate.suffix.lower() not in (".pkl", ".safetensors") \
            or not candidate.is_file():
        raise refusal
    return candidate


def load_model(choice: ModelChoice) -> pipeline.LoadedModel:
    """The generator of ``choice``, loaded once per process (downloads show a progress bar)."""
    env = environment()
    if choice.upload_digest is not None:
        uploaded = st.session_state.get("model_upload")
        if uploaded is None:
            raise TimemachineError("the uploaded model file is gone; upload it again")
        assert choice.upload_name is not None   # model_choice() sets the upload's name and digest together
        return _model_by_upload(choice.upload_digest, choice.upload_name, env, _env_key(env), uploaded.getvalue())
    spec = choice.spec
    assert spec is not None   # a choice that is not an upload names a spec
    path = Path(spec).expanduser()
    file_state = (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None
    bar = _DownloadBar(spec)
    try:
        return _model_by_spec(spec, env, _env_key(env), file_state, bar)
    finally:
        bar.close()


def sidebar() -> None:
    """The sidebar of every page: model choice, device, test-mode and licence notes.  Stores the loaded
    model (or None) in ``st.session_state['model']``."""
    st.sidebar.title("timemachine")
    choice = None
    with st.sidebar:
        with shown_errors("choosing the model"):
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
    if environment().vgg_weights == "random":
        st.sidebar.warning("Test mode: LPIPS uses a randomly initialised VGG16 (TIMEMACHINE_VGG_WEIGHTS=random), "
                           "so projections will not look like the photo.")
    st.sidebar.divider()
    st.sidebar.caption("The AFHQ models (afhqdog, afhqcat, afhqwild) are NVIDIA's, under the NVIDIA Source Code "
                       "License-NC: **non-commercial use only**. timemachine's own code is MIT-licensed.")


def current_model() -> Optional[pipeline.LoadedModel]:
    return st.session_state.get("model")


def download(label: str, path: Optional[str], mime: str, key: str) -> None:
    """A download button for the file at ``path`` (nothing when there is no such file); the file is read when
    the button is pressed, not on every run of the page."""
    if path and os.path.isfile(path):
        st.download_button(label, data=lambda: Path(path).read_bytes(), file_name=os.path.basename(path), mime=mime,
                           key=key)
