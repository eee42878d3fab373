"""Age vectors: building (pair, mean, linear), layers, applying, model fingerprints, files, library and CLI.

Real numbers come from ../shared/latents (an adult and a puppy Yorkshire terrier projected with the released
AFHQ-dog model); the classifier is checked on synthetic latent clouds whose true age direction is known;
builds from photos run on a small random generator with a random VGG16 and a few projection steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from conftest import LATENTS_DIR, make_small_generator, mutate_bytes, require_shared
from timemachine import age
from timemachine.checkpoint import model_fingerprint, save_generator
from timemachine.cli import main
from timemachine.env import Environment
from timemachine.errors import AgeVectorError, AlreadyExists
from timemachine.latents import load_latent, save_latent

FP = "0123456789abcdef"
OTHER_FP = "fedcba9876543210"


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    """Every test gets its own empty TIMEMACHINE_HOME (library, projection cache, checksums)."""
    monkeypatch.setenv("TIMEMACHINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TIMEMACHINE_OFFLINE", "1")
    monkeypatch.delenv("TIMEMACHINE_MODEL", raising=False)
    monkeypatch.delenv("TIMEMACHINE_VGG_WEIGHTS", raising=False)


def library() -> age.VectorLibrary:
    """The library of the current TIMEMACHINE_HOME, opened as the faces open it."""
    return age.VectorLibrary(Environment.from_environ().paths)


@pytest.fixture(scope="module")
def yorkies():
    """(puppy ws, adult ws), float32 [16, 512] each, from the official projected_w.npz files."""
    puppy = load_latent(require_shared(LATENTS_DIR / "afhqdog_yorkshire_puppy_projected_w.npz")).ws
    adult = load_latent(require_shared(LATENTS_DIR / "afhqdog_yorkshire_adult_projected_w.npz")).ws
    return puppy, adult


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()))


def w_space(x: torch.Tensor, num_ws: int) -> torch.Tensor:
    """[N, w_dim] -> [N, num_ws, w_dim] with equal rows, as the official projector writes W latents."""
    return x[:, None, :].expand(x.shape[0], num_ws, x.shape[1]).contiguous()


def make_vector(name="breed", num_ws=8, w_dim=16, seed=0, **kwargs) -> age.AgeVector:
    direction = torch.randn(num_ws, w_dim, generator=torch.Generator().manual_seed(seed))
    fields = dict(method="mean", model_fingerprint=FP, model_name="small", species="dog", num_puppies=3,
                  num_adults=4)
    fields.update(kwargs)
    return age.AgeVector(name=name, direction=direction, **fields)


# ----------------------------------------------------------------------------------------------------------
# Building


def test_pair_vector_from_the_real_afhq_yorkshire_latents(yorkies):
    puppy, adult = yorkies
    vector = age.build_vector("yorkshire", [puppy], [adult], "pair", model_fingerprint=FP, species="dog")
    assert vector.direction.shape == (16, 512) and vector.direction.dtype == torch.float32
    expected = puppy.numpy() - adult.numpy()
    assert vector.norm == pytest.approx(float(np.linalg.norm(expected.astype(np.float64))), rel=1e-6)
    np.testing.assert_allclose(vector.direction.numpy(), expected, rtol=0, atol=1e-5)
    assert torch.equal(vector.direction, vector.direction[:1].expand(16, 512)) and vector.space == "w"
    assert (vector.num_puppies, vector.num_adults, vector.method) == (1, 1, "pair")
    # strength 1 takes the adult to the puppy, 0.5 half-way, 0 nowhere
    torch.testing.assert_close(vector.apply(adult, 1.0), puppy, rtol=0, atol=1e-4)
    torch.testing.assert_close(vector.apply(adult, 0.5), (puppy + adult) / 2, rtol=0, atol=1e-4)
    assert torch.equal(vector.apply(adult[None], 0.0)[0], adult)


def test_mean_vector_is_the_difference_of_the_set_means():
    gen = torch.Generator().manual_seed(1)
    puppies, adults = torch.randn(5, 6, 8, generator=gen), torch.randn(7, 6, 8, generator=gen)
    direction, details = age.compute_direction(puppies, adults, "mean")
    expected = puppies.double().numpy().mean(0) - adults.double().numpy().mean(0)
    np.testing.assert_allclose(direction.numpy(), expected, atol=1e-6)
    assert details["space"] == "w+"                     # rows differ: computed on the whole latent
    vector = age.build_vector("m", list(puppies), list(adults), "mean", model_fingerprint=FP)
    assert (vector.num_puppies, vector.num_adults) == (5, 7) and vector.space == "w+"


def _clouds_with_a_confound(seed: int, n: int = 20, w_dim: int = 64, num_ws: int = 4):
    """W latents where puppies and adults differ by 2 along ``t``; along ``u`` they vary a lot within each
    group (std 4) and, by the luck of the sample, their means also differ by 2, which fools the mean
    difference (cosine ~0.7 to ``t``) but not a classifier (``u`` does not separate the groups)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(w_dim, generator=gen)
    t /= t.norm()
    u = torch.randn(w_dim, generator=gen)
    u -= (u @ t) * t
    u /= u.norm()
    base = torch.randn(w_dim, generator=gen)

    def cloud(sign):
        along_u = 4 * torch.randn(n, 1, generator=gen)
        along_u = along_u - along_u.mean() + sign
        return base + sign * t + along_u * u + 0.1 * torch.randn(n, w_dim, generator=gen)

    return w_space(cloud(+1), num_ws), w_space(cloud(-1), num_ws), t


def test_linear_vector_recovers_the_true_direction_where_the_mean_is_fooled():
    puppies, adults, truth = _clouds_with_a_confound(seed=0)
    linear, details = age.compute_direction(puppies, adults, "linear")
    mean, _ = age.compute_direction(puppies, adults, "mean")
    assert details["space"] == "w" and torch.equal(linear, linear[:1].expand_as(linear))
    assert cosine(linear[0], truth) > 0.97, cosine(linear[0], truth)
    assert cosine(mean[0], truth) < 0.75, cosine(mean[0], truth)
    # v = n * ((mu_p - mu_a) . n): v is the orthogonal projection of the mean difference onto v's own line
    v, mean_diff = linear[0].double(), mean[0].double()
    assert float(v @ (mean_diff - v)) == pytest.approx(0.0, abs=1e-4 * float(mean_diff @ mean_diff))
    assert float(v.norm()) <= float(mean_diff.norm()) + 1e-6
    fit = details["classifier"]
    assert fit["training_accuracy"] >= 0.95 and fit["converged"] and fit["C"] == age.CLASSIFIER_C


def test_linear_vector_in_w_plus_classifies_the_flattened_latent():
    gen = torch.Generator().manual_seed(2)
    truth = torch.randn(4, 32, generator=gen)               # a different age direction on every row
    base = torch.randn(4, 32, generator=gen)
    puppies = base + truth / truth.norm() + 0.05 * torch.randn(12, 4, 32, generator=gen)
    adults = base - truth / truth.norm() + 0.05 * torch.randn(12, 4, 32, generator=gen)
    direction, details = age.compute_direction(puppies, adults, "linear")
    assert details["space"] == "w+" and direction.shape == (4, 32)
    assert cosine(direction, truth) > 0.97


