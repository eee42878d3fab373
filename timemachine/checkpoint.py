"""Generators from files: official StyleGAN2-ADA network pickles, the project's safetensors format; the model
fingerprint.

An official snapshot is read by :mod:`timemachine.unpickler` (nothing from it runs); its ``G_ema`` record is
turned into *our* :class:`~timemachine.networks.Generator` here, from the record's class name and
``_init_kwargs``.  ``module_src`` is never read.  Whatever the format, a generator is built the same way
(:func:`build_generator`):

* the configuration is validated value by value (:func:`check_config`): every key known, every number finite
  and in range (dimensions positive and bounded, resolutions powers of two, ``img_channels`` 3,
  ``lr_multiplier`` > 0, ``conv_clamp`` None or > 0, ``w_avg_beta`` in [0, 1], ...), so no configuration can
  give NaN or black images later;
* the network is built on the 'meta' device (no memory), its tensor names and shapes are compared with the
  file's, the file's tensors must hold at least as many bytes as the network claims (views may not multiply
  a small file into a large model), and one forward pass checks that the configuration runs;
* every tensor is converted to float32 and must be finite *after* the conversion (a float64 weight of 1e39 is
  finite but not in float32); only then is memory allocated and filled.

The project's own format is a single ``.safetensors`` file: the generator's float32 tensors, plus its
configuration as JSON in the header metadata (see :func:`save_generator`).

Every way a file can be wrong ends in a :class:`CheckpointError` whose message names the cause; text from the
file (keys, tensor and class names, paths) is escaped in it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from stylegan_ops.bias_act import activation_funcs
from timemachine import fs
from timemachine.errors import CheckpointError, first_line, printable, quoted
from timemachine.networks import Generator
from timemachine.unpickler import PersistentRecord, read_network_pickle

PathLike = Union[str, os.PathLike]

SAFETENSORS_FORMAT = "timemachine-generator"
SAFETENSORS_VERSION = "1"

# Largest configurations accepted from a file, so that a hostile header cannot make us allocate terabytes.
_MAX_RESOLUTION = 4096
_MAX_DIM = 4096
_MAX_CHANNELS = 8192
# Bounds on what a file may hold in the parts we walk, so that shared or cyclic references cannot make a
# walk endless or exponential.  The official generator's module tree is 5 deep, its config 2.
_MAX_MODULE_DEPTH = 16
_MAX_CONFIG_DEPTH = 8
_MAX_CONFIG_ITEMS = 1000
_MAX_JSON_INTEGER_DIGITS = 20


# ---------------------------------------------------------------------------------------------------------------
# The configuration


def _shown(value: Any) -> str:
    """A configuration value from a file, for a message: short, escaped; huge integers by their size."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 30:
        return f"<a {value.bit_length()}-bit integer>"
    if isinstance(value, str):
        return quoted(value, 40)
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return f"<a {type(value).__name__}>"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_Check = Callable[[Any], bool]


def _whole(low: int, high: int) -> tuple[_Check, str]:
    return (lambda v: type(v) is int and low <= v <= high), f"a whole number from {low} to {high}"


def _real(low: float, high: float, low_open: bool = False) -> tuple[_Check, str]:
    def check(v: Any) -> bool:
        return _is_number(v) and (low < v if low_open else low <= v) and v <= high

    if low_open:
        return check, f"a finite number above {low:g} and at most {high:g}"
    return check, f"a finite number from {low:g} to {high:g}"


def _optional(rule: tuple[_Check, str]) -> tuple[_Check, str]:
    return (lambda v: v is None or rule[0](v)), f"None or {rule[1]}"


def _choice(options) -> tuple[_Check, str]:
    options = tuple(options)
    return (lambda v: isinstance(v, str) and v in options), "one of " + ", ".join(map(repr, options))


_BOOLEAN: tuple[_Check, str] = ((lambda v: isinstance(v, bool)), "true or false")
_FILTER: tuple[_Check, str] = (
    (lambda v: isinstance(v, list) and 1 <= len(v) <= 16 and all(_is_number(x) and abs(x) <= 1e6 for x in v)
     and sum(v) > 0),
    "1 to 16 finite filter taps with a positive sum")

