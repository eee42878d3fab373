"""Issue 14: hostile files - each class of input refused in one sentence (or handled), within a memory bound,
without a crash, and no write redirected by a planted symlink.

* memory: small hostile files are loaded in a child process that reports its peak RSS (``VmHWM``, what
  ``resource.getrusage`` reports for a process not forked from a large one); the bound is 1 GiB for the whole
  process, torch included, and the growth over the child's baseline (after imports) must stay small too;
* crashes: a pickle nested a million deep is loaded in a child process: it must exit normally with the one-line
  refusal, not die of a segfault;
* uninitialised memory: a tensor set onto a legacy storage of zero elements is refused;
* semantics: every configuration class that used to give NaN or black images, or a traceback, is refused,
  from a pickle and from a safetensors file; float64 weights that overflow float32; non-finite latents and
  resume checkpoints;
* safe writes: a symlink planted at the target or at a (guessed) temporary name never redirects a write.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import pickle
import re
import subprocess
import sys
import textwrap
import zipfile
import zlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import REPO_ROOT, make_small_generator
from official_pickle import (
    LOAD_FROM_BYTES,
    SMALL_CONFIG,
    Call,
    EasyDict,
    Raw,
    assert_one_sentence,
    dumps,
    dumps_snapshot,
    edit_class_state,
    make_generator,
    record_init_args,
    snapshot_of,
    storage_bytes,
    tensor_call,
    write,
)
from timemachine import fs, images, video
from timemachine import projector as P
from timemachine.checkpoint import CheckpointError, load_generator, save_generator
from timemachine.errors import LatentError, ProjectionError, RenderError, TimemachineError
from timemachine.latents import load_latent, save_latent
from timemachine.networks import Generator

#: The issue's bound on the peak memory of a process loading a small hostile file.
RSS_BOUND = 1 << 30
#: What loading one may add to the child's memory after its imports (the imports alone take ~0.3-0.5 GB).
GROWTH_BOUND = 256 << 20


@pytest.fixture(scope="module")
def small_G():
    return make_generator(seed=3, **SMALL_CONFIG)


# ---------------------------------------------------------------------------------------------------------------
# Loading in a child process: peak memory, crashes

_CHILD = textwrap.dedent("""
    import json, resource, sys
    def peak():
        # VmHWM: the peak RSS of this process's own memory since exec.  getrusage's ru_maxrss would do, but on
        # Linux a child started by a large process (pytest) inherits that process's peak through exec.
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # kB on Linux
    import torch
    from timemachine.checkpoint import load_generator
    from timemachine.latents import load_latent
    from timemachine.errors import TimemachineError
    baseline = peak()
    kind, path = sys.argv[1], sys.argv[2]
    try:
        (load_generator(path, device="cpu") if kind == "generator" else load_latent(path))
        message = None
    except TimemachineError as exc:
        message = str(exc)
    print(json.dumps({"baseline": baseline, "peak": peak(), "message": message}))
""")


def load_in_child(kind: str, path: pathlib.Path, timeout: float = 300) -> dict:
    """Load ``path`` (a generator or a latent) in a fresh Python; returns its report (baseline and peak RSS in
    bytes, the refusal's message) and its return code."""
    if sys.platform != "linux" or not os.path.exists("/proc/self/status"):
        pytest.skip("peak RSS is measured with Linux's /proc/self/status")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", _CHILD, kind, str(path)], capture_output=True, text=True,
                            timeout=timeout, env=env, cwd=REPO_ROOT)
    report = {"returncode": result.returncode, "stderr": result.stderr[-2000:]}
    if result.returncode == 0:
        report.update(json.loads(result.stdout.strip().splitlines()[-1]))
    return report


def assert_refused_within_bounds(report: dict, pattern: str) -> None:
    assert report["returncode"] == 0, report
    assert report["message"] is not None and re.search(pattern, assert_one_sentence(report["message"])), report
    assert report["peak"] < RSS_BOUND, report
    assert report["peak"] - report["baseline"] < GROWTH_BOUND, report


def _zero_storage_tensors(shapes_of):
    """edit_state turning every parameter and buffer into a view of a legacy storage of zero elements."""
    def edit(path, class_name, state):
        for kind in ("_parameters", "_buffers"):
            for name, value in state[kind].items():
                if value is not None:
                    shape = tuple(value.shape)
                    stride = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
                    state[kind][name] = tensor_call(torch.zeros(0), size=shape, stride=stride)
    return edit


