"""Latent files: the official ``projected_w.npz`` format, with timemachine's extras.

The official StyleGAN2-ADA ``projector.py`` writes ``projected_w.npz`` holding one array ``w`` of shape
[1, num_ws, w_dim], float32 (all rows equal for a W-space projection).  timemachine writes the same key,
so official tools read its files, and adds optional keys:

    noise/<layer>   float32 [res, res]  optimised noise of synthesis layer ``<layer>`` (e.g. 'b8.conv0')
    meta            a 0-d unicode array holding a JSON object (settings, model fingerprint, metrics)

A projection with pivotal tuning also has a sibling file ``<stem>.pti.safetensors`` holding the tuned
weight delta {synthesis parameter name: float32 tensor}; ``meta['pti_delta']`` names it.

Reading a latent file cannot run code (no pickles: ``.npy`` headers are parsed, object dtypes refused) nor
take more memory than a latent needs: the zip directory is checked before it is parsed (:data:`MAX_MEMBERS`
entries), every member must be a ``.npy`` array whose header - read first - declares a shape and dtype a latent
can have, and only then is the member decompressed, exactly as many bytes as the header promised, within
:data:`MAX_DECODED_BYTES` for the whole file.  So a small file that would inflate to gigabytes is refused
before it inflates.  Values must be finite once converted to float32; ``meta`` is bounded in size and nesting.
Files are written atomically (:mod:`timemachine.fs`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import struct
import zipfile
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
import torch

from timemachine import fs
from timemachine.errors import LatentError, first_line, printable, quoted

if TYPE_CHECKING:
    from timemachine.networks import Generator

PathLike = Union[str, os.PathLike]
NOISE_PREFIX = "noise/"
#: Latent files larger than this are refused before reading (a 512x512 projection with noise is ~1.5 MB).
MAX_LATENT_FILE_BYTES = 64 * 1024 * 1024
#: All arrays of one latent file together, decompressed (a 1024x1024 projection with noise: ~11 MB).
MAX_DECODED_BYTES = 128 * 1024 * 1024
#: Members of the zip archive (a 1024x1024 projection has 'w', 'meta' and 17 noise maps).
MAX_MEMBERS = 256
_MAX_DIRECTORY_BYTES = 256 * 1024
_MAX_NUM_WS = 64
_MAX_W_DIM = 4096
_MAX_NOISE_SIDE = 4096
#: ``meta``: characters of its JSON text, and how deeply its values may nest.
MAX_META_CHARS = 1 << 20
MAX_META_DEPTH = 32
#: A tuned-weights (PTI delta) file larger than this is refused before reading (1024x1024 synthesis: ~120 MB).
MAX_DELTA_FILE_BYTES = 512 * 1024 * 1024


@dataclasses.dataclass
class LatentFile:
    """One projected latent.

    Attributes:
        ws:    float32 [num_ws, w_dim].
        noise: {layer name: float32 [res, res]} or empty (then the network's constant noise is used).
        meta:  JSON-compatible dict (empty for official files).
        pti_delta: {synthesis parameter name: float32 tensor} from pivotal tuning, or None.
    """

    ws: torch.Tensor
    noise: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    pti_delta: Optional[dict[str, torch.Tensor]] = None

    def save(self, path: PathLike) -> None:
        """Write this latent (and its PTI delta) to ``path`` as :func:`save_latent` does."""
        save_latent(path, self.ws, self.noise, self.meta, pti_delta=self.pti_delta)

    def noise_maps(self, device: Union[str, torch.device, None] = None) -> dict[str, torch.Tensor]:
        """The noise in the layout the synthesis network takes: {layer: float32 [1, 1, res, res]} on ``device``
        (it broadcasts over a batch of frames)."""
        return {name: value.reshape(1, 1, *value.shape[-2:]).to(device, torch.float32)
                for name, value in self.noise.items()}

    def synthesize(self, G: "Generator", precision: Optional[str] = None) -> torch.Tensor:
        """The generator's image of this latent: float32 [1, 3, R, R] in about [-1, 1] on G's device, with the
        latent's noise maps (the network's constant noise for layers it has none of) and PTI weights, in the
        resolved ``precision`` ('fp32', 'bf16', 'fp16'; None = the network's default)."""
        from timemachine.projector import apply_weight_delta

        G_used = apply_weight_delta(G, self.pti_delta)
        device = G.mapping.w_avg.device
        with torch.no_grad():
            return G_used.synthesis(self.ws.unsqueeze(0).to(device, torch.float32), noise_mode="const",
                                    noise=self.noise_maps(device), precision=precision)


def pti_delta_path(latent_path: PathLike) -> str:
    """``dir/projected_w.npz`` -> ``dir/projected_w.pti.safetensors``."""
    root, _ = os.path.splitext(os.fspath(latent_path))
    return root + ".pti.safetensors"


def save_latent(path: PathLike, ws: torch.Tensor, noise: Optional[dict[str, torch.Tensor]] = None,
                meta: Optional[dict[str, Any]] = None,
                pti_delta: Optional[dict[str, torch.Tensor]] = None) -> None:
    """Write ``ws`` [num_ws, w_dim] (and optional noise, metadata, PTI delta) as an official-format npz.

    Every file is written atomically (:class:`timemachine.fs.PendingFile`: a random temporary name that no
    planted link can redirect, fsync, rename); the PTI delta first, so a latent file never names a delta that
    is not there.
    """
    ws = ws.detach().to("cpu", torch.float32)
    if ws.ndim != 2:
        raise ValueError(f"ws must be [num_ws, w_dim], got {tuple(ws.shape)}")
    arrays: dict[str, np.ndarray] = {"w": ws.unsqueeze(0).numpy()}
    for name, tensor in (noise or {}).items():
        arrays[NOISE_PREFIX + name] = tensor.detach().to("cpu", torch.float32).reshape(tensor.shape[-2:]).numpy()
    meta = dict(meta or {})
    path = os.fspath(path)
    if pti_delta:
        from safetensors.torch import save_file

        delta_path = pti_delta_path(path)
        with fs.PendingFile(delta_path, private=True) as pending:   # safetensors writes to a path
            save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in pti_delta.items()},
                      pending.path, metadata={"format": "timemachine-pti-delta"})
        meta["pti_delta"] = os.path.basename(delta_path)
    if meta:
        arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    with fs.PendingFile(path) as pending:
        with pending.open("wb") as f:
            # numpy's stub types savez's allow_pickle (bool) beside **kwds, so a dict of arrays could be read as
            # setting it; these keys are 'w', 'meta' and 'noise/...'.
            np.savez(f, **arrays)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------