@pytest.mark.parametrize("method, num_puppies, num_adults, message", [
    ("pair", 2, 1, "exactly one puppy and one adult"),
    ("pair", 1, 0, "no adult latents"),
    ("linear", 1, 3, "at least 2 puppies and 2 adults"),
    ("linear", 3, 1, "at least 2 puppies and 2 adults"),
    ("mean", 0, 2, "no puppy latents"),
    ("magic", 2, 2, "unknown method"),
])
def test_too_few_examples_or_unknown_methods_are_refused(method, num_puppies, num_adults, message):
    gen = torch.Generator().manual_seed(3)
    puppies = [torch.randn(4, 8, generator=gen) for _ in range(num_puppies)]
    adults = [torch.randn(4, 8, generator=gen) for _ in range(num_adults)]
    with pytest.raises(AgeVectorError, match=message):
        age.compute_direction(puppies, adults, method)


def test_unusable_latents_are_refused():
    x = torch.randn(2, 4, 8)
    with pytest.raises(AgeVectorError, match="same model"):
        age.compute_direction(x, torch.randn(2, 4, 16), "mean")
    with pytest.raises(AgeVectorError, match="different shapes"):
        age.compute_direction([x[0], torch.randn(5, 8)], [x[1]], "mean")
    with pytest.raises(AgeVectorError, match="NaN"):
        age.compute_direction(torch.full((1, 4, 8), float("nan")), x[:1], "pair")
    with pytest.raises(AgeVectorError, match="identical"):
        age.compute_direction(x[:1], x[:1].clone(), "pair")
    with pytest.raises(AgeVectorError, match="invalid age vector name"):
        age.build_vector("../evil", x[:1], x[1:], "pair", model_fingerprint=FP)


# ----------------------------------------------------------------------------------------------------------
# Layers and applying


def test_layer_groups_follow_the_synthesis_block_structure():
    """Row i goes to block b{4 * 2 ** (i // 2)}: check against what the generator's blocks consume."""
    for resolution in (32, 64):
        G = make_small_generator(resolution=resolution, w_dim=8, channel_max=8)
        consumer_resolution = {}
        w_idx = 0
        for res in G.synthesis.block_resolutions:
            block = getattr(G.synthesis, f"b{res}")
            rows = list(range(w_idx, w_idx + block.num_conv + block.num_torgb))
            # conv1 and ToRGB read this block's features: the last two rows of its slice
            for row in rows[-2:]:
                consumer_resolution[row] = res
            w_idx += block.num_conv
        assert sorted(consumer_resolution) == list(range(G.num_ws))
        for row, res in consumer_resolution.items():
            assert age.layer_resolution(row, G.num_ws) == res
    assert age.layer_groups(16) == {"coarse": [0, 1, 2, 3], "middle": [4, 5, 6, 7], "fine": list(range(8, 16))}
    assert age.layer_groups(8) == {"coarse": [0, 1, 2, 3], "middle": [4, 5, 6, 7], "fine": []}
    assert age.describe_layer_groups(16) == "coarse 0-3 (4-8 px), middle 4-7 (16-32 px), fine 8-15 (64-512 px)"


def test_layer_selections():
    assert age.resolve_layers(None, 16) == list(range(16))
    assert age.resolve_layers("all", 16) == list(range(16))
    assert age.resolve_layers("coarse,middle", 16) == list(range(8))
    assert age.resolve_layers(" Fine ", 16) == list(range(8, 16))
    assert age.resolve_layers("0-3,8", 16) == [0, 1, 2, 3, 8]
    assert age.resolve_layers("coarse,10-11,2", 16) == [0, 1, 2, 3, 10, 11]
    assert age.resolve_layers([5, 1], 16) == [1, 5]
    assert age.normalize_layers("COARSE, 3-3 ,4-6") == "coarse,3,4-6"
    assert age.format_indices([0, 1, 2, 3, 8, 10, 11]) == "0-3,8,10-11"
    mask = age.layer_mask("1,3", 4)
    assert mask.shape == (4, 1) and mask.flatten().tolist() == [0, 1, 0, 1]
    for bad, message in [("16", "does not exist"), ("0-16", "does not exist"), ("3-1", "before the start"),
                         ("coarse;fine", "invalid layer selection"), ("-1", "invalid layer selection"),
                         ("x", "invalid layer selection")]:
        with pytest.raises(AgeVectorError, match=message):
            age.resolve_layers(bad, 16)
    with pytest.raises(AgeVectorError, match="no fine layers"):
        age.resolve_layers("fine", 8)
    with pytest.raises(AgeVectorError, match="even number of rows"):
        age.resolve_layers("coarse", 7)
    assert age.resolve_layers("0-2", 7) == [0, 1, 2]      # indices work for any latent


def test_apply_changes_only_the_selected_layers():
    vector = make_vector(num_ws=16, w_dim=8)
    ws = torch.randn(3, 16, 8, generator=torch.Generator().manual_seed(4))
    for layers, rows in [("coarse", range(0, 4)), ("middle", range(4, 8)), ("fine", range(8, 16)),
                         ("0-1,9", [0, 1, 9]), ("all", range(16))]:
        out = vector.apply(ws, 0.7, layers)
        changed = sorted({int(i) for i in torch.nonzero((out != ws).any(dim=2))[:, 1]})
        assert changed == sorted(rows), layers
        torch.testing.assert_close(out[:, list(rows)], ws[:, list(rows)] + 0.7 * vector.direction[list(rows)])
        masked = vector.masked_direction(layers)
        assert masked.shape == (16, 8)
        torch.testing.assert_close(out, ws + 0.7 * masked)
    assert torch.equal(vector.apply(ws, 0.0), ws)                          # strength 0: identity
    single = vector.apply(ws[0], -1.0)                                        # one latent, negative = older
    torch.testing.assert_close(single, ws[0] - vector.direction)
    half = vector.apply(ws.to(torch.float64), 1.0)
    assert half.dtype == torch.float64
    # the defaults are used when nothing is given
    tuned = dataclasses.replace(vector, default_strength=0.5, default_layers="middle")
    torch.testing.assert_close(tuned.apply(ws), vector.apply(ws, 0.5, "middle"))
    with pytest.raises(AgeVectorError, match=r"fits latents \[N, 16, 8\]"):
        vector.apply(torch.zeros(2, 18, 8))
    for absurd in (float("inf"), float("nan"), 1e308, -11.0, 10 ** 400):       # never a NaN or black frame
        with pytest.raises(AgeVectorError, match="strength must be a number between -10 and 10"):
            vector.apply(ws, absurd)


def test_another_models_latents_are_refused_unless_forced():
    vector = make_vector(model_name="afhqdog")
    ws = torch.zeros(1, 8, 16)
    assert torch.equal(vector.apply(ws, 1.0, model_fingerprint=FP), vector.apply(ws, 1.0))
    with pytest.raises(AgeVectorError) as info:
        vector.apply(ws, 1.0, model_fingerprint=OTHER_FP, model_name="afhqcat")
    message = str(info.value)
    assert "afhqdog" in message and FP in message and "afhqcat" in message and OTHER_FP in message
    assert "\n" not in message
    out = vector.apply(ws, 1.0, model_fingerprint=OTHER_FP, force=True)
    torch.testing.assert_close(out[0], vector.direction)
    vector.check_model(FP)
    with pytest.raises(AgeVectorError):
        vector.check_model(OTHER_FP)


