"""The restricted unpickler: official StyleGAN2-ADA network pickles read without running anything from them,
without reading memory that is not the file's, and without allocating more than the file can justify.

Official pickles (``afhqdog.pkl``, ``network-snapshot-*.pkl``) are a pickled dict
``{'training_set_kwargs', 'G', 'D', 'G_ema', 'augment_pipe'}`` whose networks are
``torch_utils.persistence`` objects: ``_reconstruct_persistent_obj(meta)`` with ``meta`` holding the class
name, the constructor arguments and the module state, and ``module_src`` - the Python source of NVIDIA's
network code, which unpickling with NVIDIA's code would *execute*.  Here nothing from the file is executed:

* **before anything is unpickled**, :func:`check_opcodes` walks the pickle's opcodes.  Only those that protocol
  2-4 pickles of plain data use are accepted (no persistent IDs, extension registry, INST/OBJ, protocol 5
  buffers); every length field and memo index is checked against the bytes and entries present; and the walk
  simulates the unpickler's stack to bound what unpickling will build (:class:`Limits`): the number of
  opcodes, of calls (REDUCE, NEWOBJ, BUILD), the size of integers, and the nesting depth of containers (a
  structure nested a million deep would crash the process when hashed), and it refuses structures that contain
  themselves (network pickles never hold cycles).
* :class:`RestrictedUnpickler` resolves only the globals in :data:`ALLOWED_GLOBALS`; any other global
  (``os.system``, ``builtins.eval``, ...) stops the load with a :class:`CheckpointError` naming it.
  ``_reconstruct_persistent_obj`` is replaced by :class:`PersistentRecord`, an inert record of ``meta``.
* the allowed callables charge what they allocate to the load's budget (the file's size plus
  :attr:`Limits.slack_bytes`) *before* allocating, and refuse to be handed the same tensor data twice.
* tensor bytes inside ``torch.storage._load_from_bytes`` (a legacy-format ``torch.save`` of one storage) are
  parsed by hand: their pickles go through the same walk and a restricted unpickler (only storage type names
  resolve), and the claimed element count must match the bytes present.  Every storage is a view of the
  file's own bytes (a copy where they are not aligned) that **cannot grow**, zero-length ones included, and a
  tensor's offset + extent is checked against its storage before torch sees it, so no tensor reads memory that
  is not the file's.

Every way a file can be wrong - forbidden content, damage, a structure beyond the limits - ends in a
:class:`CheckpointError` whose message names the cause.  Turning the records into a generator is
:mod:`timemachine.checkpoint`'s job.
"""

from __future__ import annotations

import array
import collections
import dataclasses
import functools
import io
import mmap
import os
import pickle
import pickletools
import struct
import warnings
from typing import Any, BinaryIO, Callable, Optional, Union

import numpy as np
import torch

