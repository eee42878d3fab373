"""The in-process executor's queue on its own, and the codec that carries jobs to queue workers.

(The executors' shared behaviour, on a real Redis with real workers, is in test_queue.py.)
"""

from __future__ import annotations

import base64
import dataclasses
import threading
import time

import numpy as np
import pytest
import torch

from timemachine.errors import REPLACE, AgeVectorError, AlreadyExists, TimemachineError
from timemachine.latents import LatentFile
from timemachine.pipeline import (
    BUG_MESSAGE,
    AgeEdit,
    AgeVideoRequest,
    JobSpec,
    Photo,
    PreviewStripRequest,
    Progress,
    ProjectionRequest,
    QueueFull,
    RenderRequest,
    VectorBuildRequest,
    VectorExample,
    VideoOutputs,
    codec,
)
from timemachine.pipeline.executor_inprocess import JobQueue
from timemachine.pipeline.videos import AgeVideoResult
from timemachine.settings import ProjectorSettings, PTISettings, QueueSettings, RenderSettings, VectorSettings

# ----------------------------------------------------------------------------------------------------------
# The in-process queue


def test_queue_runs_one_job_at_a_time_in_order():
    queue = JobQueue(QueueSettings(per_visitor=5))
    running, overlaps, order = [], [], []
    lock = threading.Lock()

    def work(i):
        def fn(ctx):
            with lock:
                running.append(i)
                overlaps.append(len(running))
            for step in range(3):
                ctx(Progress("work", step + 1, 3, f"step {step + 1}"))
                time.sleep(0.01)
            with lock:
                running.remove(i)
                order.append(i)
            return i * 10
        return fn

    jobs = [queue.submit(work(i), label="t", owner="o") for i in range(5)]
    assert all(job.wait(10) for job in jobs)
    assert [job.result for job in jobs] == [0, 10, 20, 30, 40]
    assert order == [0, 1, 2, 3, 4] and max(overlaps) == 1
    assert all(job.status == "done" and job.progress().done == 3 for job in jobs)
    assert jobs[0].jobs_ahead() is None and not queue.busy


def test_queue_cancels_running_abandoned_and_refuses_when_full():
    alive = {"visitor": True}
    queue = JobQueue(QueueSettings(max_waiting=2, abandon_after=1e-9),
                     owner_alive=lambda owner: alive.get(owner, True))
    started = threading.Event()

    def long_job(ctx):
        started.set()
        while True:
            ctx(Progress("work", 1, None))
            time.sleep(0.005)

    running = queue.submit(long_job, label="long", owner="visitor")
    assert started.wait(10)
    waiting = [queue.submit(lambda ctx: "ok", label="w", owner=f"other{i}") for i in range(2)]
    assert [job.jobs_ahead() for job in waiting] == [0, 1]
    with pytest.raises(QueueFull, match="busy"):
        queue.submit(lambda ctx: None, label="x", owner="other")
    alive["visitor"] = False                       # the visitor closed the tab: the job stops at its next report
    assert running.wait(10) and running.status == "cancelled"
    assert all(job.wait(10) and job.result == "ok" for job in waiting)
    # cancelling by hand, while running
    started.clear()
    alive["visitor"] = True
    job = queue.submit(long_job, label="long", owner="visitor")
    assert started.wait(10)
    job.cancel()
    assert job.wait(10) and job.status == "cancelled"


def test_queue_limits_unfinished_jobs_per_visitor():
    queue = JobQueue(QueueSettings(per_visitor=1))
    release = threading.Event()
    first = queue.submit(lambda ctx: release.wait(10), label="a", owner="v")
    with pytest.raises(QueueFull, match="1 unfinished job"):
        queue.submit(lambda ctx: None, label="b", owner="v")
    other = queue.submit(lambda ctx: "fine", label="c", owner="someone else")
    release.set()
    assert first.wait(10) and other.wait(10) and other.result == "fine"
    assert queue.submit(lambda ctx: "again", label="d", owner="v").get(10) == "again"


def test_queue_turns_errors_into_sentences_and_keeps_the_remedy():
    queue = JobQueue(QueueSettings(per_visitor=5))

    def user_error(ctx):
        raise AlreadyExists("an age vector named 'x' already exists")

    def bug(ctx):
        raise KeyError("oops")

    a = queue.submit(user_error, label="a", owner="o")
    b = queue.submit(bug, label="b", owner="o")
    c = queue.submit(lambda ctx: "after", label="c", owner="o")    # the worker survives both
    assert all(job.wait(10) for job in (a, b, c))
    assert (a.status, a.error, a.exception.remedy) == ("failed", "an age vector named 'x' already exists", REPLACE)
    assert (b.status, b.error) == ("failed", BUG_MESSAGE)
    assert (c.status, c.result) == ("done", "after")
    with pytest.raises(AlreadyExists):
        a.get(1)


