"""Fuzzing the network loader (Issues 8.4, 14): damaged and hostile files end in CheckpointError or a good load.

Property, for every mutated file: ``load_generator`` either returns a Generator or raises CheckpointError with a
one-line message - never another exception, never a hang (hypothesis deadlines) - and no payload runs (the marker
file of the hostile seeds never appears).  Mutations are bit flips, truncations, insertions and overwrites,
aimed at the pickle opcodes, at the legacy torch.save headers inside tensor bytes, and anywhere; and
structure-aware mutations (below) that keep the pickle a valid opcode stream, or the safetensors header valid
JSON, so that they reach the loader's later checks under an address-space cap.  Runs are
derandomized, so the suite is deterministic; the whole module takes well under a minute on 2 cores.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import pickle
import pickletools
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import address_space_limit
from official_pickle import (
    LOAD_FROM_BYTES,
    Call,
    GlobalRef,
    Raw,
    assert_one_sentence,
    binbytes_payload_spans,
    dumps,
    dumps_snapshot,
    legacy_torch_save,
    make_generator,
    snapshot_of,
    tensor_call,
)
from timemachine.checkpoint import CheckpointError, load_generator, save_generator
from timemachine.networks import Generator

SMALL_CONFIG = dict(z_dim=8, w_dim=8, c_dim=0, img_resolution=8, img_channels=3,
                    mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=64, channel_max=16))
FUZZ_SETTINGS = dict(derandomize=True, database=None, print_blob=True,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("fuzz")


def regions(data: bytes, blob_header: int = 320) -> list[tuple[int, int]]:
    """Byte ranges worth aiming at: the opcodes between tensor blobs, the first bytes of each blob (the legacy
    torch.save pickles before the raw floats), and the whole file."""
    spans = binbytes_payload_spans(data)
    out, previous_end = [], 0
    for start, end in spans:
        if start > previous_end:
            out.append((previous_end, start))
        out.append((start, min(end, start + blob_header)))
        previous_end = end
    out.append((previous_end, len(data)))
    out.append((0, len(data)))
    return [(a, b) for a, b in out if b > a]


@st.composite
def mutated(draw, seeds: list[bytes]):
    """One of ``seeds`` with 1-3 mutations applied."""
    index = draw(st.integers(0, len(seeds) - 1))
    data = bytearray(seeds[index])
    targets = regions(bytes(data))
    for _ in range(draw(st.integers(1, 3))):
        start, end = targets[draw(st.integers(0, len(targets) - 1))]
        pos = min(draw(st.integers(start, max(start, end - 1))), max(len(data) - 1, 0))
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite"]))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[pos:pos + len(chunk)] = chunk
    return bytes(data)


def assert_loads_or_refuses(path: pathlib.Path) -> None:
    try:
        G = load_generator(path, device="cpu")
    except CheckpointError as exc:
        message = str(exc)
        assert message and "\n" not in message
    else:
        assert isinstance(G, Generator) and not G.training


@pytest.fixture(scope="module")
def small_seeds():
    G = make_generator(seed=7, **SMALL_CONFIG)
    return [dumps_snapshot(snapshot_of(G)), dumps_snapshot(snapshot_of(G), protocol=3, numpy1_names=True)]


@pytest.fixture(scope="module")
def hostile_seeds(fuzz_dir):
    marker = fuzz_dir / "marker"
    system = Call(GlobalRef("os", "system"), (f"touch {marker}",))
    G = make_generator(seed=8, **SMALL_CONFIG)

    def in_parameter(payload):
        def edit(path, class_name, state):
            if path == "synthesis.b4.conv1":
                state["_parameters"]["weight"] = payload
        return edit

    seeds = [
        dumps(system),
        dumps(Raw(b"(X" + len(f"touch {marker}").to_bytes(4, "little") + f"touch {marker}".encode()
                  + b"ios\nsystem\n")),
        dumps_snapshot(snapshot_of(G), protocol=3, numpy1_names=True, edit_state=in_parameter(system)),
        dumps(Call(GlobalRef("pickle", "loads"), (dumps(system),))),
        dumps(Call(LOAD_FROM_BYTES, (legacy_torch_save(system),))),
        dumps_snapshot(snapshot_of(G), edit_state=in_parameter(system)),
        dumps_snapshot(snapshot_of(G), edit_state=in_parameter(
            tensor_call(torch.zeros(1), blob=legacy_torch_save(system)))),
    ]
    return marker, seeds


@pytest.mark.timeout(120)
def test_fuzz_official_fixture(tiny_pkl, fuzz_dir):
    fixture = tiny_pkl.read_bytes()

    @settings(max_examples=40, deadline=datetime.timedelta(seconds=20), **FUZZ_SETTINGS)
    @given(mutated([fixture]))
    def check(data):
        path = fuzz_dir / "fixture.pkl"
        path.write_bytes(data)
        assert_loads_or_refuses(path)

    check()


@pytest.mark.timeout(120)
def test_fuzz_small_official_pickles(small_seeds, fuzz_dir):
    @settings(max_examples=200, deadline=datetime.timedelta(seconds=5), **FUZZ_SETTINGS)
    @given(mutated(small_seeds))
    def check(data):
        path = fuzz_dir / "small.pkl"
        path.write_bytes(data)
        assert_loads_or_refuses(path)

    check()


@pytest.mark.timeout(120)
def test_fuzz_hostile_pickles(hostile_seeds, fuzz_dir):
    marker, seeds = hostile_seeds

    @settings(max_examples=200, deadline=datetime.timedelta(seconds=5), **FUZZ_SETTINGS)
    @given(mutated(seeds))
    def check(data):
        path = fuzz_dir / "hostile.pkl"
        path.write_bytes(data)
        assert_loads_or_refuses(path)
        assert not marker.exists()

    check()


@pytest.mark.timeout(120)
def test_fuzz_opcode_streams(fuzz_dir):
    """Arbitrary bytes after a PROTO opcode: the unpickler itself meets every opcode with random arguments."""
    @settings(max_examples=400, deadline=datetime.timedelta(seconds=5), **FUZZ_SETTINGS)
    @given(st.sampled_from([b"\x80\x02", b"\x80\x04", b"\x80\x05"]), st.binary(max_size=300))
    def check(proto, body):
        path = fuzz_dir / "opcodes.pkl"
        path.write_bytes(proto + body)
        assert_loads_or_refuses(path)

    check()


@pytest.mark.timeout(120)
def test_fuzz_safetensors(fuzz_dir):
    G = make_generator(seed=9, **SMALL_CONFIG)
    good = fuzz_dir / "good.safetensors"
    save_generator(G, good)
    data = good.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")

    @settings(max_examples=150, deadline=datetime.timedelta(seconds=5), **FUZZ_SETTINGS)
    @given(st.integers(0, 1), st.integers(0, 10 ** 9), st.sampled_from(["flip", "truncate", "overwrite"]),
           st.integers(0, 7), st.binary(min_size=1, max_size=8))
    def check(in_header, position, kind, bit, chunk):
        mutated = bytearray(data)
        pos = position % header_end if in_header else position % len(data)
        if kind == "flip":
            mutated[pos] ^= 1 << bit
        elif kind == "truncate":
            del mutated[pos:]
        else:
            mutated[pos:pos + len(chunk)] = chunk
        path = fuzz_dir / "fuzzed.safetensors"
        path.write_bytes(bytes(mutated))
        assert_loads_or_refuses(path)

    check()


# ---------------------------------------------------------------------------------------------------------------
# Structure-aware fuzzing: mutations that keep the file a well-formed stream of pickle opcodes (or a well-formed
# safetensors header), so that they reach the loader's later stages - the unpickler's stand-ins, the storage
# bounds, the configuration rules, the size checks - instead of stopping at the first damaged byte.

INTERESTING_INTS = [0, 1, -1, 2, 3, 7, 8, 255, 256, 2 ** 15, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 62, 2 ** 63,
                    -(2 ** 63), 10 ** 30, 10 ** 38]
INTERESTING_STRINGS = ["", "G_ema", "G", "Generator", "storage", "_modules", "_parameters", "synthesis_kwargs",
                       "z_dim", "os", "system", "\x1b]0;pwned\x07\x1b[2J", "x" * 300, "cpu", "FloatStorage"]
INTERESTING_FLOATS = [float("nan"), float("inf"), -float("inf"), 1e308, -0.0, 1e-45, 0.5, 3.4e38, 1e39]


def assert_clean_refusal_or_good_load(path: pathlib.Path) -> None:
    """The property every fuzzed file must have: a finite float32 generator, or a one-line printable
    CheckpointError - and no other exception (MemoryError included: the caller caps the address space)."""
    try:
        G = load_generator(path, device="cpu")
    except CheckpointError as exc:
        message = str(exc)
        assert_one_sentence(message)
    else:
        assert isinstance(G, Generator) and not G.training
        assert all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in G.state_dict().values())


def strip_frames(data: bytes) -> bytes:
    """The pickle without its FRAME opcodes (optional hints), so that opcodes can be moved across frames."""
    out, previous = bytearray(), 0
    for opcode, _, pos in pickletools.genops(data):
        if opcode.name == "FRAME":
            out += data[previous:pos]
            previous = pos + 9
    return bytes(out + data[previous:])


def opcode_spans(data: bytes) -> list[tuple[str, object, int, int]]:
    """(name, argument, start, end) of every opcode."""
    ops = [(opcode.name, arg, pos) for opcode, arg, pos in pickletools.genops(data)]
    ends = [pos for _, _, pos in ops[1:]] + [len(data)]
    return [(name, arg, pos, end) for (name, arg, pos), end in zip(ops, ends)]


def int_opcode(value: int) -> bytes:
    return pickle.dumps(value, protocol=2)[2:-1]


def string_opcode(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return (b"\x8c" + bytes([len(raw)]) if len(raw) < 256 else b"X" + len(raw).to_bytes(4, "little")) + raw


def restructured(seeds: list[bytes], draw) -> bytes:
    """A seed pickle with 1-4 opcode-level mutations drawn with ``draw`` (hypothesis ``data.draw``): integers and
    floats replaced by edge values, memo references retargeted, strings swapped, runs of opcodes deleted, swapped
    or repeated (repeated REDUCEs on memoised values, deeper nesting, cycles through the memo)."""
    data = seeds[draw(st.integers(0, len(seeds) - 1))]
    for _ in range(draw(st.integers(1, 4))):
        ops = opcode_spans(data)
        memo_entries = sum(1 for name, *_ in ops if name in ("MEMOIZE", "BINPUT", "LONG_BINPUT"))
        kind = draw(st.sampled_from(["int", "memo", "string", "float", "delete", "repeat", "swap"]))
        pick = {"int": ("BININT", "BININT1", "BININT2", "LONG1"), "memo": ("BINGET", "LONG_BINGET"),
                "string": ("SHORT_BINUNICODE", "BINUNICODE"), "float": ("BINFLOAT",)}.get(kind)
        if pick is not None:
            candidates = [op for op in ops if op[0] in pick]
            if not candidates:
                continue
            _, _, start, end = candidates[draw(st.integers(0, len(candidates) - 1))]
            if kind == "int":
                new = int_opcode(draw(st.sampled_from(INTERESTING_INTS) | st.integers(-300, 300)))
            elif kind == "memo":
                new = b"j" + draw(st.integers(0, max(memo_entries - 1, 0))).to_bytes(4, "little")
            elif kind == "string":
                new = string_opcode(draw(st.sampled_from(INTERESTING_STRINGS)))
            else:
                new = b"G" + struct.pack(">d", draw(st.sampled_from(INTERESTING_FLOATS)))
            data = data[:start] + new + data[end:]
            continue
        i = draw(st.integers(0, len(ops) - 2))              # never the final STOP
        j = min(i + draw(st.integers(1, 24)), len(ops) - 1)
        run = data[ops[i][2]:ops[j - 1][3]]
        if kind == "delete":
            data = data[:ops[i][2]] + data[ops[j - 1][3]:]
        elif kind == "repeat":
            data = data[:ops[j - 1][3]] + run * draw(st.integers(1, 40)) + data[ops[j - 1][3]:]
        else:
            k = draw(st.integers(0, len(ops) - 2))
            a, b = sorted((i, k))
            if a == b:
                continue
            data = data[:ops[a][2]] + data[ops[b][2]:ops[b][3]] + data[ops[a][3]:ops[b][2]] + \
                data[ops[a][2]:ops[a][3]] + data[ops[b][3]:]
    return data


@pytest.fixture(scope="module")
def frameless_seeds():
    G = make_generator(seed=10, **SMALL_CONFIG)
    return [strip_frames(dumps_snapshot(snapshot_of(G))),
            dumps_snapshot(snapshot_of(G), protocol=3, numpy1_names=True)]


@pytest.mark.timeout(120)
def test_structure_aware_fuzz_of_the_pickle_loader(frameless_seeds, fuzz_dir):
    for seed in frameless_seeds:   # the seeds themselves load
        path = fuzz_dir / "seed.pkl"
        path.write_bytes(seed)
        assert isinstance(load_generator(path, device="cpu"), Generator)

    @settings(max_examples=150, deadline=datetime.timedelta(seconds=5), **FUZZ_SETTINGS)
    @given(st.data())
    def check(data):
        path = fuzz_dir / "restructured.pkl"
        path.write_bytes(restructured(frameless_seeds, data.draw))
        with address_space_limit(2 << 30):
            assert_clean_refusal_or_good_load(path)

    check()


INTERESTING_JSON = [0, -1, 1, 3, 2 ** 31, 10 ** 30, 10 ** 400, float("nan"), float("inf"), -float("inf"), 1e308,
                    -0.0, 0.5, "", "x\x1b[2J", None, True, False, [], {}, [1, 3, 3, 1], [0, 0], {"a": 1}]


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def restructured_safetensors(good: bytes, draw) -> bytes:
    """A generator safetensors file whose JSON header was edited (mutations drawn with ``draw``): configuration
    values replaced by edge values, options added or removed, tensor entries with other dtypes, shapes or
    offsets, entries dropped or renamed."""
    length = int.from_bytes(good[:8], "little")
    header = json.loads(good[8:8 + length])
    body = good[8 + length:]
    names = sorted(k for k in header if k != "__metadata__")
    config = json.loads(header["__metadata__"]["config"])
    config_text = None
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["config", "config", "new option", "drop option", "deep", "dtype", "shape",
                                     "offsets", "drop tensor", "rename tensor", "metadata"]))
        if kind in ("config", "new option", "drop option"):
            _mutate_config(config, kind, draw)
        elif kind == "deep":
            config_text = json.dumps(config)[:-1] + ', "deep": ' + _nested(draw(st.sampled_from([50, 5000]))) + "}"
        elif kind == "metadata":
            header["__metadata__"][draw(st.sampled_from(["format", "format_version", "config"]))] = draw(
                st.sampled_from(["", "1", "2", "timemachine-generator", "{}", "[]", "\x1b[2J"]))
        else:
            _mutate_tensor_entry(header, draw(st.sampled_from(names)), kind, draw)
    header["__metadata__"]["config"] = config_text if config_text is not None else json.dumps(config)
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


def _mutate_config(config: dict, kind: str, draw) -> None:
    """'config': an option of the configuration (or of its mapping/synthesis sections) set to an edge value;
    'new option': a known or unknown option added with one; 'drop option': an option removed."""
    sections = [config] + [config[k] for k in ("mapping_kwargs", "synthesis_kwargs") if isinstance(config.get(k), dict)]
    section = sections[draw(st.integers(0, len(sections) - 1))]
    keys = sorted(section) or ["x"]
    key = draw(st.sampled_from(keys)) if kind != "new option" else draw(
        st.sampled_from(["lr_multiplier", "conv_clamp", "w_avg_beta", "num_fp16_res", "embed_features",
                         "resample_filter", "kernel_size", "architecture", "activation", "magic"]))
    if kind == "drop option":
        section.pop(key, None)
    else:
        section[key] = draw(st.sampled_from(INTERESTING_JSON))


def _mutate_tensor_entry(header: dict, name: str, kind: str, draw) -> None:
    """The header's entry of tensor ``name`` (if still there) given another dtype, shape or offsets, dropped,
    or renamed."""
    if name not in header:
        return
    entry = header[name]
    if kind == "dtype":
        entry["dtype"] = draw(st.sampled_from(["F16", "F64", "BF16", "I32", "U8", "BOOL", "F8_E4M3", "Q"]))
    elif kind == "shape":
        entry["shape"] = draw(st.sampled_from([[], [0], [1], [2 ** 31], [2 ** 62, 2], list(
            reversed(entry["shape"])), entry["shape"] + [1]]))
    elif kind == "offsets":
        a, b = entry["data_offsets"]
        entry["data_offsets"] = draw(st.sampled_from([[a, a], [b, a], [0, b - a], [a, b + 4], [a, 2 ** 62]]))
    elif kind == "drop tensor":
        del header[name]
    else:
        header[draw(st.sampled_from(["extra", name + "\x1b[2J", "synthesis.b4.conv1.weight"]))] = header.pop(name)


@pytest.mark.timeout(120)
def test_structure_aware_fuzz_of_the_safetensors_loader(fuzz_dir):
    G = make_generator(seed=11, **SMALL_CONFIG)
    good_path = fuzz_dir / "good2.safetensors"
    save_generator(G, good_path)
    good = good_path.read_bytes()

    @settings(max_examples=250, deadline=datetime.timedelta(seconds=5), **FUZZ_SETTINGS)
    @given(st.data())
    def check(data):
        path = fuzz_dir / "restructured.safetensors"
        path.write_bytes(restructured_safetensors(good, data.draw))
        with address_space_limit(2 << 30):
            assert_clean_refusal_or_good_load(path)

    check()
