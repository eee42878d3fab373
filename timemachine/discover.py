"""Age directions discovered from a generator's own samples: no photos needed.

    vector = discover_vector(model, labeller, samples=400, name="shiba")

1. **Sample**: latent ``i`` is ``w_i = mapping(z_i)`` with truncation ``psi`` towards the average latent, where
   ``z_i`` is drawn from ``numpy.random.default_rng([seed, i])``: sample ``i`` is the same in every run with
   this seed, whatever the number of samples or the batch size.
2. **Render** ``synthesis(w_i)`` (constant noise) at the settings' resolution: 'skip' generators (the AFHQ and
   official config-f ones) stop at that block and return its running image (see
   :meth:`timemachine.networks.SynthesisNetwork.forward`), skipping the costliest, finest blocks; other
   generators render at full resolution.  ``benchmarks/bench_discovery.py`` measures what it saves and how
   far the image is from the full one.
3. **Label** with ``labeller``: any callable taking uint8 images [N, H, W, 3] (numpy) and returning P(young)
   as floats [N] in [0, 1], or NaN for a sample it leaves out (e.g. not the requested breed).  The CLIP
   labeller (:mod:`timemachine.clip_labeller`) is one.
4. **Keep** the confident samples (P(young) >= confidence: young; <= 1 - confidence: adult) and **fit**
   method ``linear`` of :mod:`timemachine.age.build` on their W latents (one row: the samples are W-space
   latents).  A share of each side is held out first to measure the classifier's held-out (balanced)
   accuracy; the vector is then fitted on all of them.  The result is an :class:`AgeVector` whose method is
   ``discovered``, bound to the model's fingerprint, whose ``details['discovery']`` records the settings, the
   labeller (for CLIP: model, weights, prompts, species, breed), the counts and the held-out accuracy.

Caching and resuming (``cache_dir``, normally ``Paths.discovery``): samples are stored in chunks of
:data:`CHUNK` under a key made of the model fingerprint, seed, truncation and resolution
(``<cache_dir>/<key>/samples-<first index>.npz``: W latents and images), and labels under a key of the
labeller (``labels-<labeller key>/<first index>.npy``, only for labellers with a ``cache_key`` attribute).
Every file is written atomically; an interrupted discovery keeps the chunks it finished, and running it again
renders and labels only what is missing.  Changing prompts or breed changes the labeller's key only: nothing
is rendered again.  Nothing here prunes the cache (delete the directory to reclaim the space).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Union

import numpy as np
import torch

from timemachine import fs
from timemachine.age import (
    AgeVector,
    build_vector,
    check_notes,
    check_species,
    check_strength,
    check_vector_name,
    heldout_accuracy,
    normalize_layers,
    resolve_layers,
)
from timemachine.errors import AgeVectorError, printable
from timemachine.settings import DiscoverySettings

if TYPE_CHECKING:
    from timemachine.networks import Generator

PathLike = Union[str, os.PathLike]
#: ``labeller(images uint8 [N, H, W, 3]) -> P(young) float [N]`` (NaN = no label).
Labeller = Callable[[np.ndarray], np.ndarray]
class Model(Protocol):
    """What discovery needs of a loaded model (e.g. a ``timemachine.pipeline.LoadedModel``): the generator, its
    fingerprint and the name it was loaded by (recorded in the vector)."""

    G: "Generator"
    fingerprint: str
    spec: str


#: ``progress(samples done, samples in all)``, after every chunk (cached chunks included).
Progress = Callable[[int, int], None]

#: Samples per cache file (independent of the batch size, so the cache serves any batch size).
CHUNK = 16
CACHE_VERSION = 1
METHOD = "discovered"


# ----------------------------------------------------------------------------------------------------------
# Sampling and rendering


def render_resolution(G: "Generator", requested: int) -> int:
    """The resolution discovery renders ``G`` at: ``requested`` (at most the model's) where the synthesis can
    stop there, else the model's own."""
    target = min(int(requested), G.img_resolution)
    return target if G.synthesis.can_stop_at(target) else G.img_resolution


def sample_z(G: "Generator", seed: int, indices: range) -> torch.Tensor:
    """float32 [len(indices), z_dim]: z_i from ``numpy.random.default_rng([seed, i])``."""
    return torch.from_numpy(np.stack([np.random.default_rng([seed, i]).standard_normal(G.z_dim)
                                      for i in indices]).astype(np.float32))


@torch.no_grad()
def sample_latents(G: "Generator", seed: int, indices: range, truncation_psi: float) -> torch.Tensor:
    """W latents float32 [len(indices), w_dim] of samples ``indices`` (mapping with truncation ``psi``)."""
    if G.c_dim:
        raise AgeVectorError("discovery needs an unconditional generator; this one takes class labels")
    device = G.mapping.w_avg.device
    ws = G.mapping(sample_z(G, seed, indices).to(device), None, truncation_psi=truncation_psi)
    return ws[:, 0].float().cpu()


@torch.no_grad()
def render(G: "Generator", w: torch.Tensor, resolution: int, batch_size: int) -> np.ndarray:
    """uint8 [N, r, r, 3] images of W latents ``w`` [N, w_dim] at ``resolution`` (see :func:`render_resolution`),
    constant noise, ``batch_size`` at a time."""
    from timemachine.device import memory_errors
    from timemachine.images import from_tensor

    device = G.mapping.w_avg.device
    out = []
    for start in range(0, len(w), batch_size):
        ws = w[start:start + batch_size].to(device)[:, None, :].expand(-1, G.num_ws, -1)
        with memory_errors(f"rendering samples at {resolution} px", len(ws)):
            img = G.synthesis(ws, noise_mode="const", resolution=resolution)
        out.append(from_tensor(img))
    return np.concatenate(out)


# ----------------------------------------------------------------------------------------------------------
# The cache


def _key(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]


class DiscoveryCache:
    """Rendered samples and their labels on disk (see the module docstring); ``root`` None = no caching."""

    def __init__(self, root: Optional[PathLike], model_fingerprint: str, settings: DiscoverySettings,
                 resolution: int, labeller_key: Optional[str]):
        self.dir: Optional[Path] = None
        self.labels_dir: Optional[Path] = None
        if root is None:
            return
        self.dir = Path(root) / _key({"version": CACHE_VERSION, "fingerprint": model_fingerprint,
                                      "seed": settings.seed, "truncation_psi": float(settings.truncation_psi),
                                      "resolution": resolution, "noise_mode": "const",
                                      "z": "numpy default_rng([seed, i]).standard_normal(z_dim)"})
        if labeller_key is not None:
            self.labels_dir = self.dir / f"labels-{_key({'labeller': labeller_key})[:16]}"

    def _samples_path(self, start: int) -> Optional[Path]:
        return None if self.dir is None else self.dir / f"samples-{start:08d}.npz"

    def _labels_path(self, start: int) -> Optional[Path]:
        return None if self.labels_dir is None else self.labels_dir / f"{start:08d}.npy"

    def get_samples(self, start: int, count: int, w_dim: int, resolution: int):
        """(w float32 [count, w_dim], images uint8 [count, r, r, 3]) if cached, else None (damage = miss)."""
        path = self._samples_path(start)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                w, images = data["w"], data["images"]
        except (OSError, ValueError, KeyError, EOFError):
            return None
        if w.dtype != np.float32 or images.dtype != np.uint8 or w.ndim != 2 or w.shape[1] != w_dim \
                or images.shape[1:] != (resolution, resolution, 3) or len(w) != len(images) or len(w) < count \
                or not np.isfinite(w).all():
            return None
        return torch.from_numpy(w[:count].copy()), images[:count]

    def put_samples(self, start: int, w: torch.Tensor, images: np.ndarray) -> None:
        path = self._samples_path(start)
        if path is None:
            return
        buffer = io.BytesIO()
        np.savez(buffer, w=w.numpy().astype(np.float32), images=images)
        path.parent.mkdir(parents=True, exist_ok=True)
        fs.atomic_write(path, buffer.getvalue())

    def get_labels(self, start: int, count: int) -> Optional[np.ndarray]:
        path = self._labels_path(start)
        if path is None or not path.is_file():
            return None
        try:
            labels = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if labels.dtype != np.float64 or labels.ndim != 1 or len(labels) < count:
            return None
        return labels[:count]

    def put_labels(self, start: int, labels: np.ndarray) -> None:
        path = self._labels_path(start)
        if path is None:
            return
        buffer = io.BytesIO()
        np.save(buffer, labels.astype(np.float64))
        path.parent.mkdir(parents=True, exist_ok=True)
        fs.atomic_write(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------------------------
# Discovery


def _label(labeller: Labeller, images: np.ndarray) -> np.ndarray:
    """The labeller's P(young) [N] float64, checked: each in [0, 1] or NaN."""
    p = np.asarray(labeller(images), dtype=np.float64)
    if p.shape != (len(images),):
        raise AgeVectorError(f"the labeller returned {list(p.shape)} values for {len(images)} images")
    valid = np.isnan(p) | ((p >= 0) & (p <= 1))
    if not valid.all():
        raise AgeVectorError("the labeller returned values outside [0, 1] (P(young) or NaN for no label)")
    return p


def _split(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) index arrays of a deterministic random split with max(1, round(fraction * count)) tested."""
    order = np.random.default_rng([seed, count, 1]).permutation(count)
    held = max(1, int(round(fraction * count)))
    return np.sort(order[held:]), np.sort(order[:held])


def discover_vector(model: Model, labeller: Labeller, *, samples: int, name: str = METHOD,
                    settings: Optional[DiscoverySettings] = None, cache_dir: Optional[PathLike] = None,
                    progress: Optional[Progress] = None, species: str = "", notes: str = "",
                    default_strength: float = 1.0, default_layers: str = "all", **changes: Any) -> AgeVector:
    """Discover ``model``'s age direction from its own samples (see the module docstring).

    Args:
        model:     the generator and its fingerprint (:class:`Model`; the pipeline's ``LoadedModel`` is one).
        labeller:  images uint8 [N, H, W, 3] -> P(young) float [N] (NaN = leave the sample out).  Optional
                   attributes: ``cache_key`` (text identifying its labels, e.g. model + weights + prompts:
                   labels are cached under it) and ``details`` (a JSON object recorded in the vector).
        samples:   how many samples to render and label.
        name, species, notes, default_strength, default_layers: as for any :class:`AgeVector`.
        settings:  the :class:`DiscoverySettings` (defaults: ``DiscoverySettings()``); keyword ``changes``
                   (``seed``, ``truncation_psi``, ``resolution``, ``batch_size``, ``confidence``,
                   ``min_confident``, ``heldout_fraction``) override single fields.
        cache_dir: where samples and labels are cached (``Paths.discovery``); None = no cache.
        progress:  ``progress(done, total)`` after every chunk of :data:`CHUNK` samples.

    Returns:
        the vector (not saved), method 'discovered', [num_ws, w_dim], W space.

    Raises:
        AgeVectorError: bad settings or fields (before any work), a labeller that returns nonsense, or too
        few confident samples on a side (with the counts and what to change).  KeyboardInterrupt passes
        through; the chunks finished so far stay cached.
    """
    settings = dataclasses.replace(settings or DiscoverySettings(), samples=samples, **changes)
    settings.validate()
    G = model.G
    check_vector_name(name)
    check_species(species)
    check_notes(notes)
    check_strength(default_strength)
    default_layers = normalize_layers(default_layers)
    resolve_layers(default_layers, G.num_ws)
    if G.c_dim:
        raise AgeVectorError("discovery needs an unconditional generator; this one takes class labels")
    resolution = render_resolution(G, settings.resolution)
    labeller_key = getattr(labeller, "cache_key", None)
    cache = DiscoveryCache(cache_dir, model.fingerprint, settings, resolution,
                           labeller_key if isinstance(labeller_key, str) else None)

    started = time.perf_counter()
    seconds = {"render": 0.0, "label": 0.0}
    counts = {"rendered": 0, "labelled": 0}
    ws, labels = [], []
    for start in range(0, settings.samples, CHUNK):
        count = min(CHUNK, settings.samples - start)
        cached = cache.get_samples(start, count, G.w_dim, resolution)
        if cached is None:
            t0 = time.perf_counter()
            w = sample_latents(G, settings.seed, range(start, start + count), settings.truncation_psi)
            images = render(G, w, resolution, settings.batch_size)
            seconds["render"] += time.perf_counter() - t0
            counts["rendered"] += count
            cache.put_samples(start, w, images)
        else:
            w, images = cached
        p = cache.get_labels(start, count)
        if p is None:
            t0 = time.perf_counter()
            p = np.concatenate([_label(labeller, images[i:i + settings.batch_size])
                                for i in range(0, count, settings.batch_size)])
            seconds["label"] += time.perf_counter() - t0
            counts["labelled"] += count
            cache.put_labels(start, p)
        ws.append(w)
        labels.append(p)
        if progress is not None:
            progress(start + count, settings.samples)

    w_all, p_all = torch.cat(ws), np.concatenate(labels)
    young = np.flatnonzero(p_all >= settings.confidence)
    adult = np.flatnonzero(p_all <= 1 - settings.confidence)
    unlabelled = int(np.isnan(p_all).sum())
    if min(len(young), len(adult)) < settings.min_confident:
        raise AgeVectorError(
            f"too few confident samples: {len(young)} young and {len(adult)} adult of {settings.samples} "
            f"(P(young) >= {settings.confidence:g} or <= {1 - settings.confidence:g}"
            + (f"; {unlabelled} left out by the labeller" if unlabelled else "")
            + f"), at least {settings.min_confident} of each are needed; use more samples, other prompts or a "
              "lower confidence")
    train_y, test_y = _split(len(young), settings.heldout_fraction, settings.seed)
    train_a, test_a = _split(len(adult), settings.heldout_fraction, settings.seed + 1)
    rows = w_all[:, None, :]                                 # W-space latents: one row is the whole latent
    accuracy = heldout_accuracy(rows[young[train_y]], rows[adult[train_a]], rows[young[test_y]],
                                rows[adult[test_a]])
    labeller_details = getattr(labeller, "details", None)
    details: dict[str, Any] = {"discovery": {
        **settings.to_dict(),
        "resolution": resolution, "resolution_requested": settings.resolution,
        "model_resolution": G.img_resolution,
        "labeller": printable(getattr(labeller, "description", type(labeller).__name__), 200),
        "labeller_details": labeller_details if isinstance(labeller_details, dict) else {},
        "labelled": int(len(p_all) - unlabelled), "unlabelled": unlabelled,
        "young": int(len(young)), "adult": int(len(adult)),
        "heldout_accuracy": float(accuracy), "heldout": {"young": int(len(test_y)), "adult": int(len(test_a))},
        "rendered_now": counts["rendered"], "labelled_now": counts["labelled"],
        "seconds": {k: round(v, 3) for k, v in seconds.items()} | {"total": round(time.perf_counter() - started, 3)},
    }}
    for key in ("prompts", "clip_model", "species", "breed"):
        if isinstance(labeller_details, dict) and key in labeller_details:
            details["discovery"][key] = labeller_details[key]
    # Fit on one row (W-space latents), then repeat the direction on every row.
    fitted = build_vector(name, rows[young], rows[adult], "linear", model_fingerprint=model.fingerprint,
                          model_name=model.spec, species=species, notes=notes, default_strength=default_strength,
                          details=details)
    fit = dict(fitted.details)
    fit["mean_difference_norm"] = float(fit["mean_difference_norm"]) * float(np.sqrt(G.num_ws))   # every row
    return dataclasses.replace(fitted, method=METHOD, direction=fitted.direction.expand(G.num_ws, G.w_dim),
                               default_layers=default_layers, details=fit)