#: Every configuration key a generator file may hold, with its rule.  Top-level keys first, then those of
#: ``mapping_kwargs`` and ``synthesis_kwargs`` (blocks and layers take theirs from the latter).
_TOP_RULES = {
    "z_dim": _whole(1, _MAX_DIM), "c_dim": _whole(0, _MAX_DIM), "w_dim": _whole(1, _MAX_DIM),
    "img_resolution": _whole(4, _MAX_RESOLUTION),
    "img_channels": ((lambda v: type(v) is int and v == 3), "3 (RGB)"),
}
_MAPPING_RULES = {
    "num_layers": _whole(1, 64),
    "embed_features": _optional(_whole(1, _MAX_DIM)),
    "layer_features": _optional(_whole(1, _MAX_DIM)),
    "activation": _choice(activation_funcs),
    "lr_multiplier": _real(0, 1000, low_open=True),
    "w_avg_beta": _real(0, 1),
}
_SYNTHESIS_RULES = {
    "channel_base": _whole(1, _MAX_CHANNELS * _MAX_RESOLUTION),
    "channel_max": _whole(1, _MAX_CHANNELS),
    "num_fp16_res": _whole(0, 16),
    "architecture": _choice(("orig", "skip", "resnet")),
    "resample_filter": _FILTER,
    "conv_clamp": _optional(_real(0, 1e6, low_open=True)),
    "fp16_channels_last": _BOOLEAN,
    "kernel_size": ((lambda v: type(v) is int and 1 <= v <= 7 and v % 2 == 1), "an odd whole number from 1 to 7"),
    "use_noise": _BOOLEAN,
    "activation": _choice(activation_funcs),
}


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
    raise CheckpointError(f"the generator's configuration holds a {printable(type(value).__name__, 40)}, "
                          "where only numbers, strings and lists belong")


def _check_section(values: dict, rules: dict, scope: str) -> None:
    unknown = sorted(set(values) - set(rules))
    if unknown:
        names = ", ".join(printable(f"{scope}.{k}" if scope else k, 60) for k in unknown[:5])
        raise CheckpointError(f"unsupported generator option(s): {names}{', ...' if len(unknown) > 5 else ''}")
    for key, value in values.items():
        check, expected = rules[key]
        if not check(value):
            name = f"{scope.split('_')[0]} {key}" if scope else key
            raise CheckpointError(f"{name}={_shown(value)} is out of range: expected {expected}")


def check_config(config: Any) -> dict:
    """Validate generator constructor arguments from a file (see :data:`_TOP_RULES` and the two below it);
    returns them as plain Python values, ``mapping_kwargs`` and ``synthesis_kwargs`` always present.

    Raises:
        CheckpointError: a missing, unknown or out-of-range value, or a network too large; one sentence.
    """
    if not isinstance(config, dict):
        raise CheckpointError("the generator's configuration is not a dict")
    config = _plain(config)
    for key in _TOP_RULES:
        if not isinstance(config.get(key), int) or isinstance(config.get(key), bool):
            raise CheckpointError(f"the generator's configuration lacks an integer {key!r}")
    res = config["img_resolution"]
    if not 4 <= res <= _MAX_RESOLUTION or res & (res - 1):
        raise CheckpointError(f"unsupported image resolution {_shown(res)}: expected a power of two from 4 to "
                              f"{_MAX_RESOLUTION}")
    top = {k: v for k, v in config.items() if k not in ("mapping_kwargs", "synthesis_kwargs")}
    _check_section(top, _TOP_RULES, "")
    for key, rules in (("mapping_kwargs", _MAPPING_RULES), ("synthesis_kwargs", _SYNTHESIS_RULES)):
        value = config.setdefault(key, {})
        if not isinstance(value, dict):
            raise CheckpointError(f"{key} is not a dict")
        _check_section(value, rules, key)
    syn = config["synthesis_kwargs"]
    if syn.get("channel_base", 32768) // res < 1:
        raise CheckpointError(f"synthesis channel_base={syn['channel_base']} leaves no channels at resolution {res}")
    return config