def test_orthogonalization_holds_on_the_layers_the_vector_edits():
    vector = make_vector(num_ws=4, w_dim=16, seed=0, default_layers="0-1")
    other = make_vector("other", num_ws=4, w_dim=16, seed=1)
    result = vector.orthogonalized([other])
    edit = result.masked_direction()                           # what editing with the defaults adds
    assert abs(cosine(edit, other.direction)) < 1e-5
    assert abs(cosine(vector.masked_direction(), other.direction)) > 1e-2    # it was not orthogonal before
    assert result.details["orthogonalized_on_layers"] == "0-1"


def test_orthogonalization_removes_the_other_directions():
    vector = make_vector(num_ws=4, w_dim=16, seed=0)
    a, b = make_vector("a", num_ws=4, w_dim=16, seed=1), make_vector("b", num_ws=4, w_dim=16, seed=2)
    dependent = 2 * a.direction - b.direction                   # adds nothing to the basis
    result = vector.orthogonalized([a, b, dependent])
    for other in (a, b):
        assert abs(cosine(result.direction, other.direction)) < 1e-5
    # what is left is the original minus its projection onto span(a, b): the residual of least squares
    basis = torch.stack([a.direction.flatten(), b.direction.flatten()], dim=1).double()
    coef = torch.linalg.lstsq(basis, vector.direction.flatten().double()[:, None]).solution
    residual = vector.direction.flatten().double() - (basis @ coef)[:, 0]
    torch.testing.assert_close(result.direction.flatten().double(), residual, atol=1e-5, rtol=0)
    assert result.details["orthogonalized_against"] == ["a", "b", "(tensor)"]
    assert result.norm < vector.norm
    with pytest.raises(AgeVectorError, match="nothing is left"):
        vector.orthogonalized([vector])
    with pytest.raises(AgeVectorError, match="built for model"):
        vector.orthogonalized([make_vector("c", num_ws=4, w_dim=16, model_fingerprint=OTHER_FP)])
    with pytest.raises(AgeVectorError, match="shape"):
        vector.orthogonalized([torch.ones(5, 16)])


# ----------------------------------------------------------------------------------------------------------
# Files


def test_file_round_trip_keeps_everything(tmp_path):
    vector = make_vector(default_strength=0.8, default_layers="coarse,middle", notes="ears \u00e9 \"quoted\"\nline",
                         details={"sources": [{"file": "a.png", "lpips": 0.25}]})
    path = age.save_vector_file(vector, tmp_path / "v.safetensors")
    loaded = age.load_vector_file(path)
    assert torch.equal(loaded.direction, vector.direction)
    assert loaded.metadata() == vector.metadata()
    with pytest.raises(AlreadyExists, match="already exists"):
        age.save_vector_file(vector, path)
    age.save_vector_file(vector, path, force=True)
    with pytest.raises(AgeVectorError, match="does not exist"):
        age.save_vector_file(vector, tmp_path / "missing" / "v.safetensors")


