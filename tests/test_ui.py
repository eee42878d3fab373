"""The Streamlit UI (ui/), driven by ``streamlit.testing.v1.AppTest`` on a small generator.

Every test runs the real app: the photo goes in through the file uploader (AppTest simulates uploads), jobs
run in the app's worker thread, videos are rendered with ffmpeg.  The model is a small random generator
saved by the test as .safetensors and named by TIMEMACHINE_MODEL; LPIPS uses a random VGG16
(TIMEMACHINE_VGG_WEIGHTS=random); projections run 3 steps and videos 8 walk frames so the file takes
seconds, not minutes, on 2 cores.  A separate file (test_ui_browser.py) drives a real Chromium.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT
from timemachine import age
from timemachine.checkpoint import model_fingerprint, save_generator
from timemachine.cli import main
from timemachine.env import Environment
from timemachine.pipeline import BUG_MESSAGE, STRIP_TIMES
from timemachine.settings import MAX_MODEL_UPLOAD_MB

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402


def library() -> age.VectorLibrary:
    """The age-vector library of the current TIMEMACHINE_HOME (as the UI opens it)."""
    return age.VectorLibrary(Environment.from_environ().paths)

UI_DIR = REPO_ROOT / "ui"
APP = UI_DIR / "app.py"
if str(UI_DIR) not in sys.path:       # the app imports its helpers by plain name, as Streamlit runs it
    sys.path.insert(0, str(UI_DIR))

import ui_common  # noqa: E402  (imported before any test patches the limits it reads)

JOB_TIMEOUT = 120


def photo_bytes(seed: int = 2, size=(100, 80), fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype(np.uint8)).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture()
def env(tmp_path, monkeypatch, small_G):
    """A home with the small model and an age vector 'pups' built for it; the app configured to use them."""
    monkeypatch.setenv("TIMEMACHINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TIMEMACHINE_OFFLINE", "1")
    monkeypatch.setenv("TIMEMACHINE_VGG_WEIGHTS", "random")
    monkeypatch.setenv("TIMEMACHINE_DEVICE", "cpu")
    model = tmp_path / "small.safetensors"
    save_generator(small_G, model)
    monkeypatch.setenv("TIMEMACHINE_MODEL", str(model))
    gen = torch.Generator().manual_seed(3)
    ws = small_G.mapping(torch.randn(2, small_G.z_dim, generator=gen), None)
    vector = age.build_vector("pups", ws[:1], ws[1:], method="pair", model_fingerprint=model_fingerprint(small_G),
                              species="dog", notes="test vector")
    library().save(vector)
    return {"tmp": tmp_path, "model": model, "vector": vector, "home": tmp_path / "home"}


def new_app() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def fast_settings(at: AppTest, steps: int = 3, frames: int = 8) -> None:
    at.number_input(key="steps").set_value(steps)
    at.number_input(key="frames").set_value(frames)
    at.number_input(key="hold_start").set_value(1)
    at.number_input(key="hold_end").set_value(2)


def upload_photo(at: AppTest, data: bytes = None, name: str = "dog.jpg") -> None:
    at.file_uploader(key="photo").set_value((name, photo_bytes() if data is None else data, "image/jpeg")).run()


def finish(at: AppTest, slot: str = "video"):
    """Wait for the session's job in ``slot`` and run the page again to show its outcome."""
    job = at.session_state[f"last_job_{slot}"]
    assert job.wait(JOB_TIMEOUT), f"job still {job.status} after {JOB_TIMEOUT} s: {job.progress()}"
    at.run()
    assert not at.exception, at.exception
    return job


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def button(at: AppTest, key: str):
    return at.button(key=key)


def ready_app(data: bytes = None, name: str = "dog.jpg", steps: int = 3) -> AppTest:
    """A new session with a photo uploaded and the fast settings (``steps`` projection steps), run once."""
    at = new_app()
    upload_photo(at, data, name)
    fast_settings(at, steps=steps)
    at.run()
    return at


def press(at: AppTest, key: str, slot: str = "video"):
    """Click the button ``key``, wait for the job it starts in ``slot`` and show its outcome; returns the job."""
    button(at, key).click().run()
    return finish(at, slot)


