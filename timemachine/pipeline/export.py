"""Copying a finished video out of the video store into a directory of the user's, file by file, atomically.

A job run on a queue worker renders into the shared video store (:mod:`timemachine.pipeline.videos`); a face
that was asked for an output directory (``timemachine run --out DIR``) copies the result there, so the
directory holds the same files a local run writes: the video, the GIF, before/after, the latent, run.json
(and the side-by-side video, the PNG frames, the PTI weights when asked for).  The store's own bookkeeping
(entry.json, the strip frames) stays in the store.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Union

from timemachine.fs import PendingFile
from timemachine.pipeline.videos import AgeVideoResult


def _copy_file(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with PendingFile(target) as pending, open(source, "rb") as src, pending.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def export_video(result: AgeVideoResult, out_dir: Union[str, os.PathLike]) -> AgeVideoResult:
    """Copy the files of ``result`` into ``out_dir`` under the names run.json gives them (each file written
    atomically; run.json last, so a directory with run.json is complete).  Returns the result with its files
    pointing into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = result.run_info.get("files", {})
    files: dict[str, str] = {}
    for kind in sorted(result.files, key=lambda k: k == "run"):
        source = Path(result.files[kind])
        relative = names.get(kind, source.name)
        if os.path.isabs(relative) or ".." in Path(relative).parts:
            relative = source.name
        target = out / relative
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            for item in sorted(source.iterdir()):
                if item.is_file():
                    _copy_file(item, target / item.name)
        else:
            _copy_file(source, target)
        files[kind] = str(target)
    return dataclasses.replace(result, files=files, key=None)
