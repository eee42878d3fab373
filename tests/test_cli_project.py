"""``timemachine project`` end to end on a small generator saved as a safetensors file."""

import json

import numpy as np
import pytest
from PIL import Image

from timemachine.checkpoint import save_generator
from timemachine.cli import main
from timemachine.latents import load_latent


@pytest.fixture()
def env(tmp_path, monkeypatch, small_G):
    monkeypatch.setenv("TIMEMACHINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TIMEMACHINE_OFFLINE", "1")
    model = tmp_path / "small.safetensors"
    save_generator(small_G, model)
    photo = tmp_path / "rex.jpg"
    rng = np.random.RandomState(0)
    Image.fromarray((rng.rand(90, 120, 3) * 255).astype(np.uint8)).save(photo, quality=95)
    return {"model": str(model), "photo": str(photo), "tmp": tmp_path}


def project(env, *extra):
    return main(["project", env["photo"], "--model", env["model"], "--steps", "4", "--vgg-weights", "random",
                 "--device", "cpu", *extra])


def test_project_writes_the_official_latent_and_a_summary(env, capsys, small_G):
    out = env["tmp"] / "out"
    assert project(env, "--out", str(out)) == 0
    latent = load_latent(out / "projected_w.npz", num_ws=small_G.num_ws, w_dim=32)
    assert latent.ws.shape == (small_G.num_ws, 32) and latent.noise
    with np.load(out / "projected_w.npz") as npz:                       # what the official tools read
        assert npz["w"].shape == (1, small_G.num_ws, 32) and npz["w"].dtype == np.float32
    summary = json.loads((out / "projection.json").read_text())
    assert summary["metrics"]["steps_run"] == 4 and summary["metrics"]["cached"] is False
    assert summary["settings"]["space"] == "w" and summary["model_fingerprint"]
    assert Image.open(out / "projection.png").size == (32, 32)
    assert Image.open(out / "target.png").size == (32, 32)
    assert not (out / ".projection-checkpoint.pt").exists()
    captured = capsys.readouterr()
    assert "LPIPS" in captured.out and "random" in captured.err          # the random-VGG warning is shown

    # The same photo, model and settings again: answered from the cache, identical latent.
    out2 = env["tmp"] / "out2"
    assert project(env, "--out", str(out2)) == 0
    assert "(from cache)" in capsys.readouterr().out
    assert np.array_equal(load_latent(out2 / "projected_w.npz").ws, latent.ws)


def test_several_photos_get_one_directory_each(env):
    second = env["tmp"] / "rex2.png"
    Image.open(env["photo"]).save(second)
    out = env["tmp"] / "batch"
    rc = main(["project", env["photo"], str(second), "--model", env["model"], "--steps", "2", "--vgg-weights",
               "random", "--out", str(out), "--space", "w+"])
    assert rc == 0
    assert (out / "rex" / "projected_w.npz").is_file() and (out / "rex2" / "projected_w.npz").is_file()
    ws = load_latent(out / "rex" / "projected_w.npz").ws
    assert not np.allclose(ws[0], ws[-1])                                # W+: rows differ


@pytest.mark.parametrize("make_args, message", [
    (lambda env: [env["tmp"] / "missing.jpg"], "missing.jpg"),
    (lambda env: [env["tmp"] / "notes.jpg"], "not"),
    (lambda env: [env["photo"], "--crop", "1,2"], "crop"),
    (lambda env: [env["photo"], "--crop", "0,0,500"], "crop"),
    (lambda env: [env["photo"], "--steps", "0"], "steps"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(env, capsys, make_args, message):
    (env["tmp"] / "notes.jpg").write_text("<html>not a photo</html>")
    out = env["tmp"] / "never"
    args = [str(a) for a in make_args(env)]
    rc = main(["project", *args, "--model", env["model"], "--vgg-weights", "random", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("timemachine: error:") and message in err[-1].lower()
    assert "Traceback" not in "\n".join(err)
    assert not out.exists()


def test_missing_model_is_one_line(env, capsys):
    out = env["tmp"] / "never"
    rc = main(["project", env["photo"], "--model", str(env["tmp"] / "nope.pkl"), "--out", str(out)])
    assert rc == 2 and not out.exists()
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("names", [
    ["..", "..jpg"], ["a b.png", "a?b.png"], ["../../escape.png", "x/../../escape2.png"],
    ["chien-\u00e9t\u00e9.png", "\u732b.png"], ["same.png", "same.jpg"],
])
def test_output_directories_from_photo_names_stay_under_out(tmp_path, names):
    from timemachine.cli.project import _output_dirs

    out = (tmp_path / "out").resolve()
    dirs = _output_dirs(out, names)
    assert len(set(dirs)) == len(names)                                   # one each, never shared
    for d in dirs:
        assert d.parent == out and d.name not in ("", ".", "..")
        assert (out / d.name).resolve().parent == out                     # no separator, no escape
        assert set(d.name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
