"""Executors: where jobs wait and run.  A face submits a :class:`~timemachine.pipeline.jobs.JobSpec` and gets a
:class:`JobHandle` back at once, then reads the job's state from it while the job waits and runs.

Two implementations, one module each:

* :class:`~timemachine.pipeline.executor_inprocess.InProcessExecutor` (the embedded default, no broker
  configured): one worker thread in the face's own process runs one job at a time, first come first served.
  A job stops at its next progress report once cancelled, or once its visitor's session has been gone for
  ``abandon_after`` seconds.
* :class:`~timemachine.pipeline.executor_celery.CeleryExecutor` (``TIMEMACHINE_BROKER_URL=redis://...``): jobs
  go to Celery workers (``timemachine worker``) through Redis, which also carries their state, progress,
  cancellation and results.  Jobs outlive the face that submitted them: :meth:`Executor.find` finds one again
  by its id.

:func:`make_executor` picks one from the environment.

A handle's life: 'queued' (:meth:`JobHandle.jobs_ahead` says how many jobs start before it), 'running'
(:meth:`JobHandle.progress` gives the latest :class:`~timemachine.pipeline.Progress`, with the latest
'preview' and 'strip' images the job reported), then 'done' (``result``), 'failed' (``error``: one sentence;
``exception``: the :class:`~timemachine.errors.TimemachineError`, remedy included) or 'cancelled'.
"""

from __future__ import annotations

import abc
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from timemachine.env import Environment
from timemachine.errors import TimemachineError
from timemachine.pipeline.jobs import JobSpec
from timemachine.pipeline.progress import Progress
from timemachine.settings import QueueSettings

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
#: What a visitor reads when a job fails because of a bug (the traceback is in the log of whoever ran it).
BUG_MESSAGE = ("Something went wrong on the server and the job stopped. This is a bug in timemachine, not "
               "something you did; the details are in the server's log.")


class JobCancelled(Exception):
    """Raised inside a job's progress callback once the job has been cancelled (ends the job)."""


class QueueFull(TimemachineError):
    """Too many jobs are waiting already, or this visitor has as many as allowed."""

    @classmethod
    def server_busy(cls, waiting: int) -> "QueueFull":
        return cls(f"The server is busy: {waiting} jobs are waiting already. Please try again in a few minutes.")

    @classmethod
    def visitor_limit(cls, unfinished: int) -> "QueueFull":
        return cls(f"you have {unfinished} unfinished jobs already; wait for one to finish or cancel it")


class Cancelled(TimemachineError):
    """:meth:`JobHandle.get` of a job that was cancelled."""


class JobHandle(abc.ABC):
    """A submitted job, seen from the face.

    Attributes (read them at any time, from any thread):
        id:       unique and unguessable (a handle can be found again by it, so it is a capability).
        label:    what the job is, for people.
        owner:    who submitted it.
        status:   'queued', 'running', 'done', 'failed' or 'cancelled'.
        result:   the job's result once 'done' (else None).
        error:    one sentence once 'failed' (else None).
        exception: the :class:`TimemachineError` of a failure (a bug's is a plain one saying so).
    """

    id: str
    label: str
    owner: str

    if TYPE_CHECKING:   # read-only for faces: attributes of some executors' handles, properties of others'
        @property
        def status(self) -> str: ...

        @property
        def result(self) -> Any: ...

        @property
        def error(self) -> Optional[str]: ...

        @property
        def exception(self) -> Optional[TimemachineError]: ...

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @abc.abstractmethod
    def jobs_ahead(self) -> Optional[int]:
        """Jobs that start before this one (0 when it is next); None once it has started."""

    @abc.abstractmethod
    def progress(self) -> Optional[Progress]:
        """The latest progress report (None before the first); its extras hold the latest 'preview' (uint8
        [R, R, 3]) and 'strip' ([(t, uint8 [R, R, 3])]) reported so far, and 'lpips'/'loss' when given."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop the job: a waiting job never starts; a running one stops at its next progress report."""

    @abc.abstractmethod
    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the job has finished; False if ``timeout`` seconds passed first."""

    def get(self, timeout: Optional[float] = None) -> Any:
        """Wait for the job and return its result; raises its error (a :class:`TimemachineError`),
        :class:`Cancelled`, or TimeoutError."""
        if not self.wait(timeout):
            raise TimeoutError(f"job {self.id} still {self.status} after {timeout} s")
        status = self.status
        if status == FAILED:
            raise self.exception or TimemachineError(self.error or BUG_MESSAGE)
        if status == CANCELLED:
            raise Cancelled("the job was cancelled")
        return self.result

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.label!r}>"


class Executor(abc.ABC):
    """Where jobs wait and run (see the module docstring)."""

    settings: QueueSettings
    #: True when jobs run in other processes (then JobSpec.pipeline is not used and the model is loaded by spec).
    remote: bool = False

    @abc.abstractmethod
    def submit(self, spec: JobSpec) -> JobHandle:
        """Queue ``spec``; returns its handle at once.  Raises :class:`QueueFull` when too many jobs wait or
        ``spec.owner`` has as many unfinished jobs as allowed."""

    @abc.abstractmethod
    def find(self, job_id: str, owner: Optional[str] = None) -> Optional[JobHandle]:
        """The job ``job_id`` if this executor knows it (a visitor who reloaded the page finds theirs); with
        ``owner``, the job now belongs to that owner (the visitor's new session)."""

    def close(self) -> None:  # noqa: B027 (an executor without connections has nothing to release)
        """Release connections (the executor is not used afterwards)."""


def poll(until: Callable[[], bool], timeout: Optional[float], interval: float) -> bool:
    """Call ``until()`` every ``interval`` seconds until it is true (True) or ``timeout`` passes (False)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not until():
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))
    return True


def make_executor(env: Environment, settings: Optional[QueueSettings] = None, *,
                  owner_alive: Optional[Callable[[str], bool]] = None) -> Executor:
    """The Celery executor when ``env.broker_url`` is set, else the in-process one (``owner_alive(owner)``
    tells it whether a visitor is still connected)."""
    settings = settings or QueueSettings()
    settings.validate()
    if env.broker_url:
        from timemachine.pipeline.executor_celery import CeleryExecutor

        return CeleryExecutor(env, settings)
    from timemachine.pipeline.executor_inprocess import InProcessExecutor

    return InProcessExecutor(env, settings, owner_alive=owner_alive)
