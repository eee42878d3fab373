"""timemachine.checkpoint: official pickles of any configuration, the safetensors format, hostile files.

Pickles are written in the official structure by tests/official_pickle.py (no NVIDIA code needed); that writer is
itself checked against ../shared/fixtures/sg2ada_tiny.pkl.  Every hostile payload below would create a marker file
if its code ran; tests assert a CheckpointError naming the cause and no marker.  Control tests show that the same
payloads do create the marker when unpickled by plain ``pickle`` / ``torch.load(weights_only=False)``, so the
payloads are live and the refusals mean something.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import pickle
import re
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import address_space_limit
from official_pickle import (
    LOAD_FROM_BYTES,
    OFFICIAL_GLOBALS,
    ORDERED_DICT,
    REBUILD_PARAMETER,
    RECONSTRUCT_PERSISTENT_OBJ,
    SMALL_CONFIG,
    Call,
    EasyDict,
    GlobalRef,
    Raw,
    SetItem,
    binbytes_payload_spans,
    dumps,
    dumps_snapshot,
    edit_class_state,
    legacy_torch_save,
    make_generator,
    persistent,
    pickle_globals,
    record_init_args,
    snapshot_of,
    storage_bytes,
    tensor_call,
    write,
    write_official_pickle,
)
from timemachine import checkpoint, unpickler
from timemachine.checkpoint import CheckpointError, load_generator, model_fingerprint, save_generator
from timemachine.errors import TimemachineError
from timemachine.networks import Generator
from timemachine.unpickler import read_network_pickle

TINY_CONFIG = dict(z_dim=64, w_dim=64, c_dim=0, img_resolution=32, img_channels=3,
                   mapping_kwargs=dict(num_layers=8),
                   synthesis_kwargs=dict(channel_base=1024, channel_max=128, num_fp16_res=2, conv_clamp=256))
CONDITIONAL_CONFIG = dict(z_dim=32, w_dim=32, c_dim=3, img_resolution=64, img_channels=3,
                          mapping_kwargs=dict(num_layers=2),
                          synthesis_kwargs=dict(channel_base=512, channel_max=32, num_fp16_res=0, conv_clamp=None))
RESNET_CONFIG = dict(z_dim=16, w_dim=16, c_dim=0, img_resolution=16, img_channels=3,
                     mapping_kwargs=dict(num_layers=3),
                     synthesis_kwargs=dict(channel_base=256, channel_max=32, architecture="resnet", num_fp16_res=1,
                                           conv_clamp=256))
ORIG_CONFIG = dict(z_dim=16, w_dim=16, c_dim=2, img_resolution=16, img_channels=3,
                   mapping_kwargs=dict(num_layers=2),
                   synthesis_kwargs=dict(channel_base=256, channel_max=16, architecture="orig"))


def assert_same_outputs(a: Generator, b: Generator, batch: int = 3):
    """Identical G(z, c) in every noise mode (random mode with the same seed), and identical ws."""
    z = torch.randn([batch, a.z_dim], generator=torch.Generator().manual_seed(5))
    c = torch.eye(a.c_dim)[torch.arange(batch) % a.c_dim] if a.c_dim else torch.zeros([batch, 0])
    for psi in (1, 0.7):
        assert torch.equal(a.mapping(z, c, truncation_psi=psi), b.mapping(z, c, truncation_psi=psi))
    for noise_mode in ("const", "none", "random"):
        torch.manual_seed(11)
        img_a = a(z, c, noise_mode=noise_mode)
        torch.manual_seed(11)
        img_b = b(z, c, noise_mode=noise_mode)
        assert img_a.shape == (batch, a.img_channels, a.img_resolution, a.img_resolution)
        assert torch.isfinite(img_a).all()
        assert torch.equal(img_a, img_b), noise_mode


def assert_same_weights(a: Generator, b: Generator):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


@pytest.fixture(scope="module")
def small_G():
    return make_generator(seed=3, **SMALL_CONFIG)


@pytest.fixture(scope="module")
def small_pickle_bytes(small_G):
    return dumps_snapshot(snapshot_of(small_G))


# ---------------------------------------------------------------------------------------------------------------
# The writer in tests/official_pickle.py against the real official-format fixture


def test_writer_emits_the_globals_of_the_official_fixture(tiny_pkl):
    official = pickle_globals(tiny_pkl.read_bytes())
    assert official == OFFICIAL_GLOBALS  # what ../shared/README.md documents
    ours = pickle_globals(dumps_snapshot(snapshot_of(make_generator(**TINY_CONFIG))))
    assert ours == official
    numpy1 = pickle_globals(dumps_snapshot(snapshot_of(make_generator(**TINY_CONFIG)), numpy1_names=True))
    assert numpy1 == official - {("numpy._core.multiarray", "scalar")} | {("numpy.core.multiarray", "scalar")}


def _records(record, path=""):
    out = {path: record}
    for name, child in record.state["_modules"].items():
        out.update(_records(child, f"{path}.{name}" if path else name))
    return out


def test_writer_reproduces_the_fixture_structure_and_outputs(tiny_pkl, tiny_ref, tiny_G):
    """Same module tree, class names, constructor arguments and state keys as the official pickle; the official
    weights written by our writer give the official reference outputs."""
    G = make_generator(**TINY_CONFIG)
    G.load_state_dict(tiny_G.state_dict())
    data = dumps_snapshot(snapshot_of(G))
    official = _records(read_network_pickle(tiny_pkl)["G_ema"])
    ours = _records(read_network_pickle(io.BytesIO(data))["G_ema"])
    assert ours.keys() == official.keys()
    for path, record in official.items():
        mine = ours[path]
        assert mine.class_name == record.class_name, path
        assert mine.version == record.version == 6
        assert tuple(mine.state["_init_args"]) == tuple(record.state["_init_args"]), path
        assert mine.state["_init_kwargs"] == record.state["_init_kwargs"], path
        assert type(mine.state["_init_kwargs"]) is dict
        assert set(record.state) <= set(mine.state), path  # ours may carry a few extra plain attributes
    top = read_network_pickle(io.BytesIO(data))["G_ema"].state["_init_kwargs"]
    assert isinstance(top["mapping_kwargs"], unpickler.EasyDict)
    assert isinstance(top["synthesis_kwargs"], unpickler.EasyDict)

    loaded = checkpoint.generator_from_snapshot(read_network_pickle(io.BytesIO(data)))
    img = loaded.synthesis(tiny_ref["ws"], noise_mode="const")
    assert ((img - tiny_ref["img_const"]).abs().max() / tiny_ref["img_const"].abs().max()) <= 1e-4
    assert_same_weights(loaded, tiny_G)


# ---------------------------------------------------------------------------------------------------------------
# Round trips through official-format pickles


@pytest.mark.parametrize("config", [CONDITIONAL_CONFIG, RESNET_CONFIG, ORIG_CONFIG],
                         ids=["64px-conditional-fp32-noclamp", "resnet", "orig-conditional"])
def test_pickle_round_trip(tmp_path, config):
    G_ema = make_generator(seed=1, **config)
    G = make_generator(seed=2, **config)
    path = tmp_path / "network-snapshot-000000.pkl"
    write_official_pickle(path, G_ema, G=G)

    loaded = load_generator(path, device="cpu")
    assert loaded.init_kwargs == G_ema.init_kwargs
    assert_same_weights(loaded, G_ema)
    assert_same_outputs(loaded, G_ema)

    loaded_G = load_generator(path, device="cpu", which="G")
    assert_same_weights(loaded_G, G)
    assert not torch.equal(loaded_G.synthesis.b4.const, loaded.synthesis.b4.const)


def test_conditional_generator_uses_c(tmp_path):
    G = make_generator(seed=1, **CONDITIONAL_CONFIG)
    loaded = load_generator(write(tmp_path / "c.pkl", dumps_snapshot(snapshot_of(G))), device="cpu")
    z = torch.randn([1, 32]).repeat(3, 1)
    ws = loaded.mapping(z, torch.eye(3))  # the same z with each of the three classes
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert (ws[a] - ws[b]).abs().max() > 0.05 * ws.abs().max()
    images = loaded.synthesis(ws, noise_mode="const")
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[1], images[2])
    with pytest.raises(ValueError, match=r"c must have shape \[N, 3\]"):
        loaded(z, None)


def test_numpy1_names_are_accepted(tmp_path, small_G):
    data = dumps_snapshot(snapshot_of(small_G), numpy1_names=True)
    assert ("numpy.core.multiarray", "scalar") in pickle_globals(data)
    assert_same_outputs(load_generator(write(tmp_path / "np1.pkl", data), device="cpu"), small_G)


def test_protocol3_pickles_as_python37_wrote_them(tmp_path, small_G):
    """NVIDIA's training code ran on Python 3.7, whose pickle.dump writes protocol 3 (sets as builtins.set)."""
    data = dumps_snapshot(snapshot_of(small_G), protocol=3, numpy1_names=True)
    assert data[:2] == b"\x80\x03"
    assert ("builtins", "set") in pickle_globals(data)
    assert_same_outputs(load_generator(write(tmp_path / "py37.pkl", data), device="cpu"), small_G)


