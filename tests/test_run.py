"""``timemachine run`` and ``timemachine render`` end to end on a small generator."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_photo
from timemachine import age
from timemachine.checkpoint import model_fingerprint
from timemachine.cli import main
from timemachine.env import Environment
from timemachine.latents import load_latent

RUN_JSON_KEYS = {"created", "versions", "photo", "model", "age_vector", "projection", "render", "timings", "files"}


@pytest.fixture()
def env(cli_home):
    return {**cli_home, "photo": write_photo(cli_home["tmp"] / "dog.jpg", quality=95)}


def run_args(env, out, *extra):
    return ["run", env["photo"], "--model", env["model"], "--age-vector", "pups", "--steps", "3",
            "--frames", "8", "--hold-start", "1", "--hold-end", "2", "--out", str(out), *extra]


def test_run_writes_video_stills_latent_and_a_complete_run_json(env, capsys, small_G):
    out = env["tmp"] / "out"
    assert main(run_args(env, out)) == 0
    for name in ("video.mp4", "preview.gif", "before.png", "after.png", "projected_w.npz", "run.json"):
        assert (out / name).is_file(), name
    frames = np.stack(list(iio.imiter(out / "video.mp4")))
    assert frames.shape[0] == 1 + 8 + 2 and frames.shape[1:3] == (32, 32)           # >= --frames
    info = json.loads((out / "run.json").read_text())
    assert RUN_JSON_KEYS <= set(info)
    assert info["model"]["fingerprint"] == model_fingerprint(small_G)
    assert info["age_vector"]["name"] == "pups" and info["age_vector"]["method"] == "pair"
    assert info["render"]["total_frames"] == 11 and info["render"]["strength"] == 1.0
    assert info["projection"]["settings"]["steps"] == 3 and "lpips" in info["projection"]["metrics"]
    assert {"project_seconds", "render_seconds", "total_seconds"} <= set(info["timings"])
    assert set(info["files"]) >= {"video", "gif", "before", "after", "latent", "run"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]                  # no temp or checkpoint left
    # before.png is the reconstruction of the projected latent
    latent = load_latent(out / "projected_w.npz")
    with torch.no_grad():
        img = small_G.synthesis(latent.ws[None], noise_mode="const",
                                noise={k: v[None, None] for k, v in latent.noise.items()})
    expected = (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(out / "before.png")), expected)
    assert "frames" in capsys.readouterr().out

    # Another strength: the projection comes from the cache, the ending differs.
    out2 = env["tmp"] / "out2"
    assert main(run_args(env, out2, "--strength", "0.3", "--no-gif")) == 0
    assert "projection from cache" in capsys.readouterr().out
    assert not (out2 / "preview.gif").exists()
    assert np.array_equal(np.asarray(Image.open(out2 / "before.png")), expected)
    assert not np.array_equal(np.asarray(Image.open(out2 / "after.png")), np.asarray(Image.open(out / "after.png")))


def test_render_command_walks_an_existing_latent(env):
    out = env["tmp"] / "proj"
    assert main(run_args(env, out)) == 0
    rendered = env["tmp"] / "rendered"
    rc = main(["render", str(out / "projected_w.npz"), "--model", env["model"], "--age-vector", "pups",
               "--frames", "4", "--hold-start", "0", "--hold-end", "0", "--side-by-side", "--photo", env["photo"],
               "--strength", "0", "--out", str(rendered)])
    assert rc == 0
    assert (rendered / "side_by_side.mp4").is_file()
    # strength 0: every frame is the reconstruction
    assert np.array_equal(np.asarray(Image.open(rendered / "after.png")), np.asarray(Image.open(out / "before.png")))


def test_vector_of_another_model_is_refused_before_any_work(env, capsys):
    other = age.build_vector("other", torch.zeros(1, 8, 32), torch.ones(1, 8, 32), method="pair",
                             model_fingerprint="0123456789abcdef")
    age.VectorLibrary(Environment.from_environ().paths).save(other)
    out = env["tmp"] / "never"
    rc = main(run_args(env, out)[:5] + ["other"] + run_args(env, out)[6:])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists()
    assert err[-1].startswith("timemachine: error:") and "0123456789abcdef" in err[-1]
    rc = main(run_args(env, out)[:5] + ["other"] + run_args(env, out)[6:] + ["--force-model"])
    assert rc == 0
    assert json.loads((out / "run.json").read_text())["age_vector"]["forced_onto_other_model"] is True


@pytest.mark.parametrize("change, message", [
    (["--age-vector", "nobody"], "nobody"),
    (["--frames", "1"], "frames"),
    (["--strength", "nan"], "strength"),
    (["--layers", "fine"], "fine"),
    (["--fps", "0"], "frames per second"),
])
def test_bad_options_exit_2_with_one_line(env, capsys, change, message):
    out = env["tmp"] / "never"
    rc = main(run_args(env, out) + change)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists()
    assert err[-1].startswith("timemachine: error:") and message in err[-1].lower() and len(err) == 1
