"""Loading generators from official StyleGAN2-ADA network pickles, safely; the project's safetensors format.

Official pickles (``afhqdog.pkl``, ``network-snapshot-*.pkl``) are a pickled dict
``{'training_set_kwargs', 'G', 'D', 'G_ema', 'augment_pipe'}`` whose networks are
``torch_utils.persistence`` objects: ``_reconstruct_persistent_obj(meta)`` with ``meta`` holding the class
name, the constructor arguments and the module state, and ``module_src`` - the Python source of NVIDIA's
network code, which unpickling with NVIDIA's code would *execute*.

Here nothing from the file is executed:

* before anything is unpickled, :func:`_check_opcodes` walks the pickle's opcodes: only those that protocol 2-4
  pickles of plain data use are accepted (no persistent IDs, extension registry, INST/OBJ, protocol 5
  buffers), and every length field and memo index is checked against the bytes and entries present, so a
  forged number cannot make the unpickler allocate gigabytes.
* :class:`_RestrictedUnpickler` resolves only the globals in :data:`ALLOWED_GLOBALS`; any other global
  (``os.system``, ``builtins.eval``, ...) stops the load with a :class:`CheckpointError` naming it.
  ``_reconstruct_persistent_obj`` is replaced by :class:`PersistentRecord`, an inert record of ``meta``.
* tensor bytes inside ``torch.storage._load_from_bytes`` (a legacy-format ``torch.save`` of one storage) are
  parsed by :func:`_load_storage_from_bytes`: its pickles go through the same kind of restricted unpickler
  (only storage type names resolve), and the claimed element count must match the bytes present.
* the generator is then built from *our* :mod:`timemachine.networks` using the record's class name and
  ``_init_kwargs``: first on the 'meta' device, where its shapes are compared with the file's tensors and a
  forward pass checks the configuration, and only then with real memory.  ``module_src`` is never read.

Every way a file can be wrong - forbidden content, damage, a configuration our generator cannot run -
ends in a :class:`CheckpointError` whose message names the cause.

The project's own format is a single ``.safetensors`` file: the generator's tensors, plus its
configuration as JSON in the header metadata (see :func:`save_generator`).
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import mmap
import os
import pickle
import pickletools
import struct
import warnings
from typing import Any, BinaryIO, Optional, Union

import numpy as np
import torch

from timemachine.errors import CheckpointError
from timemachine.networks import Generator

PathLike = Union[str, os.PathLike]

SAFETENSORS_FORMAT = "timemachine-generator"
SAFETENSORS_VERSION = "1"

# Largest configurations accepted from a file, so that a hostile header cannot make us allocate terabytes.
_MAX_RESOLUTION = 4096
_MAX_DIM = 4096
_MAX_CHANNELS = 8192


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a dict whose keys are also attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setstate__(self, state: Any) -> None:  # dnnlib's EasyDict keeps no instance attributes to restore
        raise CheckpointError("the file tries to set attributes on a dict (BUILD on an EasyDict)")


class _OrderedDict(collections.OrderedDict):
    """``collections.OrderedDict`` for the unpickler: refuses BUILD, which could shadow methods by attributes."""

    def __setstate__(self, state: Any) -> None:
        raise CheckpointError("the file tries to set attributes on a dict (BUILD on an OrderedDict)")


class PersistentRecord:
    """Inert stand-in for a ``torch_utils.persistence`` object: just its ``meta`` dict.

    ``class_name`` (e.g. ``'Generator'``), ``version`` and ``state`` (the module's ``__dict__``:
    ``_parameters``, ``_buffers``, ``_modules``, ``_init_args``, ``_init_kwargs``...) are exposed; the
    record never looks at ``module_src``.  Validation is in ``__new__`` so that a record made by the NEWOBJ
    opcode (which skips ``__init__``) is checked too.
    """

    def __new__(cls, meta: Any = None):
        if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
            raise CheckpointError("the file holds a persistent object with malformed metadata")
        if not isinstance(meta.get("class_name"), str):
            raise CheckpointError("the file holds a persistent object without a class name")
        self = super().__new__(cls)
        self.class_name: str = meta["class_name"]
        self.version = meta.get("version")
        self.state: dict = meta["state"]
        return self

    def __setstate__(self, state: Any) -> None:  # BUILD opcodes must not alter a record
        raise CheckpointError("the file tries to modify a persistent object after creating it")

    def __repr__(self) -> str:
        return f"PersistentRecord({self.class_name})"


class _StorageRef:
    """A tensor storage read from the file; the only thing :func:`_rebuild_tensor_v2` accepts as storage."""

    __slots__ = ("storage",)

    def __init__(self, storage: torch.storage.TypedStorage):
        self.storage = storage


# Legacy torch.save format (what torch.storage._load_from_bytes reads): five pickles - magic number, protocol
# version, system info, the object (here one storage, referenced by a persistent ID), the list of storage
# keys - then, per storage, its element count as 8 little-endian bytes and its raw little-endian data.
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001
_LEGACY_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _LegacyStorageType:
    """What a storage type name (``torch.FloatStorage``) resolves to inside tensor data: its dtype."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _load_storage_from_bytes(data: Any) -> _StorageRef:
    """``torch.storage._load_from_bytes`` without its arbitrary-code path: the legacy format parsed by hand.

    Only storage type names resolve in its pickles; anything else is a :class:`CheckpointError` naming it.
    The element count is checked against the bytes present before any memory is allocated for it.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError("tensor data in the file is not a byte string")
    f = io.BytesIO(data)
    where = "tensor data in the file"
    _check_opcodes(f, where, persistent_ids=True, count=5)  # persistent IDs: only the storage unpickler takes them

    def plain_pickle() -> Any:
        return _RestrictedUnpickler(f, allowed={}, where=where).load()

    try:
        magic = plain_pickle()
        version = plain_pickle()
        if magic != _LEGACY_MAGIC_NUMBER or version != _LEGACY_PROTOCOL_VERSION:
            raise CheckpointError("tensor data in the file is not in the torch.save format network pickles use")
        sys_info = plain_pickle()
        if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
            raise CheckpointError("tensor data in the file is not little-endian")
        unpickler = _LegacyStorageUnpickler(f)
        obj = unpickler.load()
        keys = plain_pickle()
    except CheckpointError:
        raise
    except EOFError:
        raise CheckpointError("tensor data in the file is truncated") from None
    except Exception as exc:
        raise CheckpointError(f"damaged tensor data: {_first_line(exc)}") from None
    reference = unpickler.reference
    if reference is None or obj is not reference or keys != [reference.key]:
        raise CheckpointError("tensor data in the file does not hold exactly one storage")
    header = f.read(8)
    if len(header) != 8:
        raise CheckpointError("tensor data in the file is truncated")
    (numel,) = struct.unpack("<q", header)
    itemsize = torch.empty((), dtype=reference.dtype).element_size()
    available = len(data) - f.tell()
    if numel != reference.numel or numel < 0 or numel * itemsize != available:
        raise CheckpointError(f"tensor data in the file claims {reference.numel} elements but holds "
                              f"{available} bytes of {reference.dtype}")
    values = torch.frombuffer(bytearray(memoryview(data)[f.tell():]), dtype=reference.dtype) if numel else \
        torch.empty(0, dtype=reference.dtype)
    return _StorageRef(torch.storage.TypedStorage(wrap_storage=values.untyped_storage(), dtype=reference.dtype,
                                                  _internal=True))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    if backward_hooks:
        raise CheckpointError("the file attaches hooks to a tensor")
    if not isinstance(storage, _StorageRef):
        raise CheckpointError("a tensor in the file has no tensor data behind it")
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
            and all(type(v) is int and v >= 0 for v in (storage_offset, *size, *stride))):
        raise CheckpointError("a tensor in the file has a malformed size, stride or offset")
    # torch checks that the view stays inside the storage
    return torch._utils._rebuild_tensor_v2(storage.storage, storage_offset, size, stride, False,
                                           collections.OrderedDict())


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if backward_hooks or getattr(data, "_backward_hooks", None):
        raise CheckpointError("the file attaches hooks to a parameter")
    if not isinstance(data, torch.Tensor):
        raise CheckpointError("a parameter in the file holds no tensor")
    return torch.nn.Parameter(data, requires_grad=False)


def _numpy_scalar(dtype, data=None):
    """``numpy._core.multiarray.scalar`` for numeric scalars (``weight_gain``), returned as a Python number."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None \
            or not isinstance(data, bytes):
        raise CheckpointError("the file holds a numpy scalar of a non-numeric type")
    if len(data) != dtype.itemsize:
        raise CheckpointError("the file holds a numpy scalar of the wrong size")
    return np.frombuffer(data, dtype=dtype)[0].item()


