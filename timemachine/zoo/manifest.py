"""The model-zoo manifest: the networks timemachine knows by name, where they come from, and their licences.

The manifest is ``manifest.json`` beside this module (installed with the package), or another file named by
the environment (``Environment.manifest``, from ``TIMEMACHINE_MANIFEST``).  Its ``models`` table maps a name
(letters, digits, '.', '_', '-'; at most 64 characters) to an entry:

==============  ===========================================================================================
field           meaning
==============  ===========================================================================================
``kind``        ``generator`` (usable as ``--model NAME``), ``backbone`` (VGG16, the feature network of
                LPIPS), ``clip`` (a CLIP model) or ``keypoints`` (an animal keypoint detector)
``description`` one line for listings
``url``         where the file is downloaded from (http or https)
``filename``    its name in the models directory (same character set as names)
``size``        bytes, or ``null`` when nobody publishes it
``sha256``      64 lowercase hex digits, or ``null`` when nobody publishes it: the digest is then recorded at
                the first download and checked ever after (trust on first use, :mod:`timemachine.zoo.trust`)
``source``      where each published figure came from
``licence``     ``name``, one-line ``summary`` and ``url``; shown before every download
==============  ===========================================================================================

The AFHQ generators are NVIDIA's, under the NVIDIA Source Code License-NC: non-commercial use only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Optional, Union

from timemachine.errors import WeightsError, printable, quoted
from timemachine.settings import NAME_RE

PathLike = Union[str, os.PathLike]

GENERATOR = "generator"
BACKBONE = "backbone"
CLIP = "clip"
KEYPOINTS = "keypoints"
#: Every kind an entry may have.  Only generators are models (``--model``); the others are fetched by name.
KINDS = (GENERATOR, BACKBONE, CLIP, KEYPOINTS)
#: The zoo name of torchvision's ImageNet VGG16 (the LPIPS backbone).
VGG16 = "vgg16"

#: Names of entries, of their files and of imported models.
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_TEXT_FIELDS = ("kind", "description", "url", "filename", "source")
_LICENCE_FIELDS = ("name", "summary", "url")


@dataclasses.dataclass(frozen=True)
class Licence:
    name: str
    summary: str
    url: str

    def __str__(self) -> str:
        return f"{self.name}: {self.summary} ({self.url})"


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One network of the manifest.

    ``kind`` is one of :data:`KINDS`; ``size`` (bytes) and ``sha256`` (64 hex digits) are None where nobody
    publishes them; ``source`` says where the published figures come from.
    """

    name: str
    kind: str
    description: str
    url: str
    filename: str
    size: Optional[int]
    sha256: Optional[str]
    source: str
    licence: Licence


def shown(text: object) -> str:
    """A path or URL as the zoo's messages show it: control characters escaped, at most 2000 characters (a
    URL to fetch by hand must stay whole)."""
    return printable(os.fspath(text) if isinstance(text, os.PathLike) else text, 2000)


def is_url(spec: str) -> bool:
    """True for an http(s) URL (the only ones timemachine downloads)."""
    return spec.startswith(("http://", "https://"))


def installed_manifest() -> Path:
    """The manifest shipped with the package (``timemachine/zoo/manifest.json``)."""
    return Path(__file__).resolve().with_name("manifest.json")


def load_manifest(path: Optional[PathLike] = None) -> dict[str, ZooEntry]:
    """Read and validate a manifest (default: :func:`installed_manifest`); returns ``{name: ZooEntry}``.

    Raises:
        WeightsError: the file cannot be read, is not JSON, or an entry is malformed (one sentence naming it).
    """
    path = Path(path) if path is not None else installed_manifest()
    where = shown(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WeightsError(f"cannot read the model manifest {where}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WeightsError(f"the model manifest {where} is not valid JSON: {exc}") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise WeightsError(f"the model manifest {where} has no 'models' table")
    return {name: _parse_entry(name, item, where) for name, item in models.items()}


def lookup(manifest: dict[str, ZooEntry], name: str) -> ZooEntry:
    """``manifest[name]``, or a WeightsError listing what the zoo has."""
    try:
        return manifest[name]
    except KeyError:
        raise WeightsError(f"the model zoo has no {quoted(name)} (it has {', '.join(manifest)})") from None


def _parse_entry(name: str, item: object, where: str) -> ZooEntry:
    problem = _entry_problem(name, item)
    if problem:
        raise WeightsError(f"the model manifest {where}: entry {quoted(name)} {problem}")
    assert isinstance(item, dict)
    licence = item["licence"]
    return ZooEntry(name=name, kind=item["kind"], description=item["description"], url=item["url"],
                    filename=item["filename"], size=item.get("size"), sha256=item.get("sha256"),
                    source=item["source"], licence=Licence(licence["name"], licence["summary"], licence["url"]))


def _entry_problem(name: str, item: object) -> Optional[str]:
    """What is wrong with a manifest entry (a phrase), or None."""
    if not NAME_RE.fullmatch(name):
        return "has an invalid name"
    if not isinstance(item, dict):
        return "is not a table"
    for key in _TEXT_FIELDS:
        if not isinstance(item.get(key), str) or not item[key]:
            return f"lacks a text field {quoted(key)}"
    return _field_problem(item)


def _field_problem(item: dict) -> Optional[str]:
    """What is wrong with the values of an entry that has every text field, or None."""
    size, sha256, licence = item.get("size"), item.get("sha256"), item.get("licence")
    checks = (
        (item["kind"] in KINDS, f"has unknown kind {quoted(item['kind'])}"),
        (is_url(item["url"]), "has a URL that is not http(s)"),
        (bool(NAME_RE.fullmatch(item["filename"])), "has a file name with forbidden characters"),
        (size is None or (isinstance(size, int) and not isinstance(size, bool) and size > 0),
         "has a size that is not a positive integer or null"),
        (sha256 is None or (isinstance(sha256, str) and bool(_SHA256_RE.fullmatch(sha256))),
         "has a sha256 that is not 64 lowercase hex digits or null"),
        (isinstance(licence, dict) and all(isinstance(licence.get(k), str) for k in _LICENCE_FIELDS),
         "lacks a licence with name, summary and url"),
    )
    return next((problem for ok, problem in checks if not ok), None)