# ----------------------------------------------------------------------------------------------------------
# The video page


def test_upload_run_and_download_a_video(env):
    at = new_app()
    assert not at.error
    assert any("randomly initialised VGG16" in w for w in texts(at.warning))   # the test switch is visible
    assert button(at, "make").disabled                                          # nothing to work on yet
    upload_photo(at)
    assert not at.error and not at.exception
    fast_settings(at)
    at.run()
    assert not button(at, "make").disabled
    button(at, "make").click().run()
    assert not at.exception and not at.error
    job = finish(at)
    assert job.status == "done", job.error
    assert not at.error

    videos = at.get("video")
    assert len(videos) == 1
    labels = [b.label for b in at.get("download_button")]
    for expected in ("Video (MP4)", "Animation (GIF)", "Before (PNG)", "After (PNG)", "Latent (projected_w.npz)"):
        assert expected in labels
    result = job.result
    assert [t for t, _ in result.strip] == list(STRIP_TIMES)
    assert result.strip[0][1].shape == (32, 32, 3)
    info = json.loads(Path(result.files["run"]).read_text())
    assert info["render"]["total_frames"] == 1 + 8 + 2
    assert info["projection"]["settings"]["steps"] == 3
    assert info["projection"]["settings"]["precision"] == info["render"]["precision"] == "fp32"  # auto, no BF16
    assert info["age_vector"]["name"] == "pups" and info["photo"]["name"] == "dog.jpg"
    # framed 'auto' by default: no eye detector here, so the centre square, and the page says so
    assert info["photo"]["crop"] == "centre" and info["photo"]["alignment"]["requested"] == "auto"
    assert info["photo"]["alignment"]["crop"]["corners"][0] == [10.0, 0.0]      # centred square of 100x80
    assert Path(result.files["video"]).is_relative_to(env["home"] / "cache" / "ui-videos")

    # The same request again: the finished video comes from the render cache, nothing is recomputed.
    again = press(at, "make")
    assert again.result.reused and again.result.files["video"] == result.files["video"]
    assert any("from the cache" in c for c in texts(at.caption))

    # Another strength: the projection is reused, a new video is rendered.
    at.slider(key="strength_pups").set_value(0.5).run()
    assert any("other settings" in c for c in texts(at.caption))               # the old result is marked stale
    third = press(at, "make")
    assert not third.result.reused and third.result.metrics["cached"]
    assert third.result.files["video"] != result.files["video"]
    assert not any("other settings" in c for c in texts(at.caption))
    assert not at.exception


def test_w_plus_pivotal_tuning_and_side_by_side(env):
    at = new_app()
    upload_photo(at)
    fast_settings(at)
    at.radio(key="space").set_value("w+")
    at.radio(key="precision").set_value("bf16")
    at.checkbox(key="pti").check()
    at.checkbox(key="side_by_side").check()
    at.run()
    at.number_input(key="pti_steps").set_value(2)
    at.run()
    job = press(at, "make")
    assert job.status == "done", job.error
    files = job.result.files
    assert {"pti", "side_by_side"} <= set(files) and Path(files["pti"]).name == "projected_w.pti.safetensors"
    info = json.loads(Path(files["run"]).read_text())
    assert info["projection"]["settings"]["space"] == "w+" and info["projection"]["pti_settings"]["steps"] == 2
    assert info["projection"]["settings"]["precision"] == info["render"]["precision"] == "bf16"
    assert len(at.get("video")) == 2
    labels = [b.label for b in at.get("download_button")]
    assert "Tuned weights (PTI)" in labels and "Side by side (MP4)" in labels


def test_preview_strip_comes_before_the_full_render(env):
    at = ready_app()
    job = press(at, "preview")
    assert job.status == "done" and job.label == "preview"
    assert job.result.files == {} and len(job.result.strip) == len(STRIP_TIMES)
    assert not at.get("video")                                                  # frames only, no video yet
    assert any("preview frames" in i.lower() for i in texts(at.info))
    captions = [caption for image in at.image for caption in image.captions]
    assert all(f"t = {t:.2f}" in str(captions) for t in STRIP_TIMES), captions   # the strip is on the page
    # frame 0 is the reconstruction (t = 0), the last one the walk's end (t = 1): they differ
    first, last = job.result.strip[0][1], job.result.strip[-1][1]
    assert not np.array_equal(first, last)


