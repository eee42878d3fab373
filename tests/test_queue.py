"""The job queue for real: a Redis server (Debian's redis-server, started here on a free port) and Celery workers
(`timemachine worker`, started as processes) on a small generator, next to the in-process executor.

The behaviour a face relies on (submit, progress with images, cancel of a running and of a waiting job, the
per-visitor limit) is tested on both executors with the same tests.  Then what only the queue has: two workers
taking jobs from one queue at once, a repeat served from the shared store by another worker, a worker killed
with SIGKILL mid-job whose job another worker redoes (with nothing half-written visible), the CLI's --broker
runs writing what a local run writes, and a pickled message that no worker unpickles.

Under CI=1 a missing redis-server fails (.ci/run installs it); elsewhere the Redis tests are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench_queue import start_redis
from conftest import REPO_ROOT, make_small_generator
from timemachine import age
from timemachine.checkpoint import model_fingerprint, save_generator
from timemachine.env import Environment
from timemachine.pipeline import (
    AgeEdit,
    AgeVideoRequest,
    InProcessExecutor,
    JobSpec,
    Photo,
    ProjectionRequest,
    QueueFull,
    VideoOutputs,
)
from timemachine.settings import ProjectorSettings, QueueSettings, RenderSettings

REDIS_SERVER = shutil.which("redis-server")
if REDIS_SERVER is None:
    _why = "needs Debian's redis-server (apt-get install redis-server)"
    if os.environ.get("CI"):          # .ci/run installs it: missing there is a failure, not a skip
        raise RuntimeError(f"CI: {_why}")
    pytestmark = pytest.mark.skip(reason=_why)

pytest.importorskip("celery")

TIMEOUT = 120
#: Workers hand a vanished worker's job to another after this many seconds (the kill test waits for it).
VISIBILITY = 6
FAST = ProjectorSettings(steps=6, w_avg_samples=200, preview_every=2)
#: A job that runs until it is cancelled (each step takes a while on 2 cores).
ENDLESS = ProjectorSettings(steps=100_000, w_avg_samples=200, preview_every=0)


def photo(seed: int) -> Photo:
    image = (np.random.RandomState(seed).rand(32, 32, 3) * 255).astype(np.uint8)
    return Photo(image=image, info={"name": f"photo{seed}.png", "crop": "centre"})


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A shared home with the small model and an age vector 'pups'; this process's environment points at it."""
    root = tmp_path_factory.mktemp("queue")
    mp = pytest.MonkeyPatch()
    env = {"TIMEMACHINE_HOME": str(root / "home"), "TIMEMACHINE_OFFLINE": "1", "TIMEMACHINE_VGG_WEIGHTS": "random",
           "TIMEMACHINE_DEVICE": "cpu"}
    for key, value in env.items():
        mp.setenv(key, value)
    mp.delenv("TIMEMACHINE_BROKER_URL", raising=False)
    G = make_small_generator()
    model = root / "small.safetensors"
    save_generator(G, model)
    gen = torch.Generator().manual_seed(3)
    ws = G.mapping(torch.randn(2, G.z_dim, generator=gen), None)
    vector = age.build_vector("pups", ws[:1], ws[1:], method="pair", model_fingerprint=model_fingerprint(G))
    age.VectorLibrary(Environment.from_environ().paths).save(vector)
    yield {"root": root, "home": root / "home", "model": str(model), "env": env}
    mp.undo()


@pytest.fixture(scope="module")
def redis_url(home):
    workdir = home["root"] / "redis"
    workdir.mkdir()
    proc, url = start_redis(workdir, REDIS_SERVER)
    yield url
    proc.terminate()
    proc.wait(10)


class Worker:
    """A `timemachine worker` process (its own process group, so that a kill takes its pool process too)."""

    def __init__(self, name: str, url: str, home: dict):
        self.name = name
        self.log = home["root"] / f"worker-{name}.log"
        env = dict(os.environ, **home["env"], TIMEMACHINE_BROKER_URL=url, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONPATH=str(REPO_ROOT))
        self.proc = subprocess.Popen([sys.executable, "-m", "timemachine", "worker", "--name", name,
                                      "--visibility-timeout", str(VISIBILITY)],
                                     env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=home["root"])

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while "ready." not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture(scope="module")
def workers(redis_url, home):
    started = {name: Worker(name, redis_url, home) for name in ("w1", "w2")}
    for worker in started.values():
        worker.wait_ready()
    yield started
    for worker in started.values():
        worker.stop()


