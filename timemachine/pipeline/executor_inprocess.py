"""The embedded executor: one heavy job at a time in this process, first come first served.

Projections and renders take the whole machine (all CPU cores, or most of a GPU's memory), so this executor
never runs two at once: every job goes into one FIFO and a single worker thread runs them in the order they
came.  A face shows a job's state by reading its handle while the job runs in the worker thread, so a page
that is drawn again (a slider moved, the page reloaded) never interrupts a projection.

A job is a :class:`~timemachine.pipeline.jobs.JobSpec` (run with the pipeline it carries, or one loaded by
model spec and kept, see :class:`~timemachine.pipeline.jobs.PipelineCache`), or any function ``fn(context)``
(:meth:`InProcessExecutor.submit_call`) that reports through ``context(Progress(...))``.  Each report is also
where a cancelled job stops (:class:`JobCancelled` is raised inside it).  A job is cancelled by its visitor
(:meth:`Job.cancel`) or when its owner's session has been gone for ``abandon_after`` seconds (``owner_alive``
says whether a session is still connected), so a closed browser tab does not keep the machine busy.

Outcomes: 'done' (``result`` set), 'failed' (``error`` holds one plain sentence: the message of a
:class:`~timemachine.errors.TimemachineError`, or :data:`BUG_MESSAGE` for a bug, whose traceback goes to the
log 'timemachine.jobs'), 'cancelled'.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from typing import Any, Callable, Deque, Optional

from timemachine.env import Environment
from timemachine.errors import TimemachineError
from timemachine.pipeline.executor import (
    BUG_MESSAGE,
    CANCELLED,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    Executor,
    JobCancelled,
    JobHandle,
    QueueFull,
)
from timemachine.pipeline.jobs import JobSpec, PipelineCache, run_job
from timemachine.pipeline.progress import Progress
from timemachine.settings import QueueSettings

log = logging.getLogger("timemachine.jobs")

#: Extras of a progress report that are kept until a later report replaces them (images to show).
STICKY_EXTRAS = ("preview", "strip")


class Job(JobHandle):
    """A job in the in-process queue and its observable state (see :class:`JobHandle`).

    Extra attributes: ``started``, ``finished_at`` (time.monotonic).
    """

    status: str
    result: Any
    error: Optional[str]
    exception: Optional[TimemachineError]

    def __init__(self, fn: Callable[["JobContext"], Any], label: str, owner: str, queue: "JobQueue"):
        self.id = secrets.token_hex(16)
        self.label = label
        self.owner = owner
        self.status = QUEUED
        self.result = None
        self.error = None
        self.exception = None
        self.worker = "this process"
        self.started: Optional[float] = None
        self.finished_at: Optional[float] = None
        self._latest: Optional[Progress] = None
        self._extras: dict[str, Any] = {}
        self._fn = fn
        self._queue = queue
        self._cancel = threading.Event()
        self._done = threading.Event()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._queue.cancel(self)

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._done.wait(timeout)

    def jobs_ahead(self) -> Optional[int]:
        return self._queue.jobs_ahead(self)

    def progress(self) -> Optional[Progress]:
        latest = self._latest
        if latest is None:
            return None
        return Progress(latest.stage, latest.done, latest.total, latest.message, {**latest.extras, **self._extras})

    def _record(self, event: Progress) -> None:
        for name in STICKY_EXTRAS:
            if event.extras.get(name) is not None:
                self._extras[name] = event.extras[name]
        self._latest = event

    def __repr__(self) -> str:
        return f"Job({self.id[:8]}, {self.label!r}, {self.status})"


class JobContext:
    """Handed to a running job: its progress callback (``context(event)``), which is also where
    cancellation takes effect."""

    def __init__(self, job: Job, queue: "JobQueue"):
        self._job = job
        self._queue = queue

    def __call__(self, event: Progress) -> None:
        """Publish ``event``; raises :class:`JobCancelled` if the job was cancelled or its visitor left."""
        self._job._record(event)
        self.check()

    def check(self) -> None:
        """Raise :class:`JobCancelled` if the job should stop."""
        if self._job.cancel_requested or self._queue.abandoned(self._job):
            raise JobCancelled()


class JobQueue:
    """FIFO of jobs, one worker thread, at most one job running (see the module docstring).

    Args:
        settings:    ``max_waiting`` (beyond it :class:`QueueFull`), ``per_visitor`` (unfinished jobs per
                     owner), ``abandon_after`` (seconds an owner may be gone before its job is cancelled).
        owner_alive: ``owner_alive(owner) -> bool``: whether the session that submitted a job is still
                     connected (default: always).
    """

    def __init__(self, settings: Optional[QueueSettings] = None, owner_alive: Optional[Callable[[str], bool]] = None):
        self.settings = settings or QueueSettings()
        self._owner_alive = owner_alive or (lambda owner: True)
        self._gone_since: dict[str, float] = {}
        self._waiting: Deque[Job] = collections.deque()
        self._running: Optional[Job] = None
        self._jobs: dict[str, Job] = {}
        self._cond = threading.Condition()
        self._worker: Optional[threading.Thread] = None

    # -- faces -------------------------------------------------------------------------------------------
    def submit(self, fn: Callable[[JobContext], Any], *, label: str, owner: str) -> Job:
        """Queue ``fn``; returns its :class:`Job` at once."""
        with self._cond:
            if len(self._waiting) >= self.settings.max_waiting:
                raise QueueFull.server_busy(len(self._waiting))
            mine = sum(1 for job in self._jobs.values() if job.owner == owner and not job.finished)
            if mine >= self.settings.per_visitor:
                raise QueueFull.visitor_limit(mine)
            job = Job(fn, label, owner, self)
            self._forget_finished()
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._ensure_worker()
            self._cond.notify_all()
        return job

    def find(self, job_id: str) -> Optional[Job]:
        with self._cond:
            return self._jobs.get(job_id)

    def jobs_ahead(self, job: Job) -> Optional[int]:
        """How many waiting jobs start before ``job`` (0 when it is next); None once it started."""
        with self._cond:
            if job not in self._waiting:
                return None
            return self._waiting.index(job)

    def cancel(self, job: Job) -> None:
        """Cancel ``job``: removed at once if still waiting, stopped at its next report if running."""
        job._cancel.set()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                self._finish(job, CANCELLED)
            self._cond.notify_all()

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._running is not None or bool(self._waiting)

    def abandoned(self, job: Job) -> bool:
        """True once ``job``'s owner has been disconnected for ``abandon_after`` seconds."""
        try:
            alive = bool(self._owner_alive(job.owner))
        except Exception:  # a broken liveness probe must not kill jobs
            log.exception("session liveness check failed")
            alive = True
        now = time.monotonic()
        if alive:
            self._gone_since.pop(job.owner, None)
            return False
        return now - self._gone_since.setdefault(job.owner, now) >= self.settings.abandon_after

    def _forget_finished(self, keep: int = 256) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.finished]
        for job_id in finished[:max(0, len(finished) - keep)]:
            del self._jobs[job_id]

    # -- the worker thread -------------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._serve, name="timemachine-jobs", daemon=True)
            self._worker.start()

    def _next(self) -> Job:
        with self._cond:
            while not self._waiting:
                self._cond.wait()
            job = self._waiting.popleft()
            self._running = job
            return job

    def _serve(self) -> None:
        while True:
            job = self._next()
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    def _run(self, job: Job) -> None:
        job.started = time.monotonic()
        if job.cancel_requested or self.abandoned(job):
            self._finish(job, CANCELLED)
            return
        job.status = RUNNING
        try:
            result = job._fn(JobContext(job, self))
        except JobCancelled:
            self._finish(job, CANCELLED)
        except TimemachineError as exc:
            self._finish(job, FAILED, exception=exc)
        except Exception:
            log.exception("job %s (%s) failed", job.id, job.label)
            self._finish(job, FAILED, exception=TimemachineError(BUG_MESSAGE))
        except BaseException:
            self._finish(job, FAILED, exception=TimemachineError(BUG_MESSAGE))
            raise
        else:
            job.result = result
            self._finish(job, DONE)

    @staticmethod
    def _finish(job: Job, status: str, exception: Optional[TimemachineError] = None) -> None:
        if exception is not None:
            job.exception, job.error = exception, str(exception)
        job.finished_at = time.monotonic()
        job._fn = None  # type: ignore[assignment]  # free what the closure holds (photos, arrays)
        job.status = status
        job._done.set()