def test_crop_controls_change_what_the_model_sees(env):
    at = new_app()
    upload_photo(at, photo_bytes(size=(200, 100)))
    framing = [r for r in at.radio if r.key and r.key.startswith("framing_")][0]
    digest_key = framing.key.split("_")[-1]
    framing.set_value("square").run()
    at.slider(key=f"crop_size_{digest_key}").set_value(64).run()
    at.slider(key=f"crop_x_{digest_key}").set_value(0)
    at.slider(key=f"crop_y_{digest_key}").set_value(100)
    fast_settings(at)
    at.run()
    captions = [caption for image in at.image for caption in image.captions]
    assert "dog.jpg: 200x100 pixels, your square" in captions, captions
    job = press(at, "make")
    assert job.status == "done", job.error
    assert json.loads(Path(job.result.files["run"]).read_text())["photo"]["crop"] == "0,36,64"


def test_a_corrupt_photo_is_a_plain_error(env):
    at = new_app()
    upload_photo(at, b"this is not a JPEG at all" * 10, name="broken.jpg")
    assert not at.exception
    errors = texts(at.error)
    assert len(errors) == 1 and errors[0].startswith("broken.jpg is not an image in a supported format")
    assert "Traceback" not in errors[0]
    assert button(at, "make").disabled and button(at, "preview").disabled
    # a photo below the minimum size is refused the same way
    upload_photo(at, photo_bytes(size=(40, 30), fmt="PNG"), name="tiny.png")
    assert not at.exception
    assert any("tiny.png is 40x30 pixels" in e for e in texts(at.error))


def test_a_vector_of_another_model_is_refused_in_plain_words(env):
    other = age.build_vector("foreign", torch.zeros(1, 8, 32), torch.ones(1, 8, 32), method="pair",
                             model_fingerprint="0123456789abcdef", model_name="afhqcat")
    library().save(other)
    at = new_app()
    upload_photo(at)
    fast_settings(at)
    at.selectbox(key="vector_name").set_value("foreign").run()
    assert not at.exception
    errors = texts(at.error)
    assert len(errors) == 1 and "was built for model afhqcat (0123456789abcdef)" in errors[0]
    assert button(at, "make").disabled
    # the visitor may force it, knowingly
    at.checkbox(key="force_foreign").check().run()
    assert not at.error and not button(at, "make").disabled
    job = press(at, "make")
    assert job.status == "done"
    info = json.loads(Path(job.result.files["run"]).read_text())
    assert info["age_vector"]["forced_onto_other_model"] is True


def test_errors_inside_a_job_are_shown_plainly_and_bugs_are_logged(env, monkeypatch, capsys):
    from timemachine.errors import ProjectionError
    from timemachine.pipeline import Pipeline

    def refuse(*args, **kwargs):
        raise ProjectionError("the projection cannot start: a plain reason")

    monkeypatch.setattr(Pipeline, "project", refuse)
    at = ready_app()
    job = press(at, "make")
    assert job.status == "failed"
    assert texts(at.error) == ["the projection cannot start: a plain reason"]
    assert not at.exception and not at.get("video")

    def bug(*args, **kwargs):
        raise RuntimeError("internal detail the visitor must not see")

    monkeypatch.setattr(Pipeline, "project", bug)
    job = press(at, "make")
    assert texts(at.error) == [BUG_MESSAGE]
    assert not at.exception
    log = capsys.readouterr().err
    assert "Traceback" in log and "internal detail the visitor must not see" in log


def test_an_empty_library_says_where_to_build_a_vector(env):
    library().delete("pups")
    at = new_app()
    upload_photo(at)
    assert not at.exception
    assert any("Age vectors" in i for i in texts(at.info))
    assert button(at, "make").disabled


