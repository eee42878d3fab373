"""Age vectors: directions in the generator's latent space that turn adults into puppies.

An age vector ``v`` (float32 [num_ws, w_dim]) is built per breed from projected latents of puppy and adult
photos of that breed.  Adding it to an adult's latent, ``ws + strength * mask * v``, moves the image towards
a puppy: strength 1 moves it by the distance that separates the puppies from the adults on average, 0 leaves
it unchanged, negative values age it instead.

Building (:func:`compute_direction` on latents, :func:`build_vector` -> :class:`AgeVector`;
:func:`build_vector_from_files` from photos and latent files, in steps :func:`check_build_request`,
:func:`prepare_inputs`, :func:`project_inputs` (through the projection cache), :func:`build_vector_from_inputs`):

* ``pair``:   one puppy and one adult: ``v = w_puppy - w_adult``.
* ``mean``:   ``v = mean(w_puppies) - mean(w_adults)``.
* ``linear``: the unit normal ``n`` of a linear classifier separating puppy from adult latents, scaled to
  the mean separation along it: ``v = n * ((mean(w_puppies) - mean(w_adults)) . n)``.  The classifier is
  scikit-learn's L2-regularised logistic regression (C = :data:`CLASSIFIER_C`, balanced class weights) on
  the latents centred on their common mean and divided by one global scale (their RMS distance to that
  mean), so the regularisation does not depend on the units of W; a global scale does not change the
  direction of the normal.  ``v`` does not depend on the sign of ``n``, and ``|v| <= |mean difference|``.
  Unlike the mean difference, the classifier discounts directions in which the photos vary a lot within
  each group (pose, fur colour) but do not separate the groups.

When every input latent is a W-space latent (all num_ws rows equal, as the official projector writes them)
the computation runs on one row and the direction is repeated, so it is a W-space direction too; otherwise
on the flattened [num_ws * w_dim] latents (W+).

Layers (:func:`resolve_layers`): ws row ``i`` is consumed by the 3x3 conv (even ``i``) or the ToRGB (odd
``i``, together with the next block's upsampling conv, which modulates the same features) of the synthesis
block at resolution ``4 * 2 ** (i // 2)``; so ``num_ws = 2 * log2(img_resolution) - 2`` for every
StyleGAN2 generator and the row resolutions follow from ``num_ws`` alone.  Named groups: ``coarse`` rows at
4-8 px (pose, head shape), ``middle`` 16-32 px (face proportions, ears, eyes), ``fine`` >= 64 px (fur texture,
colour).  For the 512x512 AFHQ generators (num_ws = 16): coarse 0-3, middle 4-7, fine 8-15.  Selections are
comma-separated groups and index ranges, e.g. ``coarse,middle`` or ``0-3,8``; ``all`` selects every row.

Storage (:func:`save_vector_file`, :func:`load_vector_file`): a safetensors file holding one float32 tensor
``direction`` [num_ws, w_dim]; the header metadata holds ``format`` ('timemachine-age-vector'),
``format_version`` ('1') and ``vector``, a JSON object with everything else (see :class:`AgeVector`).
No pickle: loading parses a JSON header and copies raw float32 bytes, after checking dtype, shape, size,
finiteness and the metadata schema.  Every write goes to a temporary file beside the target and is renamed
into place.

Library: ``$TIMEMACHINE_HOME/vectors/<name>.safetensors`` (:func:`vectors_dir`), with :func:`list_vectors`,
:func:`save_to_library`, :func:`load_vector` (a library name or a file path), :func:`rename_vector`,
:func:`delete_vector`, :func:`export_vector`, :func:`import_vector` and :func:`update_vector` (tuning the
defaults: strength, layers, species, notes).  Names: letters, digits, '.', '_', '-', starting with a letter
or digit, at most 64 characters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from timemachine.errors import AgeVectorError

if TYPE_CHECKING:
    from timemachine.cache import ProjectionCache
    from timemachine.latents import LatentFile
    from timemachine.perceptual import PerceptualDistance
    from timemachine.pipeline import LoadedModel
    from timemachine.projector import ProgressCallback, ProjectorSettings

PathLike = Union[str, os.PathLike]

FILE_FORMAT = "timemachine-age-vector"
FILE_FORMAT_VERSION = "1"
FILE_SUFFIX = ".safetensors"
TENSOR_NAME = "direction"

METHODS = ("pair", "mean", "linear")
LAYER_GROUPS = ("coarse", "middle", "fine")
#: Inverse L2 regularisation strength of the logistic regression behind method 'linear' (see module docstring).
CLASSIFIER_C = 1.0
#: Bounds on what a file may hold, so that a hostile file cannot make us allocate much or print a novel.
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_NUM_WS = 64
MAX_W_DIM = 4096
MAX_TEXT = 10_000
MAX_SHORT_TEXT = 64
MAX_DETAILS_BYTES = 256 * 1024
#: Default strengths are limited to this magnitude (far beyond any useful edit).
MAX_STRENGTH = 10.0

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_FINGERPRINT_RE = re.compile(r"[0-9a-f]{16}")
_RANGE_RE = re.compile(r"(\d+)(?:-(\d+))?")
_METADATA_KEYS = {"name", "method", "species", "model_fingerprint", "model_name", "num_ws", "w_dim",
                  "num_puppies", "num_adults", "created", "default_strength", "default_layers", "notes", "details"}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


# ----------------------------------------------------------------------------------------------------------
# Layers


def layer_resolution(index: int, num_ws: int) -> int:
    """Resolution (pixels) of the synthesis features that ws row ``index`` modulates (see module docstring)."""
    _check_num_ws_structure(num_ws)
    if not 0 <= index < num_ws:
        raise AgeVectorError(f"layer {index} does not exist: this model has layers 0-{num_ws - 1}")
    return 4 * 2 ** (index // 2)


def _check_num_ws_structure(num_ws: int) -> None:
    if num_ws < 2 or num_ws % 2:
        raise AgeVectorError(f"named layer groups need a StyleGAN2 latent with an even number of rows, not {num_ws}; "
                             "select layers by index instead (e.g. 0-3)")


def layer_groups(num_ws: int) -> dict[str, list[int]]:
    """{'coarse': [...], 'middle': [...], 'fine': [...]} row indices for a latent with ``num_ws`` rows."""
    _check_num_ws_structure(num_ws)
    groups: dict[str, list[int]] = {name: [] for name in LAYER_GROUPS}
    for i in range(num_ws):
        res = layer_resolution(i, num_ws)
        groups["coarse" if res <= 8 else "middle" if res <= 32 else "fine"].append(i)
    return groups


def format_indices(indices: Sequence[int]) -> str:
    """[0, 1, 2, 3, 8] -> '0-3,8'."""
    parts, run = [], []
    for i in sorted(set(indices)):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def describe_layer_groups(num_ws: int) -> str:
    """'coarse 0-3 (4-8 px), middle 4-7 (16-32 px), fine 8-15 (64-512 px)' for a latent with ``num_ws`` rows."""
    parts = []
    for name, rows in layer_groups(num_ws).items():
        if rows:
            lo, hi = layer_resolution(rows[0], num_ws), layer_resolution(rows[-1], num_ws)
            parts.append(f"{name} {format_indices(rows)} ({lo}-{hi} px)")
        else:
            parts.append(f"{name}: none")
    return ", ".join(parts)


def normalize_layers(spec: Union[str, Sequence[int], None]) -> str:
    """Check the syntax of a layer selection (without knowing num_ws) and return its canonical text.

    ``None``, '' and 'all' -> 'all'.  Otherwise comma-separated items, each a group name (coarse, middle,
    fine) or an index / inclusive range ('8', '0-3'); case and spaces are ignored.
    """
    if spec is None:
        return "all"
    if not isinstance(spec, str):
        indices = [int(i) for i in spec]
        if not indices or any(i < 0 for i in indices):
            raise AgeVectorError("a layer selection needs at least one index >= 0")
        return format_indices(indices)
    items = [item.strip().lower() for item in spec.split(",")]
    if items == [""] or items == ["all"]:
        return "all"
    out = []
    for item in items:
        if item in LAYER_GROUPS:
            out.append(item)
            continue
        match = _RANGE_RE.fullmatch(item)
        if not match:
            raise AgeVectorError(f"invalid layer selection {spec!r}: use 'all', group names (coarse, middle, fine) "
                                 "and indices or ranges such as 0-3,8")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if hi < lo:
            raise AgeVectorError(f"invalid layer range {item!r} in {spec!r}: the end is before the start")
        out.append(f"{lo}-{hi}" if hi != lo else str(lo))
    return ",".join(out)


def resolve_layers(spec: Union[str, Sequence[int], None], num_ws: int) -> list[int]:
    """Sorted row indices that the selection ``spec`` picks in a latent with ``num_ws`` rows.

    Raises:
        AgeVectorError: bad syntax, an index >= num_ws, or a selection that picks nothing (e.g. 'fine' on a
        32x32 generator, which has no fine layers).
    """
    text = normalize_layers(spec)
    if text == "all":
        return list(range(num_ws))
    chosen: set[int] = set()
    for item in text.split(","):
        if item in LAYER_GROUPS:
            rows = layer_groups(num_ws)[item]
            if not rows:
                raise AgeVectorError(f"this model has no {item} layers ({describe_layer_groups(num_ws)})")
            chosen.update(rows)
            continue
        match = _RANGE_RE.fullmatch(item)
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if hi >= num_ws:
            raise AgeVectorError(f"layer {hi} does not exist: this model has layers 0-{num_ws - 1}")
        chosen.update(range(lo, hi + 1))
    return sorted(chosen)


def layer_mask(spec: Union[str, Sequence[int], None], num_ws: int) -> torch.Tensor:
    """float32 [num_ws, 1]: 1 for the rows ``spec`` selects, 0 elsewhere."""
    mask = torch.zeros(num_ws, 1)
    mask[resolve_layers(spec, num_ws)] = 1.0
    return mask


# ----------------------------------------------------------------------------------------------------------
# The vector


@dataclasses.dataclass(eq=False)
class AgeVector:
    """An age direction for one breed, tied to one generator.

    Attributes:
        name:              library name (letters, digits, '.', '_', '-').
        direction:         float32 [num_ws, w_dim] on the CPU, finite, not zero.  Add it to adult latents.
        method:            how it was built: 'pair', 'mean' or 'linear' (see the module docstring).
        model_fingerprint: :func:`timemachine.checkpoint.model_fingerprint` of the generator it belongs to.
        model_name:        what the model was called when the vector was built (e.g. 'afhqdog'); informative.
        species:           free text, usually 'dog', 'cat' or 'wild'; '' when not given.
        num_puppies, num_adults: how many latents of each side it was built from.
        created:           UTC time of building, ISO 8601.
        default_strength:  strength used when the user gives none (1 = the full mean separation).
        default_layers:    layer selection used when the user gives none (see :func:`resolve_layers`).
        notes:             free text from the user.
        details:           JSON-compatible facts about the build: inputs, projection settings, classifier
                           fit, orthogonalisation.
    """

    name: str
    direction: torch.Tensor
    method: str
    model_fingerprint: str
    model_name: str = ""
    species: str = ""
    num_puppies: int = 0
    num_adults: int = 0
    created: str = dataclasses.field(default_factory=_now)
    default_strength: float = 1.0
    default_layers: str = "all"
    notes: str = ""
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.direction, np.ndarray):
            self.direction = torch.from_numpy(self.direction)
        self.direction = self.direction.detach().to("cpu", torch.float32).contiguous()
        self.default_layers = normalize_layers(self.default_layers)
        self.default_strength = check_strength(self.default_strength)
        self.validate()

    # -- facts -------------------------------------------------------------------------------------------
    @property
    def num_ws(self) -> int:
        return int(self.direction.shape[0])

    @property
    def w_dim(self) -> int:
        return int(self.direction.shape[1])

    @property
    def space(self) -> str:
        """'w' when all rows are equal (a W-space direction), else 'w+'."""
        return "w" if torch.equal(self.direction, self.direction[:1].expand_as(self.direction)) else "w+"

    @property
    def norm(self) -> float:
        """Euclidean norm of the whole direction [num_ws, w_dim]."""
        return float(self.direction.double().norm())

    def validate(self) -> None:
        """Raise :class:`AgeVectorError` unless every field is well-formed."""
        check_vector_name(self.name)
        d = self.direction
        if d.ndim != 2 or not (1 <= d.shape[0] <= MAX_NUM_WS and 1 <= d.shape[1] <= MAX_W_DIM):
            raise AgeVectorError(f"an age vector's direction must be [num_ws, w_dim] (num_ws <= {MAX_NUM_WS}, "
                                 f"w_dim <= {MAX_W_DIM}), got {list(d.shape)}")
        if not torch.isfinite(d).all():
            raise AgeVectorError(f"age vector {self.name!r} contains NaN or infinite values")
        if not d.abs().max() > 0:
            raise AgeVectorError(f"age vector {self.name!r} is zero: it would not change anything")
        if self.method not in METHODS:
            raise AgeVectorError(f"unknown age vector method {self.method!r} (expected {', '.join(METHODS)})")
        if not isinstance(self.model_fingerprint, str) or not _FINGERPRINT_RE.fullmatch(self.model_fingerprint):
            raise AgeVectorError(f"age vector {self.name!r} has an invalid model fingerprint "
                                 f"{self.model_fingerprint!r} (expected 16 hex digits)")
        for field, limit in (("model_name", MAX_TEXT), ("species", MAX_SHORT_TEXT), ("notes", MAX_TEXT),
                             ("created", MAX_SHORT_TEXT)):
            value = getattr(self, field)
            if not isinstance(value, str) or len(value) > limit:
                raise AgeVectorError(f"age vector field {field!r} must be text of at most {limit} characters")
        check_species(self.species)
        for field in ("num_puppies", "num_adults"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1_000_000:
                raise AgeVectorError(f"age vector field {field!r} must be a count, got {value!r}")
        if self.method == "pair" and (self.num_puppies, self.num_adults) != (1, 1):
            raise AgeVectorError("a 'pair' age vector is made of exactly one puppy and one adult")
        try:
            datetime.datetime.fromisoformat(self.created)
        except ValueError:
            raise AgeVectorError(f"age vector {self.name!r} has an invalid creation time {self.created!r}") from None
        check_strength(self.default_strength)
        resolve_layers(self.default_layers, self.num_ws)
        if not isinstance(self.details, dict):
            raise AgeVectorError("age vector details must be a JSON object")
        try:
            size = len(json.dumps(self.details, allow_nan=False))
        except (TypeError, ValueError):
            raise AgeVectorError("age vector details must be plain JSON (no NaN, no objects)") from None
        if size > MAX_DETAILS_BYTES:
            raise AgeVectorError(f"age vector details are too large ({size} bytes)")

    # -- use -----------------------------------------------------------------------------------------------
    def check_model(self, model_fingerprint: str, model_name: str = "", force: bool = False) -> None:
        """Raise :class:`AgeVectorError` when the vector was built for another generator (unless ``force``).

        A direction means something only in the latent space it was found in: the same numbers added to
        another network's latents make arbitrary changes.
        """
        if force or model_fingerprint == self.model_fingerprint:
            return
        built_for = f"{self.model_name} ({self.model_fingerprint})" if self.model_name else self.model_fingerprint
        this = f"{model_name} ({model_fingerprint})" if model_name else model_fingerprint
        raise AgeVectorError(f"age vector {self.name!r} was built for model {built_for}, not for model {this}; "
                             "build one for this model, or force it if you know the two share a latent space")

    def masked_direction(self, layers: Union[str, Sequence[int], None] = None) -> torch.Tensor:
        """float32 [num_ws, w_dim]: the direction on the selected rows, zero elsewhere.

        ``layers`` None = :attr:`default_layers`; see :func:`resolve_layers` for the syntax.
        """
        spec = self.default_layers if layers is None else layers
        return self.direction * layer_mask(spec, self.num_ws)

    def apply(self, ws: torch.Tensor, strength: Optional[float] = None,
              layers: Union[str, Sequence[int], None] = None, *, model_fingerprint: Optional[str] = None,
              model_name: str = "", force: bool = False) -> torch.Tensor:
        """``ws + strength * mask * direction``.

        Args:
            ws:        latents [N, num_ws, w_dim] or one latent [num_ws, w_dim] (any float dtype and device).
            strength:  finite float; None = :attr:`default_strength`.  0 returns ``ws`` unchanged.
            layers:    rows to edit; None = :attr:`default_layers`.
            model_fingerprint: the generator the latents belong to; when given, checked with
                       :meth:`check_model` (``force`` skips the check).

        Returns:
            a new tensor shaped, typed and placed like ``ws``.
        """
        if model_fingerprint is not None:
            self.check_model(model_fingerprint, model_name, force=force)
        strength = self.default_strength if strength is None else float(strength)
        if not math.isfinite(strength):
            raise AgeVectorError(f"the strength must be a finite number, not {strength}")
        if ws.ndim not in (2, 3) or tuple(ws.shape[-2:]) != (self.num_ws, self.w_dim):
            raise AgeVectorError(f"age vector {self.name!r} fits latents [N, {self.num_ws}, {self.w_dim}], "
                                 f"not {list(ws.shape)}")
        delta = self.masked_direction(layers).to(device=ws.device, dtype=ws.dtype)
        return ws + strength * delta

    def orthogonalized(self, others: Sequence[Union["AgeVector", torch.Tensor]], force: bool = False) -> "AgeVector":
        """A copy whose edit has no component along any of ``others`` (Gram-Schmidt, flattened).

        ``others`` are directions [num_ws, w_dim] (tensors or AgeVectors of the same model, unless ``force``).
        The edit is the direction on the vector's :attr:`default_layers` (mask M), so the direction is made
        orthogonal to the others restricted to those rows (M @ other): then M @ result is orthogonal to every
        other direction, and editing on the default layers leaves a latent's projections onto the other
        directions unchanged.  (Edits on other layers than those it was orthogonalised on lose that.)
        The result keeps what is left of the direction (it is not rescaled), so strength 1 still moves
        latents by the age change measured along the remaining directions.
        """
        mask = layer_mask(self.default_layers, self.num_ws).double()
        basis: list[torch.Tensor] = []
        names = []
        for other in others:
            if isinstance(other, AgeVector):
                other.check_model(self.model_fingerprint, self.model_name, force=force)
                names.append(other.name)
                other = other.direction
            else:
                names.append("(tensor)")
            if tuple(other.shape) != tuple(self.direction.shape):
                raise AgeVectorError(f"cannot orthogonalise against a direction of shape {list(other.shape)}: "
                                     f"{self.name!r} is {list(self.direction.shape)}")
            u = (other.detach().to("cpu", torch.float64) * mask).flatten()
            for b in basis:
                u = u - (u @ b) * b
            norm = float(u.norm())
            # float32 inputs: what is left of a direction already in the span is rounding noise (~1e-7)
            if norm > 1e-5 * float(other.double().norm()):
                basis.append(u / norm)
        v = self.direction.double().flatten()
        original = float(v.norm())
        for b in basis:
            v = v - (v @ b) * b
        edit_rows = mask.expand_as(self.direction).flatten()
        if float((v * edit_rows).norm()) <= 1e-5 * float((self.direction.double().flatten() * edit_rows).norm()):
            raise AgeVectorError(f"nothing is left of {self.name!r} after removing the other directions")
        details = dict(self.details)
        details["orthogonalized_against"] = list(details.get("orthogonalized_against", [])) + names
        details["norm_before_orthogonalization"] = details.get("norm_before_orthogonalization", original)
        details["orthogonalized_on_layers"] = normalize_layers(self.default_layers)
        return dataclasses.replace(self, direction=v.reshape(self.direction.shape).float(), details=details)

    def metadata(self) -> dict[str, Any]:
        """Everything but the direction, as stored in the file header."""
        return {"name": self.name, "method": self.method, "species": self.species,
                "model_fingerprint": self.model_fingerprint, "model_name": self.model_name,
                "num_ws": self.num_ws, "w_dim": self.w_dim, "num_puppies": self.num_puppies,
                "num_adults": self.num_adults, "created": self.created, "default_strength": self.default_strength,
                "default_layers": self.default_layers, "notes": self.notes, "details": self.details}


def check_vector_name(name: Any) -> str:
    """A library name: letters, digits, '.', '_', '-', starting with a letter or digit, <= 64 characters,
    not ending in '.safetensors' (so a name can never be taken for a path)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.lower().endswith(FILE_SUFFIX):
        raise AgeVectorError(f"invalid age vector name {name!r}: use letters, digits, '.', '_' and '-' "
                             "(at most 64), starting with a letter or digit")
    return name