class InProcessExecutor(Executor):
    """:class:`Executor` of the :class:`JobQueue` in this process (see the module docstring).

    Args:
        env:         the environment, for jobs that name a model instead of carrying a pipeline.
        settings:    queue limits.
        owner_alive: whether a job's owner is still connected (see :class:`JobQueue`).
    """

    remote = False

    def __init__(self, env: Optional[Environment] = None, settings: Optional[QueueSettings] = None, *,
                 owner_alive: Optional[Callable[[str], bool]] = None):
        self.env = env or Environment.from_environ()
        self.queue = JobQueue(settings or QueueSettings(), owner_alive=owner_alive)
        self._pipelines = PipelineCache(self.env)   # (loads nothing until a job names a model)

    @property
    def settings(self) -> QueueSettings:
        """The queue's limits (the :class:`JobQueue`'s own)."""
        return self.queue.settings

    @settings.setter
    def settings(self, value: QueueSettings) -> None:
        self.queue.settings = value

    def _pipeline_for(self, spec: JobSpec):
        if spec.pipeline is not None:
            return spec.pipeline
        return self._pipelines.get(spec.model, spec.model_name, perceptual=spec.check().needs_perceptual)

    def submit(self, spec: JobSpec) -> Job:
        spec.check()

        def fn(ctx: JobContext) -> Any:
            return run_job(self._pipeline_for(spec), spec, progress=ctx)

        return self.queue.submit(fn, label=spec.label or spec.kind, owner=spec.owner)

    def submit_call(self, fn: Callable[[JobContext], Any], *, label: str, owner: str) -> Job:
        """Queue any function ``fn(context)`` (in-process only: nothing is sent anywhere)."""
        return self.queue.submit(fn, label=label, owner=owner)

    def find(self, job_id: str, owner: Optional[str] = None) -> Optional[Job]:
        job = self.queue.find(job_id)
        if job is not None and owner is not None:
            job.owner = owner
        return job