@pytest.mark.parametrize("items", [[1, 2], [("a",)], "abc", [Call(ORDERED_DICT, ())]],
                         ids=["ints", "tuples", "string", "dict"])
def test_sets_hold_only_names(tmp_path, items):
    data = dumps(dict(G_ema=Call(GlobalRef("builtins", "set"), (items,))))
    with pytest.raises(CheckpointError, match=r"a set of something other than names"):
        load_generator(write(tmp_path / "set.pkl", data))


@pytest.mark.parametrize("extras", [
    dict(),                                                  # the dummy D and augment_pipe
    dict(D=None, augment_pipe=None),                         # snapshots written with augmentation off
    dict(D=Call(ORDERED_DICT, ()), augment_pipe=[1, 2.5, "x", None]),  # anything inert
], ids=["dummies", "none", "inert-values"])
def test_other_snapshot_entries_are_tolerated(tmp_path, small_G, extras):
    snapshot = snapshot_of(small_G)
    snapshot.update(extras)
    snapshot["progress"] = EasyDict(cur_nimg=1234, note="extra keys are ignored")
    loaded = load_generator(write(tmp_path / "s.pkl", dumps(snapshot)), device="cpu")
    assert_same_outputs(loaded, small_G)


def test_snapshot_with_only_G_ema(tmp_path, small_G):
    path = write(tmp_path / "only.pkl", dumps(dict(G_ema=small_G)))
    assert_same_weights(load_generator(path, device="cpu"), small_G)
    with pytest.raises(CheckpointError, match="the snapshot has no 'G' network"):
        load_generator(path, which="G")


def test_loaded_generator_is_frozen_float32_on_the_requested_device(tmp_path, small_G, monkeypatch):
    path = write(tmp_path / "g.pkl", dumps_snapshot(snapshot_of(small_G)))
    for device in ("cpu", torch.device("cpu")):
        G = load_generator(path, device=device)
        assert isinstance(G, Generator) and not G.training
        assert all(not m.training for m in G.modules())
        assert all(not p.requires_grad for p in G.parameters())
        assert {t.device.type for t in G.state_dict().values()} == {"cpu"}
        assert {t.dtype for t in G.state_dict().values()} == {torch.float32}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    G = load_generator(path)  # device=None: CUDA when available, here not
    assert {t.device.type for t in G.state_dict().values()} == {"cpu"}


