"""Jobs as data: what an executor runs, whichever process runs it.

A :class:`JobSpec` names a job kind, carries its request and the model it needs, and is what a face hands to an
executor (:mod:`timemachine.pipeline.executor`).  The kinds are registered here once (:func:`register_job`):
'project', 'age_video', 'render', 'build_vector', 'preview_strip' and 'discover'; a new kind
registers its request type, its result types (:func:`timemachine.pipeline.codec.register_type`) and a function
``run(pipeline, request, progress) -> result``, and every executor can run it.

:class:`PipelineCache` keeps the loaded models of a process (the queue worker's, or the in-process
executor's) and gives each job a :class:`~timemachine.pipeline.Pipeline` of its model with one LPIPS network
and one set of CLIP labellers and eye detector (:class:`~timemachine.pipeline.components.SharedNetworks`)
shared by all of them, so models and networks are loaded once per process and reused by every job.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional

from timemachine.env import Environment
from timemachine.errors import TimemachineError, printable
from timemachine.pipeline import requests
from timemachine.pipeline.components import Pipeline, SharedNetworks, load_model, load_perceptual
from timemachine.pipeline.progress import ProgressCallback

if TYPE_CHECKING:
    from timemachine.perceptual import PerceptualDistance


@dataclasses.dataclass(frozen=True)
class JobKind:
    """One kind of job.

    Attributes:
        name:         what a :class:`JobSpec` calls it.
        request_type: the request dataclass it takes.
        run:          ``run(pipeline, request, progress) -> result``.
        needs_perceptual: whether it uses LPIPS (a worker then loads VGG16 before the job starts).
    """

    name: str
    request_type: type
    run: Callable[[Pipeline, Any, Optional[ProgressCallback]], Any]
    needs_perceptual: bool = True


JOB_KINDS: dict[str, JobKind] = {}


def register_job(kind: JobKind) -> JobKind:
    """Make ``kind`` runnable by every executor (its request and result types must be registered with the
    codec to travel to queue workers)."""
    JOB_KINDS[kind.name] = kind
    return kind


def job_kind(name: str) -> JobKind:
    kind = JOB_KINDS.get(name)
    if kind is None:
        raise TimemachineError(f"unknown job kind {printable(name)!r}")
    return kind


@dataclasses.dataclass
class JobSpec:
    """A job for an executor.

    Attributes:
        kind:       a registered job kind ('project', 'age_video', 'render', 'build_vector', 'preview_strip').
        request:    its request (the kind's request dataclass).
        model:      the model spec a worker loads (zoo name, imported name, or a file the workers can read).
        model_name: what results record as the model's name (run.json, vectors); None = ``model``.
        label:      what the job is, for people ('video', 'preview', 'vector').
        owner:      who submitted it (a visitor); per-owner limits count by it.
        pipeline:   in-process only: an already loaded pipeline to run it with (never sent to a worker).
    """

    kind: str
    request: Any
    model: str = ""
    model_name: Optional[str] = None
    label: str = ""
    owner: str = ""
    pipeline: Optional[Pipeline] = None

    def check(self) -> JobKind:
        """The job's kind, after checking that the request is of its type."""
        kind = job_kind(self.kind)
        if not isinstance(self.request, kind.request_type):
            raise TimemachineError(f"a {self.kind} job takes a {kind.request_type.__name__}, not a "
                                   f"{type(self.request).__name__}")
        return kind


def run_job(pipe: Pipeline, spec: JobSpec, progress: Optional[ProgressCallback] = None) -> Any:
    """Run ``spec`` with ``pipe`` (in this process)."""
    return spec.check().run(pipe, spec.request, progress)


def _preview_strip(pipe: Pipeline, request: requests.PreviewStripRequest, progress):
    return pipe.preview_strip(request.latent, request.edit, [float(s) for s in request.strengths], progress)


register_job(JobKind("project", requests.ProjectionRequest, lambda pipe, r, p: pipe.project(r, p)))
register_job(JobKind("age_video", requests.AgeVideoRequest, lambda pipe, r, p: pipe.age_video(r, p)))
register_job(JobKind("render", requests.RenderRequest, lambda pipe, r, p: pipe.render(r, p), needs_perceptual=False))
register_job(JobKind("build_vector", requests.VectorBuildRequest, lambda pipe, r, p: pipe.build_vector(r, p)))
register_job(JobKind("preview_strip", requests.PreviewStripRequest, _preview_strip, needs_perceptual=False))
register_job(JobKind("discover", requests.DiscoverRequest, lambda pipe, r, p: pipe.discover(r, p),
                     needs_perceptual=False))


class PipelineCache:
    """Pipelines by model spec, loaded once per process and reused (the least recently used beyond
    ``max_models`` are dropped); one LPIPS network serves all of them.

    Args:
        env:        the environment (home, offline, VGG16 weights).
        device:     where models run (None: the environment's choice, else CUDA when available).
        max_models: generators kept at once.
    """

    def __init__(self, env: Environment, device: Optional[str] = None, max_models: int = 2):
        self.env = env
        self.device = device if device is not None else env.device
        self.max_models = max_models
        self._models: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self._perceptual: Optional[PerceptualDistance] = None
        self._shared = SharedNetworks()
        self._lock = threading.Lock()

    @staticmethod
    def _file_state(spec: str) -> Optional[tuple]:
        try:
            st = os.stat(os.path.expanduser(spec))
        except (OSError, ValueError):
            return None
        return (st.st_size, st.st_mtime_ns)

    def get(self, spec: str, name: Optional[str] = None, perceptual: bool = True) -> Pipeline:
        """A pipeline for the model ``spec`` (loaded on first use; a file replaced on disk is loaded again),
        recording ``name`` as the model's name, with the shared LPIPS network (loaded now when ``perceptual``)."""
        if not spec:
            raise TimemachineError("the job names no model")
        with self._lock:
            key = (spec, self._file_state(spec))
            model = self._models.get(key)
            if model is None:
                model = load_model(spec, self.env, device=self.device)
                self._models[key] = model
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
            self._models.move_to_end(key)
            if perceptual and self._perceptual is None:
                self._perceptual = load_perceptual(self.env, model.device)
            loaded = model if name is None or name == model.spec else dataclasses.replace(model, spec=name)
            return Pipeline(self.env, loaded, perceptual=self._perceptual, shared=self._shared)