def check_species(species: Any) -> str:
    """A species: one line of at most MAX_SHORT_TEXT characters ('dog', 'cat', 'wild', ...; '' = not given)."""
    if not isinstance(species, str) or len(species) > MAX_SHORT_TEXT or any(ch in species for ch in "\n\r\t"):
        raise AgeVectorError(f"the species must be one line of at most {MAX_SHORT_TEXT} characters")
    return species


def check_notes(notes: Any) -> str:
    """Notes: text of at most MAX_TEXT characters."""
    if not isinstance(notes, str) or len(notes) > MAX_TEXT:
        raise AgeVectorError(f"notes must be text of at most {MAX_TEXT} characters")
    return notes


def check_strength(strength: Any) -> float:
    """A default strength: a finite number of magnitude <= MAX_STRENGTH."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) \
            or abs(strength) > MAX_STRENGTH:
        raise AgeVectorError(f"the strength must be a number between -{MAX_STRENGTH:g} and {MAX_STRENGTH:g}, "
                             f"not {strength!r}")
    return float(strength)


# ----------------------------------------------------------------------------------------------------------
# Building


def _stack(latents: Union[torch.Tensor, Sequence[torch.Tensor]], side: str) -> torch.Tensor:
    """float64 [N, num_ws, w_dim] from a tensor or a list of [num_ws, w_dim] tensors."""
    if isinstance(latents, torch.Tensor):
        stacked = latents
    else:
        latents = list(latents)
        if not latents:
            raise AgeVectorError(f"no {side} latents given")
        shapes = {tuple(w.shape) for w in latents}
        if len(shapes) > 1:
            raise AgeVectorError(f"the {side} latents have different shapes: "
                                 f"{', '.join(str(list(s)) for s in sorted(shapes))}")
        stacked = torch.stack([torch.as_tensor(w) for w in latents])
    if stacked.ndim != 3:
        raise AgeVectorError(f"{side} latents must be [N, num_ws, w_dim], got {list(stacked.shape)}")
    if not torch.isfinite(stacked).all():
        raise AgeVectorError(f"the {side} latents contain NaN or infinite values")
    return stacked.detach().to("cpu", torch.float64)


def _rows_equal(ws: torch.Tensor) -> bool:
    """True when every latent in ws [N, num_ws, w_dim] has all rows equal (a W-space latent)."""
    scale = max(1.0, float(ws.abs().max()))
    return bool((ws - ws[:, :1]).abs().max() <= 1e-6 * scale)


def check_counts(method: str, num_puppies: int, num_adults: int) -> None:
    """Raise :class:`AgeVectorError` unless ``method`` is known and has the examples it needs."""
    if method not in METHODS:
        raise AgeVectorError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if method == "pair" and (num_puppies, num_adults) != (1, 1):
        raise AgeVectorError(f"method 'pair' takes exactly one puppy and one adult, got {num_puppies} and "
                             f"{num_adults}; use 'mean' or 'linear' for more")
    if method == "linear" and min(num_puppies, num_adults) < 2:
        raise AgeVectorError(f"method 'linear' needs at least 2 puppies and 2 adults, got {num_puppies} and "
                             f"{num_adults} (5-20 of each work well)")


def compute_direction(puppies: Union[torch.Tensor, Sequence[torch.Tensor]],
                      adults: Union[torch.Tensor, Sequence[torch.Tensor]],
                      method: str = "mean") -> tuple[torch.Tensor, dict[str, Any]]:
    """The age direction between two sets of latents.

    Args:
        puppies: [P, num_ws, w_dim] (or a list of [num_ws, w_dim]) latents of puppy photos.
        adults:  [A, num_ws, w_dim] latents of adult photos of the same breed.
        method:  'pair' (P = A = 1), 'mean', or 'linear' (P, A >= 2); see the module docstring.

    Returns:
        (direction float32 [num_ws, w_dim], details) where details holds 'space' ('w' or 'w+'),
        'mean_difference_norm' and, for 'linear', the classifier's settings and fit.
    """
    P, A = _stack(puppies, "puppy"), _stack(adults, "adult")
    if P.shape[1:] != A.shape[1:]:
        raise AgeVectorError(f"puppy latents are {list(P.shape[1:])} but adult latents are {list(A.shape[1:])}: "
                             "they must come from the same model")
    check_counts(method, P.shape[0], A.shape[0])
    num_ws, w_dim = P.shape[1:]
    w_space = _rows_equal(P) and _rows_equal(A)
    # Features: one row for W-space latents (all rows equal), the whole flattened latent for W+.
    Xp = P[:, 0] if w_space else P.flatten(1)
    Xa = A[:, 0] if w_space else A.flatten(1)
    mean_diff = Xp.mean(0) - Xa.mean(0)
    details: dict[str, Any] = {"space": "w" if w_space else "w+",
                               "mean_difference_norm": float(mean_diff.norm()) * (math.sqrt(num_ws) if w_space else 1)}
    if method in ("pair", "mean"):
        v = mean_diff
    else:
        normal, fit = _classifier_normal(Xp.numpy(), Xa.numpy())
        along = float(mean_diff @ normal)
        if abs(along) <= 1e-6 * float(mean_diff.norm()):
            raise AgeVectorError("the classifier found no separation between puppies and adults along the mean "
                                 "difference; use more photos or method 'mean'")
        v = normal * along
        fit["cosine_to_mean_difference"] = along / float(mean_diff.norm())
        details["classifier"] = fit
    if not float(v.norm()) > 0:
        raise AgeVectorError("the puppy and adult latents are identical: there is no age direction between them")
    direction = v.reshape(1, w_dim).expand(num_ws, w_dim) if w_space else v.reshape(num_ws, w_dim)
    return direction.to(torch.float32).contiguous(), details


def _classifier_normal(Xp: np.ndarray, Xa: np.ndarray) -> tuple[torch.Tensor, dict[str, Any]]:
    """Unit normal (float64 [D]) of a logistic regression separating Xp [P, D] (label 1) from Xa [A, D]."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        raise AgeVectorError("method 'linear' needs scikit-learn: pip install scikit-learn") from None
    import warnings

    X = np.concatenate([Xp, Xa])
    y = np.concatenate([np.ones(len(Xp)), np.zeros(len(Xa))])
    center = X.mean(axis=0)
    scale = float(np.sqrt(((X - center) ** 2).sum(axis=1).mean()))
    if not scale > 0:
        raise AgeVectorError("all puppy and adult latents are identical")
    clf = LogisticRegression(C=CLASSIFIER_C, class_weight="balanced", solver="lbfgs", max_iter=10_000, tol=1e-8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf.fit((X - center) / scale, y)
    coef = torch.from_numpy(clf.coef_[0].astype(np.float64))   # a global scale leaves the direction unchanged
    norm = float(coef.norm())
    if not math.isfinite(norm) or norm == 0:
        raise AgeVectorError("the classifier found no direction separating puppies from adults")
    accuracy = float(clf.score((X - center) / scale, y))
    return coef / norm, {"model": "logistic regression (scikit-learn)", "C": CLASSIFIER_C,
                         "class_weight": "balanced", "training_accuracy": accuracy,
                         "converged": not any("converge" in str(w.message).lower() for w in caught)}


def build_vector(name: str, puppies: Union[torch.Tensor, Sequence[torch.Tensor]],
                 adults: Union[torch.Tensor, Sequence[torch.Tensor]], method: str = "mean", *,
                 model_fingerprint: str, model_name: str = "", species: str = "", notes: str = "",
                 default_strength: float = 1.0, default_layers: str = "all",
                 details: Optional[dict[str, Any]] = None) -> AgeVector:
    """An :class:`AgeVector` from latents ([N, num_ws, w_dim] or lists of [num_ws, w_dim]); see
    :func:`compute_direction` for the methods."""
    check_vector_name(name)
    direction, fit = compute_direction(puppies, adults, method)
    return AgeVector(name=name, direction=direction, method=method, model_fingerprint=model_fingerprint,
                     model_name=model_name, species=species, num_puppies=len(puppies), num_adults=len(adults),
                     default_strength=default_strength, default_layers=default_layers, notes=notes,
                     details={**(details or {}), **fit})


def is_latent_file(path: PathLike) -> bool:
    """True for paths that name latent files (``.npz``) rather than photos."""
    return os.fspath(path).lower().endswith(".npz")


@dataclasses.dataclass
class VectorInput:
    """One puppy or adult example of a build.

    Attributes:
        path:    the photo or latent file as given.
        role:    'puppy' or 'adult'.
        kind:    'photo' or 'latent'.
        image:   for photos, the prepared photo uint8 [R, R, 3] (R = model resolution); else None.
        latent:  its :class:`timemachine.latents.LatentFile` (ws [num_ws, w_dim]); None for a photo not
                 projected yet.
        metrics: for projected photos, the projection's metrics ('lpips', 'psnr', 'cached', ...); else {}.
    """

    path: str
    role: str
    kind: str
    image: Optional[np.ndarray] = None
    latent: Optional["LatentFile"] = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)


