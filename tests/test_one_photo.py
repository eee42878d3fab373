"""One photo is enough: `run` with the model's default vector, `--example`, scores in run.json and on the last
line, `--strength auto`, and framing options (`--eyes`, `--crop`) through the CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_small_generator
from timemachine import age
from timemachine.checkpoint import model_fingerprint, save_generator
from timemachine.cli import main
from timemachine.env import Environment

FAST = ["--steps", "2", "--frames", "4", "--hold-start", "0", "--hold-end", "0", "--no-gif"]


@pytest.fixture()
def env(tmp_path, monkeypatch, small_G):
    monkeypatch.setenv("TIMEMACHINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TIMEMACHINE_OFFLINE", "1")
    monkeypatch.setenv("TIMEMACHINE_VGG_WEIGHTS", "random")
    monkeypatch.delenv("TIMEMACHINE_CLIP_WEIGHTS", raising=False)
    model = tmp_path / "small.safetensors"
    save_generator(small_G, model)
    ws = small_G.mapping(torch.randn(2, small_G.z_dim, generator=torch.Generator().manual_seed(3)), None)
    library = age.VectorLibrary(Environment.from_environ().paths)
    library.save(age.build_vector("pups", ws[:1], ws[1:], method="pair", model_fingerprint=model_fingerprint(small_G),
                                  species="dog"))
    photo = tmp_path / "dog.jpg"
    Image.fromarray((np.random.RandomState(2).rand(90, 120, 3) * 255).astype(np.uint8)).save(photo, quality=95)
    return {"model": str(model), "photo": str(photo), "tmp": tmp_path, "library": library}


def _lines(text: str) -> list[str]:
    return [line for line in text.strip().splitlines() if line]


def test_without_a_vector_the_error_names_the_command_that_makes_one(env, capsys):
    out = env["tmp"] / "out"
    assert main(["run", env["photo"], "--model", env["model"], "--out", str(out), *FAST]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "has no default age vector yet" in err[0]
    assert "timemachine age-vector discover NAME --model MODEL" in err[0]
    assert not out.exists()


def test_the_default_vector_is_used_and_every_video_is_scored(env, capsys):
    assert main(["age-vector", "set", "pups", "--default"]) == 0
    capsys.readouterr()
    out = env["tmp"] / "out"
    assert main(["run", env["photo"], "--model", env["model"], "--out", str(out), *FAST]) == 0
    captured = capsys.readouterr()
    info = json.loads((out / "run.json").read_text())
    assert info["age_vector"]["name"] == "pups" and info["age_vector"]["chosen"] == "chosen"
    scores = info["scores"]
    assert set(scores) == {"age", "likeness", "coat_colour"}
    # offline without CLIP's weights: the age score is unavailable, with the reason (never silently absent)
    assert scores["age"]["p_young_first"] == "unavailable" and "clip-vit-b-32" in scores["age"]["reason"]
    assert scores["likeness"]["lpips"] == info["projection"]["metrics"]["lpips"]
    assert scores["coat_colour"]["delta_e_2000"] >= 0
    last = _lines(captured.out)[-1]
    assert "age vector pups (the model's default)" in last and "age score unavailable" in last
    assert "coat colour delta E" in last and last.endswith("video.mp4")
    # the default framing is 'auto': without the detector's weights, the centre square and a note saying so
    assert any("eye detector's weights are not downloaded" in line for line in _lines(captured.err))
    assert info["photo"]["alignment"]["requested"] == "auto" and info["photo"]["alignment"]["method"] == "centre"


@pytest.mark.slow
def test_scores_and_automatic_strength_with_clip(env, capsys, monkeypatch):
    """With CLIP (random weights, asked for by name) the age score has numbers and `--strength auto` reports its
    choice: P(young) of a random network sits near 0.5, so the 0.8 target is not reached and the reason says so."""
    monkeypatch.setenv("TIMEMACHINE_CLIP_WEIGHTS", "random")
    out = env["tmp"] / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["run", env["photo"], "--model", env["model"], "--age-vector", "pups", "--strength", "auto",
                     "--out", str(out), *FAST]) == 0
    info = json.loads((out / "run.json").read_text())
    age_score = info["scores"]["age"]
    assert 0 <= age_score["p_young_first"] <= 1 and 0 <= age_score["p_young_last"] <= 1
    auto = info["strength_auto"]
    assert auto["reached"] is False and "reaches P(young) 0.8" in auto["reason"]
    assert info["render"]["strength"] == auto["strength"] and 0.1 <= auto["strength"] <= 3
    assert len(auto["tried"]) >= 6
    assert "(auto)" in _lines(capsys.readouterr().out)[-1]


def test_example_uses_an_animal_the_model_makes(env, capsys):
    out = env["tmp"] / "out"
    assert main(["run", "--example", "5", "--model", env["model"], "--age-vector", "pups", "--out", str(out),
                 *FAST]) == 0
    info = json.loads((out / "run.json").read_text())
    example = info["photo"]["example"]
    assert example["seed"] == 5 and example["adult_check"].startswith("not checked")   # no CLIP for a file model
    assert (out / "video.mp4").is_file()
    assert _lines(capsys.readouterr().out)[-1].startswith("example: ")


@pytest.mark.parametrize("argv, message", [
    (["run", "--model", "M", "--out", "O"], "give a photo of your pet, or --example"),
    (["run", "P", "--example", "--model", "M", "--out", "O"], "give a photo of your pet, or --example"),
    (["run", "--example", "--eyes", "1,2,3,4", "--model", "M", "--out", "O"], "framed already"),
    (["run", "P", "--eyes", "1,2,3", "--model", "M", "--out", "O"], "LX,LY,RX,RY"),
    (["run", "P", "--eyes", "10,10,40,12", "--crop", "centre", "--model", "M", "--out", "O"], "either the eyes"),
    (["run", "P", "--nose", "5,5", "--model", "M", "--out", "O"], "nose position only helps"),
    (["run", "P", "--strength", "lots", "--model", "M", "--out", "O"], "expected a number or 'auto'"),
])
def test_bad_framing_and_example_options_are_one_line(env, capsys, argv, message):
    argv = [env["photo"] if a == "P" else env["model"] if a == "M" else str(env["tmp"] / "o") if a == "O" else a
            for a in argv]
    try:
        assert main(argv) == 2
    except SystemExit as exc:          # usage mistakes found by argparse
        assert exc.code == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("timemachine: error:") and (message is None or message in err[0]), err
    assert not (env["tmp"] / "o").exists()


def test_eyes_align_the_photo_and_projection_json_records_it(env, capsys):
    out = env["tmp"] / "proj"
    assert main(["project", env["photo"], "--model", env["model"], "--eyes", "45,40,75,44", "--steps", "2",
                 "--out", str(out)]) == 0
    info = json.loads((out / "projection.json").read_text())
    alignment = info["alignment"]
    assert alignment["method"] == "eyes" and alignment["eyes"] == {"left": [45.0, 40.0], "right": [75.0, 44.0]}
    assert alignment["crop"]["angle"] != 0 and info["crop"] == "eyes"
    assert "centre square" not in capsys.readouterr().err      # aligned on the eyes given, no fallback
    # several photos: eyes for one of them by name, the other one framed by --crop
    other = env["tmp"] / "other.png"
    Image.open(env["photo"]).save(other)
    many = env["tmp"] / "many"
    assert main(["project", env["photo"], str(other), "--model", env["model"], "--eyes",
                 f"{env['photo']}=45,40,75,44", "--crop", "centre", "--steps", "2", "--out", str(many)]) == 0
    methods = {p.name: json.loads((p / "projection.json").read_text())["alignment"]["method"] for p in many.iterdir()}
    assert methods == {"dog": "eyes", "other": "centre"}
    assert main(["project", env["photo"], str(other), "--model", env["model"], "--eyes", "45,40,75,44",
                 "--out", str(env["tmp"] / "x")]) == 2
    assert "PHOTO=" in _lines(capsys.readouterr().err)[-1]


def test_an_explicit_auto_offline_falls_back_with_a_note(env, capsys):
    out = env["tmp"] / "proj"
    assert main(["project", env["photo"], "--model", env["model"], "--crop", "auto", "--steps", "2",
                 "--out", str(out)]) == 0
    notes = [line for line in _lines(capsys.readouterr().err) if "note:" in line]
    assert len(notes) == 1 and "eye detector is unavailable" in notes[0] and "centre square" in notes[0]
    alignment = json.loads((out / "projection.json").read_text())["alignment"]
    assert (alignment["requested"], alignment["method"]) == ("auto", "centre") and alignment["notices"]


def test_age_vector_build_frames_each_photo_as_asked(env, capsys, small_G):
    photos = []
    for i in range(2):
        path = env["tmp"] / f"p{i}.png"
        Image.fromarray((np.random.RandomState(10 + i).rand(64, 80, 3) * 255).astype(np.uint8)).save(path)
        photos.append(str(path))
    assert main(["age-vector", "build", "framed", "--puppy", photos[0], "--adult", photos[1], "--model",
                 env["model"], "--steps", "2", "--eyes", f"{photos[0]}=30,30,50,31", "--crop", "centre"]) == 0
    vector = env["library"].load("framed")
    assert [s["crop"] for s in vector.details["sources"]] == ["eyes", "centre"]


@pytest.mark.slow
def test_the_built_in_vector_renders_on_the_zoo_model_it_is_bound_to(tmp_path, monkeypatch, capsys):
    """A fresh home, an AFHQ-architecture generator as the zoo's afhqdog file (its SHA-256 recorded on first use):
    `run photo --model afhqdog` needs no vector and renders with the built-in 'yorkshire'."""
    monkeypatch.setenv("TIMEMACHINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TIMEMACHINE_OFFLINE", "1")
    monkeypatch.setenv("TIMEMACHINE_VGG_WEIGHTS", "random")
    env = Environment.from_environ()
    G = make_small_generator(resolution=512, w_dim=512, channel_max=16)
    env.paths.models.mkdir(parents=True)
    save_generator(G, env.paths.models / "afhqdog.pkl")
    photo = tmp_path / "dog.jpg"
    Image.fromarray((np.random.RandomState(4).rand(600, 600, 3) * 255).astype(np.uint8)).save(photo)
    assert main(["age-vector", "list"]) == 0
    assert any(line.startswith("yorkshire") and "built-in" in line and "afhqdog" in line
               for line in _lines(capsys.readouterr().out))
    out = tmp_path / "out"
    assert main(["run", str(photo), "--model", "afhqdog", "--out", str(out), "--steps", "1", "--frames", "2",
                 "--hold-start", "0", "--hold-end", "0", "--no-gif", "--crop", "centre"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["age_vector"]["name"] == "yorkshire" and info["age_vector"]["builtin"] is True
    assert info["age_vector"]["chosen"] == "built-in" and info["render"]["strength"] == 0.5
    assert info["model"]["zoo"] == "afhqdog"
