"""Loading generators from official StyleGAN2-ADA network pickles, safely; the project's safetensors format.

Official pickles (``afhqdog.pkl``, ``network-snapshot-*.pkl``) are a pickled dict
``{'training_set_kwargs', 'G', 'D', 'G_ema', 'augment_pipe'}`` whose networks are
``torch_utils.persistence`` objects: ``_reconstruct_persistent_obj(meta)`` with ``meta`` holding the class
name, the constructor arguments and the module state, and ``module_src`` - the Python source of NVIDIA's
network code, which unpickling with NVIDIA's code would *execute*.

Here nothing from the file is executed:

* :class:`_RestrictedUnpickler` resolves only the globals in :data:`ALLOWED_GLOBALS`; any other global
  (``os.system``, ``builtins.eval``, ...) stops the load with a :class:`CheckpointError` naming it.
  ``_reconstruct_persistent_obj`` is replaced by :class:`PersistentRecord`, an inert record of ``meta``.
* tensor bytes inside ``torch.storage._load_from_bytes`` are read with ``torch.load(weights_only=True)``.
* the generator is then built from *our* :mod:`timemachine.networks` using the record's class name and
  ``_init_kwargs``; tensors are copied in by name with shapes checked.  ``module_src`` is never read.

The project's own format is a single ``.safetensors`` file: the generator's tensors, plus its
configuration as JSON in the header metadata (see :func:`save_generator`).
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import pickle
import struct
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


class PersistentRecord:
    """Inert stand-in for a ``torch_utils.persistence`` object: just its ``meta`` dict.

    ``class_name`` (e.g. ``'Generator'``), ``version`` and ``state`` (the module's ``__dict__``:
    ``_parameters``, ``_buffers``, ``_modules``, ``_init_args``, ``_init_kwargs``...) are exposed; the
    record never looks at ``module_src``.
    """

    def __init__(self, meta: Any):
        if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
            raise CheckpointError("the file holds a persistent object with malformed metadata")
        if not isinstance(meta.get("class_name"), str):
            raise CheckpointError("the file holds a persistent object without a class name")
        self.class_name: str = meta["class_name"]
        self.version = meta.get("version")
        self.state: dict = meta["state"]

    def __setstate__(self, state: Any) -> None:  # BUILD opcodes must not alter a record
        raise CheckpointError("the file tries to modify a persistent object after creating it")

    def __repr__(self) -> str:
        return f"PersistentRecord({self.class_name})"


def _load_storage_from_bytes(data: bytes) -> Any:
    """``torch.storage._load_from_bytes`` without its arbitrary-code path: weights_only unpickling."""
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError("tensor data in the file is not a byte string")
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"forbidden content inside tensor data: {_first_line(exc)}") from None
    except Exception as exc:
        raise CheckpointError(f"damaged tensor data: {_first_line(exc)}") from None


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    if backward_hooks:
        raise CheckpointError("the file attaches hooks to a tensor")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                                           collections.OrderedDict())


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if backward_hooks:
        raise CheckpointError("the file attaches hooks to a parameter")
    if not isinstance(data, torch.Tensor):
        raise CheckpointError("a parameter in the file holds no tensor")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise CheckpointError("the file holds a numpy scalar of a non-numeric type")
    if len(data) != dtype.itemsize:
        raise CheckpointError("the file holds a numpy scalar of the wrong size")
    return np.frombuffer(data, dtype=dtype)[0]


def _numpy_dtype(name, align=False, copy=False):
    dtype = np.dtype(name, align, copy)
    if dtype.hasobject:
        raise CheckpointError("the file holds a numpy dtype of Python objects")
    return dtype


#: (module, name) -> the callable the unpickler hands out for it.  Nothing else resolves.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentRecord,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,   # numpy >= 2 writes this name
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,    # numpy 1.x writes this one
    ("numpy", "dtype"): _numpy_dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`ALLOWED_GLOBALS` and refuses persistent IDs."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(f"refusing to load: the file asks for the forbidden global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError("refusing to load: the file uses persistent IDs, which network pickles never do")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
                return read_network_pickle(f)
        except OSError as exc:
            raise CheckpointError(f"cannot read {os.fspath(file)}: {exc.strerror}") from None
    try:
        data = _RestrictedUnpickler(file).load()
    except CheckpointError:
        raise
    except EOFError:
        raise CheckpointError("the network file is truncated (it ends in the middle of the data)") from None
    except (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RuntimeError, struct.error, UnicodeDecodeError, MemoryError, RecursionError) as exc:
        raise CheckpointError(f"the network file is damaged or not a pickle: {_first_line(exc)}") from None
    if not isinstance(data, dict):
        raise CheckpointError("the file is a pickle but not a network snapshot (expected a dict with 'G_ema')")
    return data


def _collect_tensors(record: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten a record tree into a state dict: ``{'synthesis.b4.conv1.weight': tensor, ...}``."""
    tensors: dict[str, torch.Tensor] = {}
    state = record.state
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        entries = state.get(kind) or {}
        if not isinstance(entries, dict):
            raise CheckpointError(f"{prefix or 'the network'}: malformed {kind}")
        for name, value in entries.items():
            if value is None or (kind == "_buffers" and name in non_persistent):
                continue
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{prefix}{name} is not a tensor")
            tensors[prefix + name] = value
    modules = state.get("_modules") or {}
    if not isinstance(modules, dict):
        raise CheckpointError(f"{prefix or 'the network'}: malformed _modules")
    for name, child in modules.items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise CheckpointError(f"{prefix}{name} is not a network module")
        tensors.update(_collect_tensors(child, prefix + name + "."))
    return tensors