# Reading


def _check_zip_directory(data: bytes, shown: str) -> None:
    """The zip's end record, read before :mod:`zipfile` parses the directory it points to: at most
    :data:`MAX_MEMBERS` entries in a bounded directory, and no zip64 records (Python's zipfile, which np.savez
    uses, writes them only for archives of gigabytes)."""
    at = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 65535), max(0, len(data) - 18))
    if at < 0:
        raise LatentError(f"{shown} is not a readable .npz latent file (not a zip archive)")
    entries, directory_size = struct.unpack_from("<HI", data, at + 10)
    if at >= 20 and data[at - 20:at - 16] == b"PK\x06\x07":
        raise LatentError(f"{shown} is not a latent file: its zip archive has zip64 records, which latent files "
                          "never need")
    if entries > MAX_MEMBERS or directory_size > _MAX_DIRECTORY_BYTES:
        raise LatentError(f"{shown} is not a latent file: its zip archive lists {entries} members "
                          f"(at most {MAX_MEMBERS})")


def _expected_array(key: str, shape: tuple, dtype: np.dtype) -> Optional[str]:
    """Why ``key`` with this header cannot be part of a latent file, or None if it can."""
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        return "an array of Python objects or records"
    if any(type(n) is not int or n < 0 for n in shape):
        return "an array with a malformed shape"
    if key == "meta":
        if dtype.kind != "U" or shape != () or dtype.itemsize > 4 * MAX_META_CHARS:
            return f"not a JSON text of at most {MAX_META_CHARS} characters"
        return None
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        return f"{dtype} data where floating point belongs"
    if key == "w":
        rows = shape[1:] if len(shape) == 3 and shape[0] == 1 else shape
        if len(rows) != 2:
            return f"of shape {list(shape)}, not [1, num_ws, w_dim]"
        if not (1 <= rows[0] <= _MAX_NUM_WS and 1 <= rows[1] <= _MAX_W_DIM):
            return f"of shape {list(shape)}, larger than any generator's latent"
        return None
    if len(shape) != 2 or not all(1 <= n <= _MAX_NOISE_SIDE for n in shape):
        return f"of shape {list(shape)}, not a noise map [res, res]"
    return None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, budget: list[int],
                 shown: str) -> np.ndarray:
    """One ``.npy`` member: header first (version, dtype, shape checked), then exactly the bytes it promises,
    decompressed within ``budget`` (bytes left for the file, updated)."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
        raise LatentError(f"{shown}: the member {quoted(info.filename)} is compressed or encrypted in a way "
                          "np.savez never uses")
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise LatentError(f"{shown}: the member {quoted(info.filename)} is a .npy file of an unsupported "
                              f"version {version}")
        problem = _expected_array(key, shape, dtype)
        if problem:
            raise LatentError(f"{shown}: the array {quoted(key)} is {problem}")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > budget[0]:
            raise LatentError(f"{shown}: its arrays hold more than {MAX_DECODED_BYTES >> 20} MB, far more than "
                              "a latent")
        budget[0] -= nbytes
        raw = member.read(nbytes)
        if len(raw) != nbytes:
            raise LatentError(f"{shown}: the array {quoted(key)} is truncated")
        if member.read(1):   # reaching the end also checks the member's CRC
            raise LatentError(f"{shown}: the array {quoted(key)} holds more data than its header declares")
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _read_arrays(data: bytes, shown: str) -> dict[str, np.ndarray]:
    """The arrays a latent file holds ('w', 'meta', 'noise/...'); other ``.npy`` members are skipped unread."""
    _check_zip_directory(data, shown)
    arrays: dict[str, np.ndarray] = {}
    budget = [MAX_DECODED_BYTES]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise LatentError(f"{shown} is not a latent file: its zip archive holds {len(infos)} members "
                              f"(at most {MAX_MEMBERS})")
        names = [info.filename for info in infos]
        if len(set(names)) != len(names):
            raise LatentError(f"{shown} is not a latent file: its zip archive holds two members of one name")
        for info in infos:
            if not info.filename.endswith(".npy"):
                raise LatentError(f"{shown} is not a latent file: its member {quoted(info.filename)} is not a "
                                  ".npy array")
            key = info.filename[:-len(".npy")]
            if key in ("w", "meta") or key.startswith(NOISE_PREFIX):
                arrays[key] = _read_member(archive, info, key, budget, shown)
    return arrays


def _json_depth(value: Any) -> int:
    """How deeply lists and dicts nest in ``value`` (a scalar: 0), without recursion."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth + 1)
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _read_meta(array: np.ndarray, shown: str) -> dict[str, Any]:
    try:
        meta = json.loads(str(array))
    except (json.JSONDecodeError, TypeError, ValueError):
        raise LatentError(f"{shown}: the 'meta' entry is not valid JSON") from None
    except RecursionError:
        raise LatentError(f"{shown}: the 'meta' entry nests deeper than {MAX_META_DEPTH} levels") from None
    if not isinstance(meta, dict):
        raise LatentError(f"{shown}: the 'meta' entry is not a JSON object")
    if _json_depth(meta) > MAX_META_DEPTH:
        raise LatentError(f"{shown}: the 'meta' entry nests deeper than {MAX_META_DEPTH} levels")
    return meta