def test_which_must_be_a_generator_name(tmp_path, small_pickle_bytes):
    with pytest.raises(ValueError, match="which must be 'G_ema' or 'G'"):
        load_generator(write(tmp_path / "g.pkl", small_pickle_bytes), which="D")


# ---------------------------------------------------------------------------------------------------------------
# The safetensors format


def test_safetensors_round_trip_and_fingerprints(tmp_path):
    G = make_generator(seed=4, **CONDITIONAL_CONFIG)
    pkl = write(tmp_path / "g.pkl", dumps_snapshot(snapshot_of(G)))
    st = tmp_path / "g.safetensors"
    save_generator(load_generator(pkl, device="cpu"), st)
    assert set(os.listdir(tmp_path)) == {"g.pkl", "g.safetensors"}  # no temporary file left behind
    from_pickle = load_generator(pkl, device="cpu")
    from_st = load_generator(st, device="cpu")
    assert from_st.init_kwargs == G.init_kwargs
    assert_same_weights(from_st, G)
    assert_same_outputs(from_st, from_pickle)
    assert model_fingerprint(from_pickle) == model_fingerprint(from_st) == model_fingerprint(G)
    assert re.fullmatch(r"[0-9a-f]{16}", model_fingerprint(G))

    with pytest.raises(CheckpointError, match="safetensors generator files hold only G_ema"):
        load_generator(st, which="G")

    changed = load_generator(st, device="cpu")
    with torch.no_grad():
        changed.synthesis.b64.torgb.bias[0] += 1e-3
    assert model_fingerprint(changed) != model_fingerprint(G)


def test_save_generator_replaces_atomically(tmp_path, small_G):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old contents")
    save_generator(small_G, target, extra_metadata={"source": "test"})
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no temporary file left behind
    assert_same_weights(load_generator(target, device="cpu"), small_G)


def _safetensors_parts(G):
    tensors = {k: v.detach().clone().contiguous() for k, v in G.state_dict().items()}
    metadata = {"format": "timemachine-generator", "format_version": "1", "config": json.dumps(G.init_kwargs)}
    return tensors, metadata


def _config_with(G, **changes):
    config = json.loads(json.dumps(G.init_kwargs))
    config.update(changes)
    return json.dumps(config)


SAFETENSORS_DEFECTS = {
    "float16 tensor": (lambda t, m, G: t.update({"mapping.fc0.weight": t["mapping.fc0.weight"].half()}),
                       r"tensor mapping\.fc0\.weight is torch\.float16, expected torch\.float32"),
    "int32 tensor": (lambda t, m, G: t.update({"mapping.w_avg": t["mapping.w_avg"].to(torch.int32)}),
                     r"tensor mapping\.w_avg is torch\.int32, expected torch\.float32"),
    "wrong shape": (lambda t, m, G: t.update({"synthesis.b4.const": torch.zeros([16, 4, 5])}),
                    r"tensor synthesis\.b4\.const has shape \(16, 4, 5\), expected \(16, 4, 4\)"),
    "config does not fit the tensors": (lambda t, m, G: m.update(config=_config_with(G, w_dim=16)),
                                        r"tensor .* has shape .*, expected"),
    "missing tensor": (lambda t, m, G: t.pop("synthesis.b8.conv0.noise_strength"),
                       r"the file lacks the tensor synthesis\.b8\.conv0\.noise_strength"),
    "extra tensor": (lambda t, m, G: t.update({"synthesis.b8.conv0.extra": torch.zeros(3)}),
                     r"the file has a tensor this generator does not: synthesis\.b8\.conv0\.extra"),
    "NaN weight": (lambda t, m, G: t["synthesis.b8.conv1.weight"].view(-1).__setitem__(7, float("nan")),
                   r"tensor synthesis\.b8\.conv1\.weight holds NaN or infinite values"),
    "bad JSON config": (lambda t, m, G: m.update(config="{'z_dim': 8,"), r"configuration is not valid JSON"),
    "config not an object": (lambda t, m, G: m.update(config="[8, 8]"), r"configuration is not a dict"),
    "config without z_dim": (lambda t, m, G: m.update(config=json.dumps({"w_dim": 8})),
                             r"configuration lacks an integer 'z_dim'"),
    "unknown option": (lambda t, m, G: m.update(config=_config_with(G, use_magic=True)),
                       r"unsupported generator option\(s\): use_magic"),
    "unknown synthesis option": (lambda t, m, G: m.update(config=_config_with(G, synthesis_kwargs={"magic": 1})),
                                 r"unsupported generator option\(s\): synthesis_kwargs\.magic"),
    "option of the wrong type": (lambda t, m, G: m.update(config=_config_with(
        G, synthesis_kwargs={"channel_base": 64, "channel_max": 16, "conv_clamp": "none"})),
        r"synthesis conv_clamp='none' is out of range: expected None or a finite number above 0"),
    "no config key": (lambda t, m, G: m.pop("config"), r"lacks its configuration \(no 'config' header\)"),
    "no format key": (lambda t, m, G: m.pop("format"), r"not a timemachine generator \(no 'format' header\)"),
    "other format": (lambda t, m, G: m.update(format="something-else"), r"not a timemachine generator"),
    "future version": (lambda t, m, G: m.update(format_version="2"), r"unsupported generator file version '2'"),
}


@pytest.mark.parametrize("defect", SAFETENSORS_DEFECTS, ids=list(SAFETENSORS_DEFECTS))
def test_safetensors_header_validation(tmp_path, small_G, defect):
    tensors, metadata = _safetensors_parts(small_G)
    mutate, message = SAFETENSORS_DEFECTS[defect]
    mutate(tensors, metadata, small_G)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=message):
        load_generator(path, device="cpu")


