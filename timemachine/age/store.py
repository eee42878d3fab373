"""Where age vectors live: their file format, the user's locked library, and the built-in vectors.

File format (:func:`save_vector_file`, :func:`load_vector_file`): a safetensors file holding one float32 tensor
``direction`` [num_ws, w_dim]; the header metadata holds ``format`` ('timemachine-age-vector'),
``format_version`` ('1') and ``vector``, a JSON object with everything else (see
:meth:`AgeVector.metadata`; ``model_zoo`` is present only for vectors bound to a zoo name, so files of
fingerprint-bound vectors are what earlier versions wrote).  No pickle: loading parses a JSON header and copies
raw float32 bytes, after checking size, dtype, shape, finiteness, magnitude and the metadata schema; any
damage is one :class:`AgeVectorError` sentence.

Library (:class:`VectorLibrary`): ``<vectors>/<name>.safetensors`` under the directory the caller gives
(``Paths.vectors``), changed under an inter-process lock (``Paths.lock('vectors')``); every write goes
through :mod:`timemachine.fs` (a temporary file beside the target, renamed into place).  Names: letters,
digits, '.', '_', '-', starting with a letter or digit, at most 64 characters.  Listing never fails because
of one damaged file: it is listed with its problem.

Built-in vectors ship inside the package (``timemachine/age/builtin/<name>.safetensors``, made by
``scripts/make_builtin_vectors.py``): read-only, loaded by name like library vectors, copied into the library
to be tuned.  A library vector of the same name hides a built-in.  :data:`BUILTIN_DEFAULTS` names the
built-in used for a zoo model that the user has chosen no default vector for.

Per-model defaults (``<vectors>/defaults.json``, written atomically): the vector the user marked with
:meth:`VectorLibrary.set_default`, keyed by what the vector is bound to ('fingerprint:<16 hex>' or
'zoo:<name>').  :meth:`VectorLibrary.default_vector` looks a model up by its fingerprint, then its zoo name,
then :data:`BUILTIN_DEFAULTS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch

from timemachine import fs
from timemachine.age.layers import normalize_layers
from timemachine.age.vector import (
    FILE_SUFFIX,
    MAX_NUM_WS,
    MAX_W_DIM,
    NAME_RE,
    AgeVector,
    check_notes,
    check_species,
    check_strength,
    check_vector_name,
)
from timemachine.env import Paths
from timemachine.errors import AgeVectorError, AlreadyExists, first_line, printable, quoted

PathLike = Union[str, os.PathLike]

FILE_FORMAT = "timemachine-age-vector"
FILE_FORMAT_VERSION = "1"
TENSOR_NAME = "direction"
#: Files larger than this are refused before reading (a [64, 4096] direction is 1 MiB; headers are bounded too).
MAX_FILE_BYTES = 16 * 1024 * 1024
#: The header's metadata keys every vector file has, and those it may have.
METADATA_KEYS = frozenset({"name", "method", "species", "model_fingerprint", "model_name", "num_ws", "w_dim",
                           "num_puppies", "num_adults", "created", "default_strength", "default_layers", "notes",
                           "details"})
OPTIONAL_METADATA_KEYS = frozenset({"model_zoo"})

#: The built-in vector used for a zoo model when the user has marked no default for it.
BUILTIN_DEFAULTS = {"afhqdog": "yorkshire"}
BUILTIN_DIR = "builtin"
DEFAULTS_FILE = "defaults.json"
DEFAULTS_VERSION = 1
MAX_DEFAULTS_BYTES = 1024 * 1024


# ----------------------------------------------------------------------------------------------------------
# Files


def vector_to_bytes(vector: AgeVector) -> bytes:
    """The safetensors file content of ``vector`` (see the module docstring)."""
    from safetensors.torch import save

    vector.validate()
    metadata = {"format": FILE_FORMAT, "format_version": FILE_FORMAT_VERSION,
                "vector": json.dumps(vector.metadata(), sort_keys=True, allow_nan=False)}
    return save({TENSOR_NAME: vector.direction.contiguous()}, metadata=metadata)


def _write(path: Path, data: bytes) -> None:
    """Write atomically (:func:`timemachine.fs.atomic_write`); nothing is left behind on failure."""
    try:
        fs.atomic_write(path, data)
    except OSError as exc:
        raise AgeVectorError(f"cannot write {printable(path)}: {exc.strerror or first_line(exc)}") from None


def save_vector_file(vector: AgeVector, path: PathLike, force: bool = False) -> Path:
    """Write ``vector`` to ``path`` atomically; an existing file is replaced only with ``force``.

    Raises:
        AlreadyExists: ``path`` exists and ``force`` is False.
        AgeVectorError: ``path`` is not a file, its directory is missing, or the write fails.
    """
    path = Path(path)
    if path.exists() and not force:
        raise AlreadyExists(f"{printable(path)} already exists")
    if path.exists() and not path.is_file():
        raise AgeVectorError(f"{printable(path)} exists and is not a file")
    if not path.parent.is_dir():
        raise AgeVectorError(f"cannot write {printable(path)}: directory {printable(path.parent)} does not exist")
    _write(path, vector_to_bytes(vector))
    return path


def _parse_metadata(text: Any, where: str) -> dict[str, Any]:
    """The ``vector`` JSON object of a file's header, with exactly the known keys."""
    if not isinstance(text, str):
        raise AgeVectorError(f"{where}: the age vector metadata is missing")
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError):    # bad JSON, integers of thousands of digits, deep nesting
        raise AgeVectorError(f"{where}: the age vector metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise AgeVectorError(f"{where}: the age vector metadata is not a JSON object")
    missing = sorted(METADATA_KEYS - set(meta))
    unknown = sorted(set(meta) - METADATA_KEYS - OPTIONAL_METADATA_KEYS)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown {printable(', '.join(unknown), 80)}")
        raise AgeVectorError(f"{where}: malformed age vector metadata ({'; '.join(parts)})")
    return meta


def load_vector_file(path: PathLike) -> AgeVector:
    """Read and validate an age vector file.  Nothing in the file is executed.

    Raises:
        AgeVectorError: missing, too large, not safetensors, wrong tensor name/dtype/shape, non-finite or
        out-of-range values, bad or missing metadata, unsupported version (one sentence; text from the file
        escaped).
    """
    path = Path(path)
    where = printable(path)
    _check_file_size(path, where)
    header, direction, shape = _read_direction(path, where)
    return _vector_from_header(header, direction, shape, where)


def _check_file_size(path: Path, where: str) -> None:
    """``path`` is a file of at most :data:`MAX_FILE_BYTES`."""
    try:
        if not path.is_file():
            raise AgeVectorError(f"no age vector file at {where}")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise AgeVectorError(f"{where} is too large to be an age vector file")
    except OSError as exc:
        raise AgeVectorError(f"cannot read {where}: {exc.strerror or first_line(exc)}") from None


def _read_direction(path: Path, where: str) -> tuple[dict[str, str], torch.Tensor, list[int]]:
    """The header's metadata, the direction and its shape [num_ws, w_dim] from the safetensors file at ``path``.
    The format tag, version, tensor name, dtype and shape are checked before the tensor's data is read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            _check_header(header, list(f.keys()), where)
            tensor_slice = f.get_slice(TENSOR_NAME)
            dtype, shape = tensor_slice.get_dtype(), list(tensor_slice.get_shape())
            _check_layout(dtype, shape, where)
            direction = f.get_tensor(TENSOR_NAME)
    except AgeVectorError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError) as exc:
        raise AgeVectorError(f"{where} is not a readable age vector file ({first_line(exc)})") from None
    return header, direction, shape


def _check_header(header: dict[str, str], keys: list[str], where: str) -> None:
    """The file is an age vector of the version this timemachine reads, holding the one tensor
    :data:`TENSOR_NAME`."""
    if header.get("format") != FILE_FORMAT:
        raise AgeVectorError(f"{where} is a safetensors file but not a timemachine age vector")
    if header.get("format_version") != FILE_FORMAT_VERSION:
        raise AgeVectorError(f"{where}: unsupported age vector format version "
                             f"{quoted(header.get('format_version'), 20)} (this timemachine reads "
                             f"{FILE_FORMAT_VERSION})")
    if keys != [TENSOR_NAME]:
        raise AgeVectorError(f"{where} must hold exactly one tensor {TENSOR_NAME!r}, found "
                             f"{printable(', '.join(sorted(keys)), 80) or 'none'}")


def _check_layout(dtype: str, shape: list[int], where: str) -> None:
    """The direction is float32 [num_ws, w_dim] within :data:`MAX_NUM_WS` x :data:`MAX_W_DIM`."""
    if dtype != "F32":
        raise AgeVectorError(f"{where}: the direction must be float32, not {printable(dtype, 20)}")
    if len(shape) != 2 or not (1 <= shape[0] <= MAX_NUM_WS and 1 <= shape[1] <= MAX_W_DIM):
        raise AgeVectorError(f"{where}: the direction must be [num_ws, w_dim], got {printable(shape, 60)}")


def _vector_from_header(header: dict[str, str], direction: torch.Tensor, shape: list[int], where: str) -> AgeVector:
    """The AgeVector that the header's ``vector`` metadata describes, around ``direction`` (validated by
    :class:`AgeVector`; its errors are prefixed with ``where``)."""
    meta = _parse_metadata(header.get("vector"), where)
    if [meta["num_ws"], meta["w_dim"]] != shape:
        raise AgeVectorError(f"{where}: the metadata says [{printable(meta['num_ws'], 20)}, "
                             f"{printable(meta['w_dim'], 20)}] but the direction is {shape}")
    fields = {k: v for k, v in meta.items() if k not in ("num_ws", "w_dim")}
    try:
        return AgeVector(direction=direction, **fields)
    except AgeVectorError as exc:
        raise AgeVectorError(f"{where}: {exc}", remedy=exc.remedy) from None
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise AgeVectorError(f"{where}: malformed age vector metadata ({first_line(exc)})") from None


# ----------------------------------------------------------------------------------------------------------
# Built-in vectors


def _builtin_root():
    return importlib.resources.files("timemachine.age").joinpath(BUILTIN_DIR)


def _vector_stem(filename: str) -> Optional[str]:
    """The vector name a file called ``filename`` holds (``<name>.safetensors``), or None for any other file
    (temporary files start with '.')."""
    stem = filename[:-len(FILE_SUFFIX)] if filename.endswith(FILE_SUFFIX) else None
    if stem is None or not NAME_RE.fullmatch(stem) or stem.lower().endswith(FILE_SUFFIX):
        return None
    return stem


def _named(vector: AgeVector, name: str) -> AgeVector:
    """``vector`` under the name of its file (a file renamed by hand: the file name is what users type)."""
    return vector if vector.name == name else dataclasses.replace(vector, name=name)


def builtin_names() -> list[str]:
    """Names of the built-in vectors, sorted."""
    try:
        items = list(_builtin_root().iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(stem for stem in (_vector_stem(item.name) for item in items) if stem is not None)


def load_builtin(name: str) -> AgeVector:
    """The built-in vector ``name``, validated like any file."""
    if name not in builtin_names():
        raise AgeVectorError(f"there is no built-in age vector named {quoted(name)} "
                             f"(built-ins: {', '.join(builtin_names()) or 'none'})")
    with importlib.resources.as_file(_builtin_root().joinpath(name + FILE_SUFFIX)) as path:
        return _named(load_vector_file(path), name)


# ----------------------------------------------------------------------------------------------------------
# The library


@dataclasses.dataclass
class LibraryEntry:
    """One vector of the library or of the built-ins: its vector, or why it cannot be read.

    Attributes:
        name:     what users type to use it.
        path:     its file (for built-ins, inside the installed package).
        vector:   the vector, or None when it cannot be read.
        problem:  why it cannot be read (one sentence), else None.
        builtin:  shipped with timemachine (read-only).
        shadowed: a built-in hidden by a library vector of the same name.
    """

    name: str
    path: Path
    vector: Optional[AgeVector]
    problem: Optional[str] = None
    builtin: bool = False
    shadowed: bool = False


def model_keys(fingerprint: Optional[str], zoo: Optional[str] = None) -> list[str]:
    """The keys of the user's default choices for a model: 'fingerprint:<hex>', then 'zoo:<name>' (each when
    known)."""
    return ([f"fingerprint:{fingerprint}"] if fingerprint else []) + ([f"zoo:{zoo}"] if zoo else [])


def binding_keys(vector: AgeVector) -> list[str]:
    """The keys under which :class:`VectorLibrary` records a default choice for the vector's model."""
    return model_keys(vector.model_fingerprint, vector.model_zoo)