def test_a_missing_model_is_a_plain_error(env, monkeypatch):
    monkeypatch.setenv("TIMEMACHINE_MODEL", str(env["tmp"] / "nowhere.safetensors"))
    at = new_app()
    assert not at.exception
    assert any("no network file at" in e for e in texts(at.error)), texts(at.error)
    assert any("Choose a model" in w for w in texts(at.warning))


def test_a_photo_over_the_size_limit_is_refused(env, monkeypatch):
    from timemachine import images

    monkeypatch.setattr(images, "DEFAULT_MAX_BYTES", 2000)     # the page's own check; the widget keeps its MB limit
    at = new_app()
    upload_photo(at, photo_bytes(size=(200, 200), fmt="PNG"), name="huge.png")
    assert not at.exception
    errors = texts(at.error)
    assert any(e.startswith("huge.png is larger than the limit of 2000 bytes") for e in errors), errors


def test_an_uploaded_model_file_is_loaded_safely(env, small_G):
    at = new_app()
    at.sidebar.selectbox(key="model_option").set_value(ui_common.UPLOAD).run()
    assert not at.exception and any("Upload a network file" in i for i in texts(at.sidebar.info))
    at.sidebar.file_uploader(key="model_upload").set_value(
        ("my-model.safetensors", env["model"].read_bytes(), "application/octet-stream")).run()
    assert not at.exception and not at.error
    model = at.session_state["model"]
    assert model.spec == "uploaded file my-model.safetensors"
    assert model.fingerprint == model_fingerprint(small_G)
    assert any(model.fingerprint in c for c in texts(at.sidebar.caption))
    # the library's vector for this network is offered as built for this model
    upload_photo(at)
    fast_settings(at)
    at.run()
    assert not at.error and not button(at, "make").disabled

    # a pickle that would run code when unpickled: refused by the safe loader, named as uploaded, nothing runs
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(env["tmp"] / "pwned"),))

    at.sidebar.file_uploader(key="model_upload").set_value(("evil.pkl", pickle.dumps(Evil()),
                                                            "application/octet-stream"))
    at.run()
    assert not at.exception
    errors = texts(at.sidebar.error)
    assert len(errors) == 1 and "timemachine-ui-model" not in errors[0], errors
    assert not (env["tmp"] / "pwned").exists()
    assert at.session_state["model"] is None


def test_a_model_file_path_on_the_server_is_off_by_default(env):
    at = new_app()
    assert ui_common.PATH not in at.sidebar.selectbox(key="model_option").options


def test_a_model_file_path_on_the_server_only_inside_the_models_directory(env, small_G, monkeypatch):
    monkeypatch.setenv("TIMEMACHINE_UI_SERVER_MODELS", "1")
    models = env["home"] / "models"
    (models / "mine").mkdir(parents=True)
    shutil.copy(env["model"], models / "mine" / "dog.safetensors")
    (models / "escape.safetensors").symlink_to(env["model"])          # a link out of the directory
    at = new_app()
    at.sidebar.selectbox(key="model_option").set_value(ui_common.PATH).run()
    at.sidebar.text_input(key="model_path").set_value("mine/dog.safetensors").run()
    assert not at.exception and not at.error
    assert at.session_state["model"].fingerprint == model_fingerprint(small_G)
    refusals = set()
    for hostile in (str(env["model"]), "../../small.safetensors", "escape.safetensors", "missing.pkl",
                    "http://169.254.169.254/latest/meta-data", "https://example.com/x.pkl", "/etc/passwd"):
        at.sidebar.text_input(key="model_path").set_value(hostile).run()
        assert not at.exception
        errors = texts(at.sidebar.error)
        assert len(errors) == 1 and "is not a model file in the server's models directory" in errors[0], errors
        refusals.add(errors[0].replace(hostile, "X"))
        assert at.session_state["model"] is None
    assert len(refusals) == 1          # the same sentence whether the file exists elsewhere or not at all