from timemachine.errors import CheckpointError, first_line, printable

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one pickle may make the unpickler do.  The defaults leave wide margins over official snapshots
    (the 1024x1024 FFHQ snapshot, four networks: ~10^5 opcodes, ~10^4 calls, nesting ~40 deep).

    Attributes:
        max_opcodes:   opcodes in the pickle (each builds at most one small object).
        max_calls:     REDUCE + NEWOBJ + BUILD opcodes (calls of allowed callables).
        max_depth:     containers nested in containers (dicts, lists, tuples, sets, call results).
        max_int_bytes: length of LONG1/LONG4 integers (official files hold 10-byte ones at most).
        slack_bytes:   what allowed callables may allocate beyond the size of the file itself.
    """

    max_opcodes: int = 1_000_000
    max_calls: int = 100_000
    max_depth: int = 100
    max_int_bytes: int = 16
    slack_bytes: int = 16 << 20


DEFAULT_LIMITS = Limits()
#: The pickles inside one tensor's data (legacy torch.save): a handful of small values.
_LEGACY_LIMITS = Limits(max_opcodes=10_000, max_calls=16, max_depth=8)
_MAX_NDIM = 16              # tensor dimensions (the generator's have at most 4)
_MAX_SET_ITEMS = 1000       # names in a module's _non_persistent_buffers_set
_MAX_DTYPE_NAME = 32


class _Load:
    """What one file's load has spent: bytes handed out by allowed callables, tensor data already used."""

    def __init__(self, budget: int):
        self.remaining = budget
        self.blobs: set[int] = set()
        self._keep: list[Any] = []   # blobs seen, kept alive so that their ids stay theirs

    def charge(self, nbytes: int, what: str) -> None:
        """Account for ``nbytes`` about to be allocated for ``what``; refuses when the budget is spent."""
        if nbytes > self.remaining:
            raise CheckpointError(f"refusing to load: the file's {what} would take more memory than the file "
                                  "can justify (its data adds up to more than its size)")
        self.remaining -= nbytes

    def first_use(self, blob: Any) -> None:
        if id(blob) in self.blobs:
            raise CheckpointError("refusing to load: the file uses the same tensor data twice, which network "
                                  "pickles never do")
        self.blobs.add(id(blob))
        self._keep.append(blob)


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a dict whose keys are also attributes.  Official files create it
    empty (NEWOBJ) and fill it with SETITEMS; being called with contents (which copies them) is refused."""

    def __init__(self, *args: Any, **kwargs: Any):
        if args or kwargs:
            raise CheckpointError("the file calls EasyDict with contents, which network pickles never do")
        super().__init__()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setstate__(self, state: Any) -> None:  # dnnlib's EasyDict keeps no instance attributes to restore
        raise CheckpointError("the file tries to set attributes on a dict (BUILD on an EasyDict)")


class _OrderedDict(collections.OrderedDict):
    """``collections.OrderedDict`` for the unpickler: created empty (as pickles do), refuses BUILD, which could
    shadow methods by attributes."""

    def __init__(self, *args: Any, **kwargs: Any):
        if args or kwargs:
            raise CheckpointError("the file calls OrderedDict with contents, which network pickles never do")
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        raise CheckpointError("the file tries to set attributes on a dict (BUILD on an OrderedDict)")


class PersistentRecord:
    """Inert stand-in for a ``torch_utils.persistence`` object: just its ``meta`` dict.

    ``class_name`` (e.g. ``'Generator'``), ``version`` and ``state`` (the module's ``__dict__``:
    ``_parameters``, ``_buffers``, ``_modules``, ``_init_args``, ``_init_kwargs``...) are exposed; the
    record never looks at ``module_src``.  Validation is in ``__new__`` so that a record made by the NEWOBJ
    opcode (which skips ``__init__``) is checked too.
    """

    class_name: str
    version: Any
    state: dict

    def __new__(cls, meta: Any = None) -> "PersistentRecord":
        if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
            raise CheckpointError("the file holds a persistent object with malformed metadata")
        if not isinstance(meta.get("class_name"), str):
            raise CheckpointError("the file holds a persistent object without a class name")
        self = super().__new__(cls)
        self.class_name = meta["class_name"]
        self.version = meta.get("version")
        self.state = meta["state"]
        return self

    def __setstate__(self, state: Any) -> None:  # BUILD opcodes must not alter a record
        raise CheckpointError("the file tries to modify a persistent object after creating it")

    def __repr__(self) -> str:
        return f"PersistentRecord({printable(self.class_name, 80)})"


class _StorageRef:
    """A tensor storage read from the file: a 1-D tensor over all of it, on a storage that cannot grow.  The
    only thing :func:`_rebuild_tensor_v2` accepts as storage."""

    __slots__ = ("values",)

    def __init__(self, values: torch.Tensor):
        self.values = values


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


def _fixed_storage(data: bytes, start: int, nbytes: int, dtype: torch.dtype) -> torch.Tensor:
    """A 1-D ``dtype`` tensor over ``data[start:start + nbytes]`` whose storage cannot be resized: a view of
    ``data`` when the bytes are aligned for ``dtype``, else an aligned copy.  Zero bytes give an empty,
    equally fixed storage (torch would grow an ordinary empty one when a tensor is set onto it)."""
    itemsize = dtype.itemsize
    with warnings.catch_warnings():  # numpy/torch warn that a view of immutable bytes is not writable
        warnings.simplefilter("ignore", UserWarning)
        raw = np.frombuffer(data, dtype=np.uint8, count=nbytes, offset=start)
        if raw.ctypes.data % itemsize:
            raw = np.frombuffer(bytearray(raw), dtype=np.uint8)   # fixed-size too: numpy owns no resize
        values = torch.from_numpy(raw).view(dtype)
    assert not values.untyped_storage().resizable()
    return values


def _load_storage_from_bytes(data: Any, *, load: Optional[_Load] = None) -> _StorageRef:
    """``torch.storage._load_from_bytes`` without its arbitrary-code path: the legacy format parsed by hand.

    Only storage type names resolve in its pickles; anything else is a :class:`CheckpointError` naming it.
    The element count is checked against the bytes present, and charged to the load's budget, before any
    tensor is made of them.
    """
    if not isinstance(data, bytes):
        raise CheckpointError("tensor data in the file is not a byte string")
    if load is not None:
        load.first_use(data)
    f = io.BytesIO(data)
    where = "tensor data in the file"
    # persistent IDs: only the storage unpickler takes them
    check_opcodes(f, where, persistent_ids=True, count=5, limits=_LEGACY_LIMITS)
    reference = _read_legacy_pickles(f, where)
    header = f.read(8)
    if len(header) != 8:
        raise CheckpointError("tensor data in the file is truncated")
    (numel,) = struct.unpack("<q", header)
    itemsize = reference.dtype.itemsize
    start = f.tell()
    available = len(data) - start
    if numel != reference.numel or numel < 0 or numel * itemsize != available:
        raise CheckpointError(f"tensor data in the file claims {reference.numel} elements but holds "
                              f"{available} bytes of {reference.dtype}")
    if load is not None:
        load.charge(available, "tensor data")
    return _StorageRef(_fixed_storage(data, start, available, reference.dtype))


def _read_legacy_pickles(f: io.BytesIO, where: str) -> _LegacyStorageReference:
    """The five pickles before the raw bytes of legacy ``torch.save`` data (magic number, protocol version,
    system info, the storage, its key list), whose opcodes are already checked; returns the one storage's
    reference, the stream left at the element count."""
    def plain_pickle() -> Any:
        return RestrictedUnpickler(f, allowed={}, where=where).load()

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
        raise CheckpointError(f"damaged tensor data: {first_line(exc)}") from None
    reference = unpickler.reference
    if reference is None or obj is not reference or keys != [reference.key]:
        raise CheckpointError("tensor data in the file does not hold exactly one storage")
    return reference


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """``torch._utils._rebuild_tensor_v2`` for storages read from the file: the view is checked to lie inside
    its storage before torch sees it (torch's own ``set_`` would grow a storage that is too small)."""
    if backward_hooks:
        raise CheckpointError("the file attaches hooks to a tensor")
    if not isinstance(storage, _StorageRef):
        raise CheckpointError("a tensor in the file has no tensor data behind it")
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride) <= _MAX_NDIM
            and all(type(v) is int and v >= 0 for v in (storage_offset, *size, *stride))):
        raise CheckpointError("a tensor in the file has a malformed size, stride or offset")
    held = storage.values.numel()
    extent = 0 if 0 in size else 1 + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if storage_offset + extent > held:   # (extent >= 0: an offset past the end is refused too)
        raise CheckpointError(f"a tensor in the file points outside its data (elements {storage_offset} to "
                              f"{storage_offset + extent} of {held})")
    values = storage.values
    return torch.empty(0, dtype=values.dtype).set_(values.untyped_storage(), storage_offset, size, stride)


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
    if not isinstance(name, str) or len(name) > _MAX_DTYPE_NAME:
        raise CheckpointError("the file holds a numpy dtype that is not named by a string "
                              f"(of at most {_MAX_DTYPE_NAME} characters)")
    try:
        dtype = np.dtype(name, align, copy)
    except (TypeError, ValueError):
        raise CheckpointError(f"the file holds an unknown numpy dtype {printable(name)!r}") from None
    if dtype.hasobject:
        raise CheckpointError("the file holds a numpy dtype of Python objects")
    return dtype