def _json_integer(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_JSON_INTEGER_DIGITS:
        raise CheckpointError(f"the generator file's configuration holds an integer of {len(text)} digits")
    return int(text)


# ---------------------------------------------------------------------------------------------------------------
# Tensors


def _collect_tensors(record: PersistentRecord, prefix: str = "",
                     _seen: Optional[set] = None) -> dict[str, torch.Tensor]:
    """Flatten a record tree into a state dict: ``{'synthesis.b4.conv1.weight': tensor, ...}``."""
    seen = set() if _seen is None else _seen
    where = printable(prefix[:-1]) if prefix else "the network"
    if id(record) in seen:
        raise CheckpointError(f"{where}: the same module appears twice in the network")
    if prefix.count(".") >= _MAX_MODULE_DEPTH:
        raise CheckpointError(f"{where}: the network's modules are nested too deeply")
    seen.add(id(record))
    state = record.state
    tensors = _own_tensors(state, prefix, where)
    for name, child in _str_key_items(state.get("_modules"), f"{where}: _modules"):
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise CheckpointError(f"{printable(prefix + name)} is not a network module")
        tensors.update(_collect_tensors(child, prefix + name + ".", seen))
    return tensors


def _own_tensors(state: dict, prefix: str, where: str) -> dict[str, torch.Tensor]:
    """A module's own parameters and persistent buffers (not its children's), named ``prefix + name``."""
    tensors: dict[str, torch.Tensor] = {}
    non_persistent = state.get("_non_persistent_buffers_set", None) or set()
    if not isinstance(non_persistent, (set, frozenset)) or not all(isinstance(n, str) for n in non_persistent):
        raise CheckpointError(f"{where}: malformed _non_persistent_buffers_set")
    for kind in ("_parameters", "_buffers"):
        for name, value in _str_key_items(state.get(kind), f"{where}: {kind}"):
            if value is None or (kind == "_buffers" and name in non_persistent):
                continue
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{printable(prefix + name)} is not a tensor")
            if value._backward_hooks:
                raise CheckpointError(f"the file attaches hooks to the tensor {printable(prefix + name)}")
            tensors[prefix + name] = value
    return tensors


def _check_names(expected: dict[str, torch.Tensor], names: Any) -> None:
    missing = sorted(set(expected) - set(names))
    unexpected = sorted(set(names) - set(expected))
    if missing:
        raise CheckpointError(f"the file lacks the tensor {missing[0]} (and {len(missing) - 1} more)"
                              if len(missing) > 1 else f"the file lacks the tensor {missing[0]}")
    if unexpected:
        raise CheckpointError(f"the file has a tensor this generator does not: {printable(unexpected[0], 80)}")


def _check_shape(name: str, shape: tuple, target: torch.Tensor) -> None:
    if tuple(shape) != tuple(target.shape):
        raise CheckpointError(f"tensor {name} has shape {tuple(shape)}, expected {tuple(target.shape)}")


def _check_tensors(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
                   dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
    """The file's tensors against the generator's state dict (on 'meta'): names, shapes, dtypes (exactly
    ``dtype`` if given, else any floating point), data actually present in the file, and values finite once
    converted to float32.  Returns the float32 tensors."""
    _check_names(expected, tensors)
    for name, target in expected.items():
        source = tensors[name]
        _check_shape(name, source.shape, target)
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
    converted = {}
    for name in expected:
        source = tensors[name]
        value = source.to(torch.float32)
        # A sum is non-finite when any element is (NaN and inf propagate) and is much faster than isfinite()
        # on the CPU; the exact test runs only to confirm.
        if not bool(torch.isfinite(value.sum())) and not bool(torch.isfinite(value).all()):
            overflow = " once converted to float32" if bool(torch.isfinite(source).all()) else ""
            raise CheckpointError(f"tensor {name} holds NaN or infinite values{overflow} (the file is damaged)")
        converted[name] = value
    return converted


def _meta_generator(config: Any) -> Generator:
    """The generator of a validated ``config`` on the 'meta' device (no memory), after one forward pass there
    has shown that the configuration runs."""
    config = check_config(config)
    try:
        with torch.device("meta"):
            G = Generator(**config)
    except TypeError as exc:
        raise CheckpointError(f"unsupported generator option: {first_line(exc)}") from None
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"invalid generator configuration: {first_line(exc)}") from None
    try:
        with torch.device("meta"), torch.no_grad():
            G.eval()(torch.empty([1, G.z_dim]), torch.empty([1, G.c_dim]), noise_mode="const")
    except Exception as exc:  # a combination of valid values that does not fit together
        raise CheckpointError(f"the generator's configuration does not work: {first_line(exc)}") from None
    return G


def _filled(G: Generator, tensors: dict[str, torch.Tensor]) -> Generator:
    G = G.to_empty(device="cpu")
    with torch.no_grad():
        G.load_state_dict(tensors, strict=True)
    return G.eval().requires_grad_(False)


def build_generator(config: dict, tensors: dict[str, torch.Tensor], dtype: Optional[torch.dtype] = None) -> Generator:
    """A :class:`Generator` from constructor arguments and a state dict, every tensor present and shaped right.

    The configuration is validated (:func:`check_config`) and the network first built on the 'meta' device (no
    memory, no random init), where its tensor shapes are compared with ``tensors`` (exactly of ``dtype`` if
    given, else any floating point type) and one forward pass checks that the configuration runs; only then is
    it given storage and filled from ``tensors``, each finite once converted to float32.
    Returns it in eval mode with gradients off, on the CPU, float32.
    """
    G = _meta_generator(config)
    return _filled(G, _check_tensors(G.state_dict(), tensors, dtype))


def generator_from_snapshot(snapshot: dict, which: str = "G_ema") -> Generator:
    """Build our Generator from the record ``snapshot[which]`` of an unpickled official snapshot."""
    if which not in ("G_ema", "G"):
        raise ValueError("which must be 'G_ema' or 'G'")
    if which not in snapshot:
        keys = [quoted(k, 30) if isinstance(k, str) else f"<a {type(k).__name__}>" for k in list(snapshot)[:8]]
        raise CheckpointError(f"the snapshot has no {which!r} network (keys: {', '.join(keys) or 'none'}"
                              f"{', ...' if len(snapshot) > 8 else ''})")
    record = snapshot[which]
    if not isinstance(record, PersistentRecord):
        raise CheckpointError(f"{which} in the file is not a network")
    if record.class_name != "Generator":
        raise CheckpointError(f"{which} is a {quoted(record.class_name, 80)}, not a StyleGAN2-ADA 'Generator'")
    init_args = record.state.get("_init_args", ())
    if not isinstance(init_args, (tuple, list)):
        raise CheckpointError(f"{which} has malformed constructor arguments (_init_args)")
    if init_args:
        raise CheckpointError(f"{which} was built with positional arguments, which official snapshots never use")
    if "_init_kwargs" not in record.state:
        raise CheckpointError(f"{which} does not record its configuration (_init_kwargs)")
    return build_generator(record.state["_init_kwargs"], _collect_tensors(record))


# ---------------------------------------------------------------------------------------------------------------
# The safetensors format


def is_safetensors_file(path: PathLike) -> bool:
    """True when ``path`` starts like a safetensors file (8-byte header length, then a JSON object)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 100_000_000


def save_generator(G: Generator, path: PathLike, extra_metadata: Optional[dict[str, str]] = None) -> None:
    """Write ``G`` as a safetensors file: float32 tensors + JSON config in the header; atomic
    (:class:`timemachine.fs.PendingFile`: nothing planted beside ``path`` can redirect the write).

    Header metadata keys: ``format`` = 'timemachine-generator', ``format_version`` = '1',
    ``config`` = JSON of ``G.init_kwargs``, plus ``extra_metadata``.
    """
    from safetensors.torch import save_file

    metadata = {"format": SAFETENSORS_FORMAT, "format_version": SAFETENSORS_VERSION,
                "config": json.dumps(G.init_kwargs, sort_keys=True)}
    metadata.update(extra_metadata or {})
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in G.state_dict().items()}
    with fs.PendingFile(path, private=True) as pending:   # safetensors writes to a path
        save_file(tensors, pending.path, metadata=metadata)


_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def _load_safetensors(path: str) -> Generator:
    from safetensors import SafetensorError, safe_open

    shown = printable(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            G = _meta_generator(_config_from_header(f.metadata() or {}))
            expected = G.state_dict()
            names = list(f.keys())
            _check_names(expected, names)
            for name in names:   # from the header alone: nothing is read before every shape is known right
                _check_slice(name, f.get_slice(name), expected[name])
            tensors = {name: f.get_tensor(name) for name in names}
    except CheckpointError:
        raise
    except SafetensorError as exc:
        raise CheckpointError(f"damaged safetensors file: {first_line(exc)}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {shown}: {printable(exc.strerror or exc)}") from None
    except Exception as exc:  # e.g. a header whose fields have the wrong JSON types
        raise CheckpointError(f"damaged safetensors file: {first_line(exc)}") from None
    return _filled(G, _check_tensors(expected, tensors, dtype=torch.float32))


def _config_from_header(metadata: dict[str, str]) -> Any:
    """The generator's configuration (``G.init_kwargs``, parsed JSON, not yet validated) from a timemachine
    safetensors header."""
    if metadata.get("format") != SAFETENSORS_FORMAT:
        raise CheckpointError("the safetensors file is not a timemachine generator (no 'format' header)")
    if metadata.get("format_version") != SAFETENSORS_VERSION:
        raise CheckpointError(f"unsupported generator file version {_shown(metadata.get('format_version'))}")
    if "config" not in metadata:
        raise CheckpointError("the generator file lacks its configuration (no 'config' header)")
    try:
        return json.loads(metadata["config"], parse_int=_json_integer)
    except json.JSONDecodeError:
        raise CheckpointError("the generator file's configuration is not valid JSON") from None
    except RecursionError:
        raise CheckpointError("the generator's configuration is nested too deeply") from None


def _check_slice(name: str, piece: Any, target: torch.Tensor) -> None:
    """A tensor of the file, as its header describes it (a safetensors slice), has ``target``'s shape and is
    float32."""
    _check_shape(name, tuple(piece.get_shape()), target)
    dtype = _SAFETENSORS_DTYPES.get(piece.get_dtype())
    if dtype != torch.float32:
        raise CheckpointError(f"tensor {name} is {dtype or printable(piece.get_dtype(), 16)}, "
                              f"expected {torch.float32}")


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
        CheckpointError: the file is missing, damaged, forbidden, beyond the loader's limits or not a
        generator; the message says which.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{printable(path)} is a directory, not a network file")
    if not os.path.isfile(path):
        raise CheckpointError(f"no network file at {printable(path)}")
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