def test_truncated_safetensors(tmp_path, small_G):
    good = tmp_path / "good.safetensors"
    save_generator(small_G, good)
    data = good.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    for cut in (9, 100, 8 + header_len, 8 + header_len + 1, len(data) // 2, len(data) - 1):
        path = write(tmp_path / f"cut{cut}.safetensors", data[:cut])
        with pytest.raises(CheckpointError, match=r"damaged safetensors file"):
            load_generator(path, device="cpu")
    for cut in (1, 8):  # too short to be recognised as safetensors: read as a pickle, refused as neither
        path = write(tmp_path / f"cut{cut}.safetensors", data[:cut])
        with pytest.raises(CheckpointError, match=r"neither a network pickle nor a safetensors file"):
            load_generator(path, device="cpu")


# ---------------------------------------------------------------------------------------------------------------
# Hostile pickles (Issue 8.1)


def _cmd(marker) -> str:
    return f"touch {marker}"


def _py(marker) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _os_system(marker):
    return Call(GlobalRef("os", "system"), (_cmd(marker),))


def _getattr_os_system(marker):
    module = Call(GlobalRef("builtins", "__import__"), ("os",))
    return Call(Call(GlobalRef("builtins", "getattr"), (module, "system")), (_cmd(marker),))


def _attrgetter_os_system(marker):
    system = Call(Call(GlobalRef("operator", "attrgetter"), ("system",)),
                  (Call(GlobalRef("builtins", "__import__"), ("os",)),))
    return Call(system, (_cmd(marker),))


def _import_module_os_system(marker):
    module = Call(GlobalRef("importlib", "import_module"), ("os",))
    return [module, Call(Call(GlobalRef("builtins", "getattr"), (module, "system")), (_cmd(marker),))]


class Payload:
    """A payload that would create ``marker`` if its code ran.

    expect:  regex the CheckpointError must match when the payload is in the network pickle itself;
    expect_in_tensor_data: the same inside the bytes of torch.storage._load_from_bytes (default: expect);
    live:    plain pickle.loads / torch.load(weights_only=False) of the payload creates the marker (control test).
    """

    def __init__(self, build, expect, live, expect_in_tensor_data=None):
        self.build = build
        self.expect = expect
        self.live = live
        self.expect_in_tensor_data = expect_in_tensor_data or expect


def _forbidden(name):
    return r"forbidden global " + re.escape(name)


PAYLOADS = {
    "os.system": Payload(_os_system, _forbidden("os.system"), live=True),
    "posix.system": Payload(lambda m: Call(GlobalRef("posix", "system"), (_cmd(m),)), _forbidden("posix.system"),
                            live=True),
    "builtins.exec": Payload(lambda m: Call(GlobalRef("builtins", "exec"), (_py(m),)),
                             _forbidden("builtins.exec"), live=True),
    "builtins.eval": Payload(lambda m: Call(GlobalRef("builtins", "eval"), (_py(m),)),
                             _forbidden("builtins.eval"), live=True),
    "__builtin__.eval": Payload(lambda m: Raw(b"c__builtin__\neval\n(X" + len(_py(m)).to_bytes(4, "little")
                                              + _py(m).encode() + b"tR"),
                                _forbidden("__builtin__.eval"), live=False),
    "subprocess.Popen": Payload(lambda m: Call(GlobalRef("subprocess", "Popen"), (["touch", str(m)],)),
                                _forbidden("subprocess.Popen"), live=True),
    "subprocess.check_call": Payload(lambda m: Call(GlobalRef("subprocess", "check_call"), (["touch", str(m)],)),
                                     _forbidden("subprocess.check_call"), live=True),
    "importlib.import_module": Payload(_import_module_os_system, _forbidden("importlib.import_module"), live=True),
    "pickle.loads": Payload(lambda m: Call(GlobalRef("pickle", "loads"), (dumps(_os_system(m)),)),
                            _forbidden("pickle.loads"), live=True),
    "_pickle.loads": Payload(lambda m: Call(GlobalRef("_pickle", "loads"), (dumps(_os_system(m)),)),
                             _forbidden("_pickle.loads"), live=True),
    "builtins.getattr": Payload(_getattr_os_system, _forbidden("builtins.getattr"), live=True),
    "operator.attrgetter": Payload(_attrgetter_os_system, _forbidden("operator.attrgetter"), live=True),
    "INST opcode": Payload(lambda m: Raw(b"(X" + len(_cmd(m)).to_bytes(4, "little") + _cmd(m).encode()
                                         + b"ios\nsystem\n"),
                           r"uses old-style object creation \(INST\), which network pickles never do", live=True),
    "protocol 5 buffer": Payload(lambda m: Raw(b"\x96" + (10 ** 15).to_bytes(8, "little")),
                                 r"damaged or truncated: expected 1000000000000000 bytes in a bytearray8",
                                 live=False),
    "numpy object scalar": Payload(
        lambda m: Call(GlobalRef("numpy._core.multiarray", "scalar"),
                       (Call(GlobalRef("numpy", "dtype"), ("O", False, True)), b"\0" * 8)),
        r"numpy dtype of Python objects", live=False,
        expect_in_tensor_data=_forbidden("numpy._core.multiarray.scalar")),
    "numpy structured object dtype": Payload(
        lambda m: Call(GlobalRef("numpy", "dtype"), ([("a", "O")], False, True)),
        r"numpy dtype that is not named by a string", live=False, expect_in_tensor_data=_forbidden("numpy.dtype")),
    "numpy object array": Payload(
        lambda m: Call(GlobalRef("numpy._core.multiarray", "_reconstruct"), (GlobalRef("numpy", "ndarray"), (0,),
                                                                             b"b")),
        _forbidden("numpy._core.multiarray._reconstruct"), live=False),
    "numpy runstring": Payload(
        lambda m: Call(GlobalRef("numpy.testing._private.utils", "runstring"), (_py(m), {})),
        _forbidden("numpy.testing._private.utils.runstring"), live=True),
    "torch.load": Payload(lambda m: Call(GlobalRef("torch", "load"), (str(m),)), _forbidden("torch.load"),
                          live=False),
    "torch _rebuild_from_type_v2": Payload(
        lambda m: Call(GlobalRef("torch._tensor", "_rebuild_from_type_v2"),
                       (GlobalRef("os", "system"), GlobalRef("builtins", "object"), (_cmd(m),), {})),
        _forbidden("torch._tensor._rebuild_from_type_v2"), live=True),
    "torch attribute path": Payload(
        lambda m: Call(GlobalRef("torch._utils", "_rebuild_tensor_v2.__globals__.get"), ("__builtins__",)),
        _forbidden("torch._utils._rebuild_tensor_v2.__globals__.get"), live=False),
    "allowed module, other name": Payload(lambda m: Call(GlobalRef("collections", "namedtuple"), ("T", "a")),
                                          _forbidden("collections.namedtuple"), live=False),
    "EXT1 opcode": Payload(lambda m: Raw(b"\x82\x01"), r"uses the copyreg extension registry", live=False),
    "persistent ID": Payload(lambda m: Raw(b"N" + pickle.BINPERSID), r"uses persistent IDs", live=False,
                             expect_in_tensor_data=r"malformed storage reference"),
}


PLACEMENTS = {
    # (a) the whole pickle
    "top level": lambda G, payload: dumps(payload),
    # (b) inside persistent objects' state
    "in _parameters": lambda G, payload: dumps_snapshot(snapshot_of(G), edit_state=edit_class_state(
        "synthesis.b4.conv1", "SynthesisLayer", lambda s: s["_parameters"].__setitem__("weight", payload))),
    "in _buffers": lambda G, payload: dumps_snapshot(snapshot_of(G), edit_state=edit_class_state(
        "mapping", "MappingNetwork", lambda s: s["_buffers"].__setitem__("w_avg", payload))),
    "in _modules": lambda G, payload: dumps_snapshot(snapshot_of(G), edit_state=edit_class_state(
        "mapping", "MappingNetwork", lambda s: s["_modules"].__setitem__("fc0", payload))),
    "in _init_kwargs": lambda G, payload: dumps_snapshot(snapshot_of(G), edit_state=edit_class_state(
        "", "Generator", lambda s: s["_init_kwargs"]["synthesis_kwargs"].__setitem__("conv_clamp", payload))),
    "in D": lambda G, payload: dumps_snapshot(snapshot_of(G), edit_state=edit_class_state(
        "", "Discriminator", lambda s: s.__setitem__("epilogue", payload))),
    "in training_set_kwargs": lambda G, payload: dumps_snapshot(
        snapshot_of(G, training_set_kwargs=dict(class_name="x", path=payload))),
    # (d) as module_src: a live object where NVIDIA's source string belongs (the string itself is never run:
    #     test_module_src_is_never_executed)
    "as module_src": lambda G, payload: dumps_snapshot(snapshot_of(G), module_src=payload),
    # (c) inside the bytes of torch.storage._load_from_bytes (a legacy torch.save carrying the payload)
    "tensor data, top level": lambda G, payload: dumps(Call(LOAD_FROM_BYTES, (legacy_torch_save(payload),))),
    "tensor data, in a parameter": lambda G, payload: dumps_snapshot(snapshot_of(G), edit_state=edit_class_state(
        "synthesis.b4.conv1", "SynthesisLayer", lambda s: s["_parameters"].__setitem__(
            "weight", tensor_call(torch.zeros(1), blob=legacy_torch_save(payload))))),
}


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("name", PAYLOADS)
def test_hostile_payload_is_refused(tmp_path, small_G, name, placement):
    marker = tmp_path / "marker"
    payload = PAYLOADS[name]
    data = PLACEMENTS[placement](small_G, payload.build(marker))
    path = write(tmp_path / "hostile.pkl", data)
    expect = payload.expect_in_tensor_data if placement.startswith("tensor data") else payload.expect
    with pytest.raises(CheckpointError, match=expect) as caught:
        load_generator(path, device="cpu")
    assert "\n" not in str(caught.value)  # one line, for the CLI
    if "Popen" in name:
        time.sleep(0.2)  # a spawned process would need a moment
    assert not marker.exists()


@pytest.mark.parametrize("name", [n for n, p in PAYLOADS.items() if p.live])
def test_control_payloads_are_live(tmp_path, name):
    """Without the safe loader the same payloads do run: plain pickle, and torch.load of the tensor bytes."""
    payload = PAYLOADS[name]
    unsafe_loaders = {
        "pickle.loads": lambda marker: pickle.loads(dumps(payload.build(marker))),
        "torch.load": lambda marker: torch.load(io.BytesIO(legacy_torch_save(payload.build(marker))),
                                                weights_only=False),
    }
    for loader_name, unsafe_load in unsafe_loaders.items():
        marker = tmp_path / f"marker-{loader_name}"
        with contextlib.suppress(Exception):  # the payload runs first; what follows may fail
            unsafe_load(marker)
        deadline = time.monotonic() + 5
        while not marker.exists() and time.monotonic() < deadline:  # Popen runs touch asynchronously
            time.sleep(0.02)
        assert marker.exists(), f"payload {name} did not run under {loader_name}"


def test_module_src_is_never_executed(tmp_path, small_G):
    """(d) module_src holds NVIDIA's source code in real snapshots; here code that would create the marker.
    The loader never runs it: the model loads and the marker stays absent."""
    marker = tmp_path / "marker"
    module_src = (f"import os\nos.system({_cmd(marker)!r})\n{_py(marker)}\n\n"
                  "class Generator:\n    def __setstate__(self, state):\n"
                  f"        {_py(marker)}\n")
    path = write(tmp_path / "src.pkl", dumps_snapshot(snapshot_of(small_G), module_src=module_src))
    assert_same_outputs(load_generator(path, device="cpu"), small_G)
    assert not marker.exists()


HOOKS = collections.OrderedDict([(0, ORDERED_DICT)])  # {0: <a callable>}, pickled as official files do


def _hooked(edit):
    edit_state = edit_class_state("synthesis.b4.conv1", "SynthesisLayer", edit)
    return lambda G: dumps_snapshot(snapshot_of(G), edit_state=edit_state)


@pytest.mark.parametrize("build, message", [
    (_hooked(lambda s: s["_parameters"].__setitem__(
        "weight", Call(REBUILD_PARAMETER, (tensor_call(s["_parameters"]["weight"]), False, HOOKS)))),
     r"the file attaches hooks to a parameter"),
    (_hooked(lambda s: s["_buffers"].__setitem__(
        "noise_const", tensor_call(s["_buffers"]["noise_const"], backward_hooks=HOOKS))),
     r"the file attaches hooks to a tensor"),
    # BUILD on a tensor calls Tensor.__setstate__, which installs hooks from its state
    (_hooked(lambda s: s["_buffers"].__setitem__(
        "noise_const", tensor_call(s["_buffers"]["noise_const"], state=(False, None, HOOKS)))),
     r"the file attaches hooks to the tensor synthesis\.b4\.conv1\.noise_const"),
    (_hooked(lambda s: s["_parameters"].__setitem__(
        "bias", Call(REBUILD_PARAMETER, (tensor_call(s["_parameters"]["bias"]), False, Call(ORDERED_DICT, ())),
                     (False, None, HOOKS)))),
     r"the file attaches hooks to the tensor synthesis\.b4\.conv1\.bias"),
    (_hooked(lambda s: s["_parameters"].__setitem__(
        "bias", Call(REBUILD_PARAMETER, (tensor_call(s["_parameters"]["bias"], state=(False, None, HOOKS)), False,
                                         Call(ORDERED_DICT, ()))))),
     r"the file attaches hooks to a parameter"),
], ids=["parameter-arg", "tensor-arg", "tensor-BUILD", "parameter-BUILD", "BUILD-then-parameter"])
def test_backward_hooks_are_refused(tmp_path, small_G, build, message):
    with pytest.raises(CheckpointError, match=message):
        load_generator(write(tmp_path / "hooks.pkl", build(small_G)), device="cpu")


@pytest.mark.parametrize("obj, message", [
    (Call(ORDERED_DICT, (), {"items": ORDERED_DICT}), r"set attributes on a dict \(BUILD on an OrderedDict\)"),
    (Raw(b"\x8c\x0bdnnlib.util\x8c\x08EasyDict\x93)\x81}\x8c\x05items\x8c\x01xsb"),
     r"set attributes on a dict \(BUILD on an EasyDict\)"),
    (Call(RECONSTRUCT_PERSISTENT_OBJ, (dict(type="class", class_name="Generator", state={}),), {"state": {}}),
     r"modify a persistent object after creating it"),
    (Call(LOAD_FROM_BYTES, (storage_bytes(torch.zeros(2)),), {"storage": 1}), r"damaged or not a pickle"),
], ids=["OrderedDict", "EasyDict", "PersistentRecord", "storage"])
def test_build_opcode_cannot_alter_loader_objects(tmp_path, obj, message):
    with pytest.raises(CheckpointError, match=message):
        load_generator(write(tmp_path / "build.pkl", dumps(dict(G_ema=obj))), device="cpu")


# ---------------------------------------------------------------------------------------------------------------
# Files that are not snapshots, or are damaged


def _generator_record(state_changes=None, **meta_changes):
    state = {"_parameters": {}, "_buffers": {}, "_modules": {}, "_init_args": (), "_init_kwargs": dict(SMALL_CONFIG)}
    state.update(state_changes or {})
    meta = dict(type="class", version=6, module_src="", class_name="Generator", state=state)
    meta.update(meta_changes)
    return Call(RECONSTRUCT_PERSISTENT_OBJ, (meta,))


@pytest.mark.parametrize("obj, message", [
    ([1, 2, 3], r"is a pickle but not a network snapshot"),
    ("G_ema", r"is a pickle but not a network snapshot"),
    (dict(G=1, D=2), r"the snapshot has no 'G_ema' network \(keys: 'G', 'D'\)"),
    (dict(G_ema=5), r"G_ema in the file is not a network"),
    (dict(G_ema=EasyDict(z_dim=8)), r"G_ema in the file is not a network"),
    (dict(G_ema=persistent("Discriminator", {"_init_kwargs": {}})), r"G_ema is a 'Discriminator', not"),
    (dict(G_ema=persistent("Generator", {})), r"does not record its configuration \(_init_kwargs\)"),
    (dict(G_ema=_generator_record({"_init_args": (8, 0)})), r"built with positional arguments"),
    (dict(G_ema=_generator_record({"_init_args": 5})), r"malformed constructor arguments"),
    (dict(G_ema=_generator_record({"_init_kwargs": [1, 2]})), r"configuration is not a dict"),
    (dict(G_ema=_generator_record(type="function")), r"persistent object with malformed metadata"),
    (dict(G_ema=_generator_record(class_name=None)), r"persistent object without a class name"),
    (dict(G_ema=Call(RECONSTRUCT_PERSISTENT_OBJ, ())), r"persistent object with malformed metadata"),
    (dict(G_ema=Raw(b"\x8c\x17torch_utils.persistence\x8c\x1b_reconstruct_persistent_obj\x93)\x81")),
     r"persistent object with malformed metadata"),  # NEWOBJ skips __init__
    (dict(G_ema=_generator_record({"_parameters": [1]})), r"_parameters is not a dict"),
    (dict(G_ema=_generator_record({"_parameters": {1: None}})), r"_parameters has a key that is not a string"),
    (dict(G_ema=_generator_record({"_parameters": {"w": 1.5}})), r"w is not a tensor"),
    (dict(G_ema=_generator_record({"_modules": {"mapping": {"a": 1}}})), r"mapping is not a network module"),
    (dict(G_ema=_generator_record({"_non_persistent_buffers_set": 3})), r"malformed _non_persistent_buffers_set"),
    (dict(G_ema=_generator_record()), r"the file lacks the tensor"),
])
def test_not_a_generator_snapshot(tmp_path, obj, message):
    with pytest.raises(CheckpointError, match=message):
        load_generator(write(tmp_path / "n.pkl", dumps(obj)), device="cpu")


def test_cyclic_and_shared_structures_are_refused_quickly(tmp_path, small_G):
    cyclic = []
    cyclic.append(cyclic)
    exponential = [1]
    for _ in range(60):  # 2**60 paths through 60 lists, if a walk followed every reference
        exponential = [exponential, exponential]

    cases = {
        r"refusing to load: the network file holds a structure that contains itself": edit_class_state(
            "", "Generator", lambda s: s["_init_kwargs"]["synthesis_kwargs"].__setitem__("x", cyclic)),
        r"configuration (is nested too deeply|is too large)": edit_class_state(
            "", "Generator", lambda s: s["_init_kwargs"]["synthesis_kwargs"].__setitem__("x", exponential)),
        r"configuration holds a Tensor, where only numbers, strings and lists belong": edit_class_state(
            "", "Generator", lambda s: s["_init_kwargs"]["synthesis_kwargs"].__setitem__(
                "conv_clamp", tensor_call(torch.ones(1)))),
        r"the same module appears twice": edit_class_state(
            "mapping", "MappingNetwork", lambda s: s["_modules"].__setitem__("fc1", s["_modules"]["fc0"])),
    }
    for message, edit in cases.items():
        start = time.monotonic()
        with pytest.raises(CheckpointError, match=message):
            load_generator(write(tmp_path / "c.pkl", dumps_snapshot(snapshot_of(small_G), edit_state=edit)))
        assert time.monotonic() - start < 10


def test_module_cycle_is_refused(tmp_path):
    """A record whose _modules holds the record itself (SETITEM into the memoized dict after the REDUCE)."""
    modules = {}
    record = persistent("Generator", {"_parameters": {}, "_buffers": {}, "_modules": modules, "_init_args": (),
                                      "_init_kwargs": dict(SMALL_CONFIG)})
    data = dumps(dict(G_ema=record, cycle=SetItem(modules, "self", record)))

    class Plain(pickle.Unpickler):  # the unpickler's classes without its opcode walk
        def find_class(self, module, name):
            return unpickler.ALLOWED_GLOBALS[(module, name)]

    snapshot = Plain(io.BytesIO(data)).load()
    assert snapshot["G_ema"].state["_modules"]["self"] is snapshot["G_ema"]  # the cycle is really there
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=r"the network file holds a structure that contains itself"):
        load_generator(write(tmp_path / "cycle.pkl", data))
    assert time.monotonic() - start < 10