def test_the_licence_note_is_shown_for_the_afhq_models(env):
    at = new_app()
    assert any("NVIDIA Source Code License-NC" in c and "non-commercial" in c for c in texts(at.sidebar.caption))
    # picking a zoo model shows its licence next to the choice (loading then fails offline: a plain error)
    at.sidebar.selectbox(key="model_option").set_value("afhqcat").run()
    assert not at.exception
    assert any(c.startswith("Licence: NVIDIA Source Code License-NC") and "non-commercial use only" in c
               for c in texts(at.sidebar.caption)), texts(at.sidebar.caption)
    assert any("afhqcat" in e and "offline" in e.lower() for e in texts(at.error)), texts(at.error)


# ----------------------------------------------------------------------------------------------------------
# Two visitors at once (one job at a time, the others wait in the queue)


def test_two_sessions_queue_their_jobs_and_both_finish(env):
    executor = ui_common.executor()
    release = threading.Event()
    blocker = executor.submit_call(lambda ctx: release.wait(JOB_TIMEOUT), label="another visitor", owner="someone else")

    sessions = [new_app(), new_app()]
    for at, strength in zip(sessions, (1.0, 0.5)):
        upload_photo(at)
        fast_settings(at)
        at.slider(key="strength_pups").set_value(strength)
        at.run()
        button(at, "make").click().run()
        assert not at.exception
    first, second = (at.session_state["last_job_video"] for at in sessions)
    assert first.status == second.status == "queued"
    assert first.jobs_ahead() == 0 and second.jobs_ahead() == 1
    infos = [texts(at.info) for at in sessions]
    assert any("Waiting for another visitor's job" in i for i in infos[0]), infos[0]
    assert any("Waiting for 2 jobs of other visitors" in i for i in infos[1]), infos[1]
    assert button(sessions[0], "make").disabled                     # one job per visitor

    release.set()
    jobs = [finish(at) for at in sessions]
    assert blocker.status == "done"
    assert [j.status for j in jobs] == ["done", "done"], [j.error for j in jobs]
    for at in sessions:
        assert len(at.get("video")) == 1 and not at.error and not at.exception
    # one at a time, in the order they came: each started after the one before had finished
    assert blocker.finished_at <= first.started and first.finished_at <= second.started
    assert jobs[0].result.files["video"] != jobs[1].result.files["video"]


def test_cancel_a_waiting_job(env):
    release = threading.Event()
    ui_common.executor().submit_call(lambda ctx: release.wait(JOB_TIMEOUT), label="another visitor",
                                     owner="someone else")
    try:
        at = ready_app()
        button(at, "make").click().run()
        job = at.session_state["last_job_video"]
        assert job.status == "queued"
        at.button(key="cancel_video").click().run()
        assert job.status == "cancelled" and not at.exception
        assert any("cancelled" in i for i in texts(at.info))
        assert not button(at, "make").disabled
    finally:
        release.set()


# ----------------------------------------------------------------------------------------------------------
# The age-vector page