def _finite_float32(array: np.ndarray) -> Optional[torch.Tensor]:
    """``array`` as a float32 tensor, or None when a value is NaN or infinite once converted (float64 1e39)."""
    with np.errstate(over="ignore", invalid="ignore"):
        converted = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(converted).all():
        return None
    return torch.from_numpy(converted.copy() if not converted.flags.writeable else converted)


def load_latent(path: PathLike, num_ws: Optional[int] = None, w_dim: Optional[int] = None) -> LatentFile:
    """Read a ``projected_w.npz`` (official or timemachine) safely.

    Args:
        path:   the file.
        num_ws, w_dim: when given, the shape the model needs; a mismatch is a :class:`LatentError`.

    Raises:
        LatentError: missing, not an npz, a member that is not a .npy array, no 'w', wrong shape or dtype,
        more data than a latent can hold, non-finite values (once in float32), bad metadata; one sentence.
    """
    path = os.fspath(path)
    shown = printable(path)
    arrays = _read_file_arrays(path, shown)
    ws = _latent_w(arrays, shown, num_ws, w_dim)
    noise = _latent_noise(arrays, shown)
    meta = _read_meta(arrays["meta"], shown) if "meta" in arrays else {}
    pti_delta = _load_pti_delta(path, meta.get("pti_delta")) if meta.get("pti_delta") else None
    return LatentFile(ws=ws, noise=noise, meta=meta, pti_delta=pti_delta)