def test_truncated_pickles(tmp_path, small_pickle_bytes):
    data = small_pickle_bytes
    first_blob = binbytes_payload_spans(data)[0]
    for cut in (1, 2, 3, 12, first_blob[0] + 10, first_blob[0] + 300, len(data) // 3, len(data) // 2,
                len(data) - 100, len(data) - 1):
        path = write(tmp_path / f"cut{cut}.pkl", data[:cut])
        with pytest.raises(CheckpointError, match=r"truncated|damaged|neither a network pickle") as caught:
            load_generator(path, device="cpu")
        assert str(caught.value)


def test_files_that_are_not_networks(tmp_path):
    with pytest.raises(CheckpointError, match=r"is empty"):
        load_generator(write(tmp_path / "empty.pkl", b""))
    with pytest.raises(CheckpointError, match=r"neither a network pickle nor a safetensors file"):
        load_generator(write(tmp_path / "text.pkl", b"This is a README, not a network.\n" * 20))
    rng = np.random.default_rng(0)
    for i in range(20):
        noise = rng.bytes(int(rng.integers(1, 5000)))
        with pytest.raises(CheckpointError):
            load_generator(write(tmp_path / f"random{i}.pkl", noise))
        with pytest.raises(CheckpointError):  # past the first check, into the unpickler
            load_generator(write(tmp_path / f"random{i}.pkl", b"\x80\x04" + noise))
    with pytest.raises(CheckpointError, match=r"is a directory, not a network file"):
        load_generator(tmp_path)
    missing = tmp_path / "no" / "such.pkl"
    with pytest.raises(CheckpointError, match=re.escape(f"no network file at {missing}")):
        load_generator(missing)
    assert issubclass(CheckpointError, TimemachineError)


