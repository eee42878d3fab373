"""The UI in a real browser: `timemachine ui` serves it, Debian's Chromium (headless, through playwright)
uploads a photo, runs the job and plays the video; two visitors at once queue their jobs.

Screenshots are written to test-artifacts/ui/ (git-ignored) for a human to look at.  Skipped when
/usr/bin/chromium is absent (Debian: apt-get install chromium); playwright's own browser download is not
used.  The model is a small generator saved by the test, LPIPS uses a random VGG16, projections are short.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench_queue import free_port
from conftest import REPO_ROOT, make_small_generator

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "ui"
#: Tall enough to hold the whole page: Streamlit scrolls inside the page, so full-page screenshots do not help.
VIEWPORT = {"width": 1400, "height": 2600}

pytestmark = [pytest.mark.browser, pytest.mark.slow]
if not CHROMIUM.exists():
    _why = "needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)"
    if os.environ.get("CI"):          # .ci/run installs it: missing there is a failure, not a skip
        raise RuntimeError(f"CI: {_why}")
    pytestmark.append(pytest.mark.skip(reason=_why))
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`timemachine ui` on a free port, with a small model and an age vector 'pups' in a fresh home."""
    from timemachine import age
    from timemachine.checkpoint import model_fingerprint, save_generator
    from timemachine.env import Environment

    tmp = tmp_path_factory.mktemp("ui-browser")
    G = make_small_generator()
    save_generator(G, tmp / "small.safetensors")
    env = dict(os.environ, TIMEMACHINE_HOME=str(tmp / "home"), TIMEMACHINE_OFFLINE="1",
               TIMEMACHINE_VGG_WEIGHTS="random", TIMEMACHINE_DEVICE="cpu",
               TIMEMACHINE_MODEL=str(tmp / "small.safetensors"),
               # Chromium shares the machine's cores with the server; OpenMP threads that spin-wait on an
               # oversubscribed CPU slowed the tiny model's many small ops several-fold.
               OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    old_home = os.environ.get("TIMEMACHINE_HOME")
    os.environ["TIMEMACHINE_HOME"] = env["TIMEMACHINE_HOME"]
    try:
        gen = torch.Generator().manual_seed(3)
        ws = G.mapping(torch.randn(2, G.z_dim, generator=gen), None)
        age.VectorLibrary(Environment.from_environ().paths).save(age.build_vector(
            "pups", ws[:1], ws[1:], method="pair", model_fingerprint=model_fingerprint(G), species="dog"))
    finally:
        if old_home is None:
            os.environ.pop("TIMEMACHINE_HOME")
        else:
            os.environ["TIMEMACHINE_HOME"] = old_home
    photo = tmp / "dog.jpg"
    Image.fromarray((np.random.RandomState(2).rand(120, 160, 3) * 255).astype(np.uint8)).save(photo, quality=95)

    port = free_port()
    log = open(tmp / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "timemachine", "ui", "--port", str(port)], cwd=REPO_ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.seek(0)
            pytest.fail(f"`timemachine ui` did not come up (exit code {proc.poll()}):\n{log.read()}")
        time.sleep(0.3)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield {"url": url, "photo": photo, "proc": proc, "log": log}
    # `docker stop` sends SIGTERM to `timemachine ui`, which passes it on to Streamlit: both end cleanly.
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("`timemachine ui` did not stop within 30 s of SIGTERM")
    log.seek(0)
    output = log.read()
    log.close()
    assert code == 0, output
    assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def browser(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, server):
    page = browser.new_context(viewport=VIEWPORT, accept_downloads=True).new_page()
    page.goto(server["url"])
    page.get_by_text("Photo of your adult pet").wait_for(timeout=60_000)
    return page


def prepare(page, photo: Path, steps: int, frames: int = 8) -> None:
    """Upload ``photo``, wait for the crop preview, set short settings."""
    upload(page, photo)
    short_settings(page, steps, frames)


def upload(page, photo: Path) -> None:
    """Upload ``photo`` and wait for the crop preview."""
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(photo))
    page.get_by_text("What the model sees").wait_for(timeout=60_000)


def short_settings(page, steps: int, frames: int = 8) -> None:
    """Open the settings and set few steps and frames (each value confirmed on the page)."""
    page.get_by_text("Quality and video settings").click()
    for label, value in (("Steps", steps), ("Walk frames", frames), ("Hold the adult (frames)", 1),
                         ("Hold the young animal (frames)", 2)):
        box = page.get_by_label(label, exact=True)
        box.fill(str(value))
        box.press("Enter")
        sync_api.expect(box).to_have_value(str(value))
    page.wait_for_timeout(500)   # let the rerun that the last change started finish


def make_video(page) -> None:
    button = page.get_by_role("button", name="Make the video")
    sync_api.expect(button).to_be_enabled(timeout=30_000)
    button.click()


