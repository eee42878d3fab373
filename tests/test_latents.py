"""Latent files: the official projected_w.npz format, timemachine's extras, and hostile or damaged files."""

import io
import json
import os
import pickle
import re

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
    (_npz_bytes(w=np.array([_Payload()], dtype=object)), "Python objects"),
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


# ----------------------------------------------------------------------------------------------------------
# Structure-aware fuzzing: archives built member by member, with .npy headers, member names, compression and
# metadata drawn from what a hostile or damaged file could hold, so that every check of the reader is reached.

def npy_member(descr: str, shape, fortran: bool = False, data: bytes = b"", version: int = 1) -> bytes:
    """A .npy file with a hand-written header (any descr and shape, honest or not) followed by ``data``."""
    header = repr({"descr": descr, "fortran_order": fortran, "shape": tuple(shape)}).encode("latin1")
    size_bytes = 2 if version == 1 else 4
    pad = -(10 + size_bytes - 2 + len(header) + 1) % 64
    header += b" " * pad + b"\n"
    return b"\x93NUMPY" + bytes([version, 0]) + len(header).to_bytes(size_bytes, "little") + header + data


def zip_archive(members, compression=None) -> bytes:
    """A zip of (name, bytes) pairs (duplicates allowed), stored or deflated."""
    import warnings
    import zipfile

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # duplicate names are the point of some cases
        with zipfile.ZipFile(buffer, "w", compression if compression is not None else zipfile.ZIP_STORED) as zf:
            for name, content in members:
                zf.writestr(name, content)
    return buffer.getvalue()


_DESCRS = ["<f8", "<f2", ">f4", "|O", "<i4", "<U16", "|V8", "<c8", "|b1"]
_SHAPES = [(4, 8), (1, 0, 8), (1, 65, 8), (2, 4, 8), (2 ** 20,), (1, 64, 4096), (4096, 4096), (), (-1, 8),
           (1, 2 ** 40, 2 ** 40), (4, 4), (8, 8, 1)]
_NAMES = ["w", "evil.pkl", "../w.npy", "other.npy", "noise/b4.conv1", "meta.json", "w.npy.gz"]
_META = ["{not json", "[1, 2]", "[" * 5000 + "]" * 5000, json.dumps({"a": [[[[[[]]]]]] * 3}),
         json.dumps({"deep": json.loads("[" * 40 + "]" * 40)}), json.dumps({"pti_delta": "../x.safetensors"}),
         json.dumps({"pti_delta": 5}), json.dumps({"note": "\x1b[2J"}), "", json.dumps({"a": "x" * 1000})]


def _values(kind: str, count: int, dtype: np.dtype) -> bytes:
    fill = {"normal": 0.5, "nan": np.nan, "inf": np.inf, "huge": 1e39}[kind]
    with np.errstate(over="ignore", invalid="ignore"):
        return np.full(count, fill, dtype=np.float64).astype(dtype).tobytes()


def _meta_member(text: str) -> bytes:
    descr = f"<U{max(len(text), 1)}"
    return npy_member(descr, (), data=np.array(text, dtype=descr).tobytes())


def fuzzed_latent(draw) -> bytes:
    """A valid latent archive ('w' [1, 4, 8], maybe a noise map and metadata) with 1-3 structural mutations:
    a member's descr, shape, data length, values, .npy version, name; duplicate or extra members; the metadata
    text; the compression."""
    import zipfile

    members = {"w.npy": dict(descr="<f4", shape=(1, 4, 8), values="normal", cut="exact", version=1)}
    if draw(st.booleans()):
        members["noise/b4.conv1.npy"] = dict(descr="<f4", shape=(4, 4), values="normal", cut="exact", version=1)
    meta = json.dumps({"steps_run": 3}) if draw(st.booleans()) else None
    extra: list[tuple[str, bytes]] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["descr", "shape", "cut", "values", "version", "rename", "duplicate", "extra",
                                     "meta", "fortran"]))
        target = members[draw(st.sampled_from(sorted(members)))] if members else None
        if kind == "meta":
            meta = draw(st.sampled_from(_META))
        elif kind == "extra":
            extra.append((draw(st.sampled_from(_NAMES)), draw(st.binary(max_size=200))))
        elif target is None:
            continue
        elif kind == "rename":
            old = draw(st.sampled_from(sorted(members)))
            members[draw(st.sampled_from(_NAMES))] = members.pop(old)
        elif kind == "duplicate":
            extra.append((draw(st.sampled_from(sorted(members))), b"\x93NUMPY"))
        elif kind in ("descr", "shape", "cut", "values", "version"):
            target[kind] = draw(st.sampled_from({"descr": _DESCRS, "shape": _SHAPES, "cut": ["short", "long"],
                                                 "values": ["nan", "inf", "huge"], "version": [2, 3]}[kind]))
        else:
            target["fortran"] = True
    entries = [(name, _member_bytes(m, draw)) for name, m in members.items()]
    if meta is not None:
        entries.append(("meta.npy", _meta_member(meta)))
    return zip_archive(entries + extra, draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])))


def _member_bytes(m: dict, draw) -> bytes:
    """The .npy member that the description ``m`` (descr, shape, values, cut, version, fortran) of
    :func:`fuzzed_latent` asks for; random bytes where the descr or shape would make it large or of objects."""
    try:
        dtype = np.dtype(m["descr"])
        count = int(np.prod(m["shape"])) if all(n >= 0 for n in m["shape"]) else 0
    except (TypeError, ValueError):
        dtype, count = np.dtype("u1"), 0
    if dtype.hasobject or count * dtype.itemsize > 1 << 16:
        raw = draw(st.binary(max_size=64))
    elif dtype.kind == "f":
        raw = _values(m["values"], count, dtype)
    else:
        raw = bytes(count * dtype.itemsize)
    raw = raw if m["cut"] == "exact" else raw[:len(raw) // 2] if m["cut"] == "short" else raw + bytes(8)
    return npy_member(m["descr"], m["shape"], m.get("fortran", False), raw, m["version"])


@settings(max_examples=200, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_structure_aware_fuzz_of_the_latent_reader(tmp_path, data):
    path = tmp_path / "fuzz.npz"
    path.write_bytes(fuzzed_latent(data.draw))
    try:
        latent = load_latent(path)
    except LatentError as exc:
        message = str(exc)
        assert message and "\n" not in message and not re.search(r"[\x00-\x1f\x7f-\x9f]", message), message
        return
    assert latent.ws.ndim == 2 and latent.ws.dtype == torch.float32 and torch.isfinite(latent.ws).all()
    assert all(n.dtype == torch.float32 and n.ndim == 2 and torch.isfinite(n).all() for n in latent.noise.values())
    assert isinstance(latent.meta, dict)
