"""Built-in age vectors (package data), their binding to a zoo model, per-model default vectors, and the CLI's
``age-vector list/show/copy/set --default`` for them."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

from conftest import LATENTS_DIR, REPO_ROOT, require_shared
from timemachine import age, errors
from timemachine.checkpoint import model_fingerprint
from timemachine.cli import main
from timemachine.env import Environment

FP = "0123456789abcdef"


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("TIMEMACHINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TIMEMACHINE_OFFLINE", "1")
    monkeypatch.delenv("TIMEMACHINE_MANIFEST", raising=False)


def library() -> age.VectorLibrary:
    return age.VectorLibrary(Environment.from_environ().paths)


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("timemachine: error:")]


def test_the_shipped_yorkshire_vector_is_what_the_script_derives_from_the_shared_latents():
    require_shared(LATENTS_DIR / "afhqdog_yorkshire_puppy_projected_w.npz")
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_builtin_vectors",
                                                  REPO_ROOT / "scripts" / "make_builtin_vectors.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    derived = script.derive_yorkshire(LATENTS_DIR.parent)
    shipped = age.load_builtin("yorkshire")
    assert torch.equal(shipped.direction, derived.direction) and shipped.metadata() == derived.metadata()
    # puppy minus adult of the real latents, W space, the prototype's strength, bound to the zoo name only
    from timemachine.latents import load_latent

    puppy = load_latent(LATENTS_DIR / "afhqdog_yorkshire_puppy_projected_w.npz").ws
    adult = load_latent(LATENTS_DIR / "afhqdog_yorkshire_adult_projected_w.npz").ws
    torch.testing.assert_close(shipped.direction, puppy - adult, rtol=0, atol=1e-5)
    assert (shipped.method, shipped.space, shipped.default_strength, shipped.species) == ("pair", "w", 0.5, "dog")
    assert (shipped.model_zoo, shipped.model_fingerprint, shipped.binding) == ("afhqdog", "", "zoo")
    path = REPO_ROOT / "timemachine" / "age" / "builtin" / "yorkshire.safetensors"
    assert path.stat().st_size < 40_000


def test_the_builtin_is_package_data():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "timemachine.age" in config["packages"]
    assert config["package-data"]["timemachine.age"] == ["builtin/*.safetensors"]
    assert age.builtin_names() == ["yorkshire"]


def test_a_builtin_applies_to_the_zoo_model_it_names_and_to_nothing_else():
    vector = age.load_builtin("yorkshire")
    ws = torch.zeros(1, 16, 512)
    vector.check_model("f" * 16, "afhqdog", zoo="afhqdog")          # loaded by zoo name, file verified
    torch.testing.assert_close(vector.apply(ws, 1.0, model_fingerprint="f" * 16, zoo="afhqdog")[0], vector.direction)
    for zoo in (None, "afhqcat"):
        with pytest.raises(errors.AgeVectorError, match="belongs to the zoo model afhqdog") as info:
            vector.check_model("f" * 16, "my.pkl", zoo=zoo)
        assert info.value.remedy == errors.FORCE_MODEL and "\n" not in str(info.value)
    vector.check_model("f" * 16, "my.pkl", force=True)
    # a vector bound to a fingerprint is not accepted by zoo name
    bound = age.AgeVector(name="fp", direction=torch.ones(16, 512), method="mean", model_fingerprint=FP)
    with pytest.raises(errors.AgeVectorError, match="was built for model"):
        bound.check_model("f" * 16, zoo="afhqdog")


def test_pipeline_marks_a_model_loaded_by_zoo_name_whose_file_the_zoo_verified(tmp_path, tiny_pkl):
    """The zoo name reaches the vector check only when the model is the zoo's file, verified by SHA-256."""
    from timemachine import pipeline

    env = Environment.from_environ()
    zoo = pipeline.open_zoo(env)
    env.paths.models.mkdir(parents=True)
    zoo_file = env.paths.models / "afhqdog.pkl"
    shutil.copy(tiny_pkl, zoo_file)                       # first use: its SHA-256 is recorded now
    by_zoo = pipeline.load_model("afhqdog", env, device="cpu")
    assert by_zoo.zoo == "afhqdog"
    assert zoo.checksum_record(zoo_file)["sha256"] == hashlib.sha256(tiny_pkl.read_bytes()).hexdigest()
    by_path = pipeline.load_model(str(tiny_pkl), env, device="cpu")
    assert by_path.zoo is None and by_path.fingerprint == by_zoo.fingerprint
    G = by_zoo.G
    zoo_bound = age.AgeVector(name="tiny", direction=torch.ones(G.num_ws, G.w_dim), method="mean",
                              model_fingerprint="", model_zoo="afhqdog")
    assert pipeline.vector_direction(by_zoo, zoo_bound).shape == (G.num_ws, G.w_dim)
    with pytest.raises(errors.AgeVectorError, match="belongs to the zoo model afhqdog"):
        pipeline.vector_direction(by_path, zoo_bound)
    # the real built-in does not fit the tiny generator's shape, and says so after the binding check
    with pytest.raises(errors.AgeVectorError, match=r"has shape \[16, 512\]"):
        pipeline.vector_direction(by_zoo, age.load_builtin("yorkshire"))
    # a file that no longer matches the recorded digest is not the zoo's model any more: refused by the zoo
    data = bytearray(zoo_file.read_bytes())
    data[-100] ^= 1
    zoo_file.write_bytes(bytes(data))
    with pytest.raises(errors.WeightsError, match="SHA-256"):
        pipeline.load_model("afhqdog", env, device="cpu")