def test_progress_keeps_the_latest_images_until_replaced():
    queue = JobQueue()
    image = np.zeros((4, 4, 3), np.uint8)

    def fn(ctx):
        ctx(Progress("project", 1, 3, extras={"preview": image, "lpips": 0.5}))
        ctx(Progress("project", 2, 3, extras={"lpips": 0.4}))
        ctx(Progress("strip", 1, 1, extras={"strip": [(0.0, image)]}))

    job = queue.submit(fn, label="t", owner="o")
    assert job.wait(10)
    event = job.progress()
    assert (event.stage, event.done) == ("strip", 1)
    assert event.extras["preview"] is image and event.extras["strip"][0][1] is image and "lpips" not in event.extras


# ----------------------------------------------------------------------------------------------------------
# The codec


def photo(seed=0, side=32) -> Photo:
    return Photo(image=(np.random.RandomState(seed).rand(side, side, 3) * 255).astype(np.uint8),
                 info={"name": "dog.jpg", "crop": "1,2,30"})


def roundtrip(value, home):
    import json

    return codec.decode(json.loads(json.dumps(codec.encode(value, home))), home)


def test_every_request_travels_and_comes_back_equal(tmp_path):
    home = tmp_path / "home"
    video = AgeVideoRequest(photo=photo(), edit=AgeEdit("pups", strength=0.5, layers="coarse", force_model=True),
                            projection=ProjectionRequest(photos=[], settings=ProjectorSettings(steps=7, space="w+"),
                                                         pti=PTISettings(steps=3), use_cache=False),
                            render=RenderSettings(frames=9, easing="cosine"),
                            outputs=VideoOutputs(directory=None, side_by_side=True), preview_only=True)
    back = roundtrip(video, home)
    np.testing.assert_array_equal(back.photo.image, video.photo.image)      # lossless (PNG)
    assert dataclasses.replace(back, photo=None) == dataclasses.replace(video, photo=None)
    build = VectorBuildRequest(name="beagle", examples=[VectorExample("puppy", "p.jpg", data=b"\xff\xd8bytes"),
                                                        VectorExample("adult", "a.npz", path=home / "a.npz")],
                               settings=VectorSettings(method="mean"), orthogonal_to=["x"], save=False)
    back = roundtrip(build, home)
    assert back.examples[0].data == b"\xff\xd8bytes" and back.examples[1].path == str(home / "a.npz")
    assert dataclasses.replace(back, examples=[]) == dataclasses.replace(build, examples=[])
    render = RenderRequest(latent=str(home / "w.npz"), edit=AgeEdit("pups"), outputs=VideoOutputs(home / "out"))
    assert roundtrip(render, home) == dataclasses.replace(render, outputs=VideoOutputs(str(home / "out")))
    latent = LatentFile(ws=torch.randn(8, 32), noise={"b4.conv1": torch.randn(4, 4)}, meta={"steps_run": 3})
    strip = roundtrip(PreviewStripRequest(latent=latent, edit=AgeEdit("pups"), strengths=[0.0, 1.5]), home)
    assert torch.equal(strip.latent.ws, latent.ws) and torch.equal(strip.latent.noise["b4.conv1"],
                                                                   latent.noise["b4.conv1"])
    assert strip.latent.meta == latent.meta and strip.strengths == [0.0, 1.5]


def test_paths_travel_relative_to_the_home_and_never_leave_it(tmp_path):
    home = tmp_path / "home"
    result = AgeVideoResult(files={"video": str(home / "cache" / "v" / "video.mp4")}, run_info={"a": 1},
                            strip=[(0.5, np.zeros((2, 2, 3), np.uint8))])
    data = codec.encode(result, home)
    assert data["v"]["files"] == {"video": {"$home": "cache/v/video.mp4"}}
    elsewhere = tmp_path / "mounted-elsewhere"
    assert codec.decode(data, elsewhere).files["video"] == str(elsewhere / "cache" / "v" / "video.mp4")
    with pytest.raises(codec.CodecError, match="outside the shared home"):
        codec.encode(VideoOutputs(directory=tmp_path / "out"), home)
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../b", "a\\..\\b", ""):
        with pytest.raises(codec.CodecError, match="leaves the shared home"):
            codec.decode({"$dc": "VideoOutputs", "v": {"directory": {"$home": bad}}}, home)


