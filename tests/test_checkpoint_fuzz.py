"""Fuzzing the network loader (Issue 8.4): damaged and hostile files end in CheckpointError or a good load.

Property, for every mutated file: ``load_generator`` either returns a Generator or raises CheckpointError with a
one-line message - never another exception, never a hang (hypothesis deadlines) - and no payload runs (the marker
file of the hostile seeds never appears).  Mutations are bit flips, truncations, insertions and overwrites,
aimed at the pickle opcodes, at the legacy torch.save headers inside tensor bytes, and anywhere.  Runs are
derandomized, so the suite is deterministic; the whole module takes well under a minute on 2 cores.
"""

from __future__ import annotations

import datetime
import pathlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from official_pickle import (Call, GlobalRef, LOAD_FROM_BYTES, Raw, binbytes_payload_spans, dumps, dumps_snapshot,
                             legacy_torch_save, make_generator, snapshot_of, tensor_call)
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
