"""Latent files: the official ``projected_w.npz`` format, with timemachine's extras.

The official StyleGAN2-ADA ``projector.py`` writes ``projected_w.npz`` holding one array ``w`` of shape
[1, num_ws, w_dim], float32 (all rows equal for a W-space projection).  timemachine writes the same key,
so official tools read its files, and adds optional keys:

    noise/<layer>   float32 [res, res]  optimised noise of synthesis layer ``<layer>`` (e.g. 'b8.conv0')
    meta            a 0-d unicode array holding a JSON object (settings, model fingerprint, metrics)

A projection with pivotal tuning also has a sibling file ``<stem>.pti.safetensors`` holding the tuned
weight delta {synthesis parameter name: float32 tensor}; ``meta['pti_delta']`` names it.

Files are always read with ``allow_pickle=False`` (and safetensors): a latent file cannot run code.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
import torch

from timemachine.errors import LatentError

if TYPE_CHECKING:
    from timemachine.networks import Generator

PathLike = Union[str, os.PathLike]
NOISE_PREFIX = "noise/"
#: Latent files larger than this are refused before reading (a 512x512 projection with noise is ~1.5 MB).
MAX_LATENT_FILE_BYTES = 64 * 1024 * 1024


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

    def noise_maps(self, device: Union[str, torch.device, None] = None) -> dict[str, torch.Tensor]:
        """The noise in the layout the synthesis network takes: {layer: float32 [1, 1, res, res]} on ``device``
        (it broadcasts over a batch of frames)."""
        return {name: value.reshape(1, 1, *value.shape[-2:]).to(device, torch.float32)
                for name, value in self.noise.items()}

    def synthesize(self, G: "Generator") -> torch.Tensor:
        """The generator's image of this latent: float32 [1, 3, R, R] in about [-1, 1] on G's device, with the
        latent's noise maps (the network's constant noise for layers it has none of) and PTI weights."""
        from timemachine.projector import apply_weight_delta

        G_used = apply_weight_delta(G, self.pti_delta)
        device = G.mapping.w_avg.device
        with torch.no_grad():
            return G_used.synthesis(self.ws.unsqueeze(0).to(device, torch.float32), noise_mode="const",
                                    noise=self.noise_maps(device))


def pti_delta_path(latent_path: PathLike) -> str:
    """``dir/projected_w.npz`` -> ``dir/projected_w.pti.safetensors``."""
    root, _ = os.path.splitext(os.fspath(latent_path))
    return root + ".pti.safetensors"


def save_latent(path: PathLike, ws: torch.Tensor, noise: Optional[dict[str, torch.Tensor]] = None,
                meta: Optional[dict[str, Any]] = None,
                pti_delta: Optional[dict[str, torch.Tensor]] = None) -> None:
    """Write ``ws`` [num_ws, w_dim] (and optional noise, metadata, PTI delta) as an official-format npz.

    Every file is written to a temporary name and renamed into place; the PTI delta first, so a latent
    file never names a delta that is not there.
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
        tmp_delta = f"{delta_path}.tmp-{os.getpid()}"
        try:
            save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in pti_delta.items()}, tmp_delta,
                      metadata={"format": "timemachine-pti-delta"})
            os.replace(tmp_delta, delta_path)
        finally:
            if os.path.exists(tmp_delta):
                os.remove(tmp_delta)
        meta["pti_delta"] = os.path.basename(delta_path)
    if meta:
        arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_latent(path: PathLike, num_ws: Optional[int] = None, w_dim: Optional[int] = None) -> LatentFile:
    """Read a ``projected_w.npz`` (official or timemachine) safely.

    Args:
        path:   the file.
        num_ws, w_dim: when given, the shape the model needs; a mismatch is a :class:`LatentError`.

    Raises:
        LatentError: missing, not an npz, no 'w', wrong shape or dtype, non-finite values, bad metadata.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LatentError(f"no latent file at {path}")
    if os.path.getsize(path) > MAX_LATENT_FILE_BYTES:
        raise LatentError(f"{path} is too large to be a latent file")
    try:
        with open(path, "rb") as f:
            data = f.read()
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise LatentError(f"{path} is a single array, not a projected_w.npz file")
            arrays = {key: npz[key] for key in npz.files}
    except LatentError:
        raise
    except Exception as exc:  # untrusted bytes: numpy/zipfile/zlib raise many kinds for a damaged file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LatentError(f"{path} is not a readable .npz latent file ({reason})") from None
    if "w" not in arrays:
        raise LatentError(f"{path} has no 'w' array (keys: {', '.join(sorted(arrays)) or 'none'})")
    w = arrays["w"]
    if w.dtype.kind != "f":
        raise LatentError(f"{path}: 'w' must be floating point, got {w.dtype}")
    if w.ndim == 3 and w.shape[0] == 1:
        w = w[0]
    if w.ndim != 2:
        raise LatentError(f"{path}: 'w' must have shape [1, num_ws, w_dim], got {list(arrays['w'].shape)}")
    if num_ws is not None and w_dim is not None and tuple(w.shape) != (num_ws, w_dim):
        raise LatentError(f"{path}: latent of shape [{w.shape[0]}, {w.shape[1]}] does not fit this model "
                          f"([{num_ws}, {w_dim}])")
    if not np.isfinite(w).all():
        raise LatentError(f"{path}: 'w' contains NaN or infinite values")
    noise = {}
    for key, value in arrays.items():
        if key.startswith(NOISE_PREFIX):
            if value.ndim != 2 or value.dtype.kind != "f" or not np.isfinite(value).all():
                raise LatentError(f"{path}: malformed noise array {key!r}")
            noise[key[len(NOISE_PREFIX):]] = torch.from_numpy(value.astype(np.float32))
    meta: dict[str, Any] = {}
    if "meta" in arrays:
        try:
            meta = json.loads(str(arrays["meta"]))
        except (json.JSONDecodeError, TypeError):
            raise LatentError(f"{path}: the 'meta' entry is not valid JSON") from None
        if not isinstance(meta, dict):
            raise LatentError(f"{path}: the 'meta' entry is not a JSON object")
    pti_delta = _load_pti_delta(path, meta.get("pti_delta")) if meta.get("pti_delta") else None
    return LatentFile(ws=torch.from_numpy(w.astype(np.float32)), noise=noise, meta=meta, pti_delta=pti_delta)


def _load_pti_delta(latent_path: str, name: Any) -> dict[str, torch.Tensor]:
    """The PTI delta named in a latent file's metadata: a safetensors file in the same directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not isinstance(name, str) or os.path.basename(name) != name or not name.endswith(".safetensors"):
        raise LatentError(f"{latent_path}: the metadata names an invalid tuned-weights file {name!r}")
    delta_path = os.path.join(os.path.dirname(os.path.abspath(latent_path)), name)
    if not os.path.isfile(delta_path):
        raise LatentError(f"{latent_path} was made with pivotal tuning, but its tuned weights {name} are missing")
    try:
        delta = load_file(delta_path, device="cpu")
    except (SafetensorError, OSError) as exc:
        raise LatentError(f"cannot read the tuned weights {delta_path}: {exc}") from None
    for key, value in delta.items():
        if value.dtype != torch.float32 or not torch.isfinite(value).all():
            raise LatentError(f"{delta_path}: tensor {key} is not finite float32")
    return delta
