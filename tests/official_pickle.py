"""Test helper: write StyleGAN2-ADA network pickles in the official structure, without NVIDIA's code.

The official training loop pickles ``dict(training_set_kwargs, G, D, G_ema, augment_pipe)`` where every network
is a ``torch_utils.persistence`` object, pickled as::

    torch_utils.persistence._reconstruct_persistent_obj(meta)
    meta = {'type': 'class', 'version': 6, 'module_src': <source of NVIDIA's networks.py>,
            'class_name': 'Generator', 'state': <the module's __dict__: training, _parameters, _buffers,
                                                 _modules, hook dicts, attributes, _init_args, _init_kwargs>}

tensors the way ``pickle.dump`` writes them (``torch._utils._rebuild_parameter`` /
``torch._utils._rebuild_tensor_v2`` around ``torch.storage._load_from_bytes(<legacy torch.save of the storage>)``),
nested configuration dicts as ``dnnlib.util.EasyDict`` and numpy scalars (``weight_gain``) as
``numpy._core.multiarray.scalar(numpy.dtype('f8'), bytes)`` - ``numpy.core.multiarray.scalar`` under numpy 1.x.

This module writes the same byte structure from our own :mod:`timemachine.networks` modules.  It never imports
``torch_utils`` or ``dnnlib``: a :class:`GlobalRef` is written as a ``STACK_GLOBAL`` (or ``GLOBAL``) of the
module and name it carries, by a subclass of Python's pure-Python pickler, without looking the name up.  The
same machinery builds hostile pickles for the loader's tests (:class:`Call` pickles as ``func(*args)``).

Typical use::

    G = make_generator(z_dim=32, w_dim=32, c_dim=0, img_resolution=16, img_channels=3, seed=1)
    data = dumps_snapshot(snapshot_of(G_ema=G))   # bytes of an official-format network pickle
    pickle_globals(data)                          # {('torch_utils.persistence', '_reconstruct_persistent_obj'), ...}
"""

from __future__ import annotations

import contextlib
import copy
import io
import pickle
import pickletools
import re
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from timemachine import networks

PERSISTENCE_VERSION = 6
#: What the shared fixture carries instead of NVIDIA's source; tests may pass real-looking code instead.
PLACEHOLDER_MODULE_SRC = "# module source omitted from this fixture\n"


class GlobalRef:
    """A global ``module.name`` that pickles as a global reference without importing ``module``."""

    def __init__(self, module: str, name: str):
        self.module = module
        self.name = name

    def __call__(self, *args, **kwargs):  # save_reduce() insists that a reduce function is callable
        raise TypeError(f"{self!r} only names a global for pickling")

    def __repr__(self) -> str:
        return f"GlobalRef({self.module}.{self.name})"


class Call:
    """Pickles as ``func(*args)`` (REDUCE), followed by BUILD with ``state`` when ``state`` is not None."""

    def __init__(self, func: Any, args: tuple = (), state: Any = None):
        self.func = func
        self.args = tuple(args)
        self.state = state

    def __call__(self, *args, **kwargs):  # a Call may itself be the function of another Call
        raise TypeError(f"{self!r} only describes a call for pickling")

    def __reduce_ex__(self, protocol):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)

    def __repr__(self) -> str:
        return f"Call({self.func!r}, {len(self.args)} args)"


class EasyDict(dict):
    """Pickles as a ``dnnlib.util.EasyDict`` (NEWOBJ of that class, then its items), like the official one."""


class SetItem:
    """Pickles as ``target[key] = value`` where ``target`` (and usually ``value``) were already written earlier
    in the same stream, so both are memo references, not copies; leaves ``target`` on the stack.  This makes
    cycles that ordinary pickling of Python objects cannot express, e.g. a record inside its own ``_modules``."""

    def __init__(self, target: Any, key: Any, value: Any):
        self.target = target
        self.key = key
        self.value = value


class Raw:
    """Opcodes written verbatim into the stream (for malformed-pickle tests); they must leave one object."""

    def __init__(self, opcodes: bytes):
        self.opcodes = opcodes


RECONSTRUCT_PERSISTENT_OBJ = GlobalRef("torch_utils.persistence", "_reconstruct_persistent_obj")
EASYDICT = GlobalRef("dnnlib.util", "EasyDict")
LOAD_FROM_BYTES = GlobalRef("torch.storage", "_load_from_bytes")
REBUILD_TENSOR_V2 = GlobalRef("torch._utils", "_rebuild_tensor_v2")
REBUILD_PARAMETER = GlobalRef("torch._utils", "_rebuild_parameter")
ORDERED_DICT = GlobalRef("collections", "OrderedDict")