def wait_for_video(page, timeout_ms: int = 180_000):
    video = page.locator("video").first
    video.wait_for(timeout=timeout_ms)
    # the MP4 is served and Chromium can read it (metadata loaded: duration known)
    page.wait_for_function("() => { const v = document.querySelector('video'); return v && v.readyState >= 1 "
                           "&& v.duration > 0; }", timeout=30_000)
    return video


def test_upload_run_and_watch_the_video(browser, server):
    page = open_page(browser, server)
    prepare(page, server["photo"], steps=3)
    page.screenshot(path=str(ARTIFACTS / "01-photo-and-crop.png"))
    make_video(page)
    wait_for_video(page)
    assert page.get_by_text("Your pet, younger").is_visible()
    assert not page.locator('[data-testid="stException"]').count()
    assert not page.locator('[data-testid="stAlertContentError"]').count()
    page.screenshot(path=str(ARTIFACTS / "02-video-and-downloads.png"))
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Video (MP4)").click()
    download = download_info.value
    assert download.suggested_filename == "video.mp4"
    data = Path(download.path()).read_bytes()
    assert data[4:8] == b"ftyp" and len(data) > 1000


def test_a_corrupt_photo_shows_a_plain_error(browser, server, tmp_path):
    page = open_page(browser, server)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo" * 100)
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(broken))
    error = page.locator('[data-testid="stAlertContentError"]').first
    error.wait_for(timeout=30_000)
    assert error.inner_text().startswith("broken.jpg is not an image in a supported format")
    assert not page.locator('[data-testid="stException"]').count()
    page.screenshot(path=str(ARTIFACTS / "05-corrupt-photo.png"))


def test_the_age_vector_page_lists_the_library(browser, server):
    page = open_page(browser, server)
    page.get_by_role("link", name="Age vectors").click()
    page.get_by_text("Build an age vector").wait_for(timeout=30_000)
    page.get_by_text("vector from 1 puppies and 1 adults").wait_for(timeout=30_000)
    assert page.get_by_role("button", name="Save the defaults").is_visible()
    assert not page.locator('[data-testid="stException"]').count()
    page.screenshot(path=str(ARTIFACTS / "07-age-vector-page.png"))


def test_two_visitors_queue_and_both_get_their_video(browser, server):
    first, second = open_page(browser, server), open_page(browser, server)
    prepare(first, server["photo"], steps=60)     # long enough (seconds) for the second visitor to arrive
    prepare(second, server["photo"], steps=4)
    make_video(first)
    first.locator('[data-testid="stProgress"]').first.wait_for(timeout=30_000)
    make_video(second)
    waiting = second.get_by_text("Waiting for another visitor's job to finish")
    waiting.wait_for(timeout=30_000)
    second.screenshot(path=str(ARTIFACTS / "03-second-visitor-waiting.png"))
    first.get_by_text("The model's reconstruction so far").wait_for(timeout=60_000)   # the live preview
    first.screenshot(path=str(ARTIFACTS / "04-first-visitor-projecting.png"))
    wait_for_video(first)
    wait_for_video(second)
    for page in (first, second):
        assert not page.locator('[data-testid="stException"]').count()
        assert not page.locator('[data-testid="stAlertContentError"]').count()
    second.screenshot(path=str(ARTIFACTS / "06-second-visitor-video.png"))


def test_marking_the_eyes_by_clicking_aligns_the_face(browser, server):
    """The visitor clicks the two eyes on the photo; the aligned face is shown at once and run.json records it."""
    import json

    page = open_page(browser, server)
    upload(page, server["photo"])
    page.get_by_role("radiogroup", name="Framing").get_by_text("Mark the eyes").click()
    photo = page.frame_locator("iframe[title^='streamlit_image_coordinates']").locator("img")
    photo.wait_for(timeout=30_000)
    box = photo.bounding_box()
    width, height = Image.open(server["photo"]).size
    # click where the eyes of the 160x120 test photo are meant to be: (60, 50) and (100, 56)
    for x, y in ((60, 50), (100, 56)):
        photo.click(position={"x": x * box["width"] / width, "y": y * box["height"] / height})
        page.wait_for_timeout(1500)                 # the click reruns the page
    left_x = page.get_by_label("Left eye x", exact=True)
    sync_api.expect(left_x).to_have_value("60", timeout=30_000)
    sync_api.expect(page.get_by_label("Right eye y", exact=True)).to_have_value("56", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "08-eyes-marked.png"))
    short_settings(page, steps=3)
    make_video(page)
    wait_for_video(page)
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Settings and timings (run.json)").click()
    alignment = json.loads(Path(download_info.value.path()).read_text())["photo"]["alignment"]
    assert alignment["method"] == "eyes"
    assert abs(alignment["eyes"]["left"][0] - 60) <= 1 and abs(alignment["eyes"]["right"][1] - 56) <= 1
    assert not page.locator('[data-testid="stException"]').count()