def _numpy_dtype(name, align=False, copy=False):
    if not isinstance(name, str):
        raise CheckpointError("the file holds a numpy dtype that is not named by a string")
    dtype = np.dtype(name, align, copy)
    if dtype.hasobject:
        raise CheckpointError("the file holds a numpy dtype of Python objects")
    return dtype


def _set_of_names(items: Any = ()) -> set:
    """``builtins.set``, as protocol 2-3 pickles (Python 3.7, which wrote the released models) store sets:
    ``set([...])``.  Modules keep one, ``_non_persistent_buffers_set``, of buffer names."""
    if not isinstance(items, (list, tuple)) or len(items) > _MAX_CONFIG_ITEMS or \
            not all(isinstance(item, str) for item in items):
        raise CheckpointError("the file holds a set of something other than names")
    return set(items)


#: (module, name) -> the callable the unpickler hands out for it.  Nothing else resolves.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentRecord,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): _OrderedDict,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,   # numpy >= 2 writes this name
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,    # numpy 1.x writes this one
    ("numpy", "dtype"): _numpy_dtype,
    ("builtins", "set"): _set_of_names,                   # protocol < 4 has no EMPTY_SET opcode
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``allowed`` (default :data:`ALLOWED_GLOBALS`) and refuses
    persistent IDs; ``where`` says in error messages which part of the file was being read."""

    def __init__(self, file: BinaryIO, allowed: Optional[dict] = None, where: str = "the file"):
        super().__init__(file)
        self.allowed = ALLOWED_GLOBALS if allowed is None else allowed
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except (KeyError, TypeError):
            raise CheckpointError(f"refusing to load: {self.where} asks for the forbidden global "
                                  f"{_shorten(module)}.{_shorten(name)}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"refusing to load: {self.where} uses persistent IDs, which network pickles "
                              "never do")


class _LegacyStorageReference:
    """The persistent ID of the one storage in legacy tensor data: its dtype, key and element count."""

    def __init__(self, dtype: torch.dtype, key: str, numel: int):
        self.dtype = dtype
        self.key = key
        self.numel = numel


class _LegacyStorageUnpickler(_RestrictedUnpickler):
    """The object pickle of legacy tensor data: storage type names resolve, one storage persistent ID."""

    def __init__(self, file: BinaryIO):
        allowed = {("torch", name): _LegacyStorageType(dtype) for name, dtype in _LEGACY_STORAGE_DTYPES.items()}
        super().__init__(file, allowed=allowed, where="tensor data in the file")
        self.reference: Optional[_LegacyStorageReference] = None

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', storage_type, key, location, numel, view_metadata); official files hold whole storages
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
                and isinstance(pid[1], _LegacyStorageType) and isinstance(pid[2], str)
                and type(pid[4]) is int and pid[5] is None):
            raise CheckpointError("tensor data in the file has a malformed storage reference")
        if self.reference is not None:
            raise CheckpointError("tensor data in the file does not hold exactly one storage")
        self.reference = _LegacyStorageReference(pid[1].dtype, pid[2], pid[4])
        return self.reference


def _shorten(text: Any, limit: int = 80) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return _shorten(text.splitlines()[0], 200) if text else type(exc).__name__


#: Opcodes that pickles of plain data, tensors and persistent objects use at protocols 2-4.  Network pickles
#: never need the rest: persistent IDs, the copyreg extension registry, INST/OBJ, NEWOBJ_EX, protocol 5
#: buffers and bytearrays, protocol 0 text opcodes.
_ALLOWED_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK",
    "NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "LONG1", "LONG4", "BINFLOAT",
    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_LIST", "APPEND", "APPENDS",
    "EMPTY_DICT", "SETITEM", "SETITEMS", "EMPTY_SET", "ADDITEMS",
    "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "NEWOBJ",
    "MEMOIZE", "BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET",
})
_REFUSED_OPCODE_NAMES = {
    "PERSID": "persistent IDs", "BINPERSID": "persistent IDs",
    "EXT1": "the copyreg extension registry", "EXT2": "the copyreg extension registry",
    "EXT4": "the copyreg extension registry",
    "INST": "old-style object creation (INST)", "OBJ": "old-style object creation (OBJ)",
    "NEXT_BUFFER": "out-of-band buffers", "READONLY_BUFFER": "out-of-band buffers", "BYTEARRAY8": "bytearrays",
}


def _check_one_pickle(view: Any, size: int, where: str, allowed: frozenset) -> None:
    """The opcode walk of :func:`_check_opcodes` for one pickle (pickletools.genops stops at its STOP)."""
    memo_size = 0
    for opcode, arg, pos in pickletools.genops(view):
        if opcode.name not in allowed:
            what = _REFUSED_OPCODE_NAMES.get(opcode.name, f"the pickle opcode {opcode.name}")
            raise CheckpointError(f"refusing to load: {where} uses {what}, which network pickles never do")
        if opcode.name == "FRAME" and pos + 9 + arg > size:  # the unpickler reads a frame at once
            raise CheckpointError(f"{where} is truncated (a frame runs past its end)")
        # Picklers number memo entries 0, 1, 2...; the C unpickler grows its memo array to twice the
        # index it is given and zero-fills it, so LONG_BINPUT 1500000000 would take 24 GB.
        if opcode.name == "MEMOIZE" or opcode.name in ("BINPUT", "LONG_BINPUT") and arg == memo_size:
            memo_size += 1
        elif opcode.name in ("BINPUT", "LONG_BINPUT") and arg > memo_size:
            raise CheckpointError(f"{where} is damaged: memo index {arg} out of sequence "
                                  f"(expected at most {memo_size})")


def _check_opcodes(stream: BinaryIO, where: str = "the file", persistent_ids: bool = False, count: int = 1) -> None:
    """Walk the opcodes of ``count`` consecutive pickles from the stream's position (which is restored),
    without building anything.

    Raises CheckpointError for an opcode outside :data:`_ALLOWED_OPCODES` (plus BINPERSID when
    ``persistent_ids``), for a length field that runs past the end of the data, and for a truncated pickle.
    A real file is read through ``mmap``, so that a forged length allocates nothing.
    """
    start = stream.tell()
    view: Any = stream
    try:
        view = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
        view.seek(start)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass  # an in-memory stream, whose read(n) returns what there is
    allowed = _ALLOWED_OPCODES | ({"BINPERSID"} if persistent_ids else set())
    try:
        view.seek(0, os.SEEK_END)
        size = view.tell()
        view.seek(start)
        with warnings.catch_warnings():  # decoding a damaged protocol 0 string may warn about its escapes
            warnings.simplefilter("ignore", DeprecationWarning)
            for _ in range(count):
                _check_one_pickle(view, size, where, allowed)
    except CheckpointError:
        raise
    except Exception as exc:  # pickletools: unknown opcode, data shorter than a length field, no STOP...
        text = _first_line(exc)
        reason = "truncated" if "exhausted" in text else "damaged or truncated" if "remain" in text else "damaged"
        raise CheckpointError(f"{where} is {reason}: {text}") from None
    finally:
        if view is not stream:
            view.close()
        stream.seek(start)


def read_network_pickle(file: Union[PathLike, BinaryIO]) -> dict:
    """Unpickle an official snapshot without executing anything from it.

    Returns:
        the snapshot dict; networks are :class:`PersistentRecord` objects.

    Raises:
        CheckpointError: forbidden global, damaged or truncated file, or not a snapshot dict.
    """
    if isinstance(file, (str, os.PathLike)):
        try:
            with open(file, "rb") as f:
                head = f.read(2)
                f.seek(0)
                if not head:
                    raise CheckpointError(f"the network file {os.fspath(file)} is empty")
                # Network pickles are protocol 2 or newer, which starts with the PROTO opcode.
                if head[0] != pickle.PROTO[0] or len(head) < 2 or not 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
                    raise CheckpointError(f"{os.fspath(file)} is neither a network pickle nor a safetensors file")
                return read_network_pickle(f)
        except OSError as exc:
            raise CheckpointError(f"cannot read {os.fspath(file)}: {exc.strerror or exc}") from None
    _check_opcodes(file, where="the network file")
    try:
        data = _RestrictedUnpickler(file).load()
    except CheckpointError:
        raise
    except EOFError:
        raise CheckpointError("the network file is truncated (it ends in the middle of the data)") from None
    except Exception as exc:  # anything the bytes of a damaged file make the unpickler or our stand-ins raise
        raise CheckpointError(f"the network file is damaged or not a pickle: {_first_line(exc)}") from None
    if not isinstance(data, dict):
        raise CheckpointError("the file is a pickle but not a network snapshot (expected a dict with 'G_ema')")
    return data


# Bounds on what a file may hold in the parts we walk, so that shared or cyclic references cannot make a
# walk endless or exponential.  The official generator's module tree is 5 deep, its config 2.
_MAX_MODULE_DEPTH = 16
_MAX_CONFIG_DEPTH = 8
_MAX_CONFIG_ITEMS = 1000


def _str_key_items(value: Any, what: str) -> list[tuple[str, Any]]:
    """The items of a dict from the file, checked to have string keys (``dict.items``, so that no attribute
    set on the object can stand in for the method)."""
    if value is None:
        return []
    if not isinstance(value, dict):
        raise CheckpointError(f"{what} is not a dict")
    items = list(dict.items(value))
    for key, _ in items:
        if not isinstance(key, str):
            raise CheckpointError(f"{what} has a key that is not a string")
    return items


def _collect_tensors(record: PersistentRecord, prefix: str = "",
                     _seen: Optional[set] = None) -> dict[str, torch.Tensor]:
    """Flatten a record tree into a state dict: ``{'synthesis.b4.conv1.weight': tensor, ...}``."""
    seen = set() if _seen is None else _seen
    where = prefix[:-1] if prefix else "the network"
    if id(record) in seen:
        raise CheckpointError(f"{where}: the same module appears twice in the network")
    if prefix.count(".") >= _MAX_MODULE_DEPTH:
        raise CheckpointError(f"{where}: the network's modules are nested too deeply")
    seen.add(id(record))
    tensors: dict[str, torch.Tensor] = {}
    state = record.state
    non_persistent = state.get("_non_persistent_buffers_set", None) or set()
    if not isinstance(non_persistent, (set, frozenset)) or not all(isinstance(n, str) for n in non_persistent):
        raise CheckpointError(f"{where}: malformed _non_persistent_buffers_set")
    for kind in ("_parameters", "_buffers"):
        for name, value in _str_key_items(state.get(kind), f"{where}: {kind}"):
            if value is None or (kind == "_buffers" and name in non_persistent):
                continue
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{prefix}{name} is not a tensor")
            if value._backward_hooks:
                raise CheckpointError(f"the file attaches hooks to the tensor {prefix}{name}")
            tensors[prefix + name] = value
    for name, child in _str_key_items(state.get("_modules"), f"{where}: _modules"):
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise CheckpointError(f"{prefix}{name} is not a network module")
        tensors.update(_collect_tensors(child, prefix + name + ".", seen))
    return tensors


def _plain(value: Any, _depth: int = 0, _budget: Optional[list] = None) -> Any:
    """Configuration values from a file -> JSON-like Python values (dicts with string keys, lists, str, int,
    float, bool, None); numpy scalars become Python numbers.  Anything else is a :class:`CheckpointError`."""
    budget = [_MAX_CONFIG_ITEMS] if _budget is None else _budget
    budget[0] -= 1
    if budget[0] < 0:
        raise CheckpointError("the generator's configuration is too large")
    if _depth > _MAX_CONFIG_DEPTH:
        raise CheckpointError("the generator's configuration is nested too deeply")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v, _depth + 1, budget) for k, v in _str_key_items(value, "the generator's configuration")}
    if isinstance(value, (list, tuple)):
        return [_plain(v, _depth + 1, budget) for v in value]
    raise CheckpointError(f"the generator's configuration holds a {type(value).__name__}, "
                          "where only numbers, strings and lists belong")


def _check_config(config: Any) -> dict:
    """Validate generator constructor arguments from a file; returns them as plain Python values."""
    if not isinstance(config, dict):
        raise CheckpointError("the generator's configuration is not a dict")
    config = _plain(config)
    required = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")
    for key in required:
        if not isinstance(config.get(key), int) or isinstance(config.get(key), bool):
            raise CheckpointError(f"the generator's configuration lacks an integer {key!r}")
    allowed = set(required) | {"mapping_kwargs", "synthesis_kwargs"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise CheckpointError(f"unsupported generator option(s): {', '.join(map(_shorten, unknown))}")
    res = config["img_resolution"]
    if not (4 <= res <= _MAX_RESOLUTION and res & (res - 1) == 0):
        raise CheckpointError(f"unsupported image resolution {res}")
    for key in ("z_dim", "c_dim", "w_dim", "img_channels"):
        if not 0 <= config[key] <= _MAX_DIM:
            raise CheckpointError(f"{key}={config[key]} is out of range")
    for key in ("mapping_kwargs", "synthesis_kwargs"):
        value = config.setdefault(key, {})
        if not isinstance(value, dict):
            raise CheckpointError(f"{key} is not a dict")
    syn = config["synthesis_kwargs"]
    for key in ("channel_base", "channel_max"):
        if key in syn and not (isinstance(syn[key], int) and 1 <= syn[key] <= _MAX_CHANNELS * _MAX_RESOLUTION):
            raise CheckpointError(f"synthesis {key}={syn[key]!r} is out of range")
    if min(syn.get("channel_base", 32768) // 4, syn.get("channel_max", 512)) > _MAX_CHANNELS:
        raise CheckpointError("the generator is wider than any supported model")
    layers = config["mapping_kwargs"].get("num_layers", 8)
    if not (isinstance(layers, int) and 1 <= layers <= 64):
        raise CheckpointError(f"mapping num_layers={layers!r} is out of range")
    return config


def _check_tensors(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
                   dtype: Optional[torch.dtype] = None) -> None:
    """The file's tensors against the generator's state dict (on 'meta'): names, shapes, dtypes (exactly
    ``dtype`` if given, else any floating point), finite values, and data actually present in the file."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(f"the file lacks the tensor {missing[0]} (and {len(missing) - 1} more)"
                              if len(missing) > 1 else f"the file lacks the tensor {missing[0]}")
    if unexpected:
        raise CheckpointError(f"the file has a tensor this generator does not: {_shorten(unexpected[0])}")
    for name, target in expected.items():
        source = tensors[name]
        if tuple(source.shape) != tuple(target.shape):
            raise CheckpointError(f"tensor {name} has shape {tuple(source.shape)}, expected {tuple(target.shape)}")
        if dtype is not None and source.dtype != dtype:
            raise CheckpointError(f"tensor {name} is {source.dtype}, expected {dtype}")
        if not source.is_floating_point():
            raise CheckpointError(f"tensor {name} is not floating point ({source.dtype})")
    # Views may share or repeat storage (stride 0); the generator we allocate must not be larger than the
    # data the file really holds, or a small file could claim a huge model.
    held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors.values()}
    claimed = sum(t.numel() * t.element_size() for t in tensors.values())
    if claimed > sum(held.values()):
        raise CheckpointError(f"the file's tensors claim {claimed} bytes of data but hold {sum(held.values())}")
    for name, source in tensors.items():
        # A sum is non-finite when any element is (NaN and inf propagate) and is much faster than isfinite()
        # on the CPU; the exact test runs only to confirm.
        if not bool(torch.isfinite(source.sum())) and not bool(torch.isfinite(source).all()):
            raise CheckpointError(f"tensor {name} holds NaN or infinite values (the file is damaged)")