def test_a_tiny_file_declaring_a_huge_model_stays_small(tmp_path):
    """Tens of KB declaring ~9 GB of float32 weights, every tensor a full-size view of an empty storage (torch's
    own rebuild would grow each storage to the view's size: gigabytes of uninitialised memory)."""
    config = dict(z_dim=512, w_dim=512, c_dim=0, img_resolution=256, img_channels=3,
                  synthesis_kwargs=dict(channel_base=2 ** 21, channel_max=4096))
    with record_init_args(), torch.device("meta"):
        G = Generator(**config)
    data = dumps(dict(G_ema=G), edit_state=_zero_storage_tensors(G))
    assert len(data) < 100_000
    report = load_in_child("generator", write(tmp_path / "huge.pkl", data))
    assert_refused_within_bounds(report, r"a tensor in the file points outside its data \(elements 0 to \d+ of 0\)")


def test_reduce_repeated_on_one_memoised_blob_stays_small(tmp_path):
    """One 4 MB tensor blob, memoised, handed to _load_from_bytes 1000 times (each call copied it: 4 GB)."""
    blob = storage_bytes(torch.zeros(1 << 20))
    data = dumps(dict(G_ema=[Call(LOAD_FROM_BYTES, (blob,)) for _ in range(1000)]))
    assert len(data) < len(blob) + 100_000          # the blob is in the file once
    report = load_in_child("generator", write(tmp_path / "reduce.pkl", data))
    assert_refused_within_bounds(report, r"uses the same tensor data twice")


def _deflated_zip_member(name: str, head: bytes, zeros: int) -> bytes:
    """A zip archive with one deflated member ``head`` + ``zeros`` zero bytes, built without holding them:
    the zero chunks compress (after a full flush) to identical bytes, repeated."""
    chunk = 16 << 20
    assert zeros % chunk == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = compressor.compress(head) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = first + block * (zeros // chunk) + compressor.flush()
    crc = zlib.crc32(head)
    zero_chunk = bytes(chunk)
    for _ in range(zeros // chunk):
        crc = zlib.crc32(zero_chunk, crc)
    size = len(head) + zeros
    raw_name = name.encode()
    local = (b"PK\x03\x04" + (20).to_bytes(2, "little") + bytes(2) + (8).to_bytes(2, "little") + bytes(2)
             + (0x21).to_bytes(2, "little") + crc.to_bytes(4, "little") + len(stream).to_bytes(4, "little")
             + size.to_bytes(4, "little") + len(raw_name).to_bytes(2, "little") + bytes(2) + raw_name)
    central = (b"PK\x01\x02" + (20).to_bytes(2, "little") + (20).to_bytes(2, "little") + bytes(2)
               + (8).to_bytes(2, "little") + bytes(2) + (0x21).to_bytes(2, "little") + crc.to_bytes(4, "little")
               + len(stream).to_bytes(4, "little") + size.to_bytes(4, "little")
               + len(raw_name).to_bytes(2, "little") + bytes(16) + raw_name)
    end = (b"PK\x05\x06" + bytes(4) + (1).to_bytes(2, "little") * 2 + len(central).to_bytes(4, "little")
           + (len(local) + len(stream)).to_bytes(4, "little") + bytes(2))
    return local + stream + central + end


def _npy_head(descr: str, shape: tuple) -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def test_a_1mb_npz_that_inflates_to_a_gigabyte_stays_small(tmp_path):
    zeros = 1 << 30
    data = _deflated_zip_member("w.npy", _npy_head("<f4", (1, 1 << 15, 1 << 13)), zeros)
    assert len(data) < 1_200_000
    with zipfile.ZipFile(io.BytesIO(data)) as archive:   # an honest header: numpy alone would allocate 1 GB
        assert archive.getinfo("w.npy").file_size > zeros and archive.testzip() is None
    report = load_in_child("latent", write(tmp_path / "bomb.npz", data))
    assert_refused_within_bounds(report, r"the array 'w' is of shape \[1, 32768, 8192\], larger than any")


def test_an_npz_whose_data_outgrows_its_header_stops_at_the_header(tmp_path):
    data = _deflated_zip_member("w.npy", _npy_head("<f4", (1, 16, 512)), 1 << 28)
    report = load_in_child("latent", write(tmp_path / "liar.npz", data))
    assert_refused_within_bounds(report, r"the array 'w' holds more data than its header declares")


def test_a_deeply_nested_pickle_is_refused_without_crashing(tmp_path):
    """A dict key that is a tuple nested 500,000 deep: hashing it overflowed the C stack (a segfault)."""
    depth = 500_000
    data = b"\x80\x04}" + b"N" + b"\x85" * depth + b"N" + b"s."
    report = load_in_child("generator", write(tmp_path / "deep.pkl", data))
    assert report["returncode"] == 0, f"the child died (return code {report['returncode']}): {report['stderr']}"
    assert_refused_within_bounds(report, r"nests its data more than 100 levels deep")


def test_the_cli_refuses_a_hostile_file_in_one_line_with_exit_2(tmp_path):
    """End to end: the deep pickle above, given to ``timemachine weights convert``, the way a user would."""
    path = write(tmp_path / "deep.pkl", b"\x80\x04}" + b"N" + b"\x85" * 500_000 + b"N" + b"s.")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), CUDA_VISIBLE_DEVICES="", TIMEMACHINE_HOME=str(tmp_path / "home"))
    result = subprocess.run([sys.executable, "-m", "timemachine", "weights", "convert", str(path),
                             str(tmp_path / "out.safetensors"), "--offline"], capture_output=True, text=True,
                            timeout=300, env=env, cwd=REPO_ROOT)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nests its data more than 100 levels deep" in lines[0], result.stderr[-2000:]
    assert not (tmp_path / "out.safetensors").exists()


