"""What is on disk: the state of every zoo entry, re-verification of every local file, and removal.

Files considered (under the home directory)::

    models/<filename>            zoo downloads (afhqdog.pkl, vgg16-397923af.pth ...)
    models/<filename>.part       an interrupted download (and .part.json), resumed by the next download
    models/from-url/<id>-<name>  files downloaded from a URL spec
    models/imported/<name>.*     copies of imported models (or the user's file in place, see the registry)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from timemachine.errors import WeightsError, quoted
from timemachine.zoo import registry, state
from timemachine.zoo.download import discard, download_lock
from timemachine.zoo.manifest import ZooEntry, is_url, lookup
from timemachine.zoo.registry import ImportedModel
from timemachine.zoo.resolve import zoo_path
from timemachine.zoo.trust import Checksums, VerifyResult, verify_file

VERIFIED, UNVERIFIED, PARTIAL, MISSING = "verified", "unverified", "partial", "missing"


@dataclasses.dataclass(frozen=True)
class LocalStatus:
    """What is on disk for a zoo entry: ``state`` is 'verified', 'unverified', 'partial' or 'missing'."""

    entry: ZooEntry
    path: Path
    state: str
    size: Optional[int]  # bytes on disk (or of the .part file), else the published or recorded size


def zoo_status(checksums: Checksums, manifest: dict[str, ZooEntry]) -> list[LocalStatus]:
    """Local state of every zoo entry, in manifest order, from file stats and records only (nothing is hashed)."""
    return [_status(checksums, entry) for entry in manifest.values()]


def _status(checksums: Checksums, entry: ZooEntry) -> LocalStatus:
    path = zoo_path(checksums.paths, entry)
    part = path.with_name(path.name + ".part")
    if path.is_file():
        expected = checksums.expected(path, entry.url, entry.sha256)
        verdict = VERIFIED if checksums.stamp_valid(path, expected) else UNVERIFIED
        return LocalStatus(entry, path, verdict, path.stat().st_size)
    if part.is_file():
        return LocalStatus(entry, path, PARTIAL, part.stat().st_size)
    return LocalStatus(entry, path, MISSING, entry.size or (checksums.get(path) or {}).get("size"))


def _verify_entry(checksums: Checksums, entry: ZooEntry) -> VerifyResult:
    return verify_file(checksums, entry.name, zoo_path(checksums.paths, entry), entry.url, entry.sha256,
                       "published" if entry.sha256 else "recorded")


def _verify_import(checksums: Checksums, model: ImportedModel) -> VerifyResult:
    return verify_file(checksums, model.name, model.path, model.origin, model.sha256, "import")


def verify(checksums: Checksums, manifest: dict[str, ZooEntry], name: Optional[str] = None) -> list[VerifyResult]:
    """Re-hash local files against the manifest or the recorded digests.

    ``name``: one zoo or imported model (its result says 'missing' when its file is absent); None = every zoo
    file present, every imported model and every file downloaded from a URL spec.

    Raises:
        WeightsError: ``name`` is neither a zoo nor an imported model.
    """
    imported = registry.imported_models(checksums.paths)
    if name is not None:
        if name in manifest:
            return [_verify_entry(checksums, manifest[name])]
        if name in imported:
            return [_verify_import(checksums, imported[name])]
        raise WeightsError(f"no zoo or imported model named {quoted(name)}")
    results = [_verify_entry(checksums, entry) for entry in manifest.values()
               if zoo_path(checksums.paths, entry).is_file()]
    results += [_verify_import(checksums, model) for model in imported.values()]
    return results + _verify_url_downloads(checksums)


def _verify_url_downloads(checksums: Checksums) -> list[VerifyResult]:
    url_dir = checksums.paths.models / "from-url"
    results = []
    for key, record in sorted(checksums.all().items()):
        path = state.key_path(checksums.paths, key)
        if path.parent == url_dir and isinstance(record, dict) and is_url(str(record.get("origin", ""))):
            results.append(verify_file(checksums, record["origin"], path, record["origin"], None, "recorded"))
    return results


def remove(checksums: Checksums, manifest: dict[str, ZooEntry], name: str) -> list[Path]:
    """Forget an imported model (deleting timemachine's copy, never the user's file) or delete a downloaded zoo
    file with its partial download.

    The checksum record goes too, so a zoo model whose server copy legitimately changed can be fetched again.
    Returns the files deleted.

    Raises:
        WeightsError: ``name`` is neither an imported nor a zoo model; another process is downloading it.
    """
    imported = registry.imported_models(checksums.paths)
    if name in imported:
        return registry.forget(checksums.paths, checksums, imported[name])
    path = zoo_path(checksums.paths, lookup(manifest, name))
    deleted = []
    with download_lock(checksums.paths, path, name):
        for candidate in (path, path.with_name(path.name + ".part"), path.with_name(path.name + ".part.json")):
            if candidate.exists():
                discard(candidate)
                deleted.append(candidate)
        checksums.put(path, None)
    return deleted
