"""The queue executor: jobs run on Celery workers (``timemachine worker``), Redis as broker and result backend.

Faces (UI, CLI) submit a :class:`~timemachine.pipeline.jobs.JobSpec`; it travels as JSON
(:mod:`timemachine.pipeline.codec`: no pickle anywhere, Celery accepts the 'json' content type only) to the
first free worker.  Each worker runs one job at a time (concurrency 1, prefetch 1) and acknowledges a job only
once it has finished (``acks_late``), so a job whose worker dies is given to another one: at once when the
worker's pool process dies (``reject_on_worker_lost``), after the broker's visibility timeout when the whole
worker vanishes (a live worker renews the jobs it holds, so a long job is never handed out twice).  Models and
VGG16 are loaded once per worker process and reused (:class:`~timemachine.pipeline.jobs.PipelineCache`).
Results are files in the home directory that faces and workers share (the projection and video stores, keyed by
content), so a repeated request is served from the stores by any worker.

What a job leaves in Redis besides Celery's own keys (all expire after ``QueueSettings.job_ttl``)::

    timemachine:job:<id>            hash: status, kind, label, owner, submitted, started, finished, worker
    timemachine:job:<id>:progress   JSON: stage, done, total, message, lpips, loss, preview_seq,
                                    strip_seq
    timemachine:job:<id>:preview    PNG of the latest preview image
    timemachine:job:<id>:strip      JSON: [[t, base64 PNG], ...] of the latest preview strip
    timemachine:job:<id>:cancel     set by a face to stop the job; the worker checks it at every report
    timemachine:waiting             sorted set of waiting jobs by submission order (queue positions)
    timemachine:owner:<owner>       set of an owner's unfinished jobs (per-visitor limits)

Redis is inside the trust boundary: whoever can write to it can submit jobs and read every visitor's photos.
It must not be reachable by visitors (see the README).  What it cannot do is run code on a worker or a face
through a message: nothing read from it is unpickled or imported.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any, Optional

from timemachine.env import Environment
from timemachine.errors import TimemachineError, first_line, printable
from timemachine.pipeline import codec
from timemachine.pipeline.executor import (
    BUG_MESSAGE,
    CANCELLED,
    DONE,
    FAILED,
    FINISHED,
    RUNNING,
    Executor,
    JobCancelled,
    JobHandle,
    QueueFull,
    poll,
)
from timemachine.pipeline.jobs import JobSpec, PipelineCache, job_kind, run_job
from timemachine.pipeline.progress import Progress
from timemachine.settings import QueueSettings

log = logging.getLogger("timemachine.jobs")

TASK_NAME = "timemachine.run_job"
QUEUE_NAME = "timemachine"
PREFIX = "timemachine:"
WAITING = PREFIX + "waiting"
SEQUENCE = PREFIX + "sequence"
#: Version of the job message; a worker refuses others.
MESSAGE_VERSION = 1


class BrokerError(TimemachineError):
    """The broker (Redis) cannot be reached or refused the job."""


def _job_key(job_id: str, part: str = "") -> str:
    return f"{PREFIX}job:{job_id}" + (f":{part}" if part else "")


def _owner_key(owner: str) -> str:
    return f"{PREFIX}owner:{owner}"


def _check_id(job_id: Any) -> str:
    if not isinstance(job_id, str) or not 8 <= len(job_id) <= 64 or not all(c in "0123456789abcdef" for c in job_id):
        raise TimemachineError("not a job id")
    return job_id


# Atomic steps, as Lua scripts run by Redis (a check and its write cannot be interleaved with another client's).

#: KEYS: waiting, owner set, job hash, sequence.  ARGV: id, max_waiting, per_owner, ttl, owner, kind, label, now.
#: Returns {0, position} or {-1, waiting} (queue full) or {-2, owner's jobs} (owner at the limit).
_SUBMIT = """
local waiting = redis.call('ZCARD', KEYS[1])
if waiting >= tonumber(ARGV[2]) then return {-1, waiting} end
local mine = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local status = redis.call('HGET', 'timemachine:job:' .. id, 'status')
  if status == 'queued' or status == 'running' then mine = mine + 1 else redis.call('SREM', KEYS[2], id) end
end
if mine >= tonumber(ARGV[3]) then return {-2, mine} end
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[1], seq, ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('HSET', KEYS[3], 'status', 'queued', 'owner', ARGV[5], 'kind', ARGV[6], 'label', ARGV[7],
           'submitted', ARGV[8])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return {0, redis.call('ZRANK', KEYS[1], ARGV[1])}