def test_unreadable_file(tmp_path, small_pickle_bytes):
    path = write(tmp_path / "locked.pkl", small_pickle_bytes)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user who can read any file (root)")
        with pytest.raises(CheckpointError, match=r"cannot read .*locked\.pkl: Permission denied"):
            load_generator(path)
    finally:
        path.chmod(0o600)


# ---------------------------------------------------------------------------------------------------------------
# Huge claims: nothing large is allocated for what a file merely says


def _with_config(**changes):
    def edit(state):
        state["_init_kwargs"].update({k: EasyDict(v) if isinstance(v, dict) else v for k, v in changes.items()})
    return edit_class_state("", "Generator", edit)


@pytest.mark.parametrize("changes, message", [
    (dict(img_resolution=2 ** 20), r"unsupported image resolution 1048576"),
    (dict(img_resolution=48), r"unsupported image resolution 48"),
    (dict(z_dim=10 ** 9), r"z_dim=1000000000 is out of range"),
    (dict(synthesis_kwargs=dict(channel_base=2 ** 40)), r"synthesis channel_base=1099511627776 is out of range"),
    (dict(mapping_kwargs=dict(num_layers=10 ** 6)), r"mapping num_layers=1000000 is out of range"),
    # within the limits but ~60 GB of weights: refused for lack of data before anything is allocated
    (dict(img_resolution=4096, synthesis_kwargs=dict(channel_base=2 ** 25, channel_max=8192)),
     r"the file lacks the tensor|has shape"),
    (dict(z_dim=4096, w_dim=4096, mapping_kwargs=dict(num_layers=64)), r"the file lacks the tensor|has shape"),
], ids=["res-2^20", "res-48", "z_dim", "channel_base", "num_layers", "60GB-synthesis", "4GB-mapping"])
def test_huge_claimed_configuration(tmp_path, small_G, changes, message):
    path = write(tmp_path / "huge.pkl", dumps_snapshot(snapshot_of(small_G), edit_state=_with_config(**changes)))
    with address_space_limit(2 << 30):
        with pytest.raises(CheckpointError, match=message):
            load_generator(path, device="cpu")


