"""Imported models: the user's own network files registered under a name, so that ``--model NAME`` finds them.

``registry.json`` (table ``models``) maps a name to where the file is, whether timemachine owns it (a copy under
``models/imported/<name>.pkl|.safetensors``) or uses the user's file in place, where it was imported from, its
SHA-256 (checked on every load through :mod:`timemachine.zoo.trust`, origin ``import:<name>``), the generator's
fingerprint and when it was imported.  Names follow the manifest's rule and never shadow a zoo name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Optional, Union

from timemachine import fs
from timemachine.env import Paths
from timemachine.errors import AlreadyExists, WeightsError, quoted
from timemachine.zoo import state
from timemachine.zoo.download import check_disk_space, discard
from timemachine.zoo.manifest import NAME_RE, ZooEntry, shown
from timemachine.zoo.trust import Checksums, sha256_file

_TABLE = "models"
_COPY_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class ImportedModel:
    name: str
    path: Path
    copied: bool       # True: a copy under models/imported owned by timemachine; False: the user's file in place
    source: str        # where it was imported from
    sha256: str
    fingerprint: str   # checkpoint.model_fingerprint of the generator
    imported_at: str

    @property
    def origin(self) -> str:
        """The origin of its checksum record."""
        return f"import:{self.name}"


def imported_models(paths: Paths) -> dict[str, ImportedModel]:
    """Every registered model, by name.

    Raises:
        WeightsError: ``registry.json`` is damaged.
    """
    models = {}
    for name, item in state.read_table(paths.registry, _TABLE).items():
        try:
            models[name] = ImportedModel(name=name, path=state.key_path(paths, item["path"]),
                                         copied=bool(item["copied"]), source=str(item["source"]),
                                         sha256=str(item["sha256"]), fingerprint=str(item.get("fingerprint", "")),
                                         imported_at=str(item.get("imported_at", "")))
        except (KeyError, TypeError, AttributeError):
            raise WeightsError(f"{shown(paths.registry)} is damaged (entry {quoted(name)}); move it away to start "
                               "afresh") from None
    return models


def check_model_name(name: str) -> str:
    """A name for an import: letters, digits, '.', '_', '-', starting with a letter or digit, <= 64 chars."""
    if not NAME_RE.fullmatch(name or ""):
        raise WeightsError(f"invalid model name {quoted(name)}: use letters, digits, '.', '_' and '-' (at most 64), "
                           "starting with a letter or digit")
    return name


def import_model(paths: Paths, checksums: Checksums, manifest: dict[str, ZooEntry],
                 path: Union[str, os.PathLike], name: str, *, copy: bool = True,
                 replace: bool = False) -> ImportedModel:
    """Register a user's network file (official pickle or timemachine safetensors) under ``name``.

    The file is loaded once (safely) to make sure it is a generator.  With ``copy`` (the default) timemachine
    keeps its own copy under ``models/imported/``, so the model keeps working when the original is moved or
    deleted; with ``copy=False`` the file is used where it is, and loading fails clearly if it moves or
    changes.  Either way its SHA-256 is recorded and checked on every later load.

    Raises:
        WeightsError: bad or reserved name, missing file.
        AlreadyExists: the name is taken and ``replace`` is False (remedy REPLACE).
        CheckpointError: the file is not a loadable generator.
    """
    from timemachine.checkpoint import is_safetensors_file, load_generator, model_fingerprint

    check_model_name(name)
    if name in manifest:
        raise WeightsError(f"{quoted(name)} is the name of a zoo model; choose another name")
    source = Path(path).expanduser().absolute()
    if not source.is_file():
        raise WeightsError(f"no network file at {shown(source)}")
    if name in imported_models(paths) and not replace:
        raise AlreadyExists(f"a model named {quoted(name)} is already imported")
    fingerprint = model_fingerprint(load_generator(source, device="cpu"))
    if copy:
        suffix = ".safetensors" if is_safetensors_file(source) else ".pkl"
        stored = paths.models / "imported" / f"{name}{suffix}"
        digest = _copy_with_digest(source, stored)
    else:
        stored, digest = source, sha256_file(source)
    old = _register(paths, name, {"path": state.record_key(paths, stored), "copied": copy, "source": str(source),
                                  "sha256": digest, "fingerprint": fingerprint, "imported_at": state.now()})
    if old and old.get("path") != state.record_key(paths, stored):  # replaced by a file stored elsewhere
        _drop_file(checksums, state.key_path(paths, old["path"]), bool(old.get("copied")))
    model = imported_models(paths)[name]
    checksums.record_verified(stored, digest, model.origin, trust="import")
    return model


def forget(paths: Paths, checksums: Checksums, model: ImportedModel) -> list[Path]:
    """Unregister ``model``, forget its checksum and delete timemachine's copy (never the user's file).
    Returns the files deleted."""
    with state.state_lock(paths):
        registry = state.read_table(paths.registry, _TABLE)
        registry.pop(model.name, None)
        state.write_table(paths.registry, _TABLE, registry)
    return _drop_file(checksums, model.path, model.copied)


def _register(paths: Paths, name: str, item: dict) -> Optional[dict]:
    """Set the registry's entry ``name``; returns the one it replaced, if any."""
    with state.state_lock(paths):
        registry = state.read_table(paths.registry, _TABLE)
        old = registry.get(name)
        registry[name] = item
        state.write_table(paths.registry, _TABLE, registry)
    return old if isinstance(old, dict) else None


def _drop_file(checksums: Checksums, path: Path, owned: bool) -> list[Path]:
    """Forget the checksum of ``path`` and, if timemachine ``owned`` it, delete it; returns what was deleted."""
    checksums.put(path, None)
    if owned and path.exists():
        discard(path)
        return [path]
    return []


def _copy_with_digest(source: Path, dest: Path) -> str:
    """Copy ``source`` to ``dest`` atomically; returns the SHA-256 of what was copied."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    check_disk_space(dest.parent, source.stat().st_size, shown(source.name))
    digest = hashlib.sha256()
    with fs.PendingFile(dest) as pending:
        with open(source, "rb") as fin, pending.open("wb") as fout:
            for chunk in iter(lambda: fin.read(_COPY_CHUNK), b""):
                digest.update(chunk)
                fout.write(chunk)
    return digest.hexdigest()
