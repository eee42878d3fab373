"""Latent files: the official projected_w.npz format, timemachine's extras, and hostile or damaged files."""

import io
import json
import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import LATENTS_DIR, mutate_bytes, require_shared
from timemachine.errors import LatentError
from timemachine.latents import load_latent, pti_delta_path, save_latent


def test_official_projected_w_files_load():
    for kind in ("adult", "puppy"):
        latent = load_latent(require_shared(LATENTS_DIR / f"afhqdog_yorkshire_{kind}_projected_w.npz"),
                             num_ws=16, w_dim=512)
        assert latent.ws.shape == (16, 512) and latent.ws.dtype == torch.float32
        assert torch.equal(latent.ws, latent.ws[:1].expand(16, -1))          # W-space projection: rows equal
        assert latent.noise == {} and latent.meta == {} and latent.pti_delta is None


def test_round_trip_with_noise_meta_and_tuned_weights(tmp_path):
    ws = torch.randn(8, 32)
    noise = {"b4.conv1": torch.randn(4, 4), "b8.conv0": torch.randn(8, 8)}
    delta = {"b4.conv1.weight": torch.randn(3, 3, 3, 3)}
    path = tmp_path / "projected_w.npz"
    save_latent(path, ws, noise, {"steps_run": 12}, pti_delta=delta)
    latent = load_latent(path, num_ws=8, w_dim=32)
    assert torch.equal(latent.ws, ws)
    assert set(latent.noise) == set(noise) and all(torch.equal(latent.noise[k], noise[k]) for k in noise)
    assert latent.meta["steps_run"] == 12 and latent.meta["pti_delta"] == "projected_w.pti.safetensors"
    assert torch.equal(latent.pti_delta["b4.conv1.weight"], delta["b4.conv1.weight"])
    assert sorted(os.listdir(tmp_path)) == ["projected_w.npz", "projected_w.pti.safetensors"]   # no temp files
    with np.load(path) as npz:                                   # the official reader sees [1, num_ws, w_dim]
        assert npz["w"].shape == (1, 8, 32)


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch should-not-exist",))


@pytest.mark.parametrize("content, message", [
    (b"", "not a readable"),
    (b"hello, I am text", "not a readable"),
    (_npz_bytes(x=np.zeros(3)), "no 'w'"),
    (_npz_bytes(w=np.zeros((2, 16, 512), np.float32)), "shape"),
    (_npz_bytes(w=np.zeros((16,), np.float32)), "shape"),
    (_npz_bytes(w=np.zeros((1, 16, 512), np.int32)), "floating point"),
    (_npz_bytes(w=np.full((1, 16, 512), np.nan, np.float32)), "NaN"),
    (_npz_bytes(w=np.zeros((1, 16, 512), np.float32), meta=np.array("{not json")), "JSON"),
    (_npz_bytes(w=np.zeros((1, 16, 512), np.float32), meta=np.array("[1, 2]")), "JSON object"),
    (_npz_bytes(w=np.zeros((1, 16, 512), np.float32), **{"noise/b4.conv1": np.zeros(4)}), "noise"),
    (_npz_bytes(w=np.zeros((1, 16, 512), np.float32), meta=np.array(json.dumps({"pti_delta": "../evil.safetensors"}))),
     "invalid tuned-weights"),
    (_npz_bytes(w=np.zeros((1, 16, 512), np.float32), meta=np.array(json.dumps({"pti_delta": "gone.pti.safetensors"}))),
     "missing"),
    (_npz_bytes(w=np.array([_Payload()], dtype=object)), "not a readable"),
])
def test_bad_files_are_refused_with_a_clear_message(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(LatentError, match=message):
            load_latent(path, num_ws=16, w_dim=512)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "should-not-exist").exists()


def test_a_pickle_renamed_npz_does_not_run(tmp_path):
    path = tmp_path / "projected_w.npz"
    path.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(LatentError):
        load_latent(path)
    assert not (tmp_path / "should-not-exist").exists()


def test_missing_file_and_wrong_model(tmp_path):
    with pytest.raises(LatentError, match="no latent file"):
        load_latent(tmp_path / "nope.npz")
    save_latent(tmp_path / "w.npz", torch.zeros(8, 32))
    with pytest.raises(LatentError, match=r"does not fit this model \(\[16, 512\]\)"):
        load_latent(tmp_path / "w.npz", num_ws=16, w_dim=512)


def test_pti_delta_path_naming():
    assert pti_delta_path("/x/projected_w.npz") == "/x/projected_w.pti.safetensors"


_VALID = _npz_bytes(w=np.random.RandomState(0).randn(1, 4, 8).astype(np.float32),
                    meta=np.array(json.dumps({"a": 1})), **{"noise/b4.conv1": np.zeros((4, 4), np.float32)})


@settings(max_examples=150, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_files_load_or_raise_latent_error(tmp_path, data):
    path = tmp_path / "fuzz.npz"
    path.write_bytes(mutate_bytes(_VALID, data))
    try:
        latent = load_latent(path)
    except LatentError:
        return
    assert latent.ws.ndim == 2 and torch.isfinite(latent.ws).all()