"""

#: KEYS: job hash, waiting, cancel key.  ARGV: id, worker, now.  Returns 1 (run it) or 0 (it was cancelled).
_START = """
if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('HGET', KEYS[1], 'status') == 'cancelled' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[2], 'started', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

#: KEYS: job hash, waiting, cancel key.  ARGV: id, ttl, now.  Returns 1 when the job was waiting (cancelled
#: now), 0 when it runs (it stops at its next report) or has finished.
_CANCEL = """
redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
if redis.call('HGET', KEYS[1], 'status') == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished', ARGV[3])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


def celery_app(broker_url: str, settings: QueueSettings):
    """The Celery application of timemachine's queue: JSON only, one job at a time per worker, acknowledged
    late, given back when its worker dies."""
    from celery import Celery

    visibility = float(settings.visibility_timeout)
    transport = {"visibility_timeout": visibility,
                 "unacked_restore_interval": max(1, min(10, int(visibility / 4))), "unacked_restore_throttle": 1}
    app = Celery("timemachine", broker=broker_url, backend=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json", result_serializer="json", event_serializer="json",
        accept_content=["json"], result_accept_content=["json"],
        task_acks_late=True, task_reject_on_worker_lost=True, task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1, worker_concurrency=1, task_track_started=True,
        task_default_queue=QUEUE_NAME, result_expires=int(settings.job_ttl),
        broker_transport_options=transport, result_backend_transport_options={"retry_policy": {"timeout": 5.0}},
        broker_connection_retry_on_startup=True, worker_send_task_events=False, task_send_sent_event=False,
        worker_hijack_root_logger=False, worker_redirect_stdouts=False,
    )
    app.task(name=TASK_NAME, bind=True)(_run_task)
    return app


def _redis(url: str):
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30)


# ----------------------------------------------------------------------------------------------------------
# The face's side


class CeleryJobHandle(JobHandle):
    """A job on the workers, read from Redis (see :class:`JobHandle`)."""

    def __init__(self, executor: "CeleryExecutor", job_id: str, label: str, owner: str):
        self.id = job_id
        self.label = label
        self.owner = owner
        self._executor = executor
        self._outcome: Optional[dict] = None
        self._result: Any = None
        self._decoded = False
        self._progress_cache: dict[str, Any] = {"preview_seq": 0, "strip_seq": 0}

    @property
    def _r(self):
        return self._executor.redis

    def _field(self, name: str) -> Optional[str]:
        value = self._r.hget(_job_key(self.id), name)
        return value.decode("utf-8", "replace") if value is not None else None

    def _read_outcome(self) -> Optional[dict]:
        """The task's return value once Celery has stored it (None before)."""
        if self._outcome is None:
            from celery.result import AsyncResult

            result = AsyncResult(self.id, app=self._executor.app)
            state = result.state
            if state == "SUCCESS":
                value = result.result
                self._outcome = value if isinstance(value, dict) else {"status": FAILED}
            elif state in ("FAILURE", "REVOKED"):
                self._outcome = {"status": FAILED}
        return self._outcome

    @property
    def status(self) -> str:
        recorded = self._field("status")
        if recorded is None:
            return FAILED   # unknown or expired
        outcome = self._read_outcome()
        if outcome is not None:
            status = outcome.get("status")
            return status if status in FINISHED else FAILED
        if recorded == CANCELLED:
            return CANCELLED   # cancelled while waiting (no worker will run it) or just now by its worker
        return RUNNING if recorded in FINISHED else recorded   # finished: its result is being stored

    @property
    def worker(self) -> Optional[str]:
        return self._field("worker")

    @property
    def result(self) -> Any:
        outcome = self._read_outcome()
        if outcome is None or outcome.get("status") != DONE:
            return None
        if not self._decoded:
            self._result = codec.decode(outcome.get("result"), self._executor.env.home)
            self._decoded = True
        return self._result

    @property
    def exception(self) -> Optional[TimemachineError]:
        outcome = self._read_outcome()
        if outcome is None:
            if self._field("status") is None:
                return TimemachineError("this job is not known to the queue (it may have expired)")
            return None
        if outcome.get("status") != FAILED:
            return None
        error = outcome.get("error")
        return codec.decode_error(error) if error else TimemachineError(BUG_MESSAGE)

    @property
    def error(self) -> Optional[str]:
        exc = self.exception
        return str(exc) if exc is not None else None

    def jobs_ahead(self) -> Optional[int]:
        rank = self._r.zrank(WAITING, self.id)
        return int(rank) if rank is not None else None

    def progress(self) -> Optional[Progress]:
        raw = self._r.get(_job_key(self.id, "progress"))
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            cache = self._progress_cache
            if data.get("preview_seq", 0) != cache["preview_seq"]:
                png = self._r.get(_job_key(self.id, "preview"))
                cache["preview"] = codec.decode_png(png) if png else None
                cache["preview_seq"] = data.get("preview_seq", 0)
            if data.get("strip_seq", 0) != cache["strip_seq"]:
                strip = json.loads(self._r.get(_job_key(self.id, "strip")) or b"[]")
                cache["strip"] = [(float(t), codec.decode_png(codec._unb64(png))) for t, png in strip]
                cache["strip_seq"] = data.get("strip_seq", 0)
            extras = {k: data[k] for k in ("lpips", "loss") if isinstance(data.get(k), (int, float))}
            extras.update({k: cache[k] for k in ("preview", "strip") if cache.get(k) is not None})
            total = data.get("total")
            return Progress(str(data.get("stage", "")), int(data.get("done", 0)),
                            int(total) if isinstance(total, int) else None, str(data.get("message", "")), extras)
        except (ValueError, TypeError, codec.CodecError):
            return None

    def cancel(self) -> None:
        self._executor._cancel(self.id)

    def wait(self, timeout: Optional[float] = None) -> bool:
        return poll(lambda: self.finished, timeout, self._executor.settings.poll_seconds)