@pytest.fixture(params=["inprocess", "celery"])
def executor(request, home):
    """Each executor with default limits; the Celery one has two workers behind it."""
    if request.param == "inprocess":
        ex = InProcessExecutor(Environment.from_environ())
        ex.slots = 1
    else:
        from timemachine.pipeline.executor_celery import CeleryExecutor

        request.getfixturevalue("workers")
        ex = CeleryExecutor(Environment.from_environ().replace(broker_url=request.getfixturevalue("redis_url")))
        ex.slots = 2
    yield ex
    ex.close()


def job(home, kind: str, request, owner: str = "visitor", label: str = "") -> JobSpec:
    return JobSpec(kind, request, model=home["model"], owner=owner, label=label or kind)


def video_request(seed: int = 1, strength: float = 1.0, steps: int = 6, frames: int = 8) -> AgeVideoRequest:
    return AgeVideoRequest(photo=photo(seed), edit=AgeEdit("pups", strength=strength),
                           projection=ProjectionRequest(photos=[], settings=ProjectorSettings(
                               steps=steps, w_avg_samples=200, preview_every=2)),
                           render=RenderSettings(frames=frames, hold_start=1, hold_end=1),
                           outputs=VideoOutputs(directory=None, gif=True))


def wait_for(condition, timeout: float = TIMEOUT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def running(handle) -> bool:
    event = handle.progress()
    return handle.status == "running" and event is not None and event.done >= 1


# ----------------------------------------------------------------------------------------------------------
# Both executors


def test_a_job_reports_progress_with_previews_and_returns_its_result(executor, home):
    handle = executor.submit(job(home, "project", ProjectionRequest(photos=[photo(7)], settings=FAST, use_cache=False)))
    seen = []
    while not handle.finished:
        event = handle.progress()
        if event is not None and (not seen or event.done != seen[-1].done):
            seen.append(event)
        time.sleep(0.02)
    (result,) = handle.get(TIMEOUT)
    assert handle.status == "done" and handle.error is None
    assert result.latent.ws.shape == (8, 32) and result.metrics["steps_run"] == FAST.steps
    assert result.reconstruction.shape == (32, 32, 3) and result.reconstruction.dtype == np.uint8
    np.testing.assert_array_equal(result.target, photo(7).image)          # the photo travelled losslessly
    assert seen and all(e.stage == "project" and e.total == FAST.steps for e in seen)
    last = handle.progress()
    assert last.done == FAST.steps and 0 <= last.extras["lpips"] and last.extras["preview"].shape == (32, 32, 3)
    assert handle.jobs_ahead() is None


def test_cancel_stops_a_running_job_and_a_waiting_one_never_starts(executor, home):
    blockers = [executor.submit(job(home, "project", ProjectionRequest(photos=[photo(20 + i)], settings=ENDLESS),
                                    owner=f"blocker{i}")) for i in range(executor.slots)]
    wait_for(lambda: all(running(b) for b in blockers), what="the blockers to run")
    waiting = executor.submit(job(home, "project", ProjectionRequest(photos=[photo(30)], settings=FAST), owner="late"))
    assert waiting.status == "queued" and waiting.jobs_ahead() == 0
    second = executor.submit(job(home, "project", ProjectionRequest(photos=[photo(31)], settings=FAST), owner="later"))
    assert second.jobs_ahead() == 1
    waiting.cancel()
    assert waiting.status == "cancelled" and second.jobs_ahead() == 0
    second.cancel()
    for blocker in blockers:
        steps = blocker.progress().done
        blocker.cancel()
        assert blocker.wait(30), "a running job did not stop when cancelled"
        assert blocker.status == "cancelled" and blocker.progress().done < steps + 50
    with pytest.raises(Exception, match="cancelled"):
        waiting.get(5)
    assert waiting.progress() is None and second.progress() is None   # they never ran


def test_a_visitor_may_have_only_so_many_unfinished_jobs(executor, home):
    executor.settings = QueueSettings(per_visitor=1)
    first = executor.submit(job(home, "project", ProjectionRequest(photos=[photo(40)], settings=ENDLESS),
                                owner="greedy"))
    try:
        with pytest.raises(QueueFull, match="1 unfinished job"):
            executor.submit(job(home, "project", ProjectionRequest(photos=[photo(41)], settings=FAST), owner="greedy"))
    finally:
        first.cancel()
    assert first.wait(30) and first.status == "cancelled"
    other = executor.submit(job(home, "project", ProjectionRequest(photos=[photo(42)], settings=FAST), owner="greedy"))
    assert other.get(TIMEOUT)[0].metrics["steps_run"] == FAST.steps   # a finished job no longer counts


def test_a_job_error_comes_back_as_its_sentence(executor, home):
    handle = executor.submit(job(home, "age_video", AgeVideoRequest(photo=photo(1), edit=AgeEdit("no-such-vector"))))
    assert handle.wait(TIMEOUT) and handle.status == "failed"
    assert "no-such-vector" in handle.error and type(handle.exception).__name__ == "AgeVectorError"


# ----------------------------------------------------------------------------------------------------------
# What only the queue has


@pytest.fixture()
def queue(home, redis_url, workers):
    from timemachine.pipeline.executor_celery import CeleryExecutor

    ex = CeleryExecutor(Environment.from_environ().replace(broker_url=redis_url),
                        QueueSettings(per_visitor=4, visibility_timeout=VISIBILITY))
    yield ex
    ex.close()


def entries_complete(home) -> list[Path]:
    """The video store's entries, each checked to be complete (entry.json names files that all exist)."""
    from timemachine.fs import ContentStore

    entries = ContentStore(Environment.from_environ().paths.ui_videos).entries()
    for entry in entries:
        info = json.loads((entry / "entry.json").read_text())
        assert all((entry / rel).exists() and (entry / rel).stat().st_size > 0 for rel in info["files"].values())
    return entries


def worker_name(handle) -> str:
    return handle.worker.split(" ")[0].split("@")[0].removeprefix("timemachine-")


def test_two_workers_take_jobs_at_once_and_a_repeat_is_served_from_the_store_by_the_other(queue, home, workers):
    first, second = (queue.submit(job(home, "age_video", video_request(seed=50 + i, strength=1.0))) for i in range(2))
    wait_for(lambda: first.status == second.status == "running" or first.finished or second.finished,
             what="both jobs to start")
    assert {worker_name(first), worker_name(second)} == {"w1", "w2"}     # one job each, at the same time
    a, b = first.get(TIMEOUT), second.get(TIMEOUT)
    assert not a.reused and Path(a.files["video"]).is_file() and a.key != b.key
    maker = worker_name(first)

    # occupy both workers, then free the one that did *not* make the first video: the repeat goes there
    blockers = [queue.submit(job(home, "project", ProjectionRequest(photos=[photo(60 + i)], settings=ENDLESS),
                                 owner=f"blocker{i}")) for i in range(2)]
    wait_for(lambda: all(running(b) for b in blockers), what="the blockers to run")
    repeat = queue.submit(job(home, "age_video", video_request(seed=50, strength=1.0)))
    assert repeat.jobs_ahead() == 0
    for blocker in blockers:
        if worker_name(blocker) != maker:
            blocker.cancel()
    again = repeat.get(TIMEOUT)
    assert worker_name(repeat) != maker
    assert again.reused and again.key == a.key and again.files["video"] == a.files["video"]
    [b.cancel() for b in blockers]
    assert all(b.wait(30) for b in blockers)


def test_a_worker_killed_mid_job_gives_it_to_another_and_nothing_half_written_shows(queue, home, workers, redis_url):
    # Enough frames that the render (where the video store's entry is being written) lasts a while: the kill
    # lands there, not during the projection.
    handle = queue.submit(job(home, "age_video", video_request(seed=70, steps=12, frames=400)))

    def rendering() -> bool:
        event = handle.progress()
        return event is not None and event.stage == "render" and 1 <= event.done < event.total

    wait_for(rendering, what="the job to render")
    victim = worker_name(handle)
    workers[victim].kill()                                  # SIGKILL to the worker and its pool process
    result = handle.get(TIMEOUT)                            # the broker gives it to the other one
    assert worker_name(handle) != victim and handle.status == "done"
    assert Path(result.files["video"]).stat().st_size > 0 and not result.reused
    entries = entries_complete(home)
    assert Path(result.files["video"]).parent in entries
    # the killed worker's half-built entry is a hidden temporary, never an entry
    workers[victim] = Worker(victim, redis_url, home)
    workers[victim].wait_ready()


def test_cli_runs_through_the_workers_write_what_a_local_run_writes(queue, home, tmp_path, capsys):
    from PIL import Image

    from timemachine.cli import main

    photo_file = tmp_path / "dog.png"
    Image.fromarray((np.random.RandomState(80).rand(80, 96, 3) * 255).astype(np.uint8)).save(photo_file)
    # fp32 by name: the workers are other processes, where "auto" follows their own CPU (bf16 here)
    common = ["--model", home["model"], "--steps", "5", "--seed", "4", "--precision", "fp32"]
    video = ["--age-vector", "pups", "--frames", "8", "--hold-start", "1", "--hold-end", "1"]
    assert main(["run", str(photo_file), *common, *video, "--out", str(tmp_path / "remote"),
                 "--broker", queue.env.broker_url]) == 0
    assert main(["run", str(photo_file), *common, *video, "--out", str(tmp_path / "local"), "--no-cache"]) == 0
    assert main(["project", str(photo_file), *common, "--out", str(tmp_path / "remote-p"),
                 "--broker", queue.env.broker_url]) == 0
    assert main(["project", str(photo_file), *common, "--out", str(tmp_path / "local-p"), "--no-cache"]) == 0
    capsys.readouterr()

    def files(d: Path) -> list[str]:
        return sorted(str(p.relative_to(d)) for p in d.rglob("*"))

    def comparable(data, drop=("timings", "created", "versions", "seconds", "cached", "pti_seconds")):
        if isinstance(data, dict):
            return {k: comparable(v) for k, v in data.items() if k not in drop}
        if isinstance(data, float):
            return pytest.approx(data, rel=1e-3, abs=1e-4)
        return [comparable(v) for v in data] if isinstance(data, list) else data

    for remote, local, summary in (("remote", "local", "run.json"), ("remote-p", "local-p", "projection.json")):
        assert files(tmp_path / remote) == files(tmp_path / local)
        r, l_ = (json.loads((tmp_path / d / summary).read_text()) for d in (remote, local))
        assert comparable(r) == comparable(l_)
    assert (tmp_path / "remote" / "video.mp4").stat().st_size > 0


def test_a_pickled_message_is_refused_and_runs_nothing(queue, home, workers, tmp_path):
    """Redis is inside the trust boundary, but a message in it still cannot run code on a worker."""
    import kombu

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with kombu.Connection(queue.env.broker_url) as conn:
        producer = conn.Producer(serializer="pickle")
        producer.publish({"args": [Exploit()]}, routing_key="timemachine", exchange="timemachine",
                         headers={"task": "timemachine.run_job", "id": "0" * 32}, declare=[])
    handle = queue.submit(job(home, "project", ProjectionRequest(photos=[photo(90)], settings=FAST)))
    assert handle.get(TIMEOUT)[0].metrics["steps_run"] == FAST.steps     # the workers carry on
    wait_for(lambda: any("untrusted content of type pickle" in w.log.read_text() for w in workers.values()),
             timeout=30, what="a worker to refuse the message")
    assert not marker.exists()


def test_the_ui_sends_its_jobs_to_the_workers_and_a_reload_finds_them(queue, home, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    ui_dir = str(REPO_ROOT / "ui")
    if ui_dir not in sys.path:           # the app imports its helpers by plain name, as Streamlit runs it
        sys.path.insert(0, ui_dir)
    from test_ui import APP, photo_bytes, ready_app

    monkeypatch.setenv("TIMEMACHINE_BROKER_URL", queue.env.broker_url)
    monkeypatch.setenv("TIMEMACHINE_MODEL", home["model"])
    at = ready_app(photo_bytes(seed=99), steps=4)
    at.button(key="make").click().run()
    assert not at.exception and not at.error
    job = at.session_state["last_job_video"]
    assert type(job).__name__ == "CeleryJobHandle" and job.status in ("queued", "running", "done")
    address = dict(at.query_params)
    assert address["job_video"] == job.id and len(address["visitor"]) == 32

    # the visitor reloads the page (a new session, the same address): the job is found again and finishes there
    again = AppTest.from_file(str(APP), default_timeout=60)
    again.query_params.update(address)
    again.run()
    assert not again.exception
    assert again.session_state["last_job_video"].id == job.id
    assert job.wait(TIMEOUT) and job.status == "done", job.error
    again.run()
    assert not again.exception and not again.error
    assert len(again.get("video")) == 1
    assert "job_video" not in dict(again.query_params)            # collected: the address forgets it