def _chained_after_the_fact(n: int) -> bytes:
    """n + 1 empty lists, memoised; then list i gets list i + 1 appended (each already held by the memo): the
    nesting only exists once the last APPEND ran."""
    lists = b"]\x94" * (n + 1)
    links = b"".join(b"j" + i.to_bytes(4, "little") + b"j" + (i + 1).to_bytes(4, "little") + b"a0"
                     for i in range(n))
    return lists + links


@pytest.mark.parametrize("body, message", [
    (b"]" * 5000 + b"a" * 4999, r"nests its data more than 100 levels deep"),        # lists in lists
    (b"}" + b"N" + b"\x85" * 5000 + b"Ns", r"nests its data more than 100 levels deep"),  # a deep tuple as a key
    (b"]\x94h\x00a", r"holds a structure that contains itself"),                     # a list inside itself
    (_chained_after_the_fact(200), r"nests its data more than 100 levels deep"),
], ids=["lists", "tuple-key", "self-append", "mutation-after-reference"])
def test_nesting_and_cycles_are_refused_by_the_opcode_walk(tmp_path, body, message):
    with pytest.raises(CheckpointError, match=message):
        load_generator(write(tmp_path / "nested.pkl", b"\x80\x04" + body + b"."))


# ---------------------------------------------------------------------------------------------------------------
# Storages that cannot grow


@pytest.mark.parametrize("size, stride, offset", [((8,), (1,), 0), ((1,), (1,), 0), ((2, 4), (4, 1), 0),
                                                  ((8,), (0,), 0), ((0,), (1,), 1)])
def test_a_tensor_set_onto_an_empty_storage_is_refused(tmp_path, small_G, size, stride, offset):
    """torch's set_ would resize an empty storage and hand back uninitialised heap bytes (different each run)."""
    edit = edit_class_state("mapping", "MappingNetwork", lambda s: s["_buffers"].__setitem__(
        "w_avg", tensor_call(torch.zeros(0), size=size, stride=stride, offset=offset)))
    path = write(tmp_path / "empty.pkl", dumps_snapshot(snapshot_of(small_G), edit_state=edit))
    with pytest.raises(CheckpointError, match=r"points outside its data"):
        load_generator(path, device="cpu")