def test_build_save_and_tune_an_age_vector(env):
    at = new_app()
    at.switch_page("page_vectors.py").run()
    assert not at.exception
    assert button(at, "build").disabled
    at.file_uploader(key="puppies").set_value([(f"pup{i}.jpg", photo_bytes(10 + i), "image/jpeg") for i in range(2)])
    at.file_uploader(key="adults").set_value([(f"adult{i}.png", photo_bytes(20 + i, fmt="PNG"), "image/png")
                                              for i in range(2)])
    at.text_input(key="build_name").set_value("beagle")
    at.number_input(key="build_steps").set_value(3)
    at.text_input(key="build_layers").set_value("coarse")
    at.text_input(key="build_species").set_value("dog")
    at.run()
    button(at, "build").click().run()
    assert not at.exception and not at.error
    job = finish(at, "build")
    assert job.status == "done", job.error
    assert any("Built 'beagle'" in s for s in texts(at.success))
    vector = job.result.vector
    assert (vector.num_puppies, vector.num_adults, vector.default_layers) == (2, 2, "coarse")
    assert [e.name for e in job.result.examples] == ["pup0.jpg", "pup1.jpg", "adult0.png", "adult1.png"]
    assert "beagle" not in [e.name for e in library().entries()]                # built, not saved yet
    button(at, "build_save").click().run()
    assert not at.exception
    saved = library().load("beagle")
    assert torch.equal(saved.direction, vector.direction) and saved.species == "dog"
    assert [s["file"] for s in saved.details["sources"]] == ["pup0.jpg", "pup1.jpg", "adult0.png", "adult1.png"]

    # tune the defaults of the saved vector
    at.selectbox(key="tune_name").set_value("beagle").run()
    at.number_input(key="tune_strength_beagle").set_value(0.7)
    at.text_input(key="tune_layers_beagle").set_value("middle")
    at.text_area(key="tune_notes_beagle").set_value("tuned in the UI")
    at.button[[b.label for b in at.button].index("Save the defaults")].click().run()
    assert not at.exception and not at.error
    tuned = library().load("beagle")
    assert (tuned.default_strength, tuned.default_layers, tuned.notes) == (0.7, "middle", "tuned in the UI")
    assert torch.equal(tuned.direction, vector.direction)

    # a layer selection this model does not have: a plain error, nothing changed
    at.text_input(key="tune_layers_beagle").set_value("fine")
    at.button[[b.label for b in at.button].index("Save the defaults")].click().run()
    assert not at.exception
    assert any("no fine layers" in e for e in texts(at.error))
    assert library().load("beagle").default_layers == "middle"


def test_build_refuses_bad_requests_before_any_work(env):
    at = new_app()
    at.switch_page("page_vectors.py").run()
    at.file_uploader(key="puppies").set_value([("pup.jpg", photo_bytes(10), "image/jpeg")])
    at.file_uploader(key="adults").set_value([("adult.jpg", photo_bytes(20), "image/jpeg")])
    at.text_input(key="build_name").set_value("bad name!")
    at.run()
    button(at, "build").click().run()
    assert not at.exception
    assert any("invalid age vector name" in e for e in texts(at.error))
    assert "last_job_build" not in at.session_state
    # a damaged photo among the examples is named by its upload name, not a temporary path
    at.text_input(key="build_name").set_value("collie")
    at.file_uploader(key="adults").set_value([("adult.jpg", b"garbage" * 20, "image/jpeg")])
    at.run()
    job = press(at, "build", "build")
    assert job.status == "failed"
    errors = texts(at.error)
    assert len(errors) == 1 and errors[0].startswith("adult.jpg is not an image"), errors
    assert "/tmp" not in errors[0] and "timemachine-ui-build" not in errors[0]


def test_tuning_preview_uses_the_photo_from_the_video_page(env):
    at = ready_app()
    button(at, "preview").click().run()
    finish(at)
    at.switch_page("page_vectors.py").run()
    assert not at.exception
    at.selectbox(key="tune_name").set_value("pups").run()
    preview = at.button[[b.label for b in at.button].index("Preview on my photo")]
    assert not preview.disabled
    preview.click().run()
    job = finish(at, "tune")
    assert job.status == "done", job.error
    assert [s for s, _ in job.result] == [0.0, 0.5, 1.0, 1.5]
    assert not np.array_equal(job.result[0][1], job.result[2][1])


# ----------------------------------------------------------------------------------------------------------
# `timemachine ui` and the installed package