def _set_of_names(items: Any = (), *, load: Optional[_Load] = None) -> set:
    """``builtins.set``, as protocol 2-3 pickles (Python 3.7, which wrote the released models) store sets:
    ``set([...])``.  Modules keep one, ``_non_persistent_buffers_set``, of buffer names."""
    if not isinstance(items, (list, tuple)) or len(items) > _MAX_SET_ITEMS or \
            not all(isinstance(item, str) for item in items):
        raise CheckpointError("the file holds a set of something other than names")
    if load is not None:
        load.charge(64 * len(items) + 256, "sets")
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
#: The allowed callables that allocate in proportion to their arguments: they are handed the load's budget.
_CHARGED = frozenset({_load_storage_from_bytes, _set_of_names})


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``allowed`` (default :data:`ALLOWED_GLOBALS`) and refuses
    persistent IDs; ``where`` says in error messages which part of the file was being read; ``load`` is the
    budget the allowed callables charge (None: unbounded, for the small pickles inside tensor data)."""

    def __init__(self, file: BinaryIO, allowed: Optional[dict] = None, where: str = "the file",
                 load: Optional[_Load] = None):
        super().__init__(file)
        self.allowed = ALLOWED_GLOBALS if allowed is None else allowed
        self.where = where
        self.load_budget = load

    def find_class(self, module: str, name: str) -> Any:
        try:
            found = self.allowed[(module, name)]
        except (KeyError, TypeError):
            raise CheckpointError(f"refusing to load: {self.where} asks for the forbidden global "
                                  f"{printable(module, 80)}.{printable(name, 80)}") from None
        if found in _CHARGED and self.load_budget is not None:
            return functools.partial(found, load=self.load_budget)
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"refusing to load: {self.where} uses persistent IDs, which network pickles "
                              "never do")


class _LegacyStorageReference:
    """The persistent ID of the one storage in legacy tensor data: its dtype, key and element count."""

    def __init__(self, dtype: torch.dtype, key: str, numel: int):
        self.dtype = dtype
        self.key = key
        self.numel = numel


class _LegacyStorageUnpickler(RestrictedUnpickler):
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


# ---------------------------------------------------------------------------------------------------------------
# The opcode walk

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
# What each opcode does to the unpickler's stack, for the walk's simulation (see _Walk.step).
_ATOMS = frozenset({"NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "LONG1", "LONG4", "BINFLOAT",
                    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8",
                    "EMPTY_TUPLE", "GLOBAL"})
_CALLS = frozenset({"REDUCE", "NEWOBJ", "BUILD"})
_ATOM = -1   # the walk's stand-in for a value that holds no other value


class _Underflow(Exception):
    pass


class _Walk:
    """The unpickler's stack and memo, simulated without building anything: each container becomes a node,
    each "holds" relation an edge, so that the nesting depth of everything unpickling would build is known (and
    cycles are found) before it is built.  Mutation after the fact (APPEND into a list that is already inside
    another) is an edge like any other, so the depth is that of the final structure."""

    def __init__(self) -> None:
        self.stack: list[int] = []
        self.marks: list[int] = []
        self.memo = array.array("q")
        self.parents = array.array("q")
        self.children = array.array("q")
        self.nodes = 0

    def _node(self, items: Any) -> int:
        node = self.nodes
        self.nodes += 1
        for item in items:
            if item != _ATOM:
                self.parents.append(node)
                self.children.append(item)
        return node

    def _pop(self, n: int = 1) -> list[int]:
        fence = self.marks[-1] if self.marks else 0
        if len(self.stack) - n < fence:
            raise _Underflow
        items = self.stack[len(self.stack) - n:]
        del self.stack[len(self.stack) - n:]
        return items

    def _pop_mark(self) -> list[int]:
        if not self.marks:
            raise _Underflow
        mark = self.marks.pop()
        items = self.stack[mark:]
        del self.stack[mark:]
        return items

    def _top(self) -> int:
        fence = self.marks[-1] if self.marks else 0
        if len(self.stack) <= fence:
            raise _Underflow
        return self.stack[-1]

    def _hold(self, container: int, items: Any) -> None:
        if container != _ATOM:
            for item in items:
                if item != _ATOM:
                    self.parents.append(container)
                    self.children.append(item)

    def step(self, name: str, arg: Any) -> None:
        """Apply one opcode (already known to be allowed) to the simulated stack; raises _Underflow where the
        real unpickler would stop with an error."""
        if name in _ATOMS:
            self.stack.append(_ATOM)
            return
        apply = _WALK_STEPS.get(name)
        if apply is not None:   # PROTO, FRAME: nothing on the stack
            apply(self, name, arg)

    # One method per kind of opcode (the table _WALK_STEPS below says which); each takes the opcode's name and
    # argument.

    def _empty(self, name: str, arg: Any) -> None:
        self.stack.append(self._node(()))

    def _mark(self, name: str, arg: Any) -> None:
        self.marks.append(len(self.stack))

    def _tuple(self, name: str, arg: Any) -> None:
        self.stack.append(self._node(self._pop_mark()))

    def _short_tuple(self, name: str, arg: Any) -> None:
        self.stack.append(self._node(self._pop(int(name[-1]))))

    def _add(self, name: str, arg: Any) -> None:
        items = self._pop(1 if name == "APPEND" else 2)
        self._hold(self._top(), items)

    def _add_marked(self, name: str, arg: Any) -> None:
        items = self._pop_mark()
        self._hold(self._top(), items)

    def _call(self, name: str, arg: Any) -> None:
        parts = self._pop(1 if name == "BINPERSID" else 2)
        self.stack.append(_ATOM if name == "STACK_GLOBAL" else self._node(parts))

    def _build(self, name: str, arg: Any) -> None:
        state = self._pop(1)
        self._hold(self._top(), state)

    def _pop_one(self, name: str, arg: Any) -> None:
        if self.marks and self.marks[-1] == len(self.stack):
            self.marks.pop()
        else:
            self._pop(1)

    def _pop_to_mark(self, name: str, arg: Any) -> None:
        self._pop_mark()

    def _memoize(self, name: str, arg: Any) -> None:
        self.memo.append(self._top())

    def _put(self, name: str, arg: Any) -> None:
        if arg == len(self.memo):
            self.memo.append(self._top())
        else:
            self.memo[arg] = self._top()

    def _get(self, name: str, arg: Any) -> None:
        if arg >= len(self.memo):
            raise _Underflow
        self.stack.append(self.memo[arg])

    def _stop(self, name: str, arg: Any) -> None:
        self._pop(1)

    def depth(self, limit: int) -> Optional[int]:
        """The most containers nested in one another (the longest chain of "holds"), or None for a structure
        that contains itself.  Stops counting beyond ``limit`` (returns limit + 1).  Iterative: a chain of any
        length costs no recursion."""
        start, targets = self._edges()
        nodes = self.nodes
        depth = array.array("q", bytes(8 * nodes))     # 0: not visited; else 1 + deepest child
        state = bytearray(nodes)                        # 0 new, 1 on the path being explored, 2 done
        deepest = 0
        for root in range(nodes):
            if state[root]:
                continue
            state[root] = 1
            path = [(root, start[root])]
            while path:
                node, edge = path[-1]
                if edge < start[node + 1]:
                    path[-1] = (node, edge + 1)
                    child = targets[edge]
                    if state[child] == 1:
                        return None
                    if state[child] == 0:
                        state[child] = 1
                        path.append((child, start[child]))
                        if len(path) > limit:
                            return limit + 1
                    continue
                best = 0
                for e in range(start[node], start[node + 1]):
                    best = max(best, depth[targets[e]])
                depth[node] = best + 1
                if depth[node] > limit:
                    return limit + 1
                state[node] = 2
                deepest = max(deepest, depth[node])
                path.pop()
        return deepest

    def _edges(self) -> tuple[array.array, array.array]:
        """The "holds" edges in compressed rows: node n's children are ``targets[start[n]:start[n + 1]]``."""
        nodes = self.nodes
        start = array.array("q", bytes(8 * (nodes + 1)))
        for parent in self.parents:
            start[parent + 1] += 1
        for i in range(nodes):
            start[i + 1] += start[i]
        fill = array.array("q", start)
        targets = array.array("q", bytes(8 * len(self.children)))
        for parent, child in zip(self.parents, self.children, strict=True):
            targets[fill[parent]] = child
            fill[parent] += 1
        return start, targets