def test_an_empty_tensor_on_an_empty_storage_is_fine_and_storages_never_grow():
    from timemachine import unpickler

    ref = unpickler._load_storage_from_bytes(storage_bytes(torch.zeros(0)))
    assert not ref.values.untyped_storage().resizable() and ref.values.numel() == 0
    empty = unpickler._rebuild_tensor_v2(ref, 0, (0, 4), (4, 1), False, None)
    assert empty.shape == (0, 4)
    for values in (torch.arange(5.0), torch.arange(6, dtype=torch.float16), torch.ones(3, dtype=torch.float64)):
        ref = unpickler._load_storage_from_bytes(storage_bytes(values))
        assert not ref.values.untyped_storage().resizable()
        assert torch.equal(ref.values, values)
        with pytest.raises(CheckpointError, match="points outside its data"):
            unpickler._rebuild_tensor_v2(ref, 1, (values.numel(),), (1,), False, None)


# ---------------------------------------------------------------------------------------------------------------
# Configurations: every value range-checked, from a pickle and from a safetensors file

def _merged(config: dict, changes: dict) -> dict:
    config = json.loads(json.dumps(config))
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


CONFIG_CASES = {
    "lr_multiplier NaN": (dict(mapping_kwargs=dict(lr_multiplier=float("nan"))),
                          r"mapping lr_multiplier=nan is out of range: expected a finite number above 0"),
    "lr_multiplier 0": (dict(mapping_kwargs=dict(lr_multiplier=0)), r"mapping lr_multiplier=0 is out of range"),
    "lr_multiplier inf": (dict(mapping_kwargs=dict(lr_multiplier=float("inf"))),
                          r"mapping lr_multiplier=inf is out of range"),
    "conv_clamp 0": (dict(synthesis_kwargs=dict(conv_clamp=0)),
                     r"synthesis conv_clamp=0 is out of range: expected None or a finite number above 0"),
    "conv_clamp negative": (dict(synthesis_kwargs=dict(conv_clamp=-256)), r"synthesis conv_clamp=-256 is out"),
    "w_avg_beta not a number": (dict(mapping_kwargs=dict(w_avg_beta="x")),
                                r"mapping w_avg_beta='x' is out of range: expected a finite number from 0 to 1"),
    "w_avg_beta None": (dict(mapping_kwargs=dict(w_avg_beta=None)), r"mapping w_avg_beta=None is out of range"),
    "w_avg_beta 2": (dict(mapping_kwargs=dict(w_avg_beta=2.0)), r"mapping w_avg_beta=2.0 is out of range"),
    "img_channels 1": (dict(img_channels=1), r"img_channels=1 is out of range: expected 3 \(RGB\)"),
    "img_channels 4": (dict(img_channels=4), r"img_channels=4 is out of range"),
    "resolution 48": (dict(img_resolution=48), r"unsupported image resolution 48: expected a power of two"),
    "resolution 2": (dict(img_resolution=2), r"unsupported image resolution 2"),
    "z_dim 0": (dict(z_dim=0), r"z_dim=0 is out of range: expected a whole number from 1 to 4096"),
    "w_dim bool": (dict(w_dim=True), r"lacks an integer 'w_dim'"),
    "c_dim negative": (dict(c_dim=-1), r"c_dim=-1 is out of range"),
    "num_layers 0": (dict(mapping_kwargs=dict(num_layers=0)), r"mapping num_layers=0 is out of range"),
    "embed_features 0": (dict(mapping_kwargs=dict(embed_features=0)), r"mapping embed_features=0 is out of range"),
    "activation unknown": (dict(mapping_kwargs=dict(activation="gelu\x1b[2J")),
                           r"mapping activation='gelu\\x1b\[2J' is out of range"),
    "channel_base too small": (dict(synthesis_kwargs=dict(channel_base=4)),
                               r"channel_base=4 leaves no channels at resolution 8"),
    "channel_max 0": (dict(synthesis_kwargs=dict(channel_max=0)), r"synthesis channel_max=0 is out of range"),
    "num_fp16_res -1": (dict(synthesis_kwargs=dict(num_fp16_res=-1)), r"synthesis num_fp16_res=-1 is out"),
    "architecture": (dict(synthesis_kwargs=dict(architecture="unet")), r"synthesis architecture='unet' is out"),
    "resample_filter zero sum": (dict(synthesis_kwargs=dict(resample_filter=[1, -1])),
                                 r"synthesis resample_filter=<a list> is out of range"),
    "resample_filter NaN": (dict(synthesis_kwargs=dict(resample_filter=[1, float("nan")])),
                            r"synthesis resample_filter=<a list> is out of range"),
    "kernel_size even": (dict(synthesis_kwargs=dict(kernel_size=2)), r"synthesis kernel_size=2 is out of range"),
    "unknown key": (dict(synthesis_kwargs=dict(magic=1)),
                    r"unsupported generator option\(s\): synthesis_kwargs\.magic"),
    "unknown top key with escapes": (dict(**{"use\x1b]0;x\x07": 1}),
                                     r"unsupported generator option\(s\): use\\x1b\]0;x\\x07"),
    "integer of 5000 digits": (dict(z_dim=10 ** 4000), r"integer|z_dim=<a \d+-bit integer> is out of range"),
    "integer of 30 digits": (dict(z_dim=10 ** 30), r"z_dim=<a 100-bit integer> is out of range"),
    "mapping_kwargs a list": (dict(mapping_kwargs=[1]), r"mapping_kwargs is not a dict"),
}


