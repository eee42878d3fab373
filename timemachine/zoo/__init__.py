"""The model zoo: named networks, the local cache, verified downloads, imported models and conversion.

:class:`Zoo` is what callers use: built from an :class:`~timemachine.env.Environment` (home directory, offline
switch, manifest override), its methods are the operations the faces need.  The work is done by one module per
job:

* :mod:`~timemachine.zoo.manifest`  the manifest (``manifest.json`` beside it): entries, kinds, licences;
* :mod:`~timemachine.zoo.trust`     SHA-256 checks, trust on first use, verification stamps (``checksums.json``);
* :mod:`~timemachine.zoo.download`  HTTP downloads with timeouts, retries, resume, disk-space check, locks;
* :mod:`~timemachine.zoo.registry`  imported models (``registry.json``);
* :mod:`~timemachine.zoo.resolve`   a ``--model`` spec or a zoo name -> a verified local file;
* :mod:`~timemachine.zoo.local`     what is on disk: status, re-verification, removal;
* :mod:`~timemachine.zoo.convert`   a generator -> a pickle-free ``.safetensors`` file;
* :mod:`~timemachine.zoo.state`     the JSON state files and their lock.

Where things live, under the home directory (:class:`~timemachine.env.Paths`)::

    models/<filename>            zoo downloads (afhqdog.pkl, vgg16-397923af.pth ...), .part while in flight
    models/from-url/<id>-<name>  files downloaded from a URL spec
    models/imported/<name>.*     copies made by import_model
    checksums.json               SHA-256 of every file timemachine fetched or was given (trust on first use)
    registry.json                imported models
    locks/                       the state lock and one lock per download

Nothing here prints or reads the environment: long operations report through ``progress(done_bytes,
total_bytes_or_None)``, and every error is a one-sentence :class:`~timemachine.errors.TimemachineError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from timemachine.env import Environment
from timemachine.errors import WeightsError, quoted
from timemachine.zoo import convert, local, registry, resolve
from timemachine.zoo.convert import ConvertResult
from timemachine.zoo.download import DEFAULT_SETTINGS, Downloader, DownloadSettings, ProgressCallback, human_bytes
from timemachine.zoo.local import LocalStatus
from timemachine.zoo.manifest import (
    BACKBONE,
    CLIP,
    GENERATOR,
    KEYPOINTS,
    KINDS,
    VGG16,
    Licence,
    ZooEntry,
    is_url,
    load_manifest,
    lookup,
)
from timemachine.zoo.registry import ImportedModel
from timemachine.zoo.trust import Checksums, VerifyResult

__all__ = [
    "Zoo", "ZooEntry", "Licence", "ImportedModel", "LocalStatus", "VerifyResult", "ConvertResult",
    "DownloadSettings", "DEFAULT_SETTINGS", "ProgressCallback", "human_bytes",
    "GENERATOR", "BACKBONE", "CLIP", "KEYPOINTS", "KINDS", "VGG16",
]

PathLike = Union[str, os.PathLike]


class Zoo:
    """The model zoo of one environment.

    Args:
        env:      where files live (``env.paths``), whether the network may be used (``env.offline``) and which
                  manifest to read (``env.manifest``, None = the installed one).
        settings: network timeouts and retries (None: :data:`~timemachine.zoo.download.DEFAULT_SETTINGS`).

    The manifest and the state files are read on every call (other processes change them); constructing a
    Zoo touches no file.
    """

    def __init__(self, env: Environment, settings: Optional[DownloadSettings] = None):
        self.env = env
        self.paths = env.paths
        self.checksums = Checksums(self.paths)
        self.downloader = Downloader(self.checksums, offline=env.offline, settings=settings)

    # ---- what there is

    @property
    def offline(self) -> bool:
        return self.env.offline

    @property
    def models_dir(self) -> Path:
        """Where downloaded and imported networks are kept (``<home>/models``)."""
        return self.paths.models

    def entries(self) -> dict[str, ZooEntry]:
        """The manifest's entries by name.  Raises WeightsError when the manifest is unreadable or malformed."""
        return load_manifest(self.env.manifest)

    def entry(self, name: str) -> ZooEntry:
        """One manifest entry; WeightsError naming what the zoo has when there is none called ``name``."""
        return lookup(self.entries(), name)

    def generators(self) -> dict[str, ZooEntry]:
        """The entries usable as ``--model NAME``."""
        return {name: entry for name, entry in self.entries().items() if entry.kind == GENERATOR}

    def imported(self) -> dict[str, ImportedModel]:
        """Imported models by name."""
        return registry.imported_models(self.paths)

    def status(self) -> list[LocalStatus]:
        """Local state of every zoo entry (from stamps; nothing is hashed)."""
        return local.zoo_status(self.checksums, self.entries())

    def zoo_path(self, entry: Union[str, ZooEntry]) -> Path:
        """Where a zoo entry's file is or will be kept (and where a user may put it by hand)."""
        return resolve.zoo_path(self.paths, entry if isinstance(entry, ZooEntry) else self.entry(entry))

    def url_path(self, url: str) -> Path:
        """Where the file of a URL spec is or will be cached."""
        return resolve.url_cache_path(self.paths, url)

    def path(self, name: str) -> Path:
        """The local path of a zoo model, an imported model or a URL spec, whether or not the file is there.

        Raises:
            WeightsError: ``name`` is none of these.
        """
        manifest = self.entries()
        if name in manifest:
            return resolve.zoo_path(self.paths, manifest[name])
        imported = self.imported()
        if name in imported:
            return imported[name].path
        if is_url(name):
            return self.url_path(name)
        raise WeightsError(f"no zoo or imported model named {quoted(name)}")

    def checksum_record(self, path: Path) -> Optional[dict]:
        """What ``checksums.json`` holds for ``path`` (see :mod:`timemachine.zoo.trust`), or None."""
        return self.checksums.get(path)

    def is_verified(self, path: Path, expected: Optional[str] = None) -> bool:
        """True when ``path`` verified (against ``expected``, if given) and has not changed since."""
        return self.checksums.stamp_valid(path, expected)

    # ---- getting files

    def resolve(self, spec: PathLike, progress: Optional[ProgressCallback] = None) -> Path:
        """The verified local file of the generator a ``--model`` spec names (URL, file, zoo generator name or
        imported name), downloaded if needed and allowed.  See :mod:`timemachine.zoo.resolve`."""
        return resolve.resolve_model(self.downloader, self.entries(), spec, progress=progress)

    def ensure(self, name: str, force: bool = False, progress: Optional[ProgressCallback] = None) -> Path:
        """The verified local file of the zoo entry ``name`` (any kind), downloaded if needed and allowed;
        ``force`` downloads again even when a verified copy is present."""
        return resolve.ensure_zoo_file(self.downloader, self.entry(name), force=force, progress=progress)

    def vgg16_path(self, progress: Optional[ProgressCallback] = None) -> Path:
        """The verified ImageNet VGG16 weights (a copy in torch's hub cache is used in place)."""
        return resolve.vgg16_path(self.downloader, self.entry(VGG16), progress=progress)

    def download(self, url: str, dest: PathLike, *, sha256: Optional[str] = None, size: Optional[int] = None,
                 label: Optional[str] = None, progress: Optional[ProgressCallback] = None) -> Path:
        """Download ``url`` to ``dest``, verified (see :func:`timemachine.zoo.download.download_file`)."""
        return self.downloader.fetch(url, dest, sha256=sha256, size=size, label=label, progress=progress)

    # ---- changing what is here

    def verify(self, name: Optional[str] = None) -> list[VerifyResult]:
        """Re-hash one zoo or imported model, or (None) every local file; see :func:`timemachine.zoo.local.verify`."""
        return local.verify(self.checksums, self.entries(), name)

    def import_model(self, path: PathLike, name: str, *, copy: bool = True, replace: bool = False) -> ImportedModel:
        """Register a network file under ``name``; see :func:`timemachine.zoo.registry.import_model`."""
        return registry.import_model(self.paths, self.checksums, self.entries(), path, name, copy=copy,
                                     replace=replace)

    def remove(self, name: str) -> list[Path]:
        """Forget an imported model or delete a downloaded zoo file; returns the files deleted."""
        return local.remove(self.checksums, self.entries(), name)

    def convert(self, spec: PathLike, dst: PathLike, *, force: bool = False,
                progress: Optional[ProgressCallback] = None) -> ConvertResult:
        """Write the generator ``spec`` names as a ``.safetensors`` file at ``dst`` (checked before anything is
        fetched; ``force`` replaces an existing file).  See :mod:`timemachine.zoo.convert`."""
        target = convert.check_destination(dst, force=force)
        return convert.write_safetensors(self.resolve(spec, progress=progress), target)