def build_generator(config: dict, tensors: dict[str, torch.Tensor], dtype: Optional[torch.dtype] = None) -> Generator:
    """A :class:`Generator` from constructor arguments and a state dict, every tensor present and shaped right.

    The network is first built on the 'meta' device (no memory, no random init), where its tensor shapes are
    compared with ``tensors`` and one forward pass checks that the configuration runs; only then is it given
    storage and filled from ``tensors`` (exactly of ``dtype`` if given, else any floating point type).
    Returns it in eval mode with gradients off, on the CPU, float32.
    """
    config = _check_config(config)
    try:
        with torch.device("meta"):
            G = Generator(**config)
    except TypeError as exc:
        raise CheckpointError(f"unsupported generator option: {_first_line(exc)}") from None
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"invalid generator configuration: {_first_line(exc)}") from None
    _check_tensors(G.state_dict(), tensors, dtype)
    try:
        with torch.device("meta"), torch.no_grad():
            G.eval()(torch.empty([1, G.z_dim]), torch.empty([1, G.c_dim]), noise_mode="const")
    except Exception as exc:  # e.g. conv_clamp='none': JSON-like, accepted by the constructor, fails in use
        raise CheckpointError(f"the generator's configuration does not work: {_first_line(exc)}") from None
    G = G.to_empty(device="cpu")
    with torch.no_grad():
        G.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()}, strict=True)
    return G.eval().requires_grad_(False)