def prepare_inputs(model: "LoadedModel", puppy_paths: Sequence[PathLike],
                   adult_paths: Sequence[PathLike]) -> list[VectorInput]:
    """Read every example, so that anything wrong is refused before a long projection starts.

    ``.npz`` files are read as latents and must fit the model's [num_ws, w_dim] and, where they record one,
    the model's fingerprint; anything else is a photo, read and prepared (centre crop, resize to the model's
    resolution) as :func:`timemachine.images.prepare_photo` does.

    Returns:
        the inputs, puppies first, each side in the order given; photos still need :func:`project_inputs`.
    """
    from timemachine import images
    from timemachine.latents import load_latent

    G = model.G
    inputs = []
    for role, paths in (("puppy", puppy_paths), ("adult", adult_paths)):
        for path in map(os.fspath, paths):
            if is_latent_file(path):
                latent = load_latent(path, num_ws=G.num_ws, w_dim=G.w_dim)
                recorded = latent.meta.get("model_fingerprint")
                if recorded is not None and recorded != model.fingerprint:
                    raise AgeVectorError(f"{role} latent {path} was projected with another model ({recorded}), "
                                         f"not with {model.spec} ({model.fingerprint})")
                inputs.append(VectorInput(path=path, role=role, kind="latent", latent=latent))
            else:
                inputs.append(VectorInput(path=path, role=role, kind="photo",
                                          image=images.prepare_photo(path, G.img_resolution)))
    return inputs


