"""Content-addressed store of projections: the same photo, model and settings are projected only once.

An entry is a directory ``<root>/<key[:2]>/<key>/`` holding ``projected_w.npz`` (and, after pivotal
tuning, ``projected_w.pti.safetensors``) in the format of :mod:`timemachine.latents`.  The key is the
SHA-256 of everything the result depends on: the prepared photo's pixels (after crop and resize), the
model fingerprint, the projector and PTI settings, and the perceptual network's weights.

Entries are written into a temporary directory beside their final place and renamed into it in one step,
so a reader sees a complete entry or none; when two processes fill the same key at once, the first
rename wins and the other discards its copy.  Root: ``$TIMEMACHINE_HOME/cache/projections``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from timemachine.errors import LatentError
from timemachine.latents import LatentFile, load_latent, save_latent

LATENT_NAME = "projected_w.npz"


def projection_key(image: np.ndarray, model_fingerprint: str, settings: dict[str, Any],
                   pti_settings: Optional[dict[str, Any]], perceptual_id: str) -> str:
    """Hex SHA-256 identifying a projection.  ``image`` uint8 [R, R, 3] as given to the projector."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError("image must be uint8 [R, R, 3]")
    h = hashlib.sha256()
    h.update(b"timemachine-projection-v1\0")
    h.update(repr(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    h.update(json.dumps({"model": model_fingerprint, "settings": settings, "pti": pti_settings,
                         "perceptual": perceptual_id}, sort_keys=True).encode())
    return h.hexdigest()


class ProjectionCache:
    """Projections on disk, keyed by :func:`projection_key`."""

    def __init__(self, root: os.PathLike):
        self.root = Path(root)

    def entry_dir(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError("a cache key is a hex SHA-256")
        return self.root / key[:2] / key

    def get(self, key: str) -> Optional[LatentFile]:
        """The cached projection, or None (also for an entry that cannot be read: it is removed)."""
        path = self.entry_dir(key) / LATENT_NAME
        if not path.is_file():
            return None
        try:
            return load_latent(path)
        except LatentError:
            shutil.rmtree(self.entry_dir(key), ignore_errors=True)
            return None

    def put(self, key: str, latent: LatentFile) -> Path:
        """Store ``latent`` under ``key`` atomically; returns the entry's latent file path."""
        final = self.entry_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:8]}-", dir=final.parent))
        try:
            save_latent(tmp / LATENT_NAME, latent.ws, latent.noise, latent.meta, pti_delta=latent.pti_delta)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / LATENT_NAME).is_file():  # not a lost race: a real failure
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final / LATENT_NAME
