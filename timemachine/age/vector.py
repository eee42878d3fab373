"""The age vector: a direction in a generator's latent space, its defaults, and the checks that keep it sane.

An age vector ``v`` (float32 [num_ws, w_dim]) points from adults towards puppies.  Adding it to an adult's
latent, ``ws + strength * mask * v``, moves the image towards a puppy: strength 1 moves it by the distance
that separates the puppies from the adults on average, 0 leaves it unchanged, negative values age it
instead.  ``mask`` selects the rows to edit (:mod:`timemachine.age.layers`).

A vector belongs to one generator.  It is **bound** either to a model fingerprint
(:func:`timemachine.checkpoint.model_fingerprint`; every vector built or discovered here), or to a model-zoo
name (``model_zoo``; the built-in vectors, whose model nobody here could fingerprint): such a vector applies
to a generator loaded under that zoo name, whose file the zoo verified against its SHA-256 (published, or
recorded at the first download: trust on first use).  The caller says which zoo entry a model came from
(:meth:`AgeVector.check_model`'s ``zoo``); this module never looks at files.

Bounds (so that a hostile or damaged vector can neither make us allocate much, nor print a novel, nor turn
frames into NaN): shape at most [:data:`MAX_NUM_WS`, :data:`MAX_W_DIM`], every element finite and at most
:data:`MAX_DIRECTION_ABS` in magnitude, strengths at most :data:`timemachine.settings.MAX_STRENGTH`, details
plain JSON of bounded size and depth (:func:`check_details`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import re
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch

from timemachine.age.layers import LayerSpec, layer_mask, normalize_layers, resolve_layers
from timemachine.errors import FORCE_MODEL, AgeVectorError, printable, quoted
from timemachine.settings import MAX_STRENGTH, NAME_RE

#: How a vector was made: 'pair', 'mean', 'linear' (:mod:`timemachine.age.build`, from latents of photos) or
#: 'discovered' (:mod:`timemachine.discover`, from the generator's own samples labelled by a classifier).
METHODS = ("pair", "mean", "linear", "discovered")
#: Bounds on what a vector may hold, so that a hostile file cannot make us allocate much or print a novel.
MAX_NUM_WS = 64
MAX_W_DIM = 4096
MAX_TEXT = 10_000
MAX_SHORT_TEXT = 64
MAX_DETAILS_BYTES = 256 * 1024
MAX_DETAILS_DEPTH = 16
MAX_DETAILS_ITEMS = 20_000
#: Largest magnitude of a direction's element.  W latents of the released generators stay within about
#: +-10 and real age directions within about +-8; this bound is 100 times that, and with
#: |strength| <= MAX_STRENGTH every edit stays far from float32 overflow.
MAX_DIRECTION_ABS = 1000.0
#: Largest integer accepted in details (JSON readers elsewhere lose precision beyond 2**53).
MAX_DETAILS_INT = 2 ** 53
MAX_COUNT = 1_000_000

FINGERPRINT_RE = re.compile(r"[0-9a-f]{16}")
#: The suffix of vector files; a name may not end with it (so that a name is never taken for a path).
FILE_SUFFIX = ".safetensors"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


@dataclasses.dataclass(eq=False)
class AgeVector:
    """An age direction for one breed, tied to one generator.

    Attributes:
        name:              library name (letters, digits, '.', '_', '-').
        direction:         float32 [num_ws, w_dim] on the CPU, finite, not zero, every element at most
                           :data:`MAX_DIRECTION_ABS` in magnitude.  Add it to adult latents.
        method:            how it was made, one of :data:`METHODS`.
        model_fingerprint: :func:`timemachine.checkpoint.model_fingerprint` of the generator it belongs to
                           (16 hex digits), or '' for a vector bound by ``model_zoo`` alone.
        model_name:        what the model was called when the vector was built (e.g. 'afhqdog'); informative.
        species:           free text, usually 'dog', 'cat' or 'wild'; '' when not given.
        num_puppies, num_adults: how many examples of each side it was made from.
        created:           UTC time of building, ISO 8601.
        default_strength:  strength used when the user gives none (1 = the full mean separation).
        default_layers:    layer selection used when the user gives none (see :func:`resolve_layers`).
        notes:             free text from the user.
        details:           plain JSON object of facts about the build (inputs, projection settings, classifier
                           fit, orthogonalisation, discovery), see :func:`check_details`.
        model_zoo:         the model-zoo name it is bound to ('' = bound by fingerprint only); see the
                           module docstring.
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
    model_zoo: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.direction, np.ndarray):
            self.direction = torch.from_numpy(self.direction)
        if not isinstance(self.direction, torch.Tensor):
            raise AgeVectorError("an age vector's direction must be a tensor")
        if self.direction.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise AgeVectorError(f"an age vector's direction must hold floats, not {self.direction.dtype}")
        self.direction = self.direction.detach().to("cpu", torch.float32).contiguous()
        if not isinstance(self.default_layers, str):
            raise AgeVectorError("the default layers must be text")
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

    @property
    def binding(self) -> str:
        """'fingerprint', 'zoo' or 'fingerprint+zoo': what :meth:`check_model` accepts a model by."""
        return "+".join(kind for kind, value in (("fingerprint", self.model_fingerprint), ("zoo", self.model_zoo))
                        if value)

    def validate(self) -> None:
        """Raise :class:`AgeVectorError` unless every field is well-formed."""
        check_vector_name(self.name)
        check_direction(self.direction, self.name)
        if self.method not in METHODS:
            raise AgeVectorError(f"unknown age vector method {quoted(self.method)} (expected {', '.join(METHODS)})")
        check_binding(self.model_fingerprint, self.model_zoo, self.name)
        for field, limit in (("model_name", MAX_TEXT), ("species", MAX_SHORT_TEXT), ("notes", MAX_TEXT),
                             ("created", MAX_SHORT_TEXT)):
            value = getattr(self, field)
            if not isinstance(value, str) or len(value) > limit:
                raise AgeVectorError(f"age vector field {field!r} must be text of at most {limit} characters")
        check_species(self.species)
        for field in ("num_puppies", "num_adults"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
                raise AgeVectorError(f"age vector field {field!r} must be a count, got {printable(value, 40)}")
        if self.method == "pair" and (self.num_puppies, self.num_adults) != (1, 1):
            raise AgeVectorError("a 'pair' age vector is made of exactly one puppy and one adult")
        try:
            datetime.datetime.fromisoformat(self.created)
        except ValueError:
            raise AgeVectorError(f"age vector {quoted(self.name)} has an invalid creation time "
                                 f"{quoted(self.created)}") from None
        check_strength(self.default_strength)
        resolve_layers(self.default_layers, self.num_ws)
        check_details(self.details)

    # -- use -----------------------------------------------------------------------------------------------
    def check_model(self, model_fingerprint: str, model_name: str = "", force: bool = False, *,
                    zoo: Optional[str] = None) -> None:
        """Raise :class:`AgeVectorError` (remedy ``FORCE_MODEL``) when the vector belongs to another generator.

        Args:
            model_fingerprint: the generator's fingerprint.
            model_name:        what the generator is called (for the message).
            force:             skip the check.
            zoo:               the model-zoo name the generator was loaded under, when its file matched the
                               zoo's SHA-256 (published or recorded at the first download); None otherwise.

        A direction means something only in the latent space it was found in: the same numbers added to
        another network's latents make arbitrary changes.  The model fits when its fingerprint is the
        vector's, or when the vector is bound to a zoo name and ``zoo`` is that name.
        """
        if force:
            return
        if self.model_fingerprint and model_fingerprint == self.model_fingerprint:
            return
        if self.model_zoo and zoo == self.model_zoo:
            return
        this = f"{printable(model_name)} ({model_fingerprint})" if model_name else str(model_fingerprint)
        if self.model_fingerprint:
            built_for = (f"{printable(self.model_name)} ({self.model_fingerprint})" if self.model_name
                         else self.model_fingerprint)
            raise AgeVectorError(f"age vector {quoted(self.name)} was built for model {built_for}, not for model "
                                 f"{this}; build one for this model", remedy=FORCE_MODEL)
        raise AgeVectorError(f"age vector {quoted(self.name)} belongs to the zoo model {printable(self.model_zoo)} "
                             f"(loaded by that name, its file checked against the zoo's SHA-256), not to model "
                             f"{this}; build one for this model", remedy=FORCE_MODEL)

    def masked_direction(self, layers: LayerSpec = None) -> torch.Tensor:
        """float32 [num_ws, w_dim]: the direction on the selected rows, zero elsewhere.

        ``layers`` None = :attr:`default_layers`; see :func:`resolve_layers` for the syntax.
        """
        spec = self.default_layers if layers is None else layers
        return self.direction * layer_mask(spec, self.num_ws)

    def apply(self, ws: torch.Tensor, strength: Optional[float] = None, layers: LayerSpec = None, *,
              model_fingerprint: Optional[str] = None, model_name: str = "", force: bool = False,
              zoo: Optional[str] = None) -> torch.Tensor:
        """``ws + strength * mask * direction``.

        Args:
            ws:        latents [N, num_ws, w_dim] or one latent [num_ws, w_dim] (any float dtype and device).
            strength:  a number from -MAX_STRENGTH to MAX_STRENGTH; None = :attr:`default_strength`.
                       0 returns ``ws`` unchanged.
            layers:    rows to edit; None = :attr:`default_layers`.
            model_fingerprint, model_name, zoo: the generator the latents belong to; when the fingerprint
                       is given, checked with :meth:`check_model` (``force`` skips the check).

        Returns:
            a new tensor shaped, typed and placed like ``ws``.
        """
        if model_fingerprint is not None:
            self.check_model(model_fingerprint, model_name, force=force, zoo=zoo)
        strength = self.default_strength if strength is None else check_strength(strength)
        if ws.ndim not in (2, 3) or tuple(ws.shape[-2:]) != (self.num_ws, self.w_dim):
            raise AgeVectorError(f"age vector {quoted(self.name)} fits latents [N, {self.num_ws}, {self.w_dim}], "
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
                other.check_model(self.model_fingerprint, self.model_name, force=force, zoo=self.model_zoo or None)
                names.append(other.name)
                other = other.direction
            else:
                names.append("(tensor)")
            if tuple(other.shape) != tuple(self.direction.shape):
                raise AgeVectorError(f"cannot orthogonalise against a direction of shape {list(other.shape)}: "
                                     f"{quoted(self.name)} is {list(self.direction.shape)}")
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
            raise AgeVectorError(f"nothing is left of {quoted(self.name)} after removing the other directions")
        details = dict(self.details)
        previous = details.get("orthogonalized_against")
        details["orthogonalized_against"] = (list(previous) if isinstance(previous, list) else []) + names
        details["norm_before_orthogonalization"] = details.get("norm_before_orthogonalization", original)
        details["orthogonalized_on_layers"] = normalize_layers(self.default_layers)
        return dataclasses.replace(self, direction=v.reshape(self.direction.shape).float(), details=details)

    def metadata(self) -> dict[str, Any]:
        """Everything but the direction, as stored in the file header (``model_zoo`` only when set)."""
        meta = {"name": self.name, "method": self.method, "species": self.species,
                "model_fingerprint": self.model_fingerprint, "model_name": self.model_name,
                "num_ws": self.num_ws, "w_dim": self.w_dim, "num_puppies": self.num_puppies,
                "num_adults": self.num_adults, "created": self.created, "default_strength": self.default_strength,
                "default_layers": self.default_layers, "notes": self.notes, "details": self.details}
        if self.model_zoo:
            meta["model_zoo"] = self.model_zoo
        return meta


# ----------------------------------------------------------------------------------------------------------
# Checks of single fields (the faces use them to refuse input before any work)


def check_vector_name(name: Any) -> str:
    """A library name: letters, digits, '.', '_', '-', starting with a letter or digit, <= 64 characters,
    not ending in '.safetensors' (so a name can never be taken for a path)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.lower().endswith(FILE_SUFFIX):
        raise AgeVectorError(f"invalid age vector name {quoted(name, 80) if isinstance(name, str) else name!r}: use "
                             "letters, digits, '.', '_' and '-' (at most 64), starting with a letter or digit")
    return name


def check_direction(direction: torch.Tensor, name: str = "") -> None:
    """Raise :class:`AgeVectorError` unless ``direction`` is a float32 [num_ws, w_dim] within the bounds,
    finite, not zero, and no element above :data:`MAX_DIRECTION_ABS` in magnitude."""
    what = f"age vector {quoted(name)}" if name else "the age vector"
    d = direction
    if d.ndim != 2 or not (1 <= d.shape[0] <= MAX_NUM_WS and 1 <= d.shape[1] <= MAX_W_DIM):
        raise AgeVectorError(f"an age vector's direction must be [num_ws, w_dim] (num_ws <= {MAX_NUM_WS}, "
                             f"w_dim <= {MAX_W_DIM}), got {list(d.shape)}")
    if not torch.isfinite(d).all():
        raise AgeVectorError(f"{what} contains NaN or infinite values")
    largest = float(d.abs().max())
    if not largest > 0:
        raise AgeVectorError(f"{what} is zero: it would not change anything")
    if largest > MAX_DIRECTION_ABS:
        raise AgeVectorError(f"{what} has an element of magnitude {largest:.3g}, far beyond any latent's scale "
                             f"(at most {MAX_DIRECTION_ABS:g} is accepted)")


def check_binding(model_fingerprint: Any, model_zoo: Any, name: str = "") -> None:
    """A vector is bound to a fingerprint (16 hex digits), a zoo name, or both; never to nothing."""
    what = quoted(name) if name else "the age vector"
    if not isinstance(model_fingerprint, str) or not (model_fingerprint == "" or
                                                       FINGERPRINT_RE.fullmatch(model_fingerprint)):
        raise AgeVectorError(f"age vector {what} has an invalid model fingerprint "
                             f"{quoted(model_fingerprint, 40)} (expected 16 hex digits)")
    if not isinstance(model_zoo, str) or not (model_zoo == "" or NAME_RE.fullmatch(model_zoo)):
        raise AgeVectorError(f"age vector {what} has an invalid model zoo name {quoted(model_zoo, 40)}")
    if not model_fingerprint and not model_zoo:
        raise AgeVectorError(f"age vector {what} has an invalid model fingerprint '' (expected 16 hex digits)")


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
    """A strength: a finite number of magnitude <= MAX_STRENGTH (integers of any size are compared exactly)."""
    number = isinstance(strength, (int, float, np.integer, np.floating)) and not isinstance(strength, (bool, np.bool_))
    if number and abs(strength) <= MAX_STRENGTH:     # NaN compares False; huge ints compare without overflow
        return float(strength)
    if isinstance(strength, (float, np.floating)):
        shown = f"{float(strength):g}"
    elif number:
        shown = str(int(strength)) if abs(strength) < 10 ** 30 else "an integer of more than 30 digits"
    else:
        shown = printable(repr(strength), 40)
    raise AgeVectorError(f"the strength must be a number between -{MAX_STRENGTH:g} and {MAX_STRENGTH:g}, "
                         f"not {shown}")


def check_details(details: Any) -> dict[str, Any]:
    """Details: a JSON object of at most :data:`MAX_DETAILS_DEPTH` levels and :data:`MAX_DETAILS_ITEMS` values,
    whose leaves are null, booleans, integers within +-2**53, finite floats or text, and whose JSON text is at
    most :data:`MAX_DETAILS_BYTES`.  Checked without recursion, so any depth is refused cleanly."""
    if not isinstance(details, dict):
        raise AgeVectorError("age vector details must be a JSON object")
    _check_details_values(details)
    try:
        size = len(json.dumps(details, allow_nan=False))
    except (TypeError, ValueError):
        raise AgeVectorError("age vector details must be plain JSON (no NaN, no objects)") from None
    if size > MAX_DETAILS_BYTES:
        raise AgeVectorError(f"age vector details are too large ({size} bytes)")
    return details


def _check_details_values(details: dict[str, Any]) -> None:
    """Walk every value of ``details`` with an explicit stack: at most :data:`MAX_DETAILS_ITEMS` values,
    containers at most :data:`MAX_DETAILS_DEPTH` deep, leaves checked by :func:`_check_details_leaf`."""
    stack: list[tuple[Any, int]] = [(details, 1)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_DETAILS_ITEMS:
            raise AgeVectorError(f"age vector details hold too many values (more than {MAX_DETAILS_ITEMS})")
        if isinstance(value, (dict, list)):
            stack.extend((item, depth + 1) for item in _details_children(value, depth))
        else:
            _check_details_leaf(value)


def _details_children(value: Union[dict, list], depth: int) -> Iterable[Any]:
    """The values held by a dict (whose keys must be text) or a list found at level ``depth``."""
    if depth > MAX_DETAILS_DEPTH:
        raise AgeVectorError(f"age vector details are nested too deeply (more than {MAX_DETAILS_DEPTH} levels)")
    if isinstance(value, list):
        return value
    if not all(isinstance(key, str) for key in value):
        raise AgeVectorError("age vector details must be plain JSON (keys are text)")
    return value.values()


def _check_details_leaf(value: Any) -> None:
    """A leaf of the details: null, a boolean, text, an integer within +-2**53 or a finite float."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if abs(value) > MAX_DETAILS_INT:
            raise AgeVectorError("age vector details hold an integer out of range (at most 2**53)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise AgeVectorError("age vector details must be plain JSON (no NaN or infinity)")
    else:
        raise AgeVectorError("age vector details must be plain JSON (no objects)")