_WALK_STEPS: dict[str, Callable[[_Walk, str, Any], None]] = {
    "EMPTY_LIST": _Walk._empty, "EMPTY_DICT": _Walk._empty, "EMPTY_SET": _Walk._empty,
    "MARK": _Walk._mark,
    "TUPLE": _Walk._tuple, "TUPLE1": _Walk._short_tuple, "TUPLE2": _Walk._short_tuple, "TUPLE3": _Walk._short_tuple,
    "APPEND": _Walk._add, "SETITEM": _Walk._add,
    "APPENDS": _Walk._add_marked, "SETITEMS": _Walk._add_marked, "ADDITEMS": _Walk._add_marked,
    "REDUCE": _Walk._call, "NEWOBJ": _Walk._call, "BINPERSID": _Walk._call, "STACK_GLOBAL": _Walk._call,
    "BUILD": _Walk._build,
    "POP": _Walk._pop_one, "POP_MARK": _Walk._pop_to_mark,
    "MEMOIZE": _Walk._memoize, "BINPUT": _Walk._put, "LONG_BINPUT": _Walk._put,
    "BINGET": _Walk._get, "LONG_BINGET": _Walk._get,
    "STOP": _Walk._stop,
}


def _check_one_pickle(view: Any, size: int, where: str, allowed: frozenset, limits: Limits) -> None:
    """The opcode walk of :func:`check_opcodes` for one pickle (pickletools.genops stops at its STOP)."""
    walk = _Walk()
    opcodes = calls = 0
    try:
        for opcode, arg, pos in pickletools.genops(view):
            name = opcode.name
            if name not in allowed:
                what = _REFUSED_OPCODE_NAMES.get(name, f"the pickle opcode {name}")
                raise CheckpointError(f"refusing to load: {where} uses {what}, which network pickles never do")
            opcodes += 1
            if opcodes > limits.max_opcodes:
                raise CheckpointError(f"refusing to load: {where} holds more than {limits.max_opcodes} pickle "
                                      "opcodes, far more than network pickles")
            if name in _CALLS:
                calls += 1
                if calls > limits.max_calls:
                    raise CheckpointError(f"refusing to load: {where} makes more than {limits.max_calls} calls, "
                                          "far more than network pickles")
            assert pos is not None   # genops knows positions in a stream with tell(): mmap, file, BytesIO
            _check_argument(name, arg, pos, size, len(walk.memo), where, limits)
            walk.step(name, arg)
    except _Underflow:
        raise CheckpointError(f"{where} is damaged: an opcode finds nothing to work on (stack underflow or "
                              "an unknown memo entry)") from None
    depth = walk.depth(limits.max_depth)
    if depth is None:
        raise CheckpointError(f"refusing to load: {where} holds a structure that contains itself, which "
                              "network pickles never do")
    if depth > limits.max_depth:
        raise CheckpointError(f"refusing to load: {where} nests its data more than {limits.max_depth} levels "
                              "deep, far more than network pickles")


