"""The environment, read once at the edge: where timemachine keeps its files and which switches are set.

The faces (CLI, UI, worker) call :meth:`Environment.from_environ` once and pass the result down; nothing below
the pipeline reads ``os.environ`` (the CUDA ops package ``stylegan_ops`` keeps its own build switches).

Variables::

    TIMEMACHINE_HOME             where models, vectors and caches live (default: the user data directory,
                                 ~/.local/share/timemachine on Linux)
    TIMEMACHINE_OFFLINE          1/true/yes/on: never use the network
    TIMEMACHINE_MANIFEST         another model-zoo manifest (JSON) instead of the installed one
    TIMEMACHINE_MODEL            the default model spec (CLI --model, the UI's first choice)
    TIMEMACHINE_DEVICE           'auto', 'cpu', 'cuda', 'cuda:N'
    TIMEMACHINE_VGG_WEIGHTS      a VGG16 file, or 'random' (tests and benchmarks only, asked for by name)
    TIMEMACHINE_CLIP_WEIGHTS     a CLIP checkpoint, or 'random' (likewise)
    TIMEMACHINE_CPU_MALLOC_TUNING  0: leave glibc's allocator as it is
    TIMEMACHINE_BROKER_URL       redis://... : send jobs to Celery workers instead of running them in-process
    TIMEMACHINE_UI_SERVER_MODELS 1: the UI may load models by server path (only under the models directory)

Layout under the home directory (:class:`Paths`)::

    models/                      zoo downloads, models/from-url/, models/imported/
    checksums.json, registry.json  trust-on-first-use digests, imported models
    vectors/<name>.safetensors   the age-vector library
    cache/projections/           projection store
    cache/ui-videos/             the UI's finished videos
    cache/discovery/             rendered and labelled samples of direction discovery
    cache/results/               latents with tuned weights passed between a face and queue workers
    locks/                       inter-process locks
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping, Optional

ENV_HOME = "TIMEMACHINE_HOME"
ENV_OFFLINE = "TIMEMACHINE_OFFLINE"
ENV_MANIFEST = "TIMEMACHINE_MANIFEST"
ENV_MODEL = "TIMEMACHINE_MODEL"
ENV_DEVICE = "TIMEMACHINE_DEVICE"
ENV_VGG_WEIGHTS = "TIMEMACHINE_VGG_WEIGHTS"
ENV_CLIP_WEIGHTS = "TIMEMACHINE_CLIP_WEIGHTS"
ENV_MALLOC_TUNING = "TIMEMACHINE_CPU_MALLOC_TUNING"
ENV_BROKER_URL = "TIMEMACHINE_BROKER_URL"
ENV_UI_SERVER_MODELS = "TIMEMACHINE_UI_SERVER_MODELS"

_FALSE = ("", "0", "false", "no", "off")


def _flag(value: Optional[str], default: bool = False) -> bool:
    if value is None:
        return default
    return value.strip().lower() not in _FALSE


def _text(value: Optional[str]) -> Optional[str]:
    value = (value or "").strip()
    return value or None


def default_home() -> Path:
    """The platform's user data directory for timemachine (not created here)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("timemachine", appauthor=False))


@dataclasses.dataclass(frozen=True)
class Paths:
    """Where everything lives under one home directory (nothing is created here)."""

    home: Path

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def checksums(self) -> Path:
        return self.home / "checksums.json"

    @property
    def registry(self) -> Path:
        return self.home / "registry.json"

    @property
    def vectors(self) -> Path:
        return self.home / "vectors"

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    @property
    def projections(self) -> Path:
        return self.cache / "projections"

    @property
    def ui_videos(self) -> Path:
        return self.cache / "ui-videos"

    @property
    def discovery(self) -> Path:
        return self.cache / "discovery"

    @property
    def results(self) -> Path:
        """Job results too large to travel through the queue (latents with tuned weights), by content key."""
        return self.cache / "results"

    @property
    def locks(self) -> Path:
        return self.home / "locks"

    def lock(self, name: str) -> Path:
        """The lock file called ``name`` (e.g. 'state', 'vectors')."""
        return self.locks / f"{name}.lock"


@dataclasses.dataclass(frozen=True)
class Environment:
    """Everything timemachine takes from the environment (see the module docstring).

    Attributes:
        home:          the home directory (absolute).
        offline:       never use the network.
        manifest:      a manifest file overriding the installed one, or None.
        model:         the default model spec, or None.
        device:        the device spec, or None (= auto).
        vgg_weights:   a VGG16 weights path, 'random', or None (= the zoo's ImageNet weights).
        clip_weights:  a CLIP checkpoint path, 'random', or None (= the zoo's weights).
        malloc_tuning: tune glibc's allocator on the CPU.
        broker_url:    a Celery broker URL, or None (jobs run in-process).
        ui_server_models: the UI may load models from files under the models directory.
    """

    home: Path
    offline: bool = False
    manifest: Optional[Path] = None
    model: Optional[str] = None
    device: Optional[str] = None
    vgg_weights: Optional[str] = None
    clip_weights: Optional[str] = None
    malloc_tuning: bool = True
    broker_url: Optional[str] = None
    ui_server_models: bool = False

    @classmethod
    def from_environ(cls, environ: Optional[Mapping[str, str]] = None) -> "Environment":
        """Read the variables of ``environ`` (default: ``os.environ``) once."""
        env = os.environ if environ is None else environ
        home = _text(env.get(ENV_HOME))
        manifest = _text(env.get(ENV_MANIFEST))
        return cls(
            home=Path(home).expanduser().absolute() if home else default_home(),
            offline=_flag(env.get(ENV_OFFLINE)),
            manifest=Path(manifest).expanduser() if manifest else None,
            model=_text(env.get(ENV_MODEL)),
            device=_text(env.get(ENV_DEVICE)),
            vgg_weights=_text(env.get(ENV_VGG_WEIGHTS)),
            clip_weights=_text(env.get(ENV_CLIP_WEIGHTS)),
            malloc_tuning=_flag(env.get(ENV_MALLOC_TUNING), default=True),
            broker_url=_text(env.get(ENV_BROKER_URL)),
            ui_server_models=_flag(env.get(ENV_UI_SERVER_MODELS)),
        )

    @property
    def paths(self) -> Paths:
        return Paths(self.home)

    def replace(self, **changes) -> "Environment":
        """A copy with some fields changed (e.g. ``offline=True`` from a command-line flag)."""
        return dataclasses.replace(self, **changes)