class CeleryExecutor(Executor):
    """:class:`Executor` that sends jobs to Celery workers through Redis (see the module docstring).

    Args:
        env:      the environment: ``broker_url`` (redis://...) and the home directory shared with the workers.
        settings: queue limits (``max_waiting``, ``per_visitor``), ``job_ttl`` and ``poll_seconds``.
    """

    remote = True

    def __init__(self, env: Environment, settings: Optional[QueueSettings] = None):
        if not env.broker_url or not env.broker_url.startswith(("redis://", "rediss://", "unix://")):
            raise BrokerError("the job queue needs a Redis broker URL (redis://host:port/db)")
        self.env = env
        self.settings = settings or QueueSettings()
        self.app = celery_app(env.broker_url, self.settings)
        self.redis = _redis(env.broker_url)
        self._scripts = {name: self.redis.register_script(text)
                         for name, text in (("submit", _SUBMIT), ("cancel", _CANCEL))}

    def submit(self, spec: JobSpec) -> CeleryJobHandle:
        import redis

        kind = spec.check()
        if not spec.model:
            raise TimemachineError("a job for the workers must name its model")
        payload = {"version": MESSAGE_VERSION, "kind": kind.name, "model": spec.model,
                   "model_name": spec.model_name, "request": codec.encode(spec.request, self.env.home)}
        job_id = secrets.token_hex(16)
        owner = spec.owner or "anonymous"
        label = spec.label or spec.kind
        ttl = int(self.settings.job_ttl)
        try:
            code, count = self._scripts["submit"](
                keys=[WAITING, _owner_key(owner), _job_key(job_id), SEQUENCE],
                args=[job_id, self.settings.max_waiting, self.settings.per_visitor, ttl, owner, kind.name, label,
                      f"{time.time():.3f}"])
            if code == -1:
                raise QueueFull.server_busy(count)
            if code == -2:
                raise QueueFull.visitor_limit(count)
            self.app.send_task(TASK_NAME, args=[payload], task_id=job_id, queue=QUEUE_NAME)
        except redis.RedisError as exc:
            raise BrokerError(f"the job queue at {_safe_url(self.env.broker_url)} cannot be reached: "
                              f"{first_line(exc)}") from None
        except QueueFull:
            raise
        except Exception as exc:  # kombu's connection errors
            self._cancel(job_id)
            raise BrokerError(f"the job could not be sent to {_safe_url(self.env.broker_url)}: {first_line(exc)}") \
                from None
        return CeleryJobHandle(self, job_id, label, owner)

    def find(self, job_id: str, owner: Optional[str] = None) -> Optional[CeleryJobHandle]:
        try:
            job_id = _check_id(job_id)
        except TimemachineError:
            return None
        fields = self.redis.hgetall(_job_key(job_id))
        if not fields:
            return None
        text = {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}
        return CeleryJobHandle(self, job_id, text.get("label", ""), text.get("owner", ""))

    def _cancel(self, job_id: str) -> None:
        ttl = int(self.settings.job_ttl)
        if self._scripts["cancel"](keys=[_job_key(job_id), WAITING, _job_key(job_id, "cancel")],
                                   args=[job_id, ttl, f"{time.time():.3f}"]):
            owner = self.redis.hget(_job_key(job_id), "owner")
            if owner is not None:
                self.redis.srem(_owner_key(owner.decode("utf-8", "replace")), job_id)

    def close(self) -> None:
        self.redis.close()
        self.app.close()