@pytest.mark.parametrize("case", CONFIG_CASES, ids=list(CONFIG_CASES))
def test_config_values_are_range_checked_in_pickles(tmp_path, small_G, case):
    changes, message = CONFIG_CASES[case]

    def edit(state):
        merged = _merged(state["_init_kwargs"], {k: v for k, v in changes.items() if not isinstance(v, int)
                                                  or isinstance(v, bool) or abs(v) < 2 ** 62})
        for key, value in changes.items():   # integers beyond JSON's reach go in as they are
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2 ** 62:
                merged[key] = value
        state["_init_kwargs"] = {k: EasyDict(v) if isinstance(v, dict) else v for k, v in merged.items()}

    path = write(tmp_path / "config.pkl", dumps_snapshot(snapshot_of(small_G), edit_state=edit_class_state(
        "", "Generator", edit)))
    with pytest.raises(CheckpointError) as caught:
        load_generator(path, device="cpu")
    assert re.search(message, assert_one_sentence(str(caught.value))), str(caught.value)


def _safetensors_with_config(path: pathlib.Path, G: Generator, config_text: str) -> pathlib.Path:
    tensors = {k: v.detach().clone().contiguous() for k, v in G.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "timemachine-generator", "format_version": "1",
                                             "config": config_text})
    return path


@pytest.mark.parametrize("case", CONFIG_CASES, ids=list(CONFIG_CASES))
def test_config_values_are_range_checked_in_safetensors(tmp_path, small_G, case):
    changes, message = CONFIG_CASES[case]
    text = json.dumps(_merged(small_G.init_kwargs, changes))   # NaN and Infinity as Python's json writes them
    path = _safetensors_with_config(tmp_path / "config.safetensors", small_G, text)
    with pytest.raises(CheckpointError) as caught:
        load_generator(path, device="cpu")
    assert re.search(message + r"|holds an integer of \d+ digits", assert_one_sentence(str(caught.value))), \
        str(caught.value)


@pytest.mark.parametrize("config_text, message", [
    ('{"z_dim": ' + "9" * 5000 + "}", r"configuration holds an integer of 5000 digits"),
    ('{"z_dim": 8, "synthesis_kwargs": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}",
     r"configuration is nested too deeply"),
    (json.dumps(_merged(SMALL_CONFIG, dict(synthesis_kwargs=dict(x=json.loads("[" * 50 + "]" * 50))))),
     r"configuration is nested too deeply"),
])
def test_huge_integers_and_deep_nesting_in_a_safetensors_config(tmp_path, small_G, config_text, message):
    path = _safetensors_with_config(tmp_path / "deep.safetensors", small_G, config_text)
    with pytest.raises(CheckpointError, match=message):
        load_generator(path, device="cpu")


def test_deep_nesting_in_a_pickled_config_value(tmp_path, small_G):
    edit = edit_class_state("", "Generator", lambda s: s["_init_kwargs"]["synthesis_kwargs"].__setitem__(
        "x", Raw(b"]" * 5000 + b"a" * 4999)))
    path = write(tmp_path / "deep.pkl", dumps_snapshot(snapshot_of(small_G), edit_state=edit))
    with pytest.raises(CheckpointError, match=r"nests its data more than 100 levels deep"):
        load_generator(path, device="cpu")