def _read_file_arrays(path: str, shown: str) -> dict[str, np.ndarray]:
    """The arrays of the .npz file at ``path`` (at most :data:`MAX_LATENT_FILE_BYTES`), by member name."""
    if not os.path.isfile(path):
        raise LatentError(f"no latent file at {shown}")
    if os.path.getsize(path) > MAX_LATENT_FILE_BYTES:
        raise LatentError(f"{shown} is too large to be a latent file")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_LATENT_FILE_BYTES + 1)
        return _read_arrays(data, shown)
    except LatentError:
        raise
    except Exception as exc:  # untrusted bytes: numpy/zipfile/zlib raise many kinds for a damaged file
        raise LatentError(f"{shown} is not a readable .npz latent file ({first_line(exc)})") from None


def _latent_w(arrays: dict[str, np.ndarray], shown: str, num_ws: Optional[int],
              w_dim: Optional[int]) -> torch.Tensor:
    """float32 [num_ws, w_dim]: the 'w' array (official files' [1, num_ws, w_dim] lose the batch axis), of the
    model's shape when ``num_ws`` and ``w_dim`` are given, finite."""
    if "w" not in arrays:
        keys = ", ".join(quoted(k, 40) for k in sorted(arrays)[:8]) or "none"
        raise LatentError(f"{shown} has no 'w' array (keys: {keys})")
    w = arrays["w"]
    if w.ndim == 3:
        w = w[0]
    if num_ws is not None and w_dim is not None and tuple(w.shape) != (num_ws, w_dim):
        raise LatentError(f"{shown}: latent of shape [{w.shape[0]}, {w.shape[1]}] does not fit this model "
                          f"([{num_ws}, {w_dim}])")
    ws = _finite_float32(w)
    if ws is None:
        raise LatentError(f"{shown}: 'w' contains NaN or infinite values (in float32)")
    return ws


def _latent_noise(arrays: dict[str, np.ndarray], shown: str) -> dict[str, torch.Tensor]:
    """The noise maps (members named :data:`NOISE_PREFIX` + buffer name) as finite float32 tensors, by buffer
    name."""
    noise = {}
    for key, value in arrays.items():
        if key.startswith(NOISE_PREFIX):
            tensor = _finite_float32(value)
            if tensor is None:
                raise LatentError(f"{shown}: malformed noise array {quoted(key)} (NaN or infinite values)")
            noise[key[len(NOISE_PREFIX):]] = tensor
    return noise


def _load_pti_delta(latent_path: str, name: Any) -> dict[str, torch.Tensor]:
    """The PTI delta named in a latent file's metadata: a safetensors file in the same directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    shown = printable(latent_path)
    if not isinstance(name, str) or os.path.basename(name) != name or not name.endswith(".safetensors"):
        raise LatentError(f"{shown}: the metadata names an invalid tuned-weights file "
                          f"{quoted(name) if isinstance(name, str) else '<a ' + type(name).__name__ + '>'}")
    delta_path = os.path.join(os.path.dirname(os.path.abspath(latent_path)), name)
    if not os.path.isfile(delta_path):
        raise LatentError(f"{shown} was made with pivotal tuning, but its tuned weights {quoted(name)} are missing")
    if os.path.getsize(delta_path) > MAX_DELTA_FILE_BYTES:
        raise LatentError(f"{printable(delta_path)} is too large to be a tuned-weights file")
    try:
        delta = load_file(delta_path, device="cpu")
    except (SafetensorError, OSError) as exc:
        raise LatentError(f"cannot read the tuned weights {printable(delta_path)}: {first_line(exc)}") from None
    for key, value in delta.items():
        if value.dtype != torch.float32 or not torch.isfinite(value).all():
            raise LatentError(f"{printable(delta_path)}: tensor {quoted(key)} is not finite float32")
    return delta