def test_builtins_are_read_only_listed_beside_the_library_and_copied_to_be_tuned():
    lib = library()
    entries = lib.entries(builtins=True)
    assert [(e.name, e.builtin, e.shadowed) for e in entries] == [("yorkshire", True, False)]
    assert lib.entries() == [] and lib.is_builtin("yorkshire")
    assert lib.load("yorkshire").model_zoo == "afhqdog"
    for change in (lambda: lib.update("yorkshire", strength=1.0), lambda: lib.delete("yorkshire"),
                   lambda: lib.rename("yorkshire", "x")):
        with pytest.raises(errors.AgeVectorError, match="built-in age vector, which cannot be changed; copy it"):
            change()
    copy = lib.copy("yorkshire", "my-yorkie")
    assert copy.details["copied_from"] == {"name": "yorkshire", "builtin": True}
    assert torch.equal(copy.direction, age.load_builtin("yorkshire").direction) and copy.model_zoo == "afhqdog"
    lib.update("my-yorkie", strength=0.7)
    assert lib.load("my-yorkie").default_strength == 0.7 and lib.load("yorkshire").default_strength == 0.5
    with pytest.raises(errors.AlreadyExists):
        lib.copy("yorkshire", "my-yorkie")
    # a library vector of the same name hides the built-in (the user's wins) and is listed so
    lib.save(age.AgeVector(name="yorkshire", direction=torch.ones(4, 8), method="mean", model_fingerprint=FP))
    assert lib.load("yorkshire").model_fingerprint == FP and not lib.is_builtin("yorkshire")
    shadowed = [e for e in lib.entries(builtins=True) if e.builtin]
    assert [(e.name, e.shadowed) for e in shadowed] == [("yorkshire", True)]