def _check_argument(name: str, arg: Any, pos: int, size: int, memo_size: int, where: str, limits: Limits) -> None:
    """The argument of the opcode ``name`` at byte ``pos`` of a pickle of ``size`` bytes, whose memo holds
    ``memo_size`` entries so far: a frame within the data, an integer within the limits, the next memo index."""
    if name == "FRAME" and pos + 9 + arg > size:  # the unpickler reads a frame at once
        raise CheckpointError(f"{where} is truncated (a frame runs past its end)")
    if name in ("LONG1", "LONG4") and arg.bit_length() > 8 * limits.max_int_bytes:
        raise CheckpointError(f"refusing to load: {where} holds an integer of more than "
                              f"{limits.max_int_bytes} bytes")
    # Picklers number memo entries 0, 1, 2...; the C unpickler grows its memo array to twice the
    # index it is given and zero-fills it, so LONG_BINPUT 1500000000 would take 24 GB.
    if name in ("BINPUT", "LONG_BINPUT") and arg > memo_size:
        raise CheckpointError(f"{where} is damaged: memo index {arg} out of sequence "
                              f"(expected at most {memo_size})")


def check_opcodes(stream: BinaryIO, where: str = "the file", persistent_ids: bool = False, count: int = 1,
                  limits: Limits = DEFAULT_LIMITS) -> None:
    """Walk the opcodes of ``count`` consecutive pickles from the stream's position (which is restored),
    without building anything.

    Raises CheckpointError for an opcode outside the allowed set (plus BINPERSID when ``persistent_ids``), for
    a length field that runs past the end of the data, for a truncated pickle, and for anything beyond
    ``limits`` (opcodes, calls, integer size, nesting depth) or a structure that contains itself.  A real file
    is read through ``mmap``, so that a forged length allocates nothing.
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
                _check_one_pickle(view, size, where, allowed, limits)
    except CheckpointError:
        raise
    except Exception as exc:  # pickletools: unknown opcode, data shorter than a length field, no STOP...
        text = first_line(exc)
        reason = "truncated" if "exhausted" in text else "damaged or truncated" if "remain" in text else "damaged"
        raise CheckpointError(f"{where} is {reason}: {text}") from None
    finally:
        if view is not stream:
            view.close()
        stream.seek(start)


def read_network_pickle(file: Union[PathLike, BinaryIO], limits: Limits = DEFAULT_LIMITS) -> dict:
    """Unpickle an official snapshot without executing anything from it.

    Args:
        file:   a path, or a binary stream positioned at the pickle.
        limits: what the pickle may make the unpickler do (:class:`Limits`).

    Returns:
        the snapshot dict; networks are :class:`PersistentRecord` objects; tensors are views of the file's
        bytes (treat them as read-only).

    Raises:
        CheckpointError: forbidden global, damaged or truncated file, beyond the limits, or not a snapshot dict.
    """
    if isinstance(file, (str, os.PathLike)):
        shown = printable(os.fspath(file))
        try:
            with open(file, "rb") as f:
                head = f.read(2)
                f.seek(0)
                if not head:
                    raise CheckpointError(f"the network file {shown} is empty")
                # Network pickles are protocol 2 or newer, which starts with the PROTO opcode.
                if head[0] != pickle.PROTO[0] or len(head) < 2 or not 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
                    raise CheckpointError(f"{shown} is neither a network pickle nor a safetensors file")
                return read_network_pickle(f, limits)
        except OSError as exc:
            raise CheckpointError(f"cannot read {shown}: {printable(exc.strerror or exc)}") from None
    check_opcodes(file, where="the network file", limits=limits)
    start = file.tell()
    size = file.seek(0, os.SEEK_END) - start
    file.seek(start)
    try:
        data = RestrictedUnpickler(file, load=_Load(size + limits.slack_bytes)).load()
    except CheckpointError:
        raise
    except EOFError:
        raise CheckpointError("the network file is truncated (it ends in the middle of the data)") from None
    except Exception as exc:  # anything the bytes of a damaged file make the unpickler or our stand-ins raise
        raise CheckpointError(f"the network file is damaged or not a pickle: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise CheckpointError("the file is a pickle but not a network snapshot (expected a dict with 'G_ema')")
    return data


__all__ = ["ALLOWED_GLOBALS", "DEFAULT_LIMITS", "EasyDict", "Limits", "PersistentRecord", "RestrictedUnpickler",
           "check_opcodes", "read_network_pickle"]