def test_tensors_that_claim_more_data_than_the_file_holds(tmp_path):
    """A full-size model whose every tensor is a stride-0 view of one element: a small file claiming GBs."""
    config = dict(z_dim=512, w_dim=512, c_dim=0, img_resolution=1024, img_channels=3,
                  synthesis_kwargs=dict(channel_base=2 ** 20, channel_max=2048))
    with record_init_args(), torch.device("meta"):
        G = Generator(**config)  # no memory: only its module structure is written

    def stride0(path, class_name, state):
        for kind in ("_parameters", "_buffers"):
            for name, value in state[kind].items():
                if value is not None:
                    state[kind][name] = tensor_call(torch.zeros(1), size=value.shape, stride=(0,) * value.ndim)

    data = dumps(dict(G_ema=G), edit_state=stride0)
    assert len(data) < 10 ** 6
    path = write(tmp_path / "claims.pkl", data)
    with address_space_limit(2 << 30):
        with pytest.raises(CheckpointError, match=r"the file's tensors claim \d+ bytes of data but hold \d+"):
            load_generator(path, device="cpu")


def _storage_with_claim(values: torch.Tensor, numel: int) -> bytes:
    blob = storage_bytes(values)
    key_at = blob.index(b"cpuq\x03") + 5
    claim = pickle.dumps(numel, protocol=2)[2:-1]  # the integer opcode alone
    old = pickle.dumps(values.numel(), protocol=2)[2:-1]
    assert blob[key_at:key_at + len(old)] == old
    return blob[:key_at] + claim + blob[key_at + len(old):]