class VectorLibrary:
    """The user's age vectors under ``paths.vectors``, changed under the lock ``paths.lock('vectors')``, with
    the built-in vectors beside them (see the module docstring).

    Args:
        paths: where the home directory's files live (:class:`timemachine.env.Paths`); nothing is created
               until a vector is saved.
    """

    def __init__(self, paths: Paths):
        self.root = Path(paths.vectors)
        self.lock_path = Path(paths.lock("vectors"))

    # -- where -------------------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """Where the library keeps the vector called ``name`` (which must be a valid name)."""
        return self.root / f"{check_vector_name(name)}{FILE_SUFFIX}"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with fs.file_lock(self.lock_path, busy=lambda: AgeVectorError(
                "the age vector library is busy (another process holds its lock)")):
            yield

    def _library_file(self, name: str) -> Path:
        path = self.path(name)
        if not path.is_file():
            if name in builtin_names():
                raise AgeVectorError(f"{quoted(name)} is a built-in age vector, which cannot be changed; copy it "
                                     "into the library to tune it")
            raise AgeVectorError(f"no age vector named {quoted(name)} in the library ({printable(self.root)})")
        return path

    def _library_names(self) -> list[str]:
        try:
            items = sorted(self.root.iterdir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise AgeVectorError(f"cannot read the age vector library {printable(self.root)}: "
                                 f"{exc.strerror or first_line(exc)}") from None
        return [stem for stem in (_vector_stem(path.name) for path in items) if stem is not None]

    # -- reading -----------------------------------------------------------------------------------------
    def entries(self, builtins: bool = False) -> list[LibraryEntry]:
        """Every ``<name>.safetensors`` of the library (and with ``builtins`` every built-in), sorted by name,
        library first; a file that cannot be read is listed with its problem, never raised."""
        entries = []
        for name in self._library_names():
            path = self.root / f"{name}{FILE_SUFFIX}"
            try:
                if not path.is_file():
                    continue
                vector = load_vector_file(path)
            except AgeVectorError as exc:
                entries.append(LibraryEntry(name, path, None, str(exc)))
                continue
            except (OSError, MemoryError, RecursionError, ValueError) as exc:   # never let one file stop a listing
                entries.append(LibraryEntry(name, path, None, f"cannot read {printable(path)} ({first_line(exc)})"))
                continue
            entries.append(LibraryEntry(name, path, _named(vector, name)))
        if builtins:
            taken = {entry.name for entry in entries}
            root = _builtin_root()
            for name in builtin_names():
                builtin: Optional[AgeVector] = None
                problem: Optional[str] = None
                try:
                    builtin = load_builtin(name)
                except AgeVectorError as exc:
                    problem = str(exc)
                entries.append(LibraryEntry(name, Path(str(root.joinpath(name + FILE_SUFFIX))), builtin, problem,
                                            builtin=True, shadowed=name in taken))
            entries.sort(key=lambda e: (e.name, e.builtin))
        return entries

    def is_builtin(self, name: str) -> bool:
        """True when ``name`` loads a built-in vector (one that no library vector hides)."""
        return name in builtin_names() and not self.path(name).exists()

    def load(self, name_or_path: PathLike) -> AgeVector:
        """A vector from the library (``name``), the built-ins (``name``, when the library has none so called)
        or a file.

        A spec that contains a path separator or ends in '.safetensors' is a file path; anything else is a
        name.
        """
        spec = os.fspath(name_or_path)
        if "/" in spec or os.sep in spec or spec.lower().endswith(FILE_SUFFIX):
            return load_vector_file(spec)
        if not NAME_RE.fullmatch(spec):
            raise AgeVectorError(f"{quoted(spec)} is neither an age vector name nor a .safetensors file")
        path = self.path(spec)
        if not path.is_file():
            if spec in builtin_names():
                return load_builtin(spec)
            builtin = f" or among the built-ins ({', '.join(builtin_names())})" if builtin_names() else ""
            raise AgeVectorError(f"no age vector named {quoted(spec)} in the library ({printable(self.root)})"
                                 f"{builtin}")
        return _named(load_vector_file(path), spec)

    # -- changing ----------------------------------------------------------------------------------------
    def save(self, vector: AgeVector, force: bool = False) -> Path:
        """Store ``vector`` under ``vector.name``; an existing vector of that name is replaced only with
        ``force`` (:class:`AlreadyExists` otherwise)."""
        path = self.path(vector.name)
        data = vector_to_bytes(vector)
        with self._locked():
            if path.exists() and not force:
                raise AlreadyExists(f"an age vector named {quoted(vector.name)} already exists")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise AgeVectorError(f"cannot create {printable(path.parent)}: {exc.strerror or first_line(exc)}") \
                    from None
            _write(path, data)
        return path

    def delete(self, name: str) -> Path:
        """Remove a vector from the library (and any default choice naming it); returns the path it had."""
        with self._locked():
            path = self._library_file(name)
            try:
                path.unlink()
            except OSError as exc:
                raise AgeVectorError(f"cannot delete {printable(path)}: {exc.strerror or first_line(exc)}") from None
            self._edit_defaults(lambda table: {k: v for k, v in table.items() if v != name})
        return path

    def rename(self, old: str, new: str, force: bool = False) -> Path:
        """Rename a library vector (its file, the name it records and default choices); returns the new path.

        The vector is written under the new name first, then the old file is removed: an interruption leaves
        both, never neither.
        """
        check_vector_name(new)
        with self._locked():
            old_path = self._library_file(old)
            new_path = self.path(new)
            if new_path.exists() and not force and old_path != new_path:
                raise AlreadyExists(f"an age vector named {quoted(new)} already exists")
            vector = dataclasses.replace(load_vector_file(old_path), name=new)
            _write(new_path, vector_to_bytes(vector))
            if old_path != new_path and old_path.exists():
                old_path.unlink()
            self._edit_defaults(lambda table: {k: (new if v == old else v) for k, v in table.items()})
        return new_path

    def update(self, name: str, *, strength: Optional[float] = None, layers: Optional[str] = None,
               species: Optional[str] = None, notes: Optional[str] = None) -> AgeVector:
        """Tune a library vector's defaults (and descriptive fields); the direction is not touched.

        ``layers`` is checked against the vector's num_ws.  Built-ins are read-only.  Returns the updated vector.
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
            raise AgeVectorError("nothing to change: give a strength, layers, a species or notes")
        with self._locked():
            path = self._library_file(name)
            vector = dataclasses.replace(load_vector_file(path), name=name, **changes)  # validates
            _write(path, vector_to_bytes(vector))
        return vector

    def export(self, name: str, path: PathLike, force: bool = False) -> Path:
        """Copy a library or built-in vector to a file (validated on the way)."""
        return save_vector_file(self.load(check_vector_name(name)), path, force=force)

    def import_file(self, path: PathLike, name: Optional[str] = None, force: bool = False) -> AgeVector:
        """Validate an age vector file and add it to the library, as ``name`` or under the name it records."""
        vector = load_vector_file(path)
        if name is not None:
            vector = dataclasses.replace(vector, name=check_vector_name(name))
        self.save(vector, force=force)
        return vector

    def copy(self, source: str, new: str, force: bool = False) -> AgeVector:
        """Copy a built-in or library vector into the library as ``new`` (to tune it); returns the copy.

        The copy keeps the direction, the binding and the defaults, and records where it came from in
        ``details['copied_from']``.
        """
        check_vector_name(new)
        builtin = self.is_builtin(check_vector_name(source))
        vector = self.load(source)
        details = dict(vector.details)
        details["copied_from"] = {"name": source, "builtin": builtin}
        copy = dataclasses.replace(vector, name=new, details=details)
        self.save(copy, force=force)
        return copy

    # -- defaults ----------------------------------------------------------------------------------------
    @property
    def defaults_path(self) -> Path:
        return self.root / DEFAULTS_FILE

    def defaults(self) -> dict[str, str]:
        """The user's default choices: {'fingerprint:<hex>' or 'zoo:<name>': vector name}."""
        path = self.defaults_path
        where = printable(path)
        try:
            if not path.is_file():
                return {}
            if path.stat().st_size > MAX_DEFAULTS_BYTES:
                raise AgeVectorError(f"{where} is too large; move it away to forget the default vectors")
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise AgeVectorError(f"{where} is damaged ({first_line(exc)}); move it away to forget the default "
                                 "vectors") from None
        table = data.get("defaults") if isinstance(data, dict) and data.get("version") == DEFAULTS_VERSION else None
        if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) and NAME_RE.fullmatch(v)
                                                  for k, v in table.items()):
            raise AgeVectorError(f"{where} is damaged (not a table of default vectors); move it away to forget "
                                 "the default vectors")
        return dict(table)

    def _edit_defaults(self, change) -> None:
        """Rewrite defaults.json with ``change(table)`` (call with the lock held); no file while empty."""
        before = self.defaults()
        after = change(dict(before))
        if after == before:
            return
        try:
            if after or self.defaults_path.exists():
                self.root.mkdir(parents=True, exist_ok=True)
                fs.write_json(self.defaults_path, {"version": DEFAULTS_VERSION, "defaults": after})
        except OSError as exc:
            raise AgeVectorError(f"cannot write {printable(self.defaults_path)}: {exc.strerror or first_line(exc)}") \
                from None

    def set_default(self, name: str) -> AgeVector:
        """Make ``name`` (a library or built-in vector) the default vector of the model it is bound to."""
        vector = self.load(check_vector_name(name))
        keys = binding_keys(vector)
        with self._locked():
            self._edit_defaults(lambda table: {**table, **{key: name for key in keys}})
        return vector

    def default_names(self) -> set[str]:
        """Names that are some model's default: the user's choices, and the built-in defaults of zoo models
        the user chose none for."""
        chosen = self.defaults()
        names = set(chosen.values())
        for zoo, name in BUILTIN_DEFAULTS.items():
            if f"zoo:{zoo}" not in chosen and name in builtin_names():
                names.add(name)
        return names

    def default_vector(self, fingerprint: str, zoo: Optional[str] = None) -> Optional[tuple[AgeVector, str]]:
        """The model's default vector and why it is the default, or None when the model has none.

        Looked up by the model's fingerprint, then (for a model loaded under a zoo name, its file checked
        against the zoo's SHA-256) by its zoo name, then :data:`BUILTIN_DEFAULTS`.  A choice the user made that
        can no longer be used (deleted by hand, damaged, another model's) raises :class:`AgeVectorError`
        instead of falling back silently.

        Returns:
            (vector, 'chosen') for the user's choice, (vector, 'built-in') for a built-in default; or None.
        """
        chosen = self.defaults()
        keys = model_keys(fingerprint, zoo)
        for key in keys:
            if key in chosen:
                name = chosen[key]
                try:
                    vector = self.load(name)
                    vector.check_model(fingerprint, zoo=zoo)
                except AgeVectorError as exc:
                    raise AgeVectorError(f"the default age vector chosen for this model, {quoted(name)}, cannot be "
                                         f"used ({exc}); mark another one as the default") from None
                return vector, "chosen"
        if zoo and zoo in BUILTIN_DEFAULTS and BUILTIN_DEFAULTS[zoo] in builtin_names():
            vector = load_builtin(BUILTIN_DEFAULTS[zoo])
            vector.check_model(fingerprint, zoo=zoo)
            return vector, "built-in"
        return None