def generator_from_snapshot(snapshot: dict, which: str = "G_ema") -> Generator:
    """Build our Generator from the record ``snapshot[which]`` of an unpickled official snapshot."""
    if which not in ("G_ema", "G"):
        raise ValueError("which must be 'G_ema' or 'G'")
    if which not in snapshot:
        keys = [_shorten(repr(k), 30) for k in list(snapshot)[:8]]
        raise CheckpointError(f"the snapshot has no {which!r} network (keys: {', '.join(keys) or 'none'}"
                              f"{', ...' if len(snapshot) > 8 else ''})")
    record = snapshot[which]
    if not isinstance(record, PersistentRecord):
        raise CheckpointError(f"{which} in the file is not a network")
    if record.class_name != "Generator":
        raise CheckpointError(f"{which} is a {_shorten(record.class_name)!r}, not a StyleGAN2-ADA 'Generator'")
    init_args = record.state.get("_init_args", ())
    if not isinstance(init_args, (tuple, list)):
        raise CheckpointError(f"{which} has malformed constructor arguments (_init_args)")
    if init_args:
        raise CheckpointError(f"{which} was built with positional arguments, which official snapshots never use")
    if "_init_kwargs" not in record.state:
        raise CheckpointError(f"{which} does not record its configuration (_init_kwargs)")
    return build_generator(record.state["_init_kwargs"], _collect_tensors(record))


