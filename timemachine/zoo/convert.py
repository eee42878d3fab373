"""Conversion of a generator into timemachine's safe format: a ``.safetensors`` file (tensors plus a JSON
configuration in the header; no pickle, nothing executable), checked to be the same network after reloading."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Union

from timemachine import __version__
from timemachine.errors import AlreadyExists, WeightsError
from timemachine.zoo.download import discard
from timemachine.zoo.manifest import shown
from timemachine.zoo.trust import sha256_file


@dataclasses.dataclass(frozen=True)
class ConvertResult:
    source: Path
    path: Path
    fingerprint: str   # checkpoint.model_fingerprint, identical for source and result


def check_destination(dst: Union[str, os.PathLike], *, force: bool = False) -> Path:
    """The absolute path to convert into, refused before any work if it cannot be written.

    Raises:
        WeightsError: the name does not end in ``.safetensors``, or its directory does not exist.
        AlreadyExists: ``dst`` exists and ``force`` is False (remedy REPLACE).
    """
    dst = Path(dst).expanduser().absolute()
    if dst.suffix != ".safetensors":
        raise WeightsError(f"the converted file's name must end in .safetensors (got {shown(dst.name)})")
    if dst.exists() and not force:
        raise AlreadyExists(f"{shown(dst)} already exists")
    if not dst.parent.is_dir():
        raise WeightsError(f"cannot write {shown(dst)}: directory {shown(dst.parent)} does not exist")
    return dst


def write_safetensors(source: Path, dst: Path) -> ConvertResult:
    """Write the generator in the network file ``source`` to ``dst`` (see :func:`check_destination`).

    The file is written atomically; it is then loaded back and must give the same
    :func:`~timemachine.checkpoint.model_fingerprint` as the source.  Its header records the source's name and
    SHA-256, the fingerprint and the timemachine version.

    Raises:
        WeightsError: ``dst`` cannot be written.
        CheckpointError: the source is not a loadable generator.
    """
    from timemachine.checkpoint import load_generator, model_fingerprint, save_generator

    G = load_generator(source, device="cpu")
    fingerprint = model_fingerprint(G)
    metadata = {"source_file": source.name, "source_sha256": sha256_file(source), "fingerprint": fingerprint,
                "converted_by": f"timemachine {__version__}"}
    try:
        save_generator(G, dst, extra_metadata=metadata)
    except OSError as exc:
        raise WeightsError(f"cannot write {shown(dst)}: {exc.strerror or exc}") from None
    if model_fingerprint(load_generator(dst, device="cpu")) != fingerprint:
        discard(dst)
        raise AssertionError(f"the converted file {dst} does not reproduce its source (bug); it was deleted")
    return ConvertResult(source=source, path=dst, fingerprint=fingerprint)
