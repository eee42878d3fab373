"""From a name or a ``--model`` spec to a verified local file, downloading it when needed and allowed.

A *model spec* (what users type after ``--model``) is one of, in this order:

* an ``http(s)://`` URL: downloaded once into ``models/from-url/`` under a name derived from the URL
  (:func:`url_cache_path`), its digest trusted on first use;
* a local file: an official network pickle or a timemachine ``.safetensors`` file, used as it is;
* a zoo name of kind ``generator`` (``afhqdog``, ``afhqcat``, ``afhqwild``): downloaded once into ``models/``;
* the name of an imported model (:mod:`timemachine.zoo.registry`).

Other zoo entries (the VGG16 backbone, CLIP, keypoint detectors) are not models: they are fetched by name with
:func:`ensure_zoo_file`.  Every file returned has been checked against its published or recorded digest
(:func:`timemachine.zoo.trust.check_file`; cheap when it has not changed since it last verified).
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from pathlib import Path
from typing import Optional, Union

from timemachine.env import Paths
from timemachine.errors import WeightsError, quoted
from timemachine.zoo import registry
from timemachine.zoo.download import Downloader, ProgressCallback
from timemachine.zoo.manifest import GENERATOR, ZooEntry, is_url, shown
from timemachine.zoo.registry import ImportedModel
from timemachine.zoo.trust import Checksums, check_file

#: File name endings that make a spec a path even when no such file exists.
_NETWORK_SUFFIXES = (".pkl", ".pickle", ".safetensors", ".pt", ".pth")


def zoo_path(paths: Paths, entry: ZooEntry) -> Path:
    """Where the zoo file lives (or will live) locally: ``models/<filename>``; also where users may put it by
    hand."""
    return paths.models / entry.filename


def url_cache_path(paths: Paths, url: str) -> Path:
    """Cache path of a file downloaded from a URL spec: ``models/from-url/<12 hex of sha256(url)>-<name>``."""
    basename = os.path.basename(urllib.parse.urlsplit(url).path) or "download"
    basename = re.sub(r"[^A-Za-z0-9_.-]", "_", basename)[-80:].lstrip(".") or "download"
    return paths.models / "from-url" / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{basename}"


def ensure_zoo_file(downloader: Downloader, entry: ZooEntry, *, force: bool = False,
                    progress: Optional[ProgressCallback] = None) -> Path:
    """Local path of a zoo file of any kind, downloaded and verified if needed (``force``: download again even
    when a verified copy is present; it replaces the copy only once the new one verified).

    Raises:
        WeightsError: the local copy differs from the published or recorded digest (without ``force``), or
            the download failed (see :func:`timemachine.zoo.download.download_file`).
    """
    dest = zoo_path(downloader.paths, entry)
    if dest.is_file() and not force:
        check_file(downloader.checksums, dest, origin=entry.url, published_sha256=entry.sha256,
                   published_size=entry.size, label=entry.name,
                   fix="the copy here is not the published file: download it again (replacing it) or delete it")
        return dest
    return downloader.fetch(entry.url, dest, sha256=entry.sha256, size=entry.size, label=entry.name,
                            progress=progress)


def resolve_model(downloader: Downloader, manifest: dict[str, ZooEntry], spec: Union[str, os.PathLike], *,
                  progress: Optional[ProgressCallback] = None) -> Path:
    """Local path of the generator a ``--model`` spec names (see the module docstring for the order).

    Raises:
        WeightsError: unknown name, a zoo entry that is not a generator, missing file, offline with nothing
            local, download or checksum failure.
    """
    spec = os.fspath(spec)
    if is_url(spec):
        return _resolve_url(downloader, spec, progress)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if spec in manifest:
        entry = manifest[spec]
        if entry.kind != GENERATOR:
            raise WeightsError(f"{spec} is not a generator ({shown(entry.description)}); choose one of "
                               f"{', '.join(_generators(manifest))}")
        return ensure_zoo_file(downloader, entry, progress=progress)
    imported = registry.imported_models(downloader.paths)
    if spec in imported:
        return imported_path(downloader.checksums, imported[spec])
    raise _not_a_model(spec, path, manifest, imported)


def _resolve_url(downloader: Downloader, url: str, progress: Optional[ProgressCallback]) -> Path:
    dest = url_cache_path(downloader.paths, url)
    if not dest.is_file():
        return downloader.fetch(url, dest, label=url, progress=progress)
    check_file(downloader.checksums, dest, origin=url, label=shown(url),
               fix=f"delete it to download it again (it was recorded from {shown(url)} at the first download)")
    return dest


def _generators(manifest: dict[str, ZooEntry]) -> list[str]:
    return [name for name, entry in manifest.items() if entry.kind == GENERATOR]


def _not_a_model(spec: str, path: Path, manifest: dict[str, ZooEntry],
                 imported: dict[str, ImportedModel]) -> WeightsError:
    """The error for a spec that names nothing: a directory, a missing file, or an unknown name."""
    if path.exists():
        return WeightsError(f"{shown(path)} is a directory, not a network file")
    if os.sep in spec or "/" in spec or path.suffix.lower() in _NETWORK_SUFFIXES:
        return WeightsError(f"no network file at {shown(path)}")
    return WeightsError(f"unknown model {quoted(spec)}: it is not a file, a zoo model "
                        f"({', '.join(_generators(manifest))}) or an imported model "
                        f"({', '.join(imported) or 'none yet'})")


def imported_path(checksums: Checksums, model: ImportedModel) -> Path:
    """The file of an imported model, checked against the digest recorded at import.

    Raises:
        WeightsError: the file is gone or changed since it was imported.
    """
    if not model.path.is_file():
        how = "its copy" if model.copied else "the file it was imported from"
        raise WeightsError(f"imported model {quoted(model.name)}: {how} is gone ({shown(model.path)}); import it "
                           "again")
    check_file(checksums, model.path, origin=model.origin, published_sha256=model.sha256,
               label=f"imported model {quoted(model.name)}",
               fix="the file changed since it was imported; import it again")
    return model.path


def vgg16_path(downloader: Downloader, entry: ZooEntry, *, progress: Optional[ProgressCallback] = None) -> Path:
    """Path of torchvision's ImageNet VGG16 weights (the LPIPS backbone, zoo ``entry``), verified; downloads
    when allowed.

    A verified copy in torch's own hub cache (``torch.hub.get_dir()/checkpoints``) is used in place, so users
    of torchvision do not fetch 528 MiB twice; a damaged one there is left alone and ours is fetched instead.
    Load the file with ``torch.load(path, weights_only=True)``.
    """
    if not zoo_path(downloader.paths, entry).is_file():
        hub_copy = _torch_hub_checkpoint(entry.filename)
        if hub_copy is not None:
            try:
                check_file(downloader.checksums, hub_copy, origin=entry.url, published_sha256=entry.sha256,
                           published_size=entry.size)
                return hub_copy
            except (WeightsError, OSError):
                pass  # a damaged copy in torch's cache is not ours to repair: fetch our own
    return ensure_zoo_file(downloader, entry, progress=progress)


def _torch_hub_checkpoint(filename: str) -> Optional[Path]:
    import torch.hub

    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return path if path.is_file() else None