def _raw_file(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """A safetensors file written by hand (to make ones the library would never write)."""
    header: dict = {"__metadata__": metadata}
    offset, blobs = 0, []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        dtype = {np.float32: "F32", np.float16: "F16", np.float64: "F64", np.int32: "I32"}[array.dtype.type]
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


class _Payload:
    """Unpickling this would create a file: the proof that a loader executed the pickle."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _good_meta(**changes) -> dict:
    meta = make_vector().metadata()
    meta.update(changes)
    return meta


def _header(meta=None, **changes) -> dict:
    header = {"format": age.FILE_FORMAT, "format_version": age.FILE_FORMAT_VERSION,
              "vector": json.dumps(_good_meta() if meta is None else meta)}
    header.update(changes)
    return header


GOOD_DIRECTION = make_vector().direction.numpy()


def _nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = {"a": [value]}
    return value


@pytest.mark.parametrize("case, message", [
    ("empty", "not a readable"),
    ("truncated", "not a readable"),
    ("pickle", "not a readable"),
    ("garbage_header", "not a readable"),
    ("float16", "must be float32"),
    ("float64", "must be float32"),
    ("int32", "must be float32"),
    ("shape_1d", r"must be \[num_ws, w_dim\]"),
    ("shape_3d", r"must be \[num_ws, w_dim\]"),
    ("too_wide", r"must be \[num_ws, w_dim\]"),
    ("nan", "NaN"),
    ("inf", "NaN or infinite"),
    ("zero", "is zero"),
    ("two_tensors", "exactly one tensor"),
    ("wrong_tensor_name", "exactly one tensor"),
    ("no_format", "not a timemachine age vector"),
    ("generator_file", "not a timemachine age vector"),
    ("future_version", "unsupported age vector format version"),
    ("metadata_not_json", "not valid JSON"),
    ("metadata_not_object", "not a JSON object"),
    ("metadata_missing_key", "missing model_fingerprint"),
    ("metadata_unknown_key", "unknown code"),
    ("metadata_shape_mismatch", "metadata says"),
    ("bad_fingerprint", "invalid model fingerprint"),
    ("bad_name", "invalid age vector name"),
    ("bad_method", "unknown age vector method"),
    ("bad_strength", "strength must be a number"),
    ("bad_layers", "does not exist"),
    ("bad_count", "must be a count"),
    ("bad_date", "invalid creation time"),
    ("bad_details", "details must be a JSON object"),
    # issue 14: malformed or deeply nested details, huge numbers, absurd magnitudes
    ("details_nested_deeply", "not valid JSON"),
    ("details_nested", "nested too deeply"),
    ("details_huge_int", "not valid JSON"),
    ("details_big_int", "integer out of range"),
    ("details_infinity", "no NaN or infinity"),
    ("details_too_many", "too many values"),
    ("count_huge", "must be a count"),
    ("strength_huge_int", "strength must be a number"),
    ("strength_1e308", "strength must be a number"),
    ("direction_3e38", "magnitude 3e\\+38"),
    ("direction_1e4", "far beyond any latent's scale"),
    ("layers_huge_index", "invalid layer selection"),
    ("layers_too_long", "at most 1000 characters"),
    ("layers_not_text", "default layers must be text"),
    ("zoo_binding_bad", "invalid model zoo name"),
    ("no_binding", "invalid model fingerprint"),
])
def test_hostile_or_damaged_vector_files_are_refused(tmp_path, case, message):
    marker = tmp_path / "pwned"
    good = GOOD_DIRECTION
    files = {
        "empty": lambda: b"",
        "truncated": lambda: _raw_file({"direction": good}, _header())[:-100],
        "pickle": lambda: pickle.dumps({"direction": _Payload(str(marker))}),
        "garbage_header": lambda: struct.pack("<Q", 12) + b"{not json!!}",
        "float16": lambda: _raw_file({"direction": good.astype(np.float16)}, _header()),
        "float64": lambda: _raw_file({"direction": good.astype(np.float64)}, _header()),
        "int32": lambda: _raw_file({"direction": good.astype(np.int32)}, _header()),
        "shape_1d": lambda: _raw_file({"direction": good.ravel()}, _header()),
        "shape_3d": lambda: _raw_file({"direction": good[None]}, _header()),
        "too_wide": lambda: _raw_file({"direction": np.ones((1, 5000), np.float32)}, _header()),
        "nan": lambda: _raw_file({"direction": np.where(good > 1, np.nan, good).astype(np.float32)}, _header()),
        "inf": lambda: _raw_file({"direction": np.where(good > 1, np.inf, good).astype(np.float32)}, _header()),
        "zero": lambda: _raw_file({"direction": np.zeros_like(good)}, _header()),
        "two_tensors": lambda: _raw_file({"direction": good, "extra": good}, _header()),
        "wrong_tensor_name": lambda: _raw_file({"w": good}, _header()),
        "no_format": lambda: _raw_file({"direction": good}, {"vector": _header()["vector"]}),
        "generator_file": lambda: _raw_file({"direction": good}, _header(format="timemachine-generator")),
        "future_version": lambda: _raw_file({"direction": good}, _header(format_version="2")),
        "metadata_not_json": lambda: _raw_file({"direction": good}, _header(vector="{name: 1")),
        "metadata_not_object": lambda: _raw_file({"direction": good}, _header(vector="[1, 2]")),
        "metadata_missing_key": lambda: _raw_file(
            {"direction": good}, _header({k: v for k, v in _good_meta().items() if k != "model_fingerprint"})),
        "metadata_unknown_key": lambda: _raw_file({"direction": good}, _header(_good_meta(code="import os"))),
        "metadata_shape_mismatch": lambda: _raw_file({"direction": good}, _header(_good_meta(num_ws=16))),
        "bad_fingerprint": lambda: _raw_file({"direction": good}, _header(_good_meta(model_fingerprint="x"))),
        "bad_name": lambda: _raw_file({"direction": good}, _header(_good_meta(name="../../etc/passwd"))),
        "bad_method": lambda: _raw_file({"direction": good}, _header(_good_meta(method="eval"))),
        "bad_strength": lambda: _raw_file({"direction": good}, _header(_good_meta(default_strength=1e9))),
        "bad_layers": lambda: _raw_file({"direction": good}, _header(_good_meta(default_layers="0-99"))),
        "bad_count": lambda: _raw_file({"direction": good}, _header(_good_meta(num_puppies=-1))),
        "bad_date": lambda: _raw_file({"direction": good}, _header(_good_meta(created="yesterday"))),
        "bad_details": lambda: _raw_file({"direction": good}, _header(_good_meta(details=[1]))),
        "details_nested_deeply": lambda: _raw_file({"direction": good}, _header(
            vector=json.dumps(_good_meta(details={})).replace('"details": {}', '"details": ' + "[" * 100_000
                                                              + "]" * 100_000))),
        "details_nested": lambda: _raw_file({"direction": good}, _header(_good_meta(details=_nested(30)))),
        "details_huge_int": lambda: _raw_file({"direction": good}, _header(
            vector=json.dumps(_good_meta(details={"n": 0})).replace('"n": 0', '"n": 1' + "0" * 5000))),
        "details_big_int": lambda: _raw_file({"direction": good}, _header(_good_meta(details={"n": 10 ** 40}))),
        "details_infinity": lambda: _raw_file({"direction": good}, _header(
            vector=json.dumps(_good_meta(details={"x": 0})).replace('"x": 0', '"x": 1e999'))),
        "details_too_many": lambda: _raw_file({"direction": good}, _header(_good_meta(details={"x": [0] * 30_000}))),
        "count_huge": lambda: _raw_file({"direction": good}, _header(_good_meta(num_adults=10 ** 4000))),
        "strength_huge_int": lambda: _raw_file({"direction": good}, _header(_good_meta(default_strength=10 ** 400))),
        "strength_1e308": lambda: _raw_file({"direction": good}, _header(_good_meta(default_strength=1e308))),
        "direction_3e38": lambda: _raw_file({"direction": np.full_like(good, 3e38)}, _header()),
        "direction_1e4": lambda: _raw_file({"direction": good * 1e4}, _header()),
        "layers_huge_index": lambda: _raw_file({"direction": good}, _header(_good_meta(default_layers="9" * 50))),
        "layers_too_long": lambda: _raw_file({"direction": good}, _header(_good_meta(default_layers="0," * 3000))),
        "layers_not_text": lambda: _raw_file({"direction": good}, _header(_good_meta(default_layers=[[[]]]))),
        "zoo_binding_bad": lambda: _raw_file({"direction": good}, _header(_good_meta(model_zoo="../afhq\x1b"))),
        "no_binding": lambda: _raw_file({"direction": good}, _header(_good_meta(model_fingerprint=""))),
    }
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(files[case]())
    with pytest.raises(AgeVectorError, match=message) as info:
        age.load_vector_file(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    # the library refuses to import it and stays empty
    with pytest.raises(AgeVectorError):
        library().import_file(path, name="imported")
    assert library().entries() == []


def test_a_hand_written_good_file_loads():
    """The hostile-file builder writes valid files when nothing is wrong (so the cases above test one flaw)."""
    path = library().root
    path.mkdir(parents=True)
    (path / "breed.safetensors").write_bytes(_raw_file({"direction": GOOD_DIRECTION}, _header()))
    assert torch.equal(library().load("breed").direction, torch.from_numpy(GOOD_DIRECTION))


def test_oversized_files_are_refused_before_reading(tmp_path):
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:
        f.truncate(age.MAX_FILE_BYTES + 1)
    with pytest.raises(AgeVectorError, match="too large"):
        age.load_vector_file(path)


# ----------------------------------------------------------------------------------------------------------
# Library


def test_library_save_list_load_rename_export_import_delete(tmp_path):
    assert library().entries() == []
    path = library().save(make_vector("yorkshire"))
    assert path == library().root / "yorkshire.safetensors"
    assert library().root == tmp_path / "home" / "vectors"
    library().save(make_vector("labrador", seed=5, species="dog"))
    assert [e.name for e in library().entries()] == ["labrador", "yorkshire"]
    with pytest.raises(AlreadyExists, match="already exists"):
        library().save(make_vector("yorkshire", seed=9))
    assert torch.equal(library().load("yorkshire").direction, make_vector(seed=0).direction)
    library().save(make_vector("yorkshire", seed=9), force=True)
    assert torch.equal(library().load("yorkshire").direction, make_vector(seed=9).direction)

    new_path = library().rename("yorkshire", "yorkie")
    assert not path.exists() and new_path.is_file()
    assert library().load("yorkie").name == "yorkie"          # the stored name follows the file
    with pytest.raises(AlreadyExists, match="already exists"):
        library().rename("yorkie", "labrador")
    assert not library().path("yorkshire").exists()
    assert library().load("yorkshire").model_zoo == "afhqdog"   # the built-in of that name shows through again
    with pytest.raises(AgeVectorError, match="no age vector named 'labradoodle'"):
        library().load("labradoodle")

    exported = library().export("yorkie", tmp_path / "shared.safetensors")
    assert library().load(str(exported)).name == "yorkie"    # a path loads the file
    with pytest.raises(AlreadyExists, match="already exists"):
        library().export("yorkie", exported)
    imported = library().import_file(exported, name="yorkie-2")
    assert imported.name == "yorkie-2" and torch.equal(imported.direction, library().load("yorkie").direction)
    with pytest.raises(AlreadyExists, match="already exists"):
        library().import_file(exported)

    library().delete("yorkie")
    assert [e.name for e in library().entries()] == ["labrador", "yorkie-2"]
    with pytest.raises(AgeVectorError, match="no age vector named"):
        library().delete("yorkie")


def test_tuning_defaults_keeps_the_direction():
    library().save(make_vector("breed", num_ws=16, w_dim=8))
    before = library().load("breed")
    after = library().update("breed", strength=0.8, layers="coarse,middle", notes="best at 0.8", species="cat")
    assert (after.default_strength, after.default_layers, after.notes, after.species) == \
        (0.8, "coarse,middle", "best at 0.8", "cat")
    reloaded = library().load("breed")
    assert reloaded.metadata() == after.metadata() and torch.equal(reloaded.direction, before.direction)
    assert reloaded.created == before.created
    for kwargs, message in [(dict(strength=float("nan")), "strength"), (dict(strength=11), "strength"),
                            (dict(layers="0-16"), "does not exist"), (dict(layers="nope"), "invalid layer"),
                            (dict(species="a\nb"), "one line"), ({}, "nothing to change")]:
        with pytest.raises(AgeVectorError, match=message):
            library().update("breed", **kwargs)
    assert library().load("breed").metadata() == after.metadata()


@pytest.mark.parametrize("name", ["", "../evil", "a/b", "a\\b", ".hidden", "-x", "x" * 65, "new.safetensors",
                                  "tab\tname", "caf\u00e9", "/abs", "..", None])
def test_unsafe_names_are_refused(name):
    with pytest.raises(AgeVectorError, match="invalid age vector name"):
        age.check_vector_name(name)
    with pytest.raises(AgeVectorError, match="invalid age vector name"):
        library().path(name)
    with pytest.raises(AgeVectorError, match="invalid age vector name"):
        make_vector(name=name)
    library().save(make_vector("ok"))
    with pytest.raises(AgeVectorError, match="invalid age vector name"):
        library().rename("ok", name)
    assert [p.name for p in library().root.iterdir()] == ["ok.safetensors"]


def test_valid_names():
    for name in ("yorkshire", "Labrador_2", "cat.v1", "a-b", "9"):
        assert age.check_vector_name(name) == name


def test_a_failed_write_leaves_the_old_vector_and_no_temporary_file(monkeypatch):
    library().save(make_vector("breed", seed=1))
    before = library().path("breed").read_bytes()

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", failing_replace)
        with pytest.raises(AgeVectorError, match="No space left on device"):
            library().save(make_vector("breed", seed=2), force=True)
        with pytest.raises(AgeVectorError, match="No space left on device"):
            library().update("breed", strength=0.5)
        with pytest.raises(AgeVectorError, match="No space left on device"):
            library().rename("breed", "renamed")
    assert library().path("breed").read_bytes() == before
    assert sorted(p.name for p in library().root.iterdir()) == ["breed.safetensors"]


def test_damaged_library_files_are_listed_not_fatal():
    library().save(make_vector("good"))
    (library().root / "broken.safetensors").write_bytes(b"\x00" * 40)
    (library().root / ".tmp-leftover.safetensors").write_bytes(b"junk")     # not a library name: ignored
    entries = {e.name: e for e in library().entries()}
    assert set(entries) == {"good", "broken"}
    assert entries["good"].vector is not None and entries["broken"].vector is None
    assert "not a readable age vector file" in entries["broken"].problem


def test_load_vector_resolves_names_and_paths(tmp_path, monkeypatch):
    library().save(make_vector("breed"))
    monkeypatch.chdir(tmp_path)
    age.save_vector_file(make_vector("other", seed=3), tmp_path / "other.safetensors")
    assert library().load("breed").name == "breed"
    assert library().load("other.safetensors").name == "other"              # ends in .safetensors: a path
    assert library().load(tmp_path / "other.safetensors").name == "other"
    with pytest.raises(AgeVectorError, match="no age vector named 'other'"):
        library().load("other")
    with pytest.raises(AgeVectorError, match="no age vector file"):
        library().load("./missing.safetensors")
    with pytest.raises(AgeVectorError, match="neither an age vector name"):
        library().load("bad name")


# ----------------------------------------------------------------------------------------------------------
# Building from files and photos on a small generator


@pytest.fixture(scope="module")
def small_model(small_G):
    from timemachine.pipeline import LoadedModel

    return LoadedModel(G=small_G, fingerprint=model_fingerprint(small_G), spec="small", path="")


@pytest.fixture(scope="module")
def model_file(small_G, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "small.safetensors"
    save_generator(small_G, path)
    return path


@pytest.fixture(scope="module")
def pet_photos(small_G, tmp_path_factory):
    """Four PNG photos (64x64, resized to 32 when prepared) the small generator made: two 'puppies', two 'adults'."""
    from timemachine import images

    directory = tmp_path_factory.mktemp("photos")
    z = torch.randn(4, small_G.z_dim, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        imgs = small_G.synthesis(small_G.mapping(z, None), noise_mode="const")
        imgs = torch.nn.functional.interpolate(imgs, scale_factor=2, mode="bilinear")
    paths = []
    for i, img in enumerate(images.from_tensor(imgs)):
        paths.append(directory / f"{'puppy' if i < 2 else 'adult'}{i % 2}.png")
        images.save_png(img, paths[-1])
    return {"puppies": paths[:2], "adults": paths[2:]}


def _latent_files(small_model, tmp_path, fingerprint=None):
    gen = torch.Generator().manual_seed(7)
    paths = []
    for i in range(4):
        w = torch.randn(1, small_model.G.w_dim, generator=gen).expand(small_model.G.num_ws, -1)
        paths.append(tmp_path / f"latent{i}.npz")
        save_latent(paths[-1], w, meta={"model_fingerprint": fingerprint} if fingerprint else None)
    return paths


def _build(small_model, name, puppies, adults, method, settings=None, perceptual=None, progress=None):
    """Build (without saving) through the pipeline's vector job; returns (vector, examples)."""
    from timemachine.env import Environment
    from timemachine.pipeline import Pipeline, ProjectionRequest, VectorBuildRequest, VectorExample
    from timemachine.settings import ProjectorSettings, VectorSettings

    pipe = Pipeline(Environment.from_environ(), small_model, perceptual=perceptual)
    examples = [VectorExample(role, str(p), path=p) for role, paths in (("puppy", puppies), ("adult", adults))
                for p in paths]
    request = VectorBuildRequest(name=name, examples=examples, settings=VectorSettings(method=method), save=False,
                                 projection=ProjectionRequest(photos=[], settings=settings or ProjectorSettings()))
    result = pipe.build_vector(request, progress=progress)
    return result.vector, result.examples


def test_build_from_latent_files(small_model, tmp_path):
    paths = _latent_files(small_model, tmp_path, fingerprint=small_model.fingerprint)
    vector, inputs = _build(small_model, "from-files", paths[:2], paths[2:], "mean")
    ws = torch.stack([load_latent(p).ws for p in paths])
    torch.testing.assert_close(vector.direction, ws[:2].mean(0) - ws[2:].mean(0))
    assert vector.model_fingerprint == small_model.fingerprint and vector.model_name == "small"
    assert [i.role for i in inputs] == ["puppy", "puppy", "adult", "adult"]
    assert [s["file"] for s in vector.details["sources"]] == [p.name for p in paths]
    # official files record no model: accepted, marked unverified
    (tmp_path / "official").mkdir()
    official = _latent_files(small_model, tmp_path / "official", fingerprint=None)
    vector, _ = _build(small_model, "official", official[:1], official[1:2], "pair")
    assert all(s.get("model_unverified") for s in vector.details["sources"])


def test_build_from_latent_files_refuses_other_models_and_shapes(small_model, tmp_path):
    paths = _latent_files(small_model, tmp_path, fingerprint=OTHER_FP)
    with pytest.raises(AgeVectorError, match="another model"):
        _build(small_model, "v", paths[:1], paths[1:2], "pair")
    wrong = tmp_path / "wrong.npz"
    save_latent(wrong, torch.zeros(small_model.G.num_ws, small_model.G.w_dim + 1))
    from timemachine.errors import LatentError

    with pytest.raises(LatentError, match="does not fit this model"):
        _build(small_model, "v", [wrong], paths[1:2], "pair")
    with pytest.raises(AgeVectorError, match="exactly one puppy"):
        _build(small_model, "v", paths[:2], paths[2:3], "pair")


def test_early_stopping_projects_photos_one_at_a_time(small_model, pet_photos, random_lpips):
    """Early stopping watches the batch's total loss; the pipeline then projects photo by photo, so what it
    caches does not depend on which photos came together."""
    from timemachine.projector import ProjectorSettings

    settings = ProjectorSettings(space="w", steps=2, w_avg_samples=500, early_stop_patience=5, batch_size=3)
    events = []
    _build(small_model, "photos", pet_photos["puppies"], pet_photos["adults"][:1], "mean", settings=settings,
           perceptual=random_lpips, progress=events.append)
    assert [e.done for e in events if e.stage == "project"] == [1, 2] * 3


def test_build_from_photos_projects_once_then_uses_the_cache(small_model, pet_photos, random_lpips):
    from timemachine.projector import ProjectorSettings

    settings = ProjectorSettings(space="w", steps=2, w_avg_samples=500, batch_size=2)
    events = []
    puppies, adults = pet_photos["puppies"], pet_photos["adults"][:1]
    vector, inputs = _build(small_model, "photos", puppies, adults, "mean", settings=settings,
                            perceptual=random_lpips, progress=events.append)
    assert {e.stage for e in events} == {"project", "build"}
    assert [e.done for e in events if e.stage == "project"] == [1, 2, 1, 2]              # batches of 2, 1
    assert vector.space == "w" and vector.direction.shape == (small_model.G.num_ws, small_model.G.w_dim)
    assert vector.details["projection"] == {"space": "w", "steps": 2, "seed": 303}
    assert [s["file"] for s in vector.details["sources"]] == ["puppy0.png", "puppy1.png", "adult0.png"]
    assert all(not i.metrics["cached"] and i.kind == "photo" and 0 < i.metrics["lpips"] for i in inputs)
    ws = torch.stack([i.latent.ws for i in inputs])
    torch.testing.assert_close(vector.direction, ws[:2].mean(0) - ws[2])

    again_events = []
    again, inputs = _build(small_model, "photos", puppies, adults, "mean", settings=settings,
                           perceptual=random_lpips, progress=again_events.append)
    assert [e.stage for e in again_events] == ["build", "build"] and all(i.metrics["cached"] for i in inputs)
    assert torch.equal(again.direction, vector.direction)


def test_a_bad_photo_is_refused_before_projecting(small_model, pet_photos, random_lpips, tmp_path):
    from timemachine.errors import ImageError
    from timemachine.projector import ProjectorSettings

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    events = []
    with pytest.raises(ImageError):
        _build(small_model, "v", pet_photos["puppies"], [bad], "mean", settings=ProjectorSettings(steps=2),
               perceptual=random_lpips, progress=events.append)
    assert events == []


# ----------------------------------------------------------------------------------------------------------
# CLI


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("timemachine: error:")]