def project_inputs(model: "LoadedModel", inputs: Sequence[VectorInput], settings: "ProjectorSettings",
                   perceptual: "PerceptualDistance", *, cache: Optional["ProjectionCache"] = None,
                   callback: Optional["ProgressCallback"] = None, batch_size: int = 8) -> None:
    """Give every photo input its latent, projecting ``batch_size`` photos at a time (in place).

    Photos found in ``cache`` are not projected again and give no ``callback`` events; new projections are
    stored in it (see :func:`timemachine.pipeline.project_images`).  No pivotal tuning: it tunes the
    generator around a latent without changing the latent, so it cannot change an age vector.
    """
    from timemachine.pipeline import project_images

    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    todo = [item for item in inputs if item.kind == "photo" and item.latent is None]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        results = project_images(model, [item.image for item in chunk], settings, perceptual, cache=cache,
                                 callback=callback)
        for item, result in zip(chunk, results):
            item.latent = result.latent
            item.metrics = dict(result.metrics)


def build_vector_from_inputs(name: str, model: "LoadedModel", inputs: Sequence[VectorInput],
                             method: str = "mean", *, settings: Optional["ProjectorSettings"] = None,
                             species: str = "", notes: str = "", default_strength: float = 1.0,
                             default_layers: str = "all") -> AgeVector:
    """The age vector of prepared and projected inputs (see :func:`prepare_inputs`, :func:`project_inputs`).

    ``details['sources']`` records each input's file name, kind and, for photos, the projection's LPIPS and
    PSNR; ``details['projection']`` the projector settings used for photos.
    """
    missing = [item.path for item in inputs if item.latent is None]
    if missing:
        raise ValueError(f"inputs not projected yet: {', '.join(missing)}")
    sources = []
    for item in inputs:
        source: dict[str, Any] = {"role": item.role, "kind": item.kind, "file": os.path.basename(item.path)}
        if item.kind == "photo":
            source.update({k: item.metrics[k] for k in ("lpips", "psnr") if k in item.metrics})
        elif "model_fingerprint" not in item.latent.meta:
            source["model_unverified"] = True   # an official projected_w.npz records no model
        sources.append(source)
    details: dict[str, Any] = {"sources": sources}
    if settings is not None and any(item.kind == "photo" for item in inputs):
        details["projection"] = {"space": settings.space, "steps": settings.steps, "seed": settings.seed}
    return build_vector(name, [item.latent.ws for item in inputs if item.role == "puppy"],
                        [item.latent.ws for item in inputs if item.role == "adult"], method,
                        model_fingerprint=model.fingerprint, model_name=model.spec, species=species, notes=notes,
                        default_strength=default_strength, default_layers=default_layers, details=details)