def test_latents_with_tuned_weights_travel_as_files_in_the_results_store(tmp_path):
    home = tmp_path / "home"
    delta = {"synthesis.b4.conv1.weight": torch.randn(8, 8, 3, 3)}
    latent = LatentFile(ws=torch.randn(8, 32), meta={"model_fingerprint": "f" * 16}, pti_delta=delta)
    data = codec.encode(latent, home)
    assert set(data) == {"$latent"} and data["$latent"]["$home"].startswith("cache/results/")
    assert codec.encode(latent, home) == data                     # content-addressed: stored once
    from timemachine.env import Paths
    from timemachine.fs import ContentStore

    assert len(ContentStore(Paths(home).results).entries()) == 1
    back = codec.decode(data, home)
    assert torch.equal(back.ws, latent.ws) and torch.equal(back.pti_delta["synthesis.b4.conv1.weight"],
                                                           delta["synthesis.b4.conv1.weight"])


@pytest.mark.parametrize("data, match", [
    ({"$dc": "Popen", "v": {"args": "sh"}}, "not a type a job may carry"),
    ({"$dc": "AgeEdit", "v": {"vector": "x", "__class__": "y"}}, "no field"),
    ({"$nd": {"dtype": "|O", "shape": [1], "data": ""}}, "dtype"),
    ({"$nd": {"dtype": "<f4", "shape": [2**20, 2**20], "data": ""}}, "too large"),
    ({"$nd": {"dtype": "<f4", "shape": [4], "data": base64.b64encode(b"abc").decode()}}, "needs 16 bytes"),
    ({"$b": "not base64!"}, "base64"),
    ({"$png": base64.b64encode(b"GIF89a....").decode()}, "not a readable PNG"),
    ({"$exec": "print(1)"}, "unknown tag"),
    ({"$float": "1e999"}, "special float"),
])
def test_malformed_or_hostile_values_are_refused(tmp_path, data, match):
    with pytest.raises(codec.CodecError, match=match):
        codec.decode(data, tmp_path)


def test_values_too_large_or_of_unknown_types_are_refused_before_sending(tmp_path, monkeypatch):
    monkeypatch.setattr(codec, "MAX_ARRAY_BYTES", 1000)
    with pytest.raises(codec.CodecError, match="too large"):
        codec.encode(np.zeros(1000, np.float32), tmp_path)
    with pytest.raises(codec.CodecError, match="cannot travel"):
        codec.encode(object(), tmp_path)
    with pytest.raises(codec.CodecError, match="not starting with"):
        codec.encode({"$dc": "AgeEdit"}, tmp_path)
    with pytest.raises(codec.CodecError, match="too deeply"):
        nested: list = []
        for _ in range(40):
            nested = [nested]
        codec.encode(nested, tmp_path)


def test_errors_travel_as_their_class_sentence_and_remedy():
    error = codec.decode_error(codec.encode_error(AlreadyExists("an age vector named 'x' already exists")))
    assert type(error) is AlreadyExists and str(error) == "an age vector named 'x' already exists"
    assert error.remedy == REPLACE
    odd = codec.decode_error({"type": "SystemExit", "message": "bye\x1b[2J", "remedy": "rm -rf"})
    assert type(odd) is TimemachineError and "\x1b" not in str(odd) and odd.remedy is None
    assert type(codec.decode_error({"type": "AgeVectorError", "message": "m"})) is AgeVectorError


def test_a_job_spec_must_match_its_kind():
    with pytest.raises(TimemachineError, match="unknown job kind"):
        JobSpec("format_disk", None).check()
    with pytest.raises(TimemachineError, match="takes a ProjectionRequest"):
        JobSpec("project", AgeEdit("x")).check()


# ----------------------------------------------------------------------------------------------------------
# The faces' errors about the queue


def test_an_unreachable_or_contradictory_broker_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, small_G):
    import socket

    from PIL import Image

    from timemachine.checkpoint import save_generator
    from timemachine.cli import main

    monkeypatch.setenv("TIMEMACHINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TIMEMACHINE_OFFLINE", "1")
    monkeypatch.setenv("TIMEMACHINE_VGG_WEIGHTS", "random")
    monkeypatch.delenv("TIMEMACHINE_BROKER_URL", raising=False)
    model = tmp_path / "small.safetensors"
    save_generator(small_G, model)
    photo_file = tmp_path / "dog.png"
    Image.fromarray(np.zeros((80, 96, 3), np.uint8)).save(photo_file)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"redis://127.0.0.1:{s.getsockname()[1]}/0"      # nothing listens there once closed
    project = ["project", str(photo_file), "--model", str(model), "--steps", "2", "--out", str(tmp_path / "out")]
    cases = [(project + ["--broker", closed], "cannot be reached"),
             (project + ["--broker", closed, "--local"], "contradict"),
             (project + ["--broker", closed, "--resume"], "--resume"),
             (["worker", "--broker", closed], "cannot be reached"),
             (["worker"], "no broker")]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