def _projection_args(model_file) -> list[str]:
    return ["--model", str(model_file), "--vgg-weights", "random", "--steps", "2"]


def test_cli_build_list_show_set_rename_export_import_delete(model_file, small_model, pet_photos, tmp_path,
                                                            capsys):
    assert main(["age-vector", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 2 and listed[1].split()[0] == "yorkshire" and "built-in" in listed[1]   # nothing of ours

    assert main(["age-vector", "build", "yorkie", "--puppy", str(pet_photos["puppies"][0]), "--adult",
                 str(pet_photos["adults"][0]), "--species", "dog", "--strength", "0.9", "--layers", "coarse",
                 *_projection_args(model_file)]) == 0
    out, err = capsys.readouterr()
    assert "saved age vector 'yorkie': pair of 1 puppies and 1 adults, W space" in out     # auto: pair for 1+1
    assert out.count("LPIPS") == 2 and _error_lines(err) == []
    vector = library().load("yorkie")
    assert (vector.default_strength, vector.default_layers, vector.species) == (0.9, "coarse", "dog")
    assert vector.model_fingerprint == small_model.fingerprint

    # an existing name needs --force; latent files need no projection (and no VGG)
    latents = _latent_files(small_model, tmp_path, fingerprint=small_model.fingerprint)
    from_latents = ["age-vector", "build", "yorkie", "--puppy", *map(str, latents[:2]), "--adult",
                    *map(str, latents[2:]), "--model", str(model_file), "--notes", "from latents"]
    assert main(from_latents) == 2
    assert _error_lines(capsys.readouterr().err) == [
        "timemachine: error: an age vector named 'yorkie' already exists; pass --force to replace it"]
    assert main([*from_latents, "--force"]) == 0
    out = capsys.readouterr().out
    assert out.count(": latent file") == 4 and "mean of 2 puppies and 2 adults" in out   # auto: mean for 2+2
    assert library().load("yorkie").notes == "from latents"

    assert main(["age-vector", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["NAME", "SPECIES", "METHOD"] and "yorkie" in out
    assert main(["age-vector", "show", "yorkie"]) == 0
    out = capsys.readouterr().out
    assert "coarse  layers 0-3" in out and "middle  layers 4-7" in out and "latent2.npz (latent)" in out
    assert main(["age-vector", "show", "yorkie", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "yorkie"

    assert main(["age-vector", "set", "yorkie", "--strength", "-0.5", "--layers", "middle,0"]) == 0
    capsys.readouterr()
    assert (library().load("yorkie").default_strength, library().load("yorkie").default_layers) == (-0.5, "middle,0")
    assert main(["age-vector", "rename", "yorkie", "yorkshire"]) == 0
    assert main(["age-vector", "export", "yorkshire", str(tmp_path / "y.safetensors")]) == 0
    assert main(["age-vector", "import", str(tmp_path / "y.safetensors"), "--name", "copy"]) == 0
    assert main(["age-vector", "orthogonalize", "yorkshire", "--against", "copy", "--as", "nothing"]) == 2
    assert "nothing is left" in capsys.readouterr().err
    # a genuinely different direction: orthogonalise against it, as a new vector and at build time
    assert main(["age-vector", "build", "other", "--puppy", str(pet_photos["puppies"][1]), "--adult",
                 str(pet_photos["adults"][1]), *_projection_args(model_file)]) == 0
    assert main(["age-vector", "orthogonalize", "yorkshire", "--against", "other", "--as", "yorkshire-o"]) == 0
    other = library().load("other")
    for name in ("yorkshire-o",):
        edit = library().load(name).masked_direction()
        bound = 1e-4 * float(edit.norm() * other.direction.norm())
        assert abs(float(edit.flatten() @ other.direction.flatten())) < bound
    assert main(["age-vector", "build", "yorkie-o", "--puppy", str(pet_photos["puppies"][0]), "--adult",
                 str(pet_photos["adults"][0]), "--orthogonal-to", "other", *_projection_args(model_file)]) == 0
    built = library().load("yorkie-o")
    assert built.details["orthogonalized_against"] == ["other"]
    assert abs(float(built.masked_direction().flatten() @ other.direction.flatten())) < \
        1e-4 * float(built.masked_direction().norm() * other.direction.norm())
    capsys.readouterr()
    for name in ("other", "yorkshire-o", "yorkie-o"):
        assert main(["age-vector", "delete", name]) == 0
    assert main(["age-vector", "delete", "copy"]) == 0
    capsys.readouterr()
    assert [e.name for e in library().entries()] == ["yorkshire"]


@pytest.mark.parametrize("argv, message", [
    (["age-vector", "show", "missing"], "no age vector named 'missing'"),
    (["age-vector", "delete", "missing"], "no age vector named 'missing'"),
    (["age-vector", "rename", "missing", "x"], "no age vector named 'missing'"),
    (["age-vector", "set", "missing", "--strength", "1"], "no age vector named 'missing'"),
    (["age-vector", "export", "missing", "out.safetensors"], "no age vector named 'missing'"),
    (["age-vector", "import", "nofile.safetensors"], "no age vector file"),
    (["age-vector", "build", "../x", "--puppy", "a.png", "--adult", "b.png", "--model", "m"],
     "invalid age vector name"),
    (["age-vector", "build", "v", "--puppy", "a.png", "b.png", "--adult", "c.png", "--method", "pair",
      "--model", "m"], "exactly one puppy"),
    (["age-vector", "build", "v", "--puppy", "a.png", "--adult", "c.png", "--method", "linear", "--model", "m"],
     "at least 2 puppies"),
    (["age-vector", "build", "v", "--puppy", "missing.png", "--adult", "c.png", "--model", "m"], "no such file"),
    (["age-vector", "build", "v", "--puppy", "a.png", "--adult", "c.png"], "no such file"),
    (["age-vector", "build", "v", "--puppy", "a.png", "--adult", "b.png", "--strength", "50", "--model", "m"],
     "strength must be"),
])
def test_cli_bad_input_exits_2_with_one_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = _error_lines(err)
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert not library().root.exists() or list(library().root.iterdir()) == []
    assert not (tmp_path / "out.safetensors").exists()


def test_cli_build_failures_write_nothing(model_file, pet_photos, tmp_path, monkeypatch, capsys):
    from timemachine.cli import common
    from timemachine.pipeline import components

    vgg_loads = []
    for module in (common, components):   # the CLI's own loader and the one a Pipeline loads VGG16 with on need
        monkeypatch.setattr(module, "load_perceptual", lambda *args, **kwargs: vgg_loads.append(args))
    puppies = [str(p) for p in pet_photos["puppies"]]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(["age-vector", "build", "v", "--puppy", *puppies, "--adult", str(bad),
                 *_projection_args(model_file)]) == 2
    assert len(_error_lines(capsys.readouterr().err)) == 1
    assert main(["age-vector", "build", "v", "--puppy", *puppies, "--adult", str(bad), "--pti",
                 *_projection_args(model_file)]) == 2
    assert "pivotal tuning" in _error_lines(capsys.readouterr().err)[0]
    assert main(["age-vector", "build", "v", "--puppy", *puppies, "--adult", *puppies, "--layers", "fine",
                 *_projection_args(model_file)]) == 2
    assert "no fine layers" in _error_lines(capsys.readouterr().err)[0]
    assert main(["age-vector", "build", "v", "--puppy", *puppies, "--adult", *puppies, "--model",
                 str(tmp_path / "nomodel.pkl")]) == 2
    assert len(_error_lines(capsys.readouterr().err)) == 1
    assert not library().root.exists() or list(library().root.iterdir()) == []
    assert vgg_loads == []                       # every input was refused before the VGG16 was loaded
    # a hostile file given to import leaves the library as it was
    library().save(make_vector("keep"))
    hostile = tmp_path / "hostile.safetensors"
    hostile.write_bytes(pickle.dumps({"direction": _Payload(str(tmp_path / "pwned"))}))
    assert main(["age-vector", "import", str(hostile), "--name", "keep", "--force"]) == 2
    assert len(_error_lines(capsys.readouterr().err)) == 1
    assert not (tmp_path / "pwned").exists()
    assert [e.name for e in library().entries()] == ["keep"]
    assert torch.equal(library().load("keep").direction, make_vector().direction)


def test_cli_help_explains_age_vectors(capsys):
    with pytest.raises(SystemExit) as info:
        main(["age-vector", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "5-20 photos per side" in out and "front-facing" in out and "coarse" in out
    with pytest.raises(SystemExit):
        main(["age-vector", "build", "--help"])
    out = capsys.readouterr().out
    assert "--puppy" in out and "--method" in out and "--steps" in out and "cache" in out


# ----------------------------------------------------------------------------------------------------------
# Fuzzing the vector file loader: mutated bytes and mutated header values load or raise AgeVectorError


def _valid_vector_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("fuzz-seed") / "seed.safetensors"
    age.save_vector_file(make_vector(num_ws=4, w_dim=8, default_layers="0-1", notes="seed"), path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def valid_vector_bytes(tmp_path_factory) -> bytes:
    return _valid_vector_bytes(tmp_path_factory)


def _load_or_refuse(path) -> None:
    try:
        vector = age.load_vector_file(path)
    except AgeVectorError as exc:
        assert "\n" not in str(exc)
        return
    from timemachine.age.vector import MAX_DIRECTION_ABS, MAX_NUM_WS, MAX_W_DIM

    direction = vector.direction   # (num_ws and w_dim are read off its shape, so the bounds are what can fail)
    assert direction.ndim == 2 and direction.shape[0] <= MAX_NUM_WS and direction.shape[1] <= MAX_W_DIM
    assert torch.isfinite(direction).all() and direction.abs().max() <= MAX_DIRECTION_ABS


@pytest.mark.timeout(180)
def test_fuzzed_vector_files_load_or_raise_age_vector_error(tmp_path, valid_vector_bytes):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=150, derandomize=True, deadline=2000, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=st.data())
    def check(data):
        path = tmp_path / "fuzz.safetensors"
        path.write_bytes(mutate_bytes(valid_vector_bytes, data, max_edits=6))
        _load_or_refuse(path)

    check()


@pytest.mark.timeout(180)
def test_fuzzed_vector_headers_load_or_raise_age_vector_error(tmp_path, valid_vector_bytes):
    """Well-formed safetensors files whose header values (shapes, dtypes, offsets, metadata) are replaced."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    (header_len,) = struct.unpack("<Q", valid_vector_bytes[:8])
    header = json.loads(valid_vector_bytes[8:8 + header_len])
    body = valid_vector_bytes[8 + header_len:]
    tensor = next(k for k in header if k != "__metadata__")
    meta_keys = sorted(header.get("__metadata__", {}))
    scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=8)
    json_values = st.recursive(scalars,
                               lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=4), max_leaves=8)

    @settings(max_examples=150, derandomize=True, deadline=2000, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=st.data())
    def check(data):
        edited = json.loads(json.dumps(header))
        where = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "metadata"]))
        if where == "metadata":
            key = data.draw(st.sampled_from(meta_keys))
            edited["__metadata__"][key] = data.draw(st.text(max_size=40) | json_values.map(json.dumps))
        elif where == "dtype":
            edited[tensor]["dtype"] = data.draw(st.sampled_from(["F16", "F64", "I64", "BOOL", "U8", "X"]))
        else:
            edited[tensor][where] = data.draw(st.lists(st.integers(-3, 10**6), max_size=4))
        raw = json.dumps(edited).encode()
        path = tmp_path / "fuzz.safetensors"
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
        _load_or_refuse(path)

    check()


def _library_file(name: str, content: bytes) -> None:
    library().root.mkdir(parents=True, exist_ok=True)
    (library().root / f"{name}.safetensors").write_bytes(content)


def test_one_bad_file_never_stops_the_listing_and_nothing_raw_reaches_the_terminal(capsys):
    """Issue 14: malformed details, huge numbers, absurd directions, terminal escapes in a shared library."""
    library().save(make_vector("good"))
    escape = "\x1b]0;pwned\x07\x1b[2J"
    library().save(make_vector("escapes", species="dog" + escape, model_name="m" + escape, notes="n" + escape,
                               details={"sources": [{"role": escape, "file": escape, "kind": "photo",
                                                     "lpips": "not a number"}, "not a dict"],
                                        "classifier": {"training_accuracy": [1]}}))
    deep = json.dumps(_good_meta(details={})).replace('"details": {}', '"details": ' + "[" * 50_000 + "]" * 50_000)
    _library_file("deep", _raw_file({"direction": GOOD_DIRECTION}, _header(vector=deep)))
    _library_file("huge", _raw_file({"direction": np.full_like(GOOD_DIRECTION, 3e38)}, _header()))
    _library_file("nan", _raw_file({"direction": GOOD_DIRECTION}, _header(vector=json.dumps(_good_meta()).replace(
        '"default_strength": 1.0', '"default_strength": NaN'))))
    _library_file("named" + "x", _raw_file({"direction": GOOD_DIRECTION}, _header(_good_meta(name=escape))))
    _library_file("empty", b"")
    entries = {e.name: e for e in library().entries()}
    assert set(entries) == {"good", "escapes", "deep", "huge", "nan", "namedx", "empty"}
    assert entries["good"].vector is not None and entries["escapes"].vector is not None
    for name in ("deep", "huge", "nan", "namedx", "empty"):
        assert entries[name].vector is None and "\n" not in entries[name].problem, name
        assert "\x1b" not in entries[name].problem
    assert main(["age-vector", "list"]) == 0
    out, err = capsys.readouterr()
    assert "good" in out and "escapes" in out and out.count(": damaged:") == 5
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert main(["age-vector", "show", "escapes"]) == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err and "\\x1b" in out and "LPIPS ?" in out
    for name in ("deep", "huge", "namedx"):
        assert main(["age-vector", "show", name]) == 2
        out, err = capsys.readouterr()
        assert len(_error_lines(err)) == 1 and "\x1b" not in err and "Traceback" not in err


def test_strength_and_direction_bounds_keep_every_frame_finite(small_G):
    """The largest direction an age vector may hold, at the largest strength, still synthesises finite images."""
    from timemachine.errors import RenderError
    from timemachine.settings import MAX_STRENGTH, RenderSettings

    for absurd in (1e308, float("inf"), -10.5, 10 ** 400):
        with pytest.raises(RenderError, match="strength must be a number from -10 to 10"):
            RenderSettings(strength=absurd).validate()
    RenderSettings(strength=-MAX_STRENGTH).validate()
    with pytest.raises(AgeVectorError, match="far beyond"):
        age.AgeVector(
            name="big", direction=torch.full((small_G.num_ws, small_G.w_dim), 2 * age.MAX_DIRECTION_ABS),
            method="mean", model_fingerprint=FP)
    extreme = age.AgeVector(name="extreme", direction=torch.full((small_G.num_ws, small_G.w_dim),
                                                                 age.MAX_DIRECTION_ABS), method="mean",
                            model_fingerprint=FP)
    ws = small_G.mapping(torch.randn(2, small_G.z_dim, generator=torch.Generator().manual_seed(0)), None)
    with torch.no_grad():
        for strength in (MAX_STRENGTH, -MAX_STRENGTH):
            img = small_G.synthesis(extreme.apply(ws, strength), noise_mode="const")
            assert torch.isfinite(img).all()


@pytest.mark.timeout(300)
def test_fuzzed_metadata_and_directions_never_stop_the_library(capsys):
    """Structure-aware fuzzing of the vector header's JSON (every field replaced by arbitrary JSON, nesting,
    huge numbers) and of the direction's scale: loading refuses in one line, listing and showing never crash."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    good_meta = _good_meta()
    leaves = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=True)
              | st.text(max_size=12))
    json_values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                               | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)

    def raw_text(meta: dict, field: str, fragment: str) -> str:
        marker = "\"__fuzz__\""
        return json.dumps({**meta, field: "__fuzz__"}).replace(marker, fragment)

    fragments = st.sampled_from(["[" * 5000 + "]" * 5000, "1" + "0" * 5000, "1e999", "-1e999", "NaN", "{\"a\":" * 300
                                 + "1" + "}" * 300, "\"\\u001b[2J\"", "0." + "0" * 400 + "1", "[]", "{}"])

    @settings(max_examples=120, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(data=st.data())
    def check(data):
        meta = dict(good_meta)
        field = data.draw(st.sampled_from(sorted(age.store.METADATA_KEYS | {"model_zoo", "details"})))
        how = data.draw(st.sampled_from(["value", "raw", "details-value"]))
        if how == "value":
            meta[field] = data.draw(json_values)
            text = json.dumps(meta, allow_nan=True)
        elif how == "details-value":
            meta["details"] = {"fuzz": data.draw(json_values)}
            text = json.dumps(meta, allow_nan=True)
        else:
            text = raw_text(meta, field, data.draw(fragments))
        scale = data.draw(st.sampled_from([1.0, 100.0, 1e3, 1e4, 3e38, 1e-45, -1.0]))
        _library_file("fuzz", _raw_file({"direction": (GOOD_DIRECTION * scale).astype(np.float32)},
                                        _header(vector=text)))
        (entry,) = [e for e in library().entries() if e.name == "fuzz"]
        if entry.vector is None:
            assert "\n" not in entry.problem and "\x1b" not in entry.problem
        else:
            d = entry.vector.direction
            assert torch.isfinite(d).all() and float(d.abs().max()) <= age.MAX_DIRECTION_ABS
            age.check_details(entry.vector.details)
        assert main(["age-vector", "list"]) == 0
        code = main(["age-vector", "show", "fuzz"])
        out, err = capsys.readouterr()
        assert code == (0 if entry.vector is not None else 2)
        assert "Traceback" not in err and "\x1b" not in out + err
        if code == 2:
            assert len(_error_lines(err)) == 1

    check()


def test_the_age_package_imports_nothing_above_the_library():
    """Issue 16: the age package is library code; building from photos (the pipeline) lives outside it."""
    import subprocess
    import sys


    # (tests/test_architecture.py checks each module's own imports and that none reads the environment; this
    # checks what importing the package loads, indirect imports included.)
    above = ("timemachine.pipeline", "timemachine.cli", "timemachine.ui")
    probe = ("import sys, timemachine.age; print(sorted(m for m in sys.modules if m.startswith(%r)))" % (above,))
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
