"""Requests and results as JSON, for a queue: no pickle, nothing executed, every size bounded.

A job that runs on a queue worker crosses two processes and a Redis server.  Whatever passes through Redis
must not become a way to run code on a worker or a face, so nothing here unpickles or imports: values are
written as plain JSON with a few tagged forms, and read back into a closed set of registered dataclasses::

    {"$dc": "AgeEdit", "v": {"vector": "pups", "strength": 1.0, ...}}    a registered dataclass, by field
    {"$nd": {"dtype": "<f4", "shape": [16, 512], "data": "<base64>"}}   a numpy array (numeric dtypes only)
    {"$pt": {...same...}}                                                a torch tensor (on the CPU)
    {"$png": "<base64>"}                                                 an image, uint8 [H, W, 3], as PNG
    {"$b": "<base64>"}                                                   bytes (an uploaded file)
    {"$tuple": [...]}                                                    a tuple
    {"$home": "cache/ui-videos/ab/abcd.../video.mp4"}                    a path inside the shared home
    {"$latent": {"$home": "cache/results/.../projected_w.npz"}}          a latent with tuned weights, as a file

Paths travel relative to the home directory (``TIMEMACHINE_HOME``) that faces and workers share, so a worker
that mounts it elsewhere finds the same files, and a path outside it (or one that climbs out with '..') is
refused instead of being read or written.  Latents travel inline (ws and noise maps: a few MB at most) unless
they carry pivotal-tuning weights (the size of the generator): those are written once into the results store
(:attr:`timemachine.env.Paths.results`, content-addressed) and travel as a reference.

Bounds: an array or byte string decodes to at most :data:`MAX_ARRAY_BYTES`, an image to at most
:data:`MAX_IMAGE_PIXELS`, nesting to :data:`MAX_DEPTH` levels; anything else is a :class:`CodecError`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
import json
import math
import os
from pathlib import Path, PurePosixPath
from typing import Any, Optional

import numpy as np
import torch

from timemachine import errors
from timemachine.errors import TimemachineError, printable

#: Largest array or byte string one value may decode to.
MAX_ARRAY_BYTES = 64 * 2**20
#: Largest image (width x height) one value may decode to.
MAX_IMAGE_PIXELS = 4096 * 4096
#: Deepest nesting of lists, dicts and dataclasses.
MAX_DEPTH = 32
#: Latents with tuned weights kept in the results store (the least recently used are removed first).
MAX_STORED_RESULTS = 64
#: Numeric dtypes an array may have (little-endian); never 'object'.
DTYPES = frozenset({"|b1", "|u1", "|i1", "<u2", "<i2", "<i4", "<i8", "<f2", "<f4", "<f8"})
_LATENT_FILE = "projected_w.npz"

_TYPES: dict[str, type[Any]] = {}
#: Fields that hold paths (a path, or a dict of paths): they travel as home-relative paths.
_PATH_FIELDS: dict[str, frozenset[str]] = {}


class CodecError(TimemachineError):
    """A value cannot be written for the queue or read back from it."""


def register_type(cls: type, path_fields: tuple[str, ...] = ()) -> type:
    """Allow the dataclass ``cls`` to travel (by its name); ``path_fields`` hold paths inside the home."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    existing = _TYPES.get(cls.__name__)
    if existing is not None and existing is not cls:
        raise ValueError(f"another type named {cls.__name__} is registered already")
    _TYPES[cls.__name__] = cls
    _PATH_FIELDS[cls.__name__] = frozenset(path_fields)
    return cls


# ----------------------------------------------------------------------------------------------------------
# Paths


def _home_relative(value: Any, home: Path) -> dict[str, str]:
    path = Path(os.path.abspath(os.fspath(value)))
    root = Path(os.path.abspath(home))
    try:
        relative = path.relative_to(root)
    except ValueError:
        raise CodecError(f"{printable(path)} is outside the shared home directory {printable(root)}: jobs on queue "
                         "workers read and write only there") from None
    return {"$home": relative.as_posix()}


def _from_home(relative: Any, home: Path) -> str:
    if not isinstance(relative, str) or len(relative) > 4096:
        raise CodecError("a path in a job must be text")
    parts = PurePosixPath(relative).parts
    if not parts or relative.startswith("/") or "\\" in relative or "\0" in relative or ".." in parts:
        raise CodecError(f"the path {printable(relative)} in a job leaves the shared home directory")
    return str(Path(os.path.abspath(home)).joinpath(*parts))