def is_safetensors_file(path: PathLike) -> bool:
    """True when ``path`` starts like a safetensors file (8-byte header length, then a JSON object)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 100_000_000


def save_generator(G: Generator, path: PathLike, extra_metadata: Optional[dict[str, str]] = None) -> None:
    """Write ``G`` as a safetensors file: float32 tensors + JSON config in the header; atomic.

    Header metadata keys: ``format`` = 'timemachine-generator', ``format_version`` = '1',
    ``config`` = JSON of ``G.init_kwargs``, plus ``extra_metadata``.
    """
    from safetensors.torch import save_file

    metadata = {"format": SAFETENSORS_FORMAT, "format_version": SAFETENSORS_VERSION,
                "config": json.dumps(G.init_kwargs, sort_keys=True)}
    metadata.update(extra_metadata or {})
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in G.state_dict().items()}
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load_safetensors(path: PathLike) -> Generator:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != SAFETENSORS_FORMAT:
                raise CheckpointError("the safetensors file is not a timemachine generator (no 'format' header)")
            if metadata.get("format_version") != SAFETENSORS_VERSION:
                raise CheckpointError(f"unsupported generator file version {metadata.get('format_version')!r}")
            if "config" not in metadata:
                raise CheckpointError("the generator file lacks its configuration (no 'config' header)")
            try:
                config = json.loads(metadata["config"])
            except json.JSONDecodeError:
                raise CheckpointError("the generator file's configuration is not valid JSON") from None
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except CheckpointError:
        raise
    except SafetensorError as exc:
        raise CheckpointError(f"damaged safetensors file: {_first_line(exc)}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from None
    except Exception as exc:  # e.g. a header whose fields have the wrong JSON types
        raise CheckpointError(f"damaged safetensors file: {_first_line(exc)}") from None
    return build_generator(config, tensors, dtype=torch.float32)


def load_generator(path: PathLike, device: Optional[Union[str, torch.device]] = None,
                   which: str = "G_ema") -> Generator:
    """Load a generator from an official network pickle or a timemachine safetensors file.

    Args:
        path:   ``.pkl`` snapshot (official format) or ``.safetensors`` file (:func:`save_generator`);
                the format is recognised by content, not by name.
        device: where to put the network; None = CUDA if available, else CPU.
        which:  'G_ema' (the averaged generator everybody uses) or 'G' (pickles only).

    Returns:
        the :class:`Generator`, float32, in eval mode, gradients off.

    Raises:
        CheckpointError: the file is missing, damaged, forbidden or not a generator; the message says which.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, not a network file")
    if not os.path.isfile(path):
        raise CheckpointError(f"no network file at {path}")
    if is_safetensors_file(path):
        if which != "G_ema":
            raise CheckpointError("safetensors generator files hold only G_ema")
        G = _load_safetensors(path)
    else:
        G = generator_from_snapshot(read_network_pickle(path), which=which)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return G.to(device)


def model_fingerprint(G: Generator) -> str:
    """SHA-256 (hex, first 16 digits) of the generator's configuration and float32 tensor contents.

    The same network gives the same fingerprint whatever file it came from (pickle or safetensors);
    any changed weight changes it.  Age vectors and cached projections record it.
    """
    h = hashlib.sha256()
    h.update(json.dumps(G.init_kwargs, sort_keys=True).encode())
    for name, tensor in sorted(G.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