def test_a_valid_but_unusual_config_still_loads(tmp_path):
    G = make_generator(seed=4, **_merged(SMALL_CONFIG, dict(mapping_kwargs=dict(lr_multiplier=0.5, w_avg_beta=0.0),
                                                            synthesis_kwargs=dict(conv_clamp=1e-3))))
    path = tmp_path / "unusual.pkl"
    path.write_bytes(dumps_snapshot(snapshot_of(G)))
    loaded = load_generator(path, device="cpu")
    assert loaded.init_kwargs["synthesis_kwargs"]["conv_clamp"] == 1e-3


# ---------------------------------------------------------------------------------------------------------------
# Values finite in float32

@pytest.mark.parametrize("dtype, value, message", [
    (torch.float64, 1e39, r"tensor mapping\.w_avg holds NaN or infinite values once converted to float32"),
    (torch.float64, -3.5e38, r"once converted to float32"),
    (torch.float64, float("nan"), r"tensor mapping\.w_avg holds NaN or infinite values \(the file is damaged\)"),
    (torch.float16, float("inf"), r"tensor mapping\.w_avg holds NaN or infinite values \(the file is damaged\)"),
])
def test_weights_must_be_finite_after_conversion_to_float32(tmp_path, small_G, dtype, value, message):
    edit = edit_class_state("mapping", "MappingNetwork", lambda s: s["_buffers"].__setitem__(
        "w_avg", tensor_call(torch.full((8,), value, dtype=dtype))))
    path = write(tmp_path / "overflow.pkl", dumps_snapshot(snapshot_of(small_G), edit_state=edit))
    with pytest.raises(CheckpointError, match=message):
        load_generator(path, device="cpu")


def test_float64_weights_within_float32_range_load(tmp_path, small_G):
    edit = edit_class_state("mapping", "MappingNetwork", lambda s: s["_buffers"].__setitem__(
        "w_avg", tensor_call(torch.full((8,), 3.0e38, dtype=torch.float64))))
    loaded = load_generator(write(tmp_path / "f64.pkl", dumps_snapshot(snapshot_of(small_G), edit_state=edit)),
                            device="cpu")
    assert loaded.mapping.w_avg.dtype == torch.float32 and torch.isfinite(loaded.mapping.w_avg).all()


# ---------------------------------------------------------------------------------------------------------------
# Latent files

def _npz(compressed: bool = False, **arrays) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


_W = np.zeros((1, 4, 8), np.float32)


@pytest.mark.parametrize("content, message", [
    (_npz(w=_W.astype(np.float64) + 1e39), r"'w' contains NaN or infinite values \(in float32\)"),
    (_npz(w=_W, **{"noise/b4.conv1": np.full((4, 4), np.inf, np.float32)}), r"malformed noise array"),
    (_npz(w=_W, meta=np.array("[" * 50 + "]" * 50)), r"'meta' entry is not a JSON object"),
    (_npz(w=_W, meta=np.array(json.dumps({"a": json.loads("[" * 40 + "]" * 40)}))), r"nests deeper than 32"),
    (_npz(w=_W, meta=np.array("{" + '"a":' * 3000 + "1" + "}" * 3000)), r"not valid JSON|nests deeper"),
    (_npz(w=_W, meta=np.array("x" * (2 << 20))), r"'meta' is not a JSON text of at most 1048576 characters"),
    (_npz(w=_W, compressed=True, **{"noise/b4.conv1": np.zeros((4096, 4096), np.float32),
                                    "noise/b8.conv0": np.zeros((4096, 4096), np.float32)}), r"more than 128 MB"),
], ids=["float64 overflow", "inf noise", "meta a list", "meta nested", "meta deeper than Python", "meta huge",
        "arrays beyond the budget"])
def test_hostile_latent_values_and_metadata(tmp_path, content, message):
    with pytest.raises(LatentError) as caught:
        load_latent(write(tmp_path / "bad.npz", content))
    assert re.search(message, assert_one_sentence(str(caught.value))), str(caught.value)


