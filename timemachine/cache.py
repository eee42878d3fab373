"""Content-addressed store of projections: the same photo, model and settings are projected only once.

An entry is a directory ``<root>/<key[:2]>/<key>/`` holding ``projected_w.npz`` (and, after pivotal
tuning, ``projected_w.pti.safetensors``) in the format of :mod:`timemachine.latents`.  The key is the
SHA-256 of everything the result depends on: the prepared photo's pixels (after crop and resize), the
model fingerprint, the projector and PTI settings, and the perceptual network's weights.

Entries are written into a temporary directory beside their final place and renamed into it in one step
(:class:`timemachine.fs.ContentStore`), so a reader sees a complete entry or none; when two processes fill
the same key at once, the first rename wins and the other discards its copy.  Root:
``$TIMEMACHINE_HOME/cache/projections`` (:attr:`timemachine.env.Paths.projections`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from timemachine.errors import LatentError
from timemachine.fs import ContentStore
from timemachine.latents import LatentFile, load_latent

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
    """Projections on disk, keyed by :func:`projection_key`: a :class:`~timemachine.fs.ContentStore` whose
    entries hold ``projected_w.npz`` (and its PTI weights)."""

    def __init__(self, root: os.PathLike):
        self.store = ContentStore(root)

    def get(self, key: str) -> Optional[LatentFile]:
        """The cached projection, or None (also for an entry that cannot be read: it is removed)."""
        entry = self.store.get(key, required=(LATENT_NAME,))
        if entry is None:
            return None
        try:
            return load_latent(entry / LATENT_NAME)
        except LatentError:
            self.store.discard(key)
            return None

    def put(self, key: str, latent: LatentFile) -> Path:
        """Store ``latent`` under ``key`` atomically; returns the entry's latent file path."""
        entry = self.store.put(key, lambda d: latent.save(d / LATENT_NAME))
        return entry / LATENT_NAME