def test_ui_command_runs_streamlit_and_returns_its_exit_code(monkeypatch):
    from timemachine.cli import ui as ui_cli

    calls = []

    class FakeProcess:
        def __init__(self, command):
            calls.append(command)

        def wait(self, timeout=None):
            return 3

    monkeypatch.setattr(ui_cli.subprocess, "Popen", FakeProcess)
    assert main(["ui", "--host", "0.0.0.0", "--port", "8600"]) == 3
    (command,) = calls
    assert command[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert Path(command[4]) == APP.resolve()
    flags = dict(zip(command[5::2], command[6::2]))
    assert flags["--server.address"] == "0.0.0.0" and flags["--server.port"] == "8600"
    assert flags["--server.headless"] == "true" and flags["--browser.gatherUsageStats"] == "false"
    assert int(flags["--server.maxUploadSize"]) == MAX_MODEL_UPLOAD_MB == ui_common.MODEL_MAX_MB
    assert main(["ui"]) == 3 and dict(zip(calls[1][5::2], calls[1][6::2]))["--server.address"] == "127.0.0.1"


def test_ui_command_help_names_the_configuration(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ui", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for word in ("--host", "--port", "TIMEMACHINE_MODEL", "TIMEMACHINE_HOME", "TIMEMACHINE_OFFLINE",
                 "TIMEMACHINE_VGG_WEIGHTS", "TIMEMACHINE_DEVICE"):
        assert word in out


def test_ui_command_errors_are_one_line(monkeypatch, capsys):
    from timemachine.cli import ui as ui_cli

    assert main(["ui", "--port", "70000"]) == 2
    assert capsys.readouterr().err.strip() == "timemachine: error: --port must be between 1 and 65535, got 70000"
    real_find_spec = ui_cli.importlib.util.find_spec
    monkeypatch.setattr(ui_cli.importlib.util, "find_spec",
                        lambda name, *a: None if name == "streamlit" else real_find_spec(name, *a))
    assert main(["ui"]) == 2
    assert "pip install 'timemachine[ui]'" in capsys.readouterr().err


@pytest.mark.slow
def test_installed_wheel_carries_the_app_and_the_command_finds_it(tmp_path):
    """`pip install .` (as the Dockerfile does) must ship ui/ as timemachine.ui and `timemachine ui` find app.py."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    for name in ("timemachine", "stylegan_ops", "ui"):
        shutil.copytree(REPO_ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pkl", "*.pth"))
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheel_dir), str(src)], check=True, capture_output=True)
    wheel = next(wheel_dir.glob("timemachine-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("app.py", "page_video.py", "page_vectors.py", "ui_common.py", "ui_work.py"):
        assert f"timemachine/ui/{module}" in names
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    probe = ("from timemachine.cli.ui import app_path, streamlit_command; "
             "print(app_path()); print(streamlit_command('h', 1)[4])")
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True, capture_output=True,
                         text=True).stdout.splitlines()
    assert Path(out[0]).is_relative_to(site) and out[0].endswith(os.path.join("timemachine", "ui", "app.py"))
    assert out[1] == out[0]


@pytest.mark.parametrize("upload_name", ["../../etc/passwd.npz", "..\\..\\win.npz", ".hidden.npz", "\x1b[2J.npz"])
def test_uploaded_examples_are_read_from_memory_whatever_their_names(env, small_G, upload_name, monkeypatch):
    """Uploads never become paths: their bytes are read in memory (latents through a private temporary file),
    and their names only label the examples."""
    import tempfile

    from timemachine.env import Environment
    from timemachine.latents import save_latent
    from timemachine.pipeline import LoadedModel, Pipeline, VectorBuildRequest, VectorExample

    files = []
    for i in range(2):
        save_latent(env["tmp"] / f"l{i}.npz", torch.full((small_G.num_ws, small_G.w_dim), float(i)))
        files.append((env["tmp"] / f"l{i}.npz").read_bytes())
    # Temporary files and the working directory deep inside tmp: a name followed as a path would land in its tree.
    scratch = env["tmp"] / "scratch" / "a" / "b"
    scratch.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(scratch)
    pipe = Pipeline(Environment.from_environ(), LoadedModel(small_G, model_fingerprint(small_G), "small", "small"))
    request = VectorBuildRequest(name="x", examples=[VectorExample("puppy", upload_name, data=files[1]),
                                                      VectorExample("adult", "adult.npz", data=files[0])], save=False)
    result = pipe.build_vector(request)
    assert [item.name for item in result.examples] == [upload_name, "adult.npz"]
    written = sorted(str(p.relative_to(env["tmp"])) for p in env["tmp"].rglob("*")
                     if not p.is_dir() and not p.is_relative_to(env["tmp"] / "home"))
    assert written == ["l0.npz", "l1.npz", "small.safetensors"]


def test_heic_uploads_are_offered_when_pillow_heif_is_installed():
    pytest.importorskip("pillow_heif", reason="pillow-heif not installed (the 'heic' extra)")
    import ui_common

    assert {"heic", "heif"} <= set(ui_common.PHOTO_TYPES)


# ----------------------------------------------------------------------------------------------------------
# Framing, one photo is enough, scores


def _framing_key(at: AppTest) -> str:
    return [r for r in at.radio if r.key and r.key.startswith("framing_")][0].key.split("_")[-1]


def test_the_default_framing_falls_back_with_a_notice_that_asks_for_the_eyes(env):
    at = new_app()
    upload_photo(at)
    notices = [i for i in texts(at.info) if "eye detector" in i]
    assert len(notices) == 1 and "centre square" in notices[0] and "Mark the eyes" in notices[0]


def test_eyes_marked_on_the_photo_align_it_and_run_json_records_them(env):
    at = new_app()
    upload_photo(at, photo_bytes(size=(160, 120)))
    key = _framing_key(at)
    at.radio(key=f"framing_{key}").set_value("eyes").run()
    assert not at.exception and not at.error
    for name, value in (("lx", 60.0), ("ly", 50.0), ("rx", 100.0), ("ry", 56.0)):
        at.number_input(key=f"eye_{name}_{key}").set_value(value)
    fast_settings(at)
    at.run()
    assert not at.exception and not at.error
    assert not [i for i in texts(at.info) if "eye detector" in i]            # no fallback notice
    job = press(at, "make")
    assert job.status == "done", job.error
    alignment = json.loads(Path(job.result.files["run"]).read_text())["photo"]["alignment"]
    assert alignment["method"] == "eyes" and alignment["eyes"] == {"left": [60.0, 50.0], "right": [100.0, 56.0]}
    assert alignment["crop"]["angle"] != 0                                     # tilted eyes: the square is turned


def test_every_video_shows_its_scores(env):
    at = ready_app()
    job = press(at, "make")
    assert job.status == "done", job.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Looks young (CLIP)"] == "unavailable"                     # offline, no CLIP weights
    assert "Coat colour change (ΔE)" in metrics and "Likeness (LPIPS)" in metrics
    scores = json.loads(Path(job.result.files["run"]).read_text())["scores"]
    assert scores["age"]["reason"] and scores["coat_colour"]["delta_e_2000"] >= 0


@pytest.mark.slow
def test_a_model_without_a_vector_offers_to_discover_one(env, monkeypatch):
    """No vector fits the model: the page offers discovery instead of a dead end; the job runs (CLIP with random
    weights, asked for by name) with progress, and its outcome is shown plainly.  (A random CLIP calls nearly
    every sample young, so this discovery ends with the sentence that says so; the CLI tests show a successful
    one with the same job.)"""
    monkeypatch.setenv("TIMEMACHINE_CLIP_WEIGHTS", "random")
    library().delete("pups")
    at = new_app()
    upload_photo(at)
    assert any("discover this model's age direction" in i for i in texts(at.info))
    assert button(at, "make").disabled
    at.selectbox(key="discover_species").set_value("dog")
    at.number_input(key="discover_samples").set_value(40)
    at.number_input(key="discover_confidence").set_value(0.505)
    button(at, "discover").click().run()
    assert not at.exception and not at.error, texts(at.error)
    job = finish(at, "discover")
    assert job.status == "failed"
    errors = texts(at.error)
    assert len(errors) == 1 and errors[0].startswith("too few confident samples: 38 young and 1 adult of 40")
    assert "Traceback" not in errors[0] and library().entries() == []


def test_the_models_default_vector_is_chosen_for_the_visitor(env, small_G):
    ws = small_G.mapping(torch.randn(2, small_G.z_dim, generator=torch.Generator().manual_seed(9)), None)
    library().save(age.build_vector("zz-default", ws[:1], ws[1:], method="pair",
                                    model_fingerprint=model_fingerprint(small_G)))
    at = new_app()
    assert at.selectbox(key="vector_name").value == "pups"              # the first that fits, without a default
    library().set_default("zz-default")
    at = new_app()
    assert at.selectbox(key="vector_name").value == "zz-default"