def _plain(value: Any) -> Any:
    """EasyDicts and numpy scalars from a pickle -> plain dicts, lists and Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_config(config: dict) -> dict:
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
        raise CheckpointError(f"unsupported generator option(s): {', '.join(unknown)}")
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


def build_generator(config: dict, tensors: dict[str, torch.Tensor]) -> Generator:
    """A :class:`Generator` from constructor arguments and a state dict, every tensor present and shaped right.

    The network is first built on the 'meta' device (no memory, no random init), then given storage and
    filled from ``tensors``.  Returns it in eval mode with gradients off, on the CPU, float32.
    """
    config = _check_config(config)
    try:
        with torch.device("meta"):
            G = Generator(**config)
    except TypeError as exc:
        raise CheckpointError(f"unsupported generator option: {_first_line(exc)}") from None
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"invalid generator configuration: {_first_line(exc)}") from None
    G = G.to_empty(device="cpu")
    expected = G.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(f"the file lacks the tensor {missing[0]} (and {len(missing) - 1} more)"
                              if len(missing) > 1 else f"the file lacks the tensor {missing[0]}")
    if unexpected:
        raise CheckpointError(f"the file has a tensor this generator does not: {unexpected[0]}")
    for name, target in expected.items():
        source = tensors[name]
        if tuple(source.shape) != tuple(target.shape):
            raise CheckpointError(f"tensor {name} has shape {tuple(source.shape)}, expected {tuple(target.shape)}")
        if not source.is_floating_point():
            raise CheckpointError(f"tensor {name} is not floating point ({source.dtype})")
    with torch.no_grad():
        G.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()}, strict=True)
    return G.eval().requires_grad_(False)


def generator_from_snapshot(snapshot: dict, which: str = "G_ema") -> Generator:
    """Build our Generator from the record ``snapshot[which]`` of an unpickled official snapshot."""
    if which not in ("G_ema", "G"):
        raise ValueError("which must be 'G_ema' or 'G'")
    if which not in snapshot:
        raise CheckpointError(f"the snapshot has no {which!r} network (keys: {', '.join(map(str, snapshot))})")
    record = snapshot[which]
    if not isinstance(record, PersistentRecord):
        raise CheckpointError(f"{which} in the file is not a network")
    if record.class_name != "Generator":
        raise CheckpointError(f"{which} is a {record.class_name!r}, not a StyleGAN2-ADA 'Generator'")
    init_args = record.state.get("_init_args") or ()
    if init_args:
        raise CheckpointError(f"{which} was built with positional arguments, which official snapshots never use")
    return build_generator(dict(record.state.get("_init_kwargs") or {}), _collect_tensors(record))


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
            try:
                config = json.loads(metadata.get("config", ""))
            except json.JSONDecodeError:
                raise CheckpointError("the generator file's configuration is not valid JSON") from None
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except SafetensorError as exc:
        raise CheckpointError(f"damaged safetensors file: {_first_line(exc)}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from None
    return build_generator(config, tensors)


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