def test_default_vectors_per_model():
    lib = library()
    vector, why = lib.default_vector("f" * 16, zoo="afhqdog")
    assert (vector.name, why) == ("yorkshire", "built-in")
    assert lib.default_vector("f" * 16) is None and lib.default_vector("f" * 16, zoo="afhqcat") is None
    assert lib.default_names() == {"yorkshire"}
    # a vector for another model (by fingerprint) becomes that model's default
    lib.save(age.AgeVector(name="beagle", direction=torch.ones(4, 8), method="mean", model_fingerprint=FP))
    lib.set_default("beagle")
    assert lib.defaults() == {f"fingerprint:{FP}": "beagle"}
    assert lib.default_vector(FP)[0].name == "beagle" and lib.default_vector(FP)[1] == "chosen"
    # a tuned copy of the built-in becomes afhqdog's default
    lib.copy("yorkshire", "my-yorkie")
    lib.set_default("my-yorkie")
    assert lib.default_vector("f" * 16, zoo="afhqdog")[0].name == "my-yorkie"
    assert lib.default_names() == {"beagle", "my-yorkie"}
    lib.rename("my-yorkie", "yorkie-2")
    assert lib.default_vector("f" * 16, zoo="afhqdog")[0].name == "yorkie-2"
    lib.delete("yorkie-2")                                   # back to the built-in
    assert lib.default_vector("f" * 16, zoo="afhqdog")[0].name == "yorkshire"
    assert json.loads(lib.defaults_path.read_text())["defaults"] == {f"fingerprint:{FP}": "beagle"}
    # a choice that can no longer be used is an error, not a silent fallback
    (lib.root / "beagle.safetensors").write_bytes(b"damaged")
    with pytest.raises(errors.AgeVectorError, match="default age vector chosen for this model, 'beagle', cannot be"):
        lib.default_vector(FP)
    lib.defaults_path.write_text("{not json")
    with pytest.raises(errors.AgeVectorError, match="defaults.json is damaged"):
        lib.default_vector(FP)


def test_cli_lists_shows_copies_and_sets_defaults(capsys):
    assert main(["age-vector", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[-1] == "SOURCE" and out[1].split()[0] == "yorkshire"
    assert out[1].endswith("built-in, default") and "afhqdog (zoo)" in out[1]
    assert main(["age-vector", "show", "yorkshire"]) == 0
    out = capsys.readouterr().out
    assert "(built-in, read-only: copy it to tune it)" in out
    assert "applies to a generator loaded as '--model afhqdog' whose file matches the zoo's SHA-256" in out
    assert "not downloaded here yet" in out and "default:   the default vector of its model" in out
    assert main(["age-vector", "show", "yorkshire", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["builtin"] is True and shown["model_zoo"] == "afhqdog" and shown["default_strength"] == 0.5

    assert main(["age-vector", "set", "yorkshire", "--strength", "1"]) == 2
    assert "copy it into the library to tune it" in _errors(capsys.readouterr().err)[0]
    assert main(["age-vector", "delete", "yorkshire"]) == 2
    capsys.readouterr()
    assert main(["age-vector", "copy", "yorkshire", "my-yorkie"]) == 0
    assert "copied 'yorkshire' to 'my-yorkie'" in capsys.readouterr().out
    assert main(["age-vector", "copy", "yorkshire", "my-yorkie"]) == 2
    assert _errors(capsys.readouterr().err) == [
        "timemachine: error: an age vector named 'my-yorkie' already exists; pass --force to replace it"]
    assert main(["age-vector", "set", "my-yorkie", "--strength", "0.7", "--default"]) == 0
    out = capsys.readouterr().out
    assert "now the default age vector of the zoo model afhqdog" in out
    assert main(["age-vector", "list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["my-yorkie"].endswith("library, default") and rows["yorkshire"].endswith("built-in")
    assert main(["age-vector", "set", "my-yorkie"]) == 2
    assert "nothing to change" in _errors(capsys.readouterr().err)[0]
    assert main(["age-vector", "copy", "nothing", "x"]) == 2
    assert "no age vector named 'nothing'" in _errors(capsys.readouterr().err)[0]


def test_a_discovered_vector_of_a_model_can_be_marked_its_default(small_G):
    lib = library()
    fp = model_fingerprint(small_G)
    vector = age.AgeVector(name="found", direction=torch.ones(small_G.num_ws, small_G.w_dim), method="discovered",
                           model_fingerprint=fp, num_puppies=10, num_adults=12)
    lib.save(vector)
    assert main(["age-vector", "set", "found", "--default"]) == 0
    assert lib.default_vector(fp)[0].name == "found"