def _safe_url(url: Optional[str]) -> str:
    """The broker URL without its password."""
    from urllib.parse import urlsplit, urlunsplit

    if not url:
        return ""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


# ----------------------------------------------------------------------------------------------------------
# The worker's side


@dataclasses.dataclass
class _WorkerConfig:
    env: Environment
    broker_url: str          # env.broker_url, known to be set
    settings: QueueSettings
    device: Optional[str]


_CONFIG: Optional[_WorkerConfig] = None
_STATE: dict[str, Any] = {}
_STATE_LOCK = threading.Lock()


def _worker_state() -> dict[str, Any]:
    """This process's Redis client and pipelines (made after the pool forked, once per process)."""
    if _CONFIG is None:
        raise RuntimeError("timemachine's task runs only in a worker started by run_worker()")
    with _STATE_LOCK:
        if _STATE.get("pid") != os.getpid():
            _STATE.clear()
            _STATE.update(pid=os.getpid(), redis=_redis(_CONFIG.broker_url),
                          pipelines=PipelineCache(_CONFIG.env, device=_CONFIG.device))
        return _STATE


class _Publisher:
    """The job's progress callback on the worker: publishes each report to Redis and stops the job when its
    cancel key is set."""

    def __init__(self, r, job_id: str, ttl: int):
        self.r, self.id, self.ttl = r, job_id, ttl
        self.preview_seq = self.strip_seq = 0

    def __call__(self, event: Progress) -> None:
        extras = event.extras
        data: dict[str, Any] = {"stage": event.stage, "done": int(event.done),
                                "total": int(event.total) if event.total is not None else None,
                                "message": event.message}
        for name in ("lpips", "loss"):
            if isinstance(extras.get(name), (int, float)):
                data[name] = float(extras[name])
        pipe = self.r.pipeline(transaction=False)
        pipe.exists(_job_key(self.id, "cancel"))
        if extras.get("preview") is not None:
            self.preview_seq += 1
            pipe.set(_job_key(self.id, "preview"), codec.encode_png(extras["preview"]), ex=self.ttl)
        if extras.get("strip"):
            self.strip_seq += 1
            strip = [[float(t), codec._b64(codec.encode_png(frame))] for t, frame in extras["strip"]]
            pipe.set(_job_key(self.id, "strip"), json.dumps(strip), ex=self.ttl)
        data.update(preview_seq=self.preview_seq, strip_seq=self.strip_seq)
        pipe.set(_job_key(self.id, "progress"), json.dumps(data), ex=self.ttl)
        if pipe.execute()[0]:
            raise JobCancelled()


def _decode_job(payload: Any, home: Path) -> JobSpec:
    if not isinstance(payload, dict) or payload.get("version") != MESSAGE_VERSION:
        raise codec.CodecError("the job message is not of a version this worker reads")
    kind, model, name = payload.get("kind"), payload.get("model"), payload.get("model_name")
    if not isinstance(kind, str) or not isinstance(model, str) or not (name is None or isinstance(name, str)):
        raise codec.CodecError("the job message is malformed")
    spec = JobSpec(kind=kind, request=codec.decode(payload.get("request"), home), model=model, model_name=name)
    spec.check()
    return spec


def _run_task(task, payload: Any) -> dict[str, Any]:
    """The Celery task: run one job and return {'status', 'result' | 'error'} (never raises for a job's own
    failure, so Celery never has to rebuild an exception)."""
    assert _CONFIG is not None
    state = _worker_state()
    r = state["redis"]
    job_id = _check_id(task.request.id)
    ttl = int(_CONFIG.settings.job_ttl)
    worker = f"{task.request.hostname or socket.gethostname()} pid {os.getpid()}"
    started = r.register_script(_START)(keys=[_job_key(job_id), WAITING, _job_key(job_id, "cancel")],
                                        args=[job_id, worker, f"{time.time():.3f}"])

    def finish(outcome: dict[str, Any]) -> dict[str, Any]:
        owner = r.hget(_job_key(job_id), "owner")
        pipe = r.pipeline(transaction=False)
        pipe.hset(_job_key(job_id), mapping={"status": outcome["status"], "finished": f"{time.time():.3f}"})
        if owner is not None:
            pipe.srem(_owner_key(owner.decode("utf-8", "replace")), job_id)
        pipe.execute()
        return outcome

    if not started:
        return finish({"status": CANCELLED})
    try:
        spec = _decode_job(payload, _CONFIG.env.home)
        log.info("job %s: %s on %s", job_id, spec.kind, printable(spec.model))
        pipe = state["pipelines"].get(spec.model, spec.model_name, perceptual=job_kind(spec.kind).needs_perceptual)
        result = run_job(pipe, spec, _Publisher(r, job_id, ttl))
        encoded = codec.encode(result, _CONFIG.env.home)
    except JobCancelled:
        log.info("job %s cancelled", job_id)
        return finish({"status": CANCELLED})
    except TimemachineError as exc:
        log.info("job %s failed: %s", job_id, exc)
        return finish({"status": FAILED, "error": codec.encode_error(exc)})
    except Exception:
        log.exception("job %s failed", job_id)
        return finish({"status": FAILED, "error": None})
    log.info("job %s done", job_id)
    return finish({"status": DONE, "result": encoded})