#: The globals an official network pickle references (numpy >= 2 names), per ../shared/README.md.
OFFICIAL_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"), ("dnnlib.util", "EasyDict"),
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch.storage", "_load_from_bytes"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"),
}


def persistent(class_name: str, state: dict, module_src: str = PLACEHOLDER_MODULE_SRC,
               version: Any = PERSISTENCE_VERSION) -> Call:
    """A hand-made persistent object: ``_reconstruct_persistent_obj(dict(type='class', ...))``."""
    meta = dict(type="class", version=version, module_src=module_src, class_name=class_name, state=state)
    return Call(RECONSTRUCT_PERSISTENT_OBJ, (meta,))


class OfficialPickler(pickle._Pickler):
    """Pure-Python pickler that writes modules as persistent objects and :class:`GlobalRef` names verbatim.

    Args:
        numpy1_names: write numpy scalars as ``numpy.core.multiarray.scalar`` (numpy 1.x) instead of
                      ``numpy._core.multiarray.scalar``.
        module_src:   the ``module_src`` string stored in every persistent object.
        edit_state:   optional ``fn(path, class_name, state)`` called with each module's state dict (a copy)
                      before it is written; ``path`` is '' for the top module of a network, else 'synthesis.b4'...
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file, protocol: int = 4, numpy1_names: bool = False,
                 module_src: str = PLACEHOLDER_MODULE_SRC,
                 edit_state: Optional[Callable[[str, str, dict], None]] = None):
        super().__init__(file, protocol=protocol)
        self.numpy_scalar = GlobalRef("numpy.core.multiarray" if numpy1_names else "numpy._core.multiarray", "scalar")
        self.module_src = module_src
        self.edit_state = edit_state
        self._module_paths: dict[int, str] = {}
        self._storage_count = 0

    def reducer_override(self, obj):
        if isinstance(obj, torch.nn.Module):
            return RECONSTRUCT_PERSISTENT_OBJ, (self._meta(obj),)
        if isinstance(obj, np.generic):
            return self.numpy_scalar, (obj.dtype, obj.tobytes())
        if isinstance(obj, torch.storage.TypedStorage):  # what TypedStorage.__reduce__ does, with stable keys
            self._storage_count += 1
            return LOAD_FROM_BYTES, (_typed_storage_bytes(obj, self._storage_count),)
        return NotImplemented

    def _meta(self, module: torch.nn.Module) -> dict:
        path = self._module_paths.get(id(module), "")
        for name, child in module._modules.items():
            if child is not None:
                self._module_paths[id(child)] = f"{path}.{name}" if path else name
        if "_init_args" not in module.__dict__:
            raise ValueError(f"{type(module).__name__} was not built under record_init_args(); "
                             "the official structure needs its constructor arguments")
        # One level deeper than a shallow copy, so that edit_state cannot touch the module's own dicts.
        state = {k: copy.copy(v) if isinstance(v, (dict, list, set)) else v for k, v in module.__dict__.items()}
        state.pop("init_kwargs", None)  # timemachine's own attribute; NVIDIA's Generator has none
        # Official constructor arguments come from JSON-like EasyDict configs: nested dicts are EasyDicts and
        # sequences are lists (ours pass some defaults as tuples, e.g. resample_filter=(1, 3, 3, 1)).
        state["_init_kwargs"] = {k: EasyDict(v) if isinstance(v, dict) else list(v) if isinstance(v, tuple) else v
                                 for k, v in state["_init_kwargs"].items()}
        if self.edit_state is not None:
            self.edit_state(path, type(module).__name__, state)
        return dict(type="class", version=PERSISTENCE_VERSION, module_src=self.module_src,
                    class_name=type(module).__name__, state=state)

    def save_global_ref(self, obj: GlobalRef) -> None:
        if self.proto >= 4:
            self.save(obj.module)
            self.save(obj.name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + obj.module.encode("utf-8") + b"\n" + obj.name.encode("utf-8") + b"\n")
        self.memoize(obj)

    def save_easydict(self, obj: EasyDict) -> None:
        self.save(EASYDICT)
        self.save(())
        self.write(pickle.NEWOBJ)
        self.memoize(obj)
        self._batch_setitems(iter(obj.items()))

    def save_raw(self, obj: Raw) -> None:
        self.write(obj.opcodes)

    def save_setitem(self, obj: SetItem) -> None:
        if id(obj.target) not in self.memo:
            raise ValueError("SetItem needs a target written earlier in the stream")
        self.save(obj.target)
        self.save(obj.key)
        self.save(obj.value)
        self.write(pickle.SETITEM)

    dispatch[GlobalRef] = save_global_ref
    dispatch[EasyDict] = save_easydict
    dispatch[Raw] = save_raw
    dispatch[SetItem] = save_setitem


def dumps(obj: Any, protocol: int = 4, **pickler_kwargs) -> bytes:
    """Pickle ``obj`` with :class:`OfficialPickler` (keywords: numpy1_names, module_src, edit_state)."""
    buffer = io.BytesIO()
    OfficialPickler(buffer, protocol=protocol, **pickler_kwargs).dump(obj)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Networks with the constructor arguments that torch_utils.persistence records


@contextlib.contextmanager
def record_init_args(*classes: type) -> Iterator[None]:
    """While active, instances of ``classes`` (default: every module class of timemachine.networks and the dummy
    D/augment classes below) store ``_init_args``/``_init_kwargs`` as ``persistence.persistent_class`` does."""
    if not classes:
        classes = (networks.Generator, networks.MappingNetwork, networks.FullyConnectedLayer,
                   networks.SynthesisNetwork, networks.SynthesisBlock, networks.SynthesisLayer,
                   networks.ToRGBLayer, networks.Conv2dLayer, Discriminator, AugmentPipe)
    originals = {cls: cls.__dict__["__init__"] for cls in classes}

    def wrap(init):
        def __init__(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)
        return __init__

    try:
        for cls, init in originals.items():
            cls.__init__ = wrap(init)
        yield
    finally:
        for cls, init in originals.items():
            cls.__init__ = init


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every parameter and buffer except the resampling filters random values (non-zero biases,
    noise strengths, noise_const and w_avg), so that any wiring mistake changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith("resample_filter"):
                continue
            scale = 1.0 if name.endswith(("weight", "const", "noise_const")) else 0.1
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
    return module


#: A tiny generator config: small enough that the hostile-payload matrices load it hundreds of times in seconds.
SMALL_CONFIG = dict(z_dim=8, w_dim=8, c_dim=0, img_resolution=8, img_channels=3,
                    mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=64, channel_max=16))
#: Characters a one-line message shown in a terminal must not hold (C0 and C1 controls).
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def write(path, data: bytes):
    """``data`` written to ``path``; returns ``path``."""
    path.write_bytes(data)
    return path


def assert_one_sentence(message: str) -> str:
    """``message`` is non-empty, one line and free of control characters; returns it."""
    assert message and "\n" not in message and not CONTROL_CHARACTERS.search(message), message
    return message


def edit_class_state(target_path: str, target_class: str, edit: Callable[[dict], Any]):
    """An ``edit_state`` for :func:`dumps_snapshot`: apply ``edit`` to the state of the module at ``target_path``
    (e.g. 'synthesis.b4.conv1') of class ``target_class``."""
    def edit_state(path, class_name, state):
        if path == target_path and class_name == target_class:
            edit(state)
    return edit_state


def make_generator(seed: int = 0, **config) -> networks.Generator:
    """Our Generator for ``config`` with recorded constructor arguments and random weights; eval mode, no grad."""
    with record_init_args():
        G = networks.Generator(**config)
    return randomize_(G, seed).eval().requires_grad_(False)


class Discriminator(torch.nn.Module):
    """A small stand-in for the official D: class name, constructor arguments, a few layers and tensors."""

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int, channel_base: int = 1024,
                 channel_max: int = 64, architecture: str = "resnet", block_kwargs: Optional[dict] = None,
                 mapping_kwargs: Optional[dict] = None, epilogue_kwargs: Optional[dict] = None):
        super().__init__()
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        channels = min(channel_base // img_resolution, channel_max)
        self.b0 = networks.Conv2dLayer(img_channels, channels, kernel_size=1, activation="lrelu")
        self.b1 = networks.Conv2dLayer(channels, channels, kernel_size=3, activation="lrelu", down=2)
        self.out = networks.FullyConnectedLayer(channels, max(c_dim, 1))


class AugmentPipe(torch.nn.Module):
    """A small stand-in for the official ADA augment pipe: float attributes and a few buffers."""

    def __init__(self, xflip: float = 0, rotate90: float = 0, xint: float = 0, scale: float = 0):
        super().__init__()
        self.xflip = float(xflip)
        self.rotate90 = float(rotate90)
        self.xint = float(xint)
        self.scale = float(scale)
        self.imgfilter_bands = [1, 1, 1, 1]
        generator = torch.Generator().manual_seed(12)  # not the global RNG: the same bytes in every test order
        self.register_buffer("p", torch.ones([]))
        self.register_buffer("Hz_geom", torch.randn([12], generator=generator))
        self.register_buffer("Hz_fbank", torch.randn([4, 13], generator=generator))


def snapshot_of(G_ema: networks.Generator, G: Optional[networks.Generator] = None, D: Any = "dummy",
                augment_pipe: Any = "dummy", training_set_kwargs: Optional[dict] = None) -> dict:
    """The dict the official training loop pickles; D and augment_pipe default to small dummies."""
    with record_init_args(Discriminator, AugmentPipe, networks.Conv2dLayer, networks.FullyConnectedLayer):
        if D == "dummy":
            D = randomize_(Discriminator(c_dim=G_ema.c_dim, img_resolution=G_ema.img_resolution,
                                         img_channels=G_ema.img_channels, block_kwargs=EasyDict(),
                                         mapping_kwargs=EasyDict(), epilogue_kwargs=EasyDict(mbstd_group_size=4)),
                           seed=123).eval().requires_grad_(False)
        if augment_pipe == "dummy":
            augment_pipe = AugmentPipe(xflip=1, rotate90=1, xint=1, scale=1).eval().requires_grad_(False)
    if training_set_kwargs is None:
        training_set_kwargs = dict(class_name="training.dataset.ImageFolderDataset", path="~/datasets/test.zip",
                                   use_labels=G_ema.c_dim > 0, max_size=1000, xflip=False,
                                   resolution=G_ema.img_resolution)
    return dict(training_set_kwargs=training_set_kwargs, G=G if G is not None else G_ema, D=D, G_ema=G_ema,
                augment_pipe=augment_pipe)


def dumps_snapshot(snapshot: dict, numpy1_names: bool = False, module_src: str = PLACEHOLDER_MODULE_SRC,
                   edit_state: Optional[Callable[[str, str, dict], None]] = None, protocol: int = 4) -> bytes:
    """The bytes of an official-format network pickle of ``snapshot`` (see :func:`snapshot_of`).

    ``protocol=4`` is what ``pickle.dump`` writes under Python >= 3.8 (and what the shared fixture holds);
    ``protocol=3`` what it wrote under Python 3.7, the version NVIDIA's training code required: no
    STACK_GLOBAL/MEMOIZE/FRAME/EMPTY_SET, so sets appear as ``builtins.set([...])``."""
    return dumps(snapshot, protocol=protocol, numpy1_names=numpy1_names, module_src=module_src,
                 edit_state=edit_state)


def write_official_pickle(path, G_ema: networks.Generator, **kwargs) -> None:
    """Write ``snapshot_of(G_ema, G=..., D=..., augment_pipe=...)`` to ``path``; other keywords go to
    :func:`dumps_snapshot`."""
    snapshot_keys = {k: kwargs.pop(k) for k in ("G", "D", "augment_pipe", "training_set_kwargs") if k in kwargs}
    with open(path, "wb") as f:
        f.write(dumps_snapshot(snapshot_of(G_ema, **snapshot_keys), **kwargs))


# ---------------------------------------------------------------------------------------------------------------
# Tensors by hand, for hostile pickles


def legacy_torch_save(payload: Any) -> bytes:
    """Bytes in torch's legacy ``torch.save`` layout (magic number, protocol, sys info, object, storage keys)
    whose object pickle is ``payload`` written by :class:`OfficialPickler` - e.g. a :class:`Call` of os.system."""
    sys_info = dict(protocol_version=1001, little_endian=True, type_sizes=dict(short=2, int=4, long=4))
    head = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, sys_info))
    return head + dumps(payload, protocol=2) + pickle.dumps([], protocol=2)


def _typed_storage_bytes(storage: torch.storage.TypedStorage, number: int = 0) -> bytes:
    """``torch.save(storage, _use_new_zipfile_serialization=False)``, as ``TypedStorage.__reduce__`` does, with the
    storage key (torch writes the storage's memory address) replaced by ``number`` padded to the same width,
    so that the same tensors always give the same bytes."""
    buffer = io.BytesIO()
    torch.save(storage, buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    key = re.search(rb"Storage\nq\x01X....(\d+)q\x02", data, re.DOTALL).group(1)
    return data.replace(key, str(number).zfill(len(key)).encode())


def storage_bytes(values: torch.Tensor, number: int = 0) -> bytes:
    """What ``TypedStorage.__reduce__`` hands to ``torch.storage._load_from_bytes`` for ``values``' storage."""
    values = values.detach().contiguous()
    storage = torch.storage.TypedStorage(wrap_storage=values.untyped_storage(), dtype=values.dtype, _internal=True)
    return _typed_storage_bytes(storage, number)


def tensor_call(values: torch.Tensor, blob: Optional[bytes] = None, size=None, stride=None, offset: int = 0,
                backward_hooks: Any = None, state: Any = None) -> Call:
    """``torch._utils._rebuild_tensor_v2(_load_from_bytes(blob), offset, size, stride, False, hooks)``; by
    default ``blob`` holds ``values`` and size/stride are theirs."""
    blob = storage_bytes(values) if blob is None else blob
    storage = Call(LOAD_FROM_BYTES, (blob,))
    size = tuple(values.shape) if size is None else tuple(size)
    stride = tuple(values.contiguous().stride()) if stride is None else tuple(stride)
    hooks = Call(ORDERED_DICT, ()) if backward_hooks is None else backward_hooks
    return Call(REBUILD_TENSOR_V2, (storage, offset, size, stride, False, hooks), state)


# ---------------------------------------------------------------------------------------------------------------
# Reading pickles back


def pickle_globals(data: bytes) -> set[tuple[str, str]]:
    """Every (module, name) the pickle ``data`` references through GLOBAL, STACK_GLOBAL or INST (not looking
    inside byte strings).  Strings reached through the memo are followed."""
    found: set[tuple[str, str]] = set()
    memo: dict[int, Any] = {}
    recent: list[Any] = []  # values pushed by the latest opcodes (strings; None for anything else)
    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            module, _, qualname = arg.partition(" ")
            found.add((module, qualname))
            recent.append(None)
        elif name == "STACK_GLOBAL":
            found.add((recent[-2], recent[-1]))
            recent.append(None)
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = recent[-1] if recent else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            recent.append(memo.get(arg))
        elif isinstance(arg, str) and ("UNICODE" in name or name in ("STRING", "BINSTRING", "SHORT_BINSTRING")):
            recent.append(arg)
        elif name not in ("FRAME", "PROTO"):
            recent.append(None)
        del recent[:-4]
    return found


def find_opcode_offsets(data: bytes, opcode_name: str) -> list[int]:
    """Byte offsets of every ``opcode_name`` opcode in ``data``."""
    return [pos for opcode, _, pos in pickletools.genops(data) if opcode.name == opcode_name]


def binbytes_payload_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) byte ranges of the payloads of BINBYTES/SHORT_BINBYTES opcodes (the tensor blobs)."""
    spans = []
    for opcode, arg, pos in pickletools.genops(data):
        if opcode.name in ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8"):
            header = {"SHORT_BINBYTES": 2, "BINBYTES": 5, "BINBYTES8": 9}[opcode.name]
            spans.append((pos + header, pos + header + len(arg)))
    return spans


__all__ = [
    "EASYDICT", "LOAD_FROM_BYTES", "ORDERED_DICT", "REBUILD_PARAMETER", "REBUILD_TENSOR_V2",
    "RECONSTRUCT_PERSISTENT_OBJ",
    "AugmentPipe", "Call", "Discriminator", "EasyDict", "GlobalRef", "OFFICIAL_GLOBALS", "OfficialPickler", "Raw",
    "SetItem",
    "binbytes_payload_spans", "dumps", "dumps_snapshot", "find_opcode_offsets", "legacy_torch_save",
    "make_generator", "persistent", "pickle_globals", "randomize_", "record_init_args", "snapshot_of",
    "storage_bytes", "tensor_call", "write_official_pickle",
]