@pytest.mark.parametrize("numel", [5, 2 ** 34, 2 ** 62])
def test_tensor_data_claiming_more_elements_than_present(tmp_path, small_G, numel):
    blob = _storage_with_claim(torch.arange(4.0), numel)
    edit = edit_class_state("mapping", "MappingNetwork", lambda s: s["_buffers"].__setitem__(
        "w_avg", tensor_call(torch.zeros(1), blob=blob, size=(8,), stride=(1,))))
    path = write(tmp_path / "claim.pkl", dumps_snapshot(snapshot_of(small_G), edit_state=edit))
    with address_space_limit(2 << 30):
        with pytest.raises(CheckpointError, match=rf"tensor data in the file claims {numel} elements but holds 16 "
                                                  r"bytes of torch\.float32"):
            load_generator(path, device="cpu")


@pytest.mark.parametrize("opcodes, message", [
    # found by test_checkpoint_fuzz: the C unpickler zero-fills a memo array of twice the index (24 GB here)
    (b"N" + pickle.LONG_BINPUT + (1_500_000_000).to_bytes(4, "little"), r"memo index 1500000000 out of sequence"),
    (b"N" + pickle.BINPUT + b"\x07", r"memo index 7 out of sequence"),
    (pickle.FRAME + (2 ** 40).to_bytes(8, "little") + b"N", r"truncated \(a frame runs past its end\)"),
    (b"\x8e" + (2 ** 40).to_bytes(8, "little"), r"damaged or truncated: expected 1099511627776 bytes"),
    (pickle.LONG4 + (2 ** 31 - 1).to_bytes(4, "little"), r"damaged: not enough data in stream to read long4"),
], ids=["LONG_BINPUT", "BINPUT", "FRAME", "BINBYTES8", "LONG4"])
def test_forged_numbers_allocate_nothing(tmp_path, opcodes, message):
    with address_space_limit(2 << 30):
        with pytest.raises(CheckpointError, match=message):
            load_generator(write(tmp_path / "forged.pkl", dumps(Raw(opcodes))))


@pytest.mark.parametrize("size, stride, offset, message", [
    ((8,), (1,), 0, r"points outside|out of bounds|damaged"),          # 8 elements from a storage of 4
    ((2,), (1,), 3, r"points outside|out of bounds|damaged"),
    ((4,), (-1,), 0, r"malformed size, stride or offset"),
    ((4.0,), (1,), 0, r"malformed size, stride or offset"),
    ((4,), (1, 1), 0, r"malformed size, stride or offset"),
])
def test_tensor_views_outside_their_data(tmp_path, size, stride, offset, message):
    obj = dict(G_ema=tensor_call(torch.arange(4.0), size=size, stride=stride, offset=offset))
    with pytest.raises(CheckpointError, match=message):
        load_generator(write(tmp_path / "view.pkl", dumps(obj)))


def test_official_fixture_config(tiny_G):
    assert tiny_G.init_kwargs == TINY_CONFIG