#: Kombu's Redis transport: the sorted set of unacknowledged messages by delivery time (its default name).
UNACKED_INDEX = "unacked_index"


class _Heartbeat(threading.Thread):
    """Renews the delivery time of the messages this worker holds, every quarter of the visibility timeout.

    Redis has no acknowledgement deadline of its own: kombu gives a message back to the queue once it has been
    unacknowledged for the visibility timeout, whether its worker died or is still busy with a long job.  The
    worker's main process therefore keeps its messages' entries fresh while it lives; when the worker
    vanishes (SIGKILL, a lost machine) the renewals stop and another worker gets the job after the timeout.
    """

    def __init__(self, url: str, visibility_timeout: float):
        super().__init__(name="timemachine-heartbeat", daemon=True)
        self.url = url
        self.interval = max(0.5, visibility_timeout / 4)

    def run(self) -> None:
        import redis
        from celery.worker import state

        client = _redis(self.url)
        while True:
            time.sleep(self.interval)
            try:
                requests = list(state.reserved_requests) + list(state.active_requests)
                tags = {r.message.delivery_tag for r in requests if getattr(r, "message", None) is not None}
                if tags:
                    client.zadd(UNACKED_INDEX, {tag: time.time() for tag in tags}, xx=True)
            except (RuntimeError, redis.RedisError):   # the sets changed meanwhile, Redis away: next time
                continue


def worker_name(name: Optional[str] = None) -> str:
    """The Celery node name of a worker: 'timemachine-<name>@<host>' (default name: the process id)."""
    return f"timemachine-{name or os.getpid()}@{socket.gethostname()}"


def run_worker(env: Environment, settings: Optional[QueueSettings] = None, *, name: Optional[str] = None,
               device: Optional[str] = None, loglevel: str = "INFO") -> int:
    """Run a worker until it is stopped (SIGTERM: finish the job, then stop; a second SIGTERM or SIGQUIT:
    stop now, the job goes back to the queue).  Returns Celery's exit code."""
    global _CONFIG
    settings = settings or QueueSettings()
    settings.validate()
    if not env.broker_url:
        raise BrokerError("no broker configured: set TIMEMACHINE_BROKER_URL=redis://host:port/db")
    _CONFIG = _WorkerConfig(env=env, broker_url=env.broker_url, settings=settings, device=device)
    app = celery_app(env.broker_url, settings)
    _check_reachable(env.broker_url)
    _Heartbeat(env.broker_url, settings.visibility_timeout).start()
    argv = ["worker", f"--hostname={worker_name(name)}", "--concurrency=1", "--prefetch-multiplier=1",
            "--pool=prefork", "--without-gossip", "--without-mingle", f"--loglevel={loglevel}",
            f"--queues={QUEUE_NAME}", "-O", "fair"]
    try:
        app.worker_main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _check_reachable(url: str) -> None:
    import redis

    r = _redis(url)
    try:
        r.ping()
    except redis.RedisError as exc:
        raise BrokerError(f"the job queue at {_safe_url(url)} cannot be reached: {first_line(exc)}") from None
    finally:
        r.close()


def ping_worker(env: Environment, name: Optional[str] = None, timeout: float = 5.0) -> bool:
    """Whether the worker ``name`` on this host answers (the container's health check)."""
    if not env.broker_url:
        raise BrokerError("no broker configured: set TIMEMACHINE_BROKER_URL=redis://host:port/db")
    _check_reachable(env.broker_url)
    app = celery_app(env.broker_url, QueueSettings())
    try:
        replies = app.control.ping(destination=[worker_name(name)], timeout=timeout)
    finally:
        app.close()
    return bool(replies)
