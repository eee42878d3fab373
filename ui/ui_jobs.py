"""One heavy job at a time per process: a FIFO queue served by a single worker thread.

Projections and renders take the whole machine (all CPU cores, or most of a GPU's memory), so the UI never
runs two at once: every visitor's job goes into one :class:`JobQueue` per process and a single worker
thread runs them in the order they came.  Nothing here imports Streamlit; the page shows a job's state by
reading it (``status``, ``stage``, ``fraction``, ``extras``) while the job runs in the worker, so a script
rerun (a slider moved, the page reloaded) never interrupts a projection: the rerun finds the job in the
session and shows its progress again.

A job is a function ``fn(context) -> result``.  It reports progress with ``context.report(stage,
fraction, **extras)``; each report is also where a cancelled job stops (:class:`JobCancelled` is raised
inside it).  A job is cancelled by its visitor (:meth:`Job.cancel`) or when its owner's session has been
gone for ``abandon_after`` seconds (``owner_alive`` says whether a session is still connected), so a
closed browser tab does not keep the machine busy.

Outcomes: ``done`` (``result`` set), ``failed`` (``error`` holds one plain sentence: the message of a
:class:`~timemachine.errors.TimemachineError`, or a generic sentence for a bug, whose traceback goes to
the server log), ``cancelled``.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from typing import Any, Callable, Deque, Optional

from timemachine.errors import TimemachineError

log = logging.getLogger("timemachine.ui")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
#: What a visitor reads when a job fails because of a bug (the traceback is in the server log).
BUG_MESSAGE = ("Something went wrong on the server and the job stopped. This is a bug in timemachine, not "
               "something you did; the details are in the server's log.")


class JobCancelled(Exception):
    """Raised inside a job's ``report`` call once the job has been cancelled."""


class QueueFull(TimemachineError):
    """Too many jobs are waiting already."""


class Job:
    """A unit of work in the queue and its observable state (read it from any thread).

    Attributes:
        id:        unique within the process.
        label:     what the job does, for the page ('video', 'preview', 'vector', ...).
        owner:     the session that submitted it.
        status:    'queued', 'running', 'done', 'failed' or 'cancelled'.
        stage:     one line saying what it is doing now.
        fraction:  progress in [0, 1].
        extras:    the latest values a job reported by name (e.g. 'preview': uint8 [R, R, 3]).
        result:    what ``fn`` returned (status 'done').
        error:     one plain sentence (status 'failed').
        waited_seconds: time spent in the queue before it started (None until it starts).
    """

    def __init__(self, job_id: int, fn: Callable[["JobContext"], Any], label: str, owner: str):
        self.id = job_id
        self.label = label
        self.owner = owner
        self.status = QUEUED
        self.stage = "waiting"
        self.fraction = 0.0
        self.extras: dict[str, Any] = {}
        self.result: Any = None
        self.error: Optional[str] = None
        self.submitted = time.monotonic()
        self.started: Optional[float] = None
        self.finished_at: Optional[float] = None
        self.waited_seconds: Optional[float] = None
        self._fn = fn
        self._cancel = threading.Event()
        self._done = threading.Event()

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Ask the job to stop: a queued job never starts, a running one stops at its next report."""
        self._cancel.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the job has finished; False if ``timeout`` seconds passed first."""
        return self._done.wait(timeout)

    def __repr__(self) -> str:
        return f"Job({self.id}, {self.label!r}, {self.status}, {self.stage!r})"


class JobContext:
    """Handed to a running job: progress reports, which are also where cancellation takes effect."""

    def __init__(self, job: Job, queue: "JobQueue"):
        self._job = job
        self._queue = queue

    def report(self, stage: Optional[str] = None, fraction: Optional[float] = None, **extras: Any) -> None:
        """Publish progress; raises :class:`JobCancelled` if the job was cancelled or its visitor left."""
        job = self._job
        if stage is not None:
            job.stage = stage
        if fraction is not None:
            job.fraction = min(1.0, max(0.0, float(fraction)))
        job.extras.update(extras)
        self.check()

    def check(self) -> None:
        """Raise :class:`JobCancelled` if the job should stop."""
        if self._job.cancel_requested or self._queue.abandoned(self._job):
            raise JobCancelled()


class JobQueue:
    """FIFO of jobs, one worker thread, at most one job running.

    Args:
        max_waiting:   jobs allowed to wait at once; :meth:`submit` raises :class:`QueueFull` beyond.
        owner_alive:   ``owner_alive(owner) -> bool``: whether the session that submitted a job is still
                       connected (default: always).
        abandon_after: seconds an owner may be gone before its job is cancelled.
    """

    def __init__(self, max_waiting: int = 16, owner_alive: Optional[Callable[[str], bool]] = None,
                 abandon_after: float = 30.0):
        self.max_waiting = max_waiting
        self.abandon_after = abandon_after
        self._owner_alive = owner_alive or (lambda owner: True)
        self._gone_since: dict[str, float] = {}
        self._waiting: Deque[Job] = collections.deque()
        self._running: Optional[Job] = None
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._worker: Optional[threading.Thread] = None

    # -- visitors ----------------------------------------------------------------------------------------
    def submit(self, fn: Callable[[JobContext], Any], *, label: str, owner: str) -> Job:
        """Queue ``fn``; returns its :class:`Job` at once."""
        with self._cond:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"The server is busy: {len(self._waiting)} jobs are waiting already. "
                                "Please try again in a few minutes.")
            job = Job(next(self._ids), fn, label, owner)
            self._waiting.append(job)
            self._ensure_worker()
            self._cond.notify_all()
        return job

    def jobs_ahead(self, job: Job) -> Optional[int]:
        """How many jobs will run before ``job`` starts (0 when it is next or running); None once it left."""
        with self._cond:
            if self._running is job:
                return 0
            if job not in self._waiting:
                return None
            return self._waiting.index(job) + (1 if self._running is not None else 0)

    def cancel(self, job: Job) -> None:
        """Cancel ``job``: removed at once if still waiting, stopped at its next report if running."""
        job.cancel()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                self._finish(job, CANCELLED, stage="cancelled")
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
        return now - self._gone_since.setdefault(job.owner, now) >= self.abandon_after

    # -- the worker --------------------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._serve, name="timemachine-ui-worker", daemon=True)
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
        job.waited_seconds = job.started - job.submitted
        if job.cancel_requested or self.abandoned(job):
            self._finish(job, CANCELLED, stage="cancelled")
            return
        job.status, job.stage = RUNNING, "starting"
        try:
            result = job._fn(JobContext(job, self))
        except JobCancelled:
            self._finish(job, CANCELLED, stage="cancelled")
        except TimemachineError as exc:
            self._finish(job, FAILED, error=str(exc), stage="failed")
        except Exception:
            log.exception("UI job %s (%s) failed", job.id, job.label)
            self._finish(job, FAILED, error=BUG_MESSAGE, stage="failed")
        except BaseException:
            self._finish(job, FAILED, error=BUG_MESSAGE, stage="failed")
            raise
        else:
            job.result = result
            self._finish(job, DONE, stage="done", fraction=1.0)

    @staticmethod
    def _finish(job: Job, status: str, *, stage: str, error: Optional[str] = None,
                fraction: Optional[float] = None) -> None:
        job.error = error
        job.stage = stage
        if fraction is not None:
            job.fraction = fraction
        job.finished_at = time.monotonic()
        job._fn = None  # type: ignore[assignment]  # free what the closure holds (photos, arrays)
        job.status = status
        job._done.set()