# ----------------------------------------------------------------------------------------------------------
# Arrays and images


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, limit: int = MAX_ARRAY_BYTES) -> bytes:
    if not isinstance(text, str):
        raise CodecError("binary data in a job must be base64 text")
    if len(text) > (limit + 2) // 3 * 4 + 4:
        raise CodecError(f"binary data in a job is larger than {limit} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CodecError("binary data in a job is not valid base64") from None


def _encode_array(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    array = array.astype(dtype, copy=False)
    if dtype.str not in DTYPES:
        raise CodecError(f"arrays of dtype {dtype} cannot travel in a job")
    if array.nbytes > MAX_ARRAY_BYTES:
        raise CodecError(f"an array of {array.nbytes} bytes is too large for a job (limit {MAX_ARRAY_BYTES})")
    return {"dtype": dtype.str, "shape": list(array.shape), "data": _b64(array.tobytes())}


def _decode_array(data: Any) -> np.ndarray:
    if not isinstance(data, dict) or set(data) != {"dtype", "shape", "data"}:
        raise CodecError("an array in a job needs exactly 'dtype', 'shape' and 'data'")
    dtype, shape = data["dtype"], data["shape"]
    if dtype not in DTYPES:
        raise CodecError(f"arrays of dtype {printable(dtype)} are not accepted")
    if not isinstance(shape, list) or len(shape) > 8 or \
            not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_ARRAY_BYTES for n in shape):
        raise CodecError("an array's shape must be at most 8 non-negative whole numbers")
    itemsize = np.dtype(dtype).itemsize
    expected = math.prod(shape) * itemsize
    if expected > MAX_ARRAY_BYTES:
        raise CodecError(f"an array of {expected} bytes is too large (limit {MAX_ARRAY_BYTES})")
    raw = _unb64(data["data"])
    if len(raw) != expected:
        raise CodecError(f"an array of shape {shape} and dtype {dtype} needs {expected} bytes, not {len(raw)}")
    return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] as PNG bytes (lossless)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), "RGB").save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes as uint8 [H, W, 3]; :class:`CodecError` for anything else or anything too large."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise CodecError(f"an image of {img.width}x{img.height} pixels is too large for a job")
            if img.mode != "RGB":
                raise CodecError(f"images in a job are RGB, not {img.mode}")
            return np.asarray(img, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise CodecError("an image in a job is not a readable PNG") from None


def _is_image(value: np.ndarray) -> bool:
    return value.dtype == np.uint8 and value.ndim == 3 and value.shape[2] == 3 and value.size > 0


# ----------------------------------------------------------------------------------------------------------
# Latents with tuned weights: files in the results store


def _latent_key(latent: Any) -> str:
    h = hashlib.sha256(b"timemachine-result-latent-v1\0")
    h.update(latent.ws.detach().cpu().contiguous().numpy().tobytes())
    for name in sorted(latent.noise):
        h.update(name.encode() + b"\0" + latent.noise[name].detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(latent.meta, sort_keys=True, default=str).encode())
    for name in sorted(latent.pti_delta or {}):
        h.update(name.encode() + b"\0" + latent.pti_delta[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _store_latent(latent: Any, home: Path) -> dict[str, Any]:
    from timemachine.env import Paths
    from timemachine.fs import ContentStore

    store = ContentStore(Paths(Path(home)).results, max_entries=MAX_STORED_RESULTS)
    key = _latent_key(latent)
    entry = store.get(key, required=(_LATENT_FILE,))
    if entry is None:
        entry = store.put(key, lambda d: latent.save(d / _LATENT_FILE))
    return _home_relative(entry / _LATENT_FILE, home)


def _load_latent(reference: Any, home: Path) -> Any:
    from timemachine.latents import load_latent

    if not isinstance(reference, dict) or set(reference) != {"$home"}:
        raise CodecError("a latent reference must be a path in the home directory")
    return load_latent(_from_home(reference["$home"], home))


# ----------------------------------------------------------------------------------------------------------
# Values


def encode(value: Any, home: os.PathLike) -> Any:
    """``value`` as JSON-compatible data (see the module docstring).  Raises :class:`CodecError` for a value
    that cannot travel (an unregistered type, an array too large, a path outside ``home``)."""
    return _encode(value, Path(home), 0, None)


def _encode_path_field(value: Any, home: Path, depth: int, field: str) -> Any:
    if isinstance(value, dict):
        return {str(k): _encode_path_field(v, home, depth + 1, field) for k, v in value.items()}
    if isinstance(value, (str, os.PathLike)):
        return _home_relative(value, home)
    raise CodecError(f"the field {field} must hold a path")


def _encode_scalar(value: Any, home: Path) -> Any:
    """A scalar, bytes, path or array as JSON data; ``NotImplemented`` for anything else."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, os.PathLike):
        return _home_relative(value, home)
    if isinstance(value, bytes):
        if len(value) > MAX_ARRAY_BYTES:
            raise CodecError(f"{len(value)} bytes are too many for a job (limit {MAX_ARRAY_BYTES})")
        return {"$b": _b64(value)}
    if isinstance(value, torch.Tensor):
        return {"$pt": _encode_array(value.detach().cpu().numpy())}
    if isinstance(value, np.ndarray):
        return {"$png": _b64(encode_png(value))} if _is_image(value) else {"$nd": _encode_array(value)}
    return NotImplemented


def _encode_dict(value: dict, home: Path, depth: int) -> dict:
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or k.startswith("$"):
            raise CodecError(f"dictionary keys in a job must be text not starting with '$': {printable(k)}")
        out[k] = _encode(v, home, depth + 1, None)
    return out


def _encode_dataclass(value: Any, home: Path, depth: int) -> dict:
    name = type(value).__name__
    if _TYPES.get(name) is not type(value):
        raise CodecError(f"{name} cannot travel in a job (not a registered type)")
    if name == "LatentFile" and value.pti_delta:
        return {"$latent": _store_latent(value, home)}
    paths = _PATH_FIELDS[name]
    fields = {f.name: _encode(getattr(value, f.name), home, depth + 1, f.name if f.name in paths else None)
              for f in dataclasses.fields(value) if f.init}
    return {"$dc": name, "v": fields}


def _encode(value: Any, home: Path, depth: int, path_field: Optional[str]) -> Any:
    if depth > MAX_DEPTH:
        raise CodecError("a job nests values too deeply")
    if path_field is not None and value is not None:
        return _encode_path_field(value, home, depth, path_field)
    scalar = _encode_scalar(value, home)
    if scalar is not NotImplemented:
        return scalar
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, home, depth + 1, None) for v in value]}
    if isinstance(value, list):
        return [_encode(v, home, depth + 1, None) for v in value]
    if isinstance(value, dict):
        return _encode_dict(value, home, depth)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _encode_dataclass(value, home, depth)
    raise CodecError(f"a value of type {type(value).__name__} cannot travel in a job")


def decode(data: Any, home: os.PathLike) -> Any:
    """The value :func:`encode` wrote (paths resolved against this process's ``home``).  Raises
    :class:`CodecError` for anything malformed, unknown or too large; never executes anything."""
    return _decode(data, Path(home), 0, None)


def _decode_path_field(data: Any, home: Path, depth: int, field: str) -> Any:
    if isinstance(data, dict) and set(data) == {"$home"}:
        return _from_home(data["$home"], home)
    if isinstance(data, dict) and not any(k.startswith("$") for k in data):
        return {k: _decode_path_field(v, home, depth + 1, field) for k, v in data.items()}
    raise CodecError(f"the field {field} must hold paths in the home directory")


def _decode_tuple(body: Any, home: Path, depth: int) -> tuple:
    if not isinstance(body, list):
        raise CodecError("a tuple must be a list")
    return tuple(_decode(v, home, depth + 1, None) for v in body)


def _decode_float(body: Any, home: Path, depth: int) -> float:
    if body not in ("nan", "inf", "-inf"):
        raise CodecError("a special float must be 'nan', 'inf' or '-inf'")
    return float(body)


#: The tagged forms other than '$dc': tag -> decode(body, home, depth).
_TAGS = {
    "$nd": lambda body, home, depth: _decode_array(body),
    "$pt": lambda body, home, depth: torch.from_numpy(_decode_array(body)),
    "$png": lambda body, home, depth: decode_png(_unb64(body)),
    "$b": lambda body, home, depth: _unb64(body),
    "$tuple": _decode_tuple,
    "$float": _decode_float,
    "$home": lambda body, home, depth: _from_home(body, home),
    "$latent": lambda body, home, depth: _load_latent(body, home),
}


def _decode(data: Any, home: Path, depth: int, path_field: Optional[str]) -> Any:
    if depth > MAX_DEPTH:
        raise CodecError("a job nests values too deeply")
    if path_field is not None and data is not None:
        return _decode_path_field(data, home, depth, path_field)
    if data is None or isinstance(data, (bool, str, int, float)):
        return data
    if isinstance(data, list):
        return [_decode(v, home, depth + 1, None) for v in data]
    if not isinstance(data, dict):
        raise CodecError(f"unexpected {type(data).__name__} in a job")
    tags = [k for k in data if isinstance(k, str) and k.startswith("$")]
    if not tags:
        return {k: _decode(v, home, depth + 1, None) for k, v in data.items()}
    if tags[0] == "$dc":
        return _decode_dataclass(data, home, depth)
    decoder = _TAGS.get(tags[0])
    if decoder is None:
        raise CodecError(f"unknown tag {printable(tags[0])} in a job")
    if len(data) != 1:
        raise CodecError(f"a tagged value {printable(tags[0])} has other keys")
    return decoder(data[tags[0]], home, depth)


def _decode_dataclass(data: dict, home: Path, depth: int) -> Any:
    if set(data) != {"$dc", "v"} or not isinstance(data["v"], dict):
        raise CodecError("a dataclass in a job needs exactly '$dc' and 'v'")
    name = data["$dc"]
    cls = _TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise CodecError(f"{printable(name)} is not a type a job may carry")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data["v"] if k not in fields]
    if unknown:
        raise CodecError(f"{name} has no field {printable(unknown[0])}")
    paths = _PATH_FIELDS[name]
    kwargs = {k: _decode(v, home, depth + 1, k if k in paths else None) for k, v in data["v"].items()}
    try:
        return cls(**kwargs)
    except TimemachineError:
        raise
    except (TypeError, ValueError) as exc:
        raise CodecError(f"a {name} in a job is malformed: {errors.first_line(exc)}") from None


# ----------------------------------------------------------------------------------------------------------
# Errors


def encode_error(exc: BaseException) -> dict[str, Any]:
    """A :class:`TimemachineError` as {'type', 'message', 'remedy'}."""
    return {"type": type(exc).__name__, "message": str(exc), "remedy": getattr(exc, "remedy", None)}


def decode_error(data: Any) -> TimemachineError:
    """The error :func:`encode_error` wrote: an instance of the :mod:`timemachine.errors` class of that name (a
    :class:`TimemachineError` when there is none), its message made printable."""
    if not isinstance(data, dict):
        return TimemachineError("the job failed")
    name, message, remedy = data.get("type"), data.get("message"), data.get("remedy")
    cls = getattr(errors, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, TimemachineError)):
        cls = TimemachineError
    error = cls.__new__(cls)
    TimemachineError.__init__(error, printable(message if isinstance(message, str) else "the job failed", 2000),
                              remedy=remedy if remedy in errors.REMEDIES else None)
    return error


def _register_defaults() -> None:
    from timemachine.age import AgeVector
    from timemachine.align import AlignmentRequest
    from timemachine.images import CropBox
    from timemachine.latents import LatentFile
    from timemachine.pipeline import requests
    from timemachine.pipeline.discovery import DiscoverResult
    from timemachine.pipeline.projection import PhotoProjection
    from timemachine.pipeline.vectors import BuiltExample, VectorBuildResult
    from timemachine.pipeline.videos import AgeVideoResult
    from timemachine.settings import (
        DiscoverySettings,
        ProjectorSettings,
        PTISettings,
        RenderSettings,
        ScoreSettings,
        VectorSettings,
    )

    for cls in (AlignmentRequest, CropBox, ScoreSettings, requests.Photo, requests.AgeEdit, requests.AgeVideoRequest,
                requests.VectorBuildRequest, requests.PreviewStripRequest, requests.DiscoverRequest, ProjectorSettings,
                PTISettings, RenderSettings, VectorSettings, DiscoverySettings, PhotoProjection, BuiltExample,
                LatentFile, AgeVector):
        register_type(cls)
    register_type(requests.ProjectionRequest, ("checkpoint",))
    register_type(requests.VideoOutputs, ("directory",))
    register_type(requests.RenderRequest, ("latent",))
    register_type(requests.VectorExample, ("path",))
    register_type(AgeVideoResult, ("files",))
    register_type(VectorBuildResult, ("path",))
    register_type(DiscoverResult, ("path",))


_register_defaults()