def check_build_request(name: str, model: "LoadedModel", num_puppies: int, num_adults: int, method: str, *,
                        species: str = "", notes: str = "", default_strength: float = 1.0,
                        default_layers: str = "all") -> None:
    """Refuse a build that cannot succeed (bad name, counts, defaults) before any work is done."""
    check_vector_name(name)
    check_counts(method, num_puppies, num_adults)
    resolve_layers(default_layers, model.G.num_ws)
    check_strength(default_strength)
    check_species(species)
    check_notes(notes)


def build_vector_from_files(name: str, model: "LoadedModel", puppy_paths: Sequence[PathLike],
                            adult_paths: Sequence[PathLike], method: str = "mean", *,
                            settings: Optional["ProjectorSettings"] = None,
                            perceptual: Optional["PerceptualDistance"] = None,
                            cache: Optional["ProjectionCache"] = None,
                            callback: Optional["ProgressCallback"] = None, batch_size: int = 8,
                            species: str = "", notes: str = "", default_strength: float = 1.0,
                            default_layers: str = "all") -> tuple[AgeVector, list[VectorInput]]:
    """Build an age vector for ``model`` from photos and/or latent files of puppies and adults.

    The request is checked (:func:`check_build_request`) and every input read (:func:`prepare_inputs`)
    before anything is projected; photos are then projected through ``cache`` (:func:`project_inputs`,
    which needs ``settings`` and ``perceptual``).

    Returns:
        (the vector, not saved yet; the inputs with their latents and projection metrics).
    """
    check_build_request(name, model, len(puppy_paths), len(adult_paths), method, species=species, notes=notes,
                        default_strength=default_strength, default_layers=default_layers)
    inputs = prepare_inputs(model, puppy_paths, adult_paths)
    if any(item.kind == "photo" for item in inputs):
        if settings is None or perceptual is None:
            raise ValueError("projecting photos needs projector settings and a perceptual distance")
        project_inputs(model, inputs, settings, perceptual, cache=cache, callback=callback, batch_size=batch_size)
    vector = build_vector_from_inputs(name, model, inputs, method, settings=settings, species=species, notes=notes,
                                      default_strength=default_strength, default_layers=default_layers)
    return vector, inputs