def test_latent_members_must_be_npy_arrays(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        member = io.BytesIO()
        np.save(member, _W)
        zf.writestr("w.npy", member.getvalue())
        zf.writestr("payload.pkl\x1b[2J", pickle.dumps([1, 2]))
    with pytest.raises(LatentError, match=r"its member 'payload\.pkl\\x1b\[2J' is not a \.npy array"):
        load_latent(write(tmp_path / "members.npz", buffer.getvalue()))


def test_a_zip_directory_of_many_members_is_refused_before_it_is_parsed(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for i in range(300):
            zf.writestr(f"m{i}.npy", b"")
    with pytest.raises(LatentError, match=r"lists 300 members \(at most 256\)"):
        load_latent(write(tmp_path / "many.npz", buffer.getvalue()))


# ---------------------------------------------------------------------------------------------------------------
# Resume checkpoints

@pytest.fixture(scope="module")
def interrupted_checkpoint(tmp_path_factory, random_lpips):
    """A real checkpoint of a projection stopped after 2 of 4 steps, and the inputs to resume it."""
    G = make_small_generator(seed=5, resolution=32)     # LPIPS needs 32 pixels or more
    targets = torch.zeros(1, 3, 32, 32)
    w_stats = P.compute_w_stats(G, 100)
    settings = P.ProjectorSettings(steps=4, checkpoint_every=2, precision="fp32")   # module-scoped: no autouse pin
    path = tmp_path_factory.mktemp("resume") / "ckpt.pt"

    def stop(event):
        if event.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        P.project(G, targets, settings, perceptual=random_lpips, w_stats=w_stats, callback=stop,
                  checkpoint_path=str(path))
    return dict(G=G, targets=targets, w_stats=w_stats, settings=settings, data=path.read_bytes())


def _resume(case, path, random_lpips):
    return P.project(case["G"], case["targets"], case["settings"], perceptual=random_lpips,
                     w_stats=case["w_stats"], checkpoint_path=str(path), resume=True)


def test_a_zero_byte_resume_checkpoint_is_one_sentence(tmp_path, interrupted_checkpoint, random_lpips):
    path = write(tmp_path / "ckpt.pt", b"")
    with pytest.raises(ProjectionError, match=r"cannot resume: the checkpoint .*ckpt\.pt is empty"):
        _resume(interrupted_checkpoint, path, random_lpips)


@pytest.mark.parametrize("damage, message", [
    (lambda s: s["w_opt"].view(-1).__setitem__(0, float("nan")), r"its latents have the wrong shape or NaN"),
    (lambda s: s.__setitem__("w_opt", s["w_opt"][:, :, :4]), r"its latents have the wrong shape"),
    (lambda s: next(iter(s["noise"].values())).fill_(float("inf")), r"its noise maps"),
    (lambda s: s["optimizer"]["state"][0]["exp_avg"].fill_(float("nan")), r"its optimizer state"),
    (lambda s: s.__setitem__("step", 10 ** 9), r"its step count is out of range"),
    (lambda s: s.__setitem__("rng", []), r"its random states are malformed"),
    (lambda s: s.__setitem__("best_loss", float("nan")), r"its early-stopping state is malformed"),
    (lambda s: s.__setitem__("deep", json.loads("[" * 50 + "]" * 50)), r"nests its data more than 16 levels"),
], ids=["NaN latent", "latent shape", "inf noise", "NaN optimizer", "step", "rng", "best_loss", "deep"])
def test_a_damaged_resume_checkpoint_is_refused(tmp_path, interrupted_checkpoint, random_lpips, damage, message):
    state = torch.load(io.BytesIO(interrupted_checkpoint["data"]), weights_only=True)
    damage(state)
    path = tmp_path / "ckpt.pt"
    torch.save(state, path)
    with pytest.raises(ProjectionError) as caught:
        _resume(interrupted_checkpoint, path, random_lpips)
    shown = assert_one_sentence(str(caught.value))
    assert re.search(r"cannot resume: the checkpoint .* is damaged \(.*" + message, shown)


def test_an_undamaged_checkpoint_resumes(tmp_path, interrupted_checkpoint, random_lpips):
    path = write(tmp_path / "ckpt.pt", interrupted_checkpoint["data"])
    assert _resume(interrupted_checkpoint, path, random_lpips).steps_run == 4


# ---------------------------------------------------------------------------------------------------------------
# Safe writes: planted symlinks

def _frames(count=3, size=16):
    return [np.full((size, size, 3), 40 * i, np.uint8) for i in range(count)]


def _frame_writer(cls, **kwargs):
    def write_with(target):
        writer = cls(target, **kwargs)
        for frame in _frames():
            writer.append(frame)
        writer.commit()
    return write_with


def _has_ffmpeg() -> bool:
    try:
        video.find_ffmpeg()
        return True
    except RenderError:
        return False


WRITERS = {
    "save_generator": ("model.safetensors", lambda G, t: save_generator(G, t)),
    "save_latent": ("projected_w.npz", lambda G, t: save_latent(t, torch.zeros(4, 8))),
    "save_latent PTI delta": ("projected_w.pti.safetensors", lambda G, t: save_latent(
        t.parent / "projected_w.npz", torch.zeros(4, 8), pti_delta={"b4.conv1.weight": torch.ones(2)})),
    "save_png": ("still.png", lambda G, t: images.save_png(np.zeros((8, 8, 3), np.uint8), t)),
    "fs.write_json": ("run.json", lambda G, t: fs.write_json(t, {"a": 1})),
    "projector checkpoint": (".projection-checkpoint.pt", lambda G, t: P._save_checkpoint(str(t), {"a": 1})),
    "GIF": ("video.gif", lambda G, t: _frame_writer(video.GifWriter)(t)),
    "PNG still": ("after.png", lambda G, t: _frame_writer(video.PngStillWriter)(t)),
    "MP4": ("video.mp4", lambda G, t: _frame_writer(video.Mp4Writer)(t)),
}


def _skip_without_ffmpeg(name):
    if name == "MP4" and not _has_ffmpeg():
        pytest.skip("no ffmpeg with libx264 here")


@pytest.fixture
def victim(tmp_path) -> pathlib.Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    path = outside / "victim"
    path.write_bytes(b"the victim's data")
    return path


@pytest.mark.parametrize("name", WRITERS, ids=list(WRITERS))
def test_a_symlink_planted_at_the_target_is_replaced_not_written_through(tmp_path, small_G, victim, name):
    _skip_without_ffmpeg(name)
    shared = tmp_path / "shared"
    shared.mkdir()
    filename, write_it = WRITERS[name]
    target = shared / filename
    target.symlink_to(victim)
    write_it(small_G, target)
    assert victim.read_bytes() == b"the victim's data"
    assert target.is_file() and not target.is_symlink()
    assert not [p for p in os.listdir(shared) if p.endswith(".tmp")]


@pytest.mark.parametrize("name", WRITERS, ids=list(WRITERS))
def test_symlinks_planted_at_guessed_temporary_names_never_redirect_a_write(tmp_path, small_G, victim, name,
                                                                           monkeypatch):
    """The old names (``<target>.tmp-<pid>``) are planted, and the random part of the new ones is made
    predictable and planted too: the write either fails or lands at the target - never in the victim."""
    _skip_without_ffmpeg(name)
    shared = tmp_path / "shared"
    shared.mkdir()
    filename, write_it = WRITERS[name]
    target = shared / filename
    monkeypatch.setattr(fs.secrets, "token_hex", lambda n=16: "0" * (2 * n))
    for planted in (f"{target}.tmp-{os.getpid()}", f"{target}.tmp-{os.getpid()}.npz",
                    str(shared / f".{filename}.{'0' * 16}.tmp"), str(shared / f".{filename}.{'0' * 8}.tmp")):
        os.symlink(victim, planted)
    try:
        write_it(small_G, target)
    except (OSError, TimemachineError):
        assert not target.exists()
    else:
        assert target.is_file() and not target.is_symlink()
    assert victim.read_bytes() == b"the victim's data"


def test_png_sequence_writer_refuses_a_planted_directory_link(tmp_path, victim):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "frames").symlink_to(victim.parent, target_is_directory=True)
    with pytest.raises(RenderError, match="exists and is not a directory"):
        _frame_writer(video.PngSequenceWriter)(shared / "frames")
    assert sorted(os.listdir(victim.parent)) == ["victim"]


def test_png_sequence_is_built_in_a_private_directory(tmp_path, monkeypatch):
    seen = []
    original = fs.PendingFile.__init__

    def spy(self, target, *, private=False):
        original(self, target, private=private)
        seen.append((private, oct(os.stat(os.path.dirname(self.path)).st_mode & 0o777)))

    monkeypatch.setattr(fs.PendingFile, "__init__", spy)
    _frame_writer(video.PngSequenceWriter)(tmp_path / "frames")
    assert seen == [(True, "0o700")]
    assert sorted(os.listdir(tmp_path / "frames")) == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    assert os.listdir(tmp_path) == ["frames"]
