"""Interrupted and concurrent CLI runs: real processes, real signals (Issue 8.3 and 8.5)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT, make_small_generator
from timemachine.checkpoint import save_generator
from timemachine.latents import load_latent


@pytest.fixture()
def setup(tmp_path):
    model = tmp_path / "small.safetensors"
    save_generator(make_small_generator(), model)
    photo = tmp_path / "dog.png"
    Image.fromarray((np.random.RandomState(1).rand(70, 70, 3) * 255).astype(np.uint8)).save(photo)
    env = dict(os.environ, TIMEMACHINE_HOME=str(tmp_path / "home"), TIMEMACHINE_VGG_WEIGHTS="random",
               TIMEMACHINE_OFFLINE="1", PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    return {"model": str(model), "photo": str(photo), "env": env, "tmp": tmp_path}


def start_projection(setup, out, *extra, steps=150):
    cmd = [sys.executable, "-m", "timemachine", "project", setup["photo"], "--model", setup["model"],
           "--steps", str(steps), "--out", str(out), *extra]
    return subprocess.Popen(cmd, env=setup["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, timeout=180):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the projection ended before {path.name} appeared: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path.name} did not appear within {timeout} s")
        time.sleep(0.05)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signal_during_projection_leaves_no_output_and_resume_finishes(setup, sig, code, word):
    out = setup["tmp"] / "out"
    proc = start_projection(setup, out)
    checkpoint = out / ".projection-checkpoint.pt"
    wait_for(checkpoint, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"timemachine: error: {word}") and "--resume" in last
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [checkpoint.name]         # nothing under a final name

    resumed = start_projection(setup, out, "--resume")
    stdout, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert load_latent(out / "projected_w.npz").meta["steps_run"] == 150
    assert not checkpoint.exists()
    assert sorted(p.name for p in out.iterdir()) == ["projected_w.npz", "projection.json", "projection.png",
                                                      "target.png"]


def test_two_processes_filling_the_same_cache_entry(setup):
    outs = [setup["tmp"] / "a", setup["tmp"] / "b"]
    procs = [start_projection(setup, out, steps=30) for out in outs]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "(from cache)" not in out           # both projected: both wrote the entry, a real race
    a, b = (load_latent(out / "projected_w.npz") for out in outs)
    assert np.array_equal(a.ws, b.ws)
    entries = list((setup["tmp"] / "home" / "cache" / "projections").glob("*/*"))
    assert len(entries) == 1 and (entries[0] / "projected_w.npz").is_file()
    assert not list((setup["tmp"] / "home" / "cache" / "projections").glob("*/.*"))   # no temp dirs left


def test_sigterm_during_rendering_leaves_no_partial_video(setup):
    from timemachine import age
    from timemachine.checkpoint import load_generator, model_fingerprint

    G = load_generator(setup["model"], device="cpu")
    ws = G.mapping(torch_randn(2, G.z_dim), None)
    env = setup["env"]
    vector = age.build_vector("pups", ws[:1], ws[1:], method="pair", model_fingerprint=model_fingerprint(G))
    vectors = setup["tmp"] / "home" / "vectors"
    vectors.mkdir(parents=True)
    age.save_vector_file(vector, vectors / "pups.safetensors")
    out = setup["tmp"] / "video"
    cmd = [sys.executable, "-m", "timemachine", "run", setup["photo"], "--model", setup["model"], "--age-vector",
           "pups", "--steps", "2", "--frames", "3000", "--batch-size", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not any(p.name.startswith(".video.mp4.") for p in (out.iterdir() if out.exists() else [])):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"rendering did not start: {proc.communicate()}")
        time.sleep(0.05)
    time.sleep(0.5)                                                             # some frames written
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "timemachine: error: terminated"
    assert sorted(p.name for p in out.iterdir()) == []                          # no final and no temporary files


def torch_randn(*shape):
    import torch

    return torch.randn(*shape, generator=torch.Generator().manual_seed(4))