# ----------------------------------------------------------------------------------------------------------
# Files


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and one rename.

    Raises:
        AgeVectorError: the file cannot be written (no permission, disk full); nothing is left behind.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise AgeVectorError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def vector_to_bytes(vector: AgeVector) -> bytes:
    """The safetensors file content of ``vector`` (see the module docstring)."""
    from safetensors.torch import save

    vector.validate()
    metadata = {"format": FILE_FORMAT, "format_version": FILE_FORMAT_VERSION,
                "vector": json.dumps(vector.metadata(), sort_keys=True, allow_nan=False)}
    return save({TENSOR_NAME: vector.direction.contiguous()}, metadata=metadata)


def save_vector_file(vector: AgeVector, path: PathLike, force: bool = False) -> Path:
    """Write ``vector`` to ``path`` atomically; an existing file is replaced only with ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise AgeVectorError(f"{path} already exists (use --force to replace it)")
    if path.exists() and not path.is_file():
        raise AgeVectorError(f"{path} exists and is not a file")
    if not path.parent.is_dir():
        raise AgeVectorError(f"cannot write {path}: directory {path.parent} does not exist")
    _write_atomic(path, vector_to_bytes(vector))
    return path


def load_vector_file(path: PathLike) -> AgeVector:
    """Read and validate an age vector file.  Nothing in the file is executed.

    Raises:
        AgeVectorError: missing, too large, not safetensors, wrong tensor name/dtype/shape, non-finite values,
        bad or missing metadata, unsupported version.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise AgeVectorError(f"no age vector file at {path}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise AgeVectorError(f"{path} is too large to be an age vector file")
    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            keys = list(f.keys())
            if header.get("format") != FILE_FORMAT:
                raise AgeVectorError(f"{path} is a safetensors file but not a timemachine age vector")
            if header.get("format_version") != FILE_FORMAT_VERSION:
                raise AgeVectorError(f"{path}: unsupported age vector format version "
                                     f"{header.get('format_version')!r} (this timemachine reads {FILE_FORMAT_VERSION})")
            if keys != [TENSOR_NAME]:
                raise AgeVectorError(f"{path} must hold exactly one tensor {TENSOR_NAME!r}, found {sorted(keys)}")
            tensor_slice = f.get_slice(TENSOR_NAME)
            dtype, shape = tensor_slice.get_dtype(), list(tensor_slice.get_shape())
            if dtype != "F32":
                raise AgeVectorError(f"{path}: the direction must be float32, not {dtype}")
            if len(shape) != 2 or not (1 <= shape[0] <= MAX_NUM_WS and 1 <= shape[1] <= MAX_W_DIM):
                raise AgeVectorError(f"{path}: the direction must be [num_ws, w_dim], got {shape}")
            direction = f.get_tensor(TENSOR_NAME)
    except AgeVectorError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AgeVectorError(f"{path} is not a readable age vector file ({text})") from None
    try:
        meta = json.loads(header.get("vector", ""))
    except json.JSONDecodeError:
        raise AgeVectorError(f"{path}: the age vector metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise AgeVectorError(f"{path}: the age vector metadata is not a JSON object")
    missing = sorted(_METADATA_KEYS - set(meta))
    unknown = sorted(set(meta) - _METADATA_KEYS)
    if missing or unknown:
        raise AgeVectorError(f"{path}: malformed age vector metadata ("
                             + "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                                      unknown and f"unknown {', '.join(unknown)}"])) + ")")
    if [meta["num_ws"], meta["w_dim"]] != shape:
        raise AgeVectorError(f"{path}: the metadata says [{meta['num_ws']}, {meta['w_dim']}] but the direction "
                             f"is {shape}")
    if not isinstance(meta["default_layers"], str):
        raise AgeVectorError(f"{path}: the default layers must be text")
    fields = {k: meta[k] for k in _METADATA_KEYS - {"num_ws", "w_dim"}}
    try:
        return AgeVector(direction=direction, **fields)
    except AgeVectorError as exc:
        raise AgeVectorError(f"{path}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise AgeVectorError(f"{path}: malformed age vector metadata ({exc})") from None


# ----------------------------------------------------------------------------------------------------------
# Library


def vectors_dir() -> Path:
    """``$TIMEMACHINE_HOME/vectors`` (or the platform's user data directory + ``/vectors``); not created here."""
    from timemachine.env import Environment

    return Environment.from_environ().paths.vectors


def library_path(name: str) -> Path:
    """Where the library keeps the vector called ``name`` (which must be a valid name)."""
    return vectors_dir() / f"{check_vector_name(name)}{FILE_SUFFIX}"


@contextlib.contextmanager
def _library_lock() -> Iterator[None]:
    """Serialises changes to the library across processes."""
    from timemachine import fs
    from timemachine.env import Environment

    with fs.file_lock(Environment.from_environ().paths.lock("vectors")):
        yield


@dataclasses.dataclass
class LibraryEntry:
    """One file of the library: its vector, or why it cannot be read."""

    name: str
    path: Path
    vector: Optional[AgeVector]
    problem: Optional[str] = None


def list_vectors() -> list[LibraryEntry]:
    """Every ``<name>.safetensors`` in the library, sorted by name; damaged files are listed with their problem."""
    root = vectors_dir()
    if not root.is_dir():
        return []
    entries = []
    for path in sorted(root.iterdir()):
        stem = path.name[:-len(FILE_SUFFIX)] if path.name.endswith(FILE_SUFFIX) else None
        if stem is None or not _NAME_RE.fullmatch(stem) or not path.is_file():
            continue  # temporary files start with '.', and nothing else belongs here
        try:
            vector = load_vector_file(path)
        except AgeVectorError as exc:
            entries.append(LibraryEntry(stem, path, None, str(exc)))
            continue
        if vector.name != stem:   # a file renamed by hand: the file name is what users type
            vector = dataclasses.replace(vector, name=stem)
        entries.append(LibraryEntry(stem, path, vector))
    return entries


def _library_file(name: str) -> Path:
    path = library_path(name)
    if not path.is_file():
        raise AgeVectorError(f"no age vector named {name!r} in the library ({vectors_dir()}); "
                             "see 'timemachine age-vector list'")
    return path


def load_vector(name_or_path: PathLike) -> AgeVector:
    """A vector from the library (``name``) or from a file.

    A spec that contains a path separator or ends in '.safetensors' is a file path; anything else is a
    library name.
    """
    spec = os.fspath(name_or_path)
    if "/" in spec or os.sep in spec or spec.lower().endswith(FILE_SUFFIX):
        return load_vector_file(spec)
    if not _NAME_RE.fullmatch(spec):
        raise AgeVectorError(f"{spec!r} is neither an age vector name nor a .safetensors file")
    vector = load_vector_file(_library_file(spec))
    return vector if vector.name == spec else dataclasses.replace(vector, name=spec)


def save_to_library(vector: AgeVector, force: bool = False) -> Path:
    """Store ``vector`` under ``vector.name``; an existing vector of that name is replaced only with ``force``."""
    path = library_path(vector.name)
    with _library_lock():
        if path.exists() and not force:
            raise AgeVectorError(f"an age vector named {vector.name!r} already exists (use --force to replace it)")
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, vector_to_bytes(vector))
    return path


def delete_vector(name: str) -> Path:
    """Remove a vector from the library; returns the path it had."""
    with _library_lock():
        path = _library_file(name)
        path.unlink()
    return path


def rename_vector(old: str, new: str, force: bool = False) -> Path:
    """Rename a library vector (its file and the name it records); returns the new path.

    The vector is written under the new name first, then the old file is removed: an interruption leaves
    both, never neither.
    """
    check_vector_name(new)
    with _library_lock():
        old_path = _library_file(old)
        new_path = library_path(new)
        if new_path.exists() and not force and old_path != new_path:
            raise AgeVectorError(f"an age vector named {new!r} already exists (use --force to replace it)")
        vector = dataclasses.replace(load_vector_file(old_path), name=new)
        _write_atomic(new_path, vector_to_bytes(vector))
        if old_path != new_path and old_path.exists():
            old_path.unlink()
    return new_path


def update_vector(name: str, *, strength: Optional[float] = None, layers: Optional[str] = None,
                  species: Optional[str] = None, notes: Optional[str] = None) -> AgeVector:
    """Tune a library vector's defaults (and descriptive fields); the direction is not touched.

    ``layers`` is checked against the vector's num_ws.  Returns the updated vector.
    """
    changes: dict[str, Any] = {}
    if strength is not None:
        changes["default_strength"] = check_strength(strength)
    if layers is not None:
        changes["default_layers"] = normalize_layers(layers)
    if species is not None:
        changes["species"] = check_species(species)
    if notes is not None:
        changes["notes"] = check_notes(notes)
    if not changes:
        raise AgeVectorError("nothing to change: give --strength, --layers, --species or --notes")
    with _library_lock():
        path = _library_file(name)
        vector = dataclasses.replace(load_vector_file(path), name=name, **changes)  # validates
        _write_atomic(path, vector_to_bytes(vector))
    return vector


def export_vector(name: str, path: PathLike, force: bool = False) -> Path:
    """Copy a library vector to a file (validated on the way)."""
    return save_vector_file(load_vector_file(_library_file(name)), path, force=force)


def import_vector(path: PathLike, name: Optional[str] = None, force: bool = False) -> AgeVector:
    """Validate an age vector file and add it to the library, as ``name`` or under the name it records."""
    vector = load_vector_file(path)
    if name is not None:
        vector = dataclasses.replace(vector, name=check_vector_name(name))
    save_to_library(vector, force=force)
    return vector

