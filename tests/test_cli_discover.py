"""``timemachine age-vector discover`` end to end: the official tiny pickle and the AFHQ 512x512 architecture with
a randomly initialised CLIP (TIMEMACHINE_CLIP_WEIGHTS=random, asked for by name), and every kind of bad input.

Random CLIP weights make meaningless labels that all lie close to P(young) = 0.5, so the runs that must succeed
ask for a confidence of 0.505; what the labels mean is tested with planted labellers in test_discover.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from timemachine import age
from timemachine.cli import main
from timemachine.env import Environment

RANDOM_RUN = ["--species", "dog", "--confidence", "0.505", "--min-confident", "5", "--batch-size", "16"]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("TIMEMACHINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TIMEMACHINE_OFFLINE", "1")
    monkeypatch.setenv("TIMEMACHINE_CLIP_WEIGHTS", "random")
    monkeypatch.delenv("TIMEMACHINE_MODEL", raising=False)


def _paths():
    return Environment.from_environ().paths


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("timemachine: error:")]


def _nothing_written() -> bool:
    vectors = _paths().vectors
    return not vectors.exists() or list(vectors.iterdir()) == []


def test_discover_runs_end_to_end_on_the_official_tiny_pickle(tiny_pkl, capsys):
    argv = ["age-vector", "discover", "tiny-dogs", "--model", str(tiny_pkl), "--samples", "32", *RANDOM_RUN]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "saved age vector 'tiny-dogs'" in out and "0 from the cache" in out and "held-out accuracy" in out
    assert "randomly initialised CLIP" in err and _errors(err) == []
    library = age.VectorLibrary(_paths())
    vector = library.load("tiny-dogs")
    assert vector.method == "discovered" and vector.direction.shape == (8, 64) and vector.space == "w"
    info = vector.details["discovery"]
    assert info["clip_model"] == "ViT-B-32 (random weights)" and info["species"] == "dog" and info["breed"] is None
    assert info["prompts"]["young"][0] == "a photo of a puppy." and info["samples"] == 32
    assert info["truncation_psi"] == 0.7 and info["young"] + info["adult"] <= 32 and 0 <= info["heldout_accuracy"] <= 1
    assert (vector.num_puppies, vector.num_adults) == (info["young"], info["adult"])
    # again: every sample and label comes from the cache
    assert main([*argv, "--force"]) == 0
    assert "32 from the cache" in capsys.readouterr().out
    assert main(["age-vector", "show", "tiny-dogs"]) == 0
    out = capsys.readouterr().out
    assert "discovered: 32 samples" in out and "young prompts: a photo of a puppy." in out
    assert main(["age-vector", "show", "tiny-dogs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "discovered"


@pytest.mark.slow
def test_discover_runs_end_to_end_on_the_afhq_architecture(tmp_path, capsys):
    """The 512x512 AFHQ generator (random weights), rendered at 256 px by stopping at that block."""
    from bench_generator import build_generator
    from timemachine.checkpoint import save_generator

    model = tmp_path / "afhq512.safetensors"
    save_generator(build_generator(512), model)
    assert main(["age-vector", "discover", "afhq-random", "--model", str(model), "--samples", "16",
                 *RANDOM_RUN[:-1], "8"]) == 0
    out = capsys.readouterr().out
    assert "rendered at 256 px" in out
    vector = age.VectorLibrary(_paths()).load("afhq-random")
    assert vector.direction.shape == (16, 512) and vector.details["discovery"]["resolution"] == 256
    assert vector.details["discovery"]["model_resolution"] == 512


@pytest.mark.parametrize("extra, message", [
    (["--samples", "0"], "number of samples must be a whole number from 1 to 100000, got 0"),
    (["--samples", "1000000000"], "number of samples must be a whole number from 1 to 100000"),
    (["--breed", "unicorn"], "unknown dog breed 'unicorn'; known: akita, american bulldog"),
    (["--species", "cat", "--breed", "shiba inu"], "unknown cat breed 'shiba inu'; known: abyssinian"),
    (["--young", ""], "a young prompt is empty"),
    (["--adult", "a" * 300], "is not one line of at most 200 printable characters"),
    (["--young", "a puppy\x1b[2J"], "not one line of at most 200 printable characters"),
    (["--young", *["a puppy"] * 40], "give 1 to 32 young prompts, not 40"),
    (["--young", "a " * 99], "longer than CLIP reads (75 tokens)"),
    (["--confidence", "0.3"], "confidence must be a number above 0.5"),
    (["--truncation", "0"], "truncation must be a number above 0"),
    (["--resolution", "100"], "power of two"),
    (["--strength", "1e308"], "strength must be a number"),
    (["--min-confident", "2"], "fewest confident samples per side must be a whole number from 5"),
    (["--clip-weights", "missing.safetensors"], "CLIP weights file not found"),
])
def test_bad_discovery_requests_exit_2_with_one_line_and_write_nothing(tiny_pkl, extra, message, capsys,
                                                                       monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    argv = ["age-vector", "discover", "v", "--model", str(tiny_pkl), "--species", "dog", "--samples", "40", *extra]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = _errors(err)
    assert len(lines) == 1 and message in lines[0], err
    assert "\x1b" not in err and "Traceback" not in err
    assert _nothing_written() and not _paths().discovery.exists()


def test_names_species_and_existing_vectors_are_checked_first(tiny_pkl, capsys):
    assert main(["age-vector", "discover", "../x", "--model", str(tiny_pkl), "--species", "dog"]) == 2
    assert "invalid age vector name" in _errors(capsys.readouterr().err)[0]
    assert main(["age-vector", "discover", "v", "--model", str(tiny_pkl)]) == 2
    assert "give --species dog, cat or wild" in _errors(capsys.readouterr().err)[0]
    age.VectorLibrary(_paths()).copy("yorkshire", "taken")
    assert main(["age-vector", "discover", "taken", "--model", str(tiny_pkl), "--species", "dog"]) == 2
    assert _errors(capsys.readouterr().err) == [
        "timemachine: error: an age vector named 'taken' already exists; pass --force to replace it"]
    assert not _paths().discovery.exists()


def test_missing_clip_weights_offline_is_one_line_naming_the_url_and_the_place(tiny_pkl, monkeypatch, capsys):
    monkeypatch.delenv("TIMEMACHINE_CLIP_WEIGHTS")
    assert main(["age-vector", "discover", "v", "--model", str(tiny_pkl), "--species", "dog"]) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert "clip-vit-b-32 is not available offline" in line
    url = "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/open_clip_model.safetensors"
    assert url in line
    assert str(_paths().models / "clip-vit-b-32-laion2b-s34b-b79k.safetensors") in line
    assert _nothing_written() and not _paths().discovery.exists()


def test_a_file_that_is_not_clip_weights_is_refused(tiny_pkl, tmp_path, capsys):
    other = tmp_path / "vector.safetensors"
    age.save_vector_file(age.load_builtin("yorkshire"), other)
    assert main(["age-vector", "discover", "v", "--model", str(tiny_pkl), "--species", "dog",
                 "--clip-weights", str(other)]) == 2
    assert "does not hold CLIP ViT-B-32 weights" in _errors(capsys.readouterr().err)[0]
    pickle = tmp_path / "clip.pt"
    pickle.write_bytes(b"\x80\x04junk")
    assert main(["age-vector", "discover", "v", "--model", str(tiny_pkl), "--species", "dog",
                 "--clip-weights", str(pickle)]) == 2
    assert "must be a .safetensors file (no pickles)" in _errors(capsys.readouterr().err)[0]
    assert _nothing_written()


def test_too_few_confident_samples_and_interruption_write_nothing_and_resume(tiny_pkl, monkeypatch, capsys):
    from timemachine import clip_labeller

    argv = ["age-vector", "discover", "v", "--model", str(tiny_pkl), "--species", "dog", "--samples", "32"]
    assert main(argv) == 2                             # random CLIP: nothing is confidently young or adult at 0.7
    (line,) = _errors(capsys.readouterr().err)
    assert "too few confident samples: 0 young and 0 adult of 32" in line and "use more samples" in line
    assert _nothing_written()

    calls = []
    original = clip_labeller.ClipLabeller.__call__

    def interrupted(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, images)

    monkeypatch.setattr(clip_labeller.ClipLabeller, "__call__", interrupted)
    argv = ["age-vector", "discover", "v", "--model", str(tiny_pkl), "--samples", "48", "--seed", "5", *RANDOM_RUN]
    assert main(argv) == 130
    (line,) = _errors(capsys.readouterr().err)
    assert line == ("timemachine: error: interrupted after 16 of 48 samples; they are cached: run the same command "
                    "again to continue")
    assert _nothing_written()
    monkeypatch.setattr(clip_labeller.ClipLabeller, "__call__", original)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "32 from the cache" in out          # the chunk being labelled had been rendered and kept
    vector = age.VectorLibrary(_paths()).load("v")
    assert vector.details["discovery"]["labelled_now"] == 32


def test_the_clip_labeller_prompts_breeds_and_cache_key():
    pytest.importorskip("open_clip")
    from timemachine.clip_labeller import BREEDS, PROMPTS, ClipLabeller, resolve_breed
    from timemachine.errors import AgeVectorError
    from timemachine.perceptual import RandomWeightsWarning

    assert resolve_breed("dog", "Shiba-Inu") == "shiba inu" and resolve_breed("dog", None) is None
    assert resolve_breed("wild", "LION") == "lion" and "yorkshire terrier" in BREEDS["dog"]
    with pytest.raises(AgeVectorError, match="unknown wild breed"):
        resolve_breed("wild", "shiba inu")
    for species in PROMPTS:
        assert PROMPTS[species]["young"] and PROMPTS[species]["adult"]
    with pytest.warns(RandomWeightsWarning, match="TIMEMACHINE_CLIP_WEIGHTS=random"):
        labeller = ClipLabeller("random", species="cat", breed="siamese")
    images = (np.random.RandomState(0).rand(3, 40, 40, 3) * 255).astype(np.uint8)
    p = labeller(images)
    assert p.shape == (3,) and p.dtype == np.float64 and np.all(np.isnan(p) | ((p >= 0) & (p <= 1)))
    assert labeller.details["breed"] == "siamese" and labeller.details["prompts"]["young"][0] == "a photo of a kitten."
    with pytest.warns(RandomWeightsWarning):
        plain = ClipLabeller("random", species="cat")
    q = plain(images)
    assert np.isfinite(q).all() and plain.cache_key != labeller.cache_key
    assert np.allclose(q, plain(images))                           # deterministic
    assert np.allclose(plain(images[:1]), q[:1], atol=1e-6)        # independent of the batch
    with pytest.raises(ValueError):
        plain(images.astype(np.float32))


def test_the_clip_weights_are_a_zoo_entry_of_kind_clip():
    from timemachine import clip_labeller, zoo
    from timemachine.env import Environment

    entry = zoo.load_manifest()[clip_labeller.ZOO_NAME]
    assert entry.kind == zoo.CLIP == "clip"
    assert entry.url.startswith("https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/")
    assert entry.filename.endswith(".safetensors") and entry.licence.name.startswith("MIT")
    assert entry.sha256 is None and "trust on first use" in entry.source     # nothing unverified is written down
    from timemachine.errors import WeightsError

    with pytest.raises(WeightsError, match="is not a generator"):
        zoo.Zoo(Environment.from_environ()).resolve(clip_labeller.ZOO_NAME)
