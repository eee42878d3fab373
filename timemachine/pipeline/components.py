"""The pipeline's components, registered once: the environment, the generator, LPIPS and the stores.

A :class:`Pipeline` is built once per model (``Pipeline.load(spec, env)``) and serves any number of jobs; its
methods take a request (:mod:`timemachine.pipeline.requests`) and return a result dataclass.  The perceptual
network is loaded on first use (a job that only renders never needs VGG16).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Callable, ContextManager, Optional, Sequence, Union

import torch

from timemachine.cache import ProjectionCache
from timemachine.checkpoint import model_fingerprint
from timemachine.device import prepare_device, resolve_precision
from timemachine.env import Environment
from timemachine.fs import ContentStore
from timemachine.networks import Generator
from timemachine.perceptual import RANDOM, PerceptualDistance
from timemachine.zoo import Zoo

#: Species of the zoo's generators (recorded with their vectors; the prompt ensembles of discovery).
ZOO_SPECIES = {"afhqdog": "dog", "afhqcat": "cat", "afhqwild": "wild"}
#: Finished videos kept in the video store (the least recently used ones are removed first).
MAX_STORED_VIDEOS = 64



@dataclasses.dataclass
class LoadedModel:
    """A generator ready to use, with where it came from.

    Attributes:
        G:           the generator (eval mode, no gradients) on its device.
        fingerprint: :func:`timemachine.checkpoint.model_fingerprint` of G (16 hex digits).
        spec:        what the user named it by (a zoo name, an imported name, a path, 'uploaded file x').
        path:        the file it was loaded from.
        zoo:         the zoo name it was loaded under when its file is that zoo generator's file, checked against
                     the zoo's SHA-256 (published, or recorded at the first download); None for any other file.
                     Vectors bound to a zoo name (the built-ins) apply to it (:meth:`AgeVector.check_model`).
    """

    G: Generator
    fingerprint: str
    spec: str
    path: str
    zoo: Optional[str] = None

    @property
    def device(self) -> torch.device:
        return self.G.mapping.w_avg.device


def open_zoo(env: Environment, offline: Optional[bool] = None) -> Zoo:
    """The model zoo of ``env`` (``offline`` True overrides its switch)."""
    return Zoo(env.replace(offline=True) if offline else env)


def load_model(spec: Union[str, os.PathLike], env: Environment, *, device: Union[str, torch.device, None] = None,
               progress=None, offline: Optional[bool] = None) -> LoadedModel:
    """Resolve ``spec`` (zoo name, imported name, file or URL; downloading and verifying it if needed) and load
    it safely onto ``device`` (None: the environment's, else CUDA if available, else the CPU)."""
    from timemachine.checkpoint import load_generator

    device = prepare_device(device if device is not None else env.device, malloc_tuning=env.malloc_tuning)
    zoo = open_zoo(env, offline)
    path = zoo.resolve(spec, progress=progress)
    G = load_generator(path, device=device)
    return LoadedModel(G=G, fingerprint=model_fingerprint(G), spec=str(spec), path=str(path),
                       zoo=_zoo_name(zoo, spec, path))


def _zoo_name(zoo: Zoo, spec: Union[str, os.PathLike], path) -> Optional[str]:
    """The zoo name ``spec`` is, when it resolved to that zoo generator's file (which resolution verified)."""
    name = os.fspath(spec)
    generators = zoo.generators()
    if name not in generators:
        return None
    return name if os.path.abspath(path) == os.path.abspath(zoo.zoo_path(generators[name])) else None


def load_perceptual(env: Environment, device: Union[str, torch.device, None] = None,
                    progress=None) -> PerceptualDistance:
    """LPIPS-VGG16 on ``device``: the environment's choice of weights (a file, or 'random' asked for by name:
    it warns), else the zoo's verified ImageNet weights, downloaded when allowed.  Never falls back to random
    weights."""
    source = env.vgg_weights or open_zoo(env).vgg16_path(progress=progress)
    return PerceptualDistance(source).to(prepare_device(device, malloc_tuning=env.malloc_tuning))


def load_clip_labeller(env: Environment, species: str, *, young: Optional[Sequence[str]] = None,
                       adult: Optional[Sequence[str]] = None, breed: Optional[str] = None,
                       clip_weights: Optional[str] = None, device: Union[str, torch.device, None] = None,
                       progress=None):
    """The zero-shot CLIP labeller (:class:`timemachine.clip_labeller.ClipLabeller`) on ``device``.

    Prompts and breed are checked before the weights are looked for; the weights are ``clip_weights`` or the
    environment's choice (a path, or 'random' asked for by name: it warns), else the zoo's CLIP weights
    (verified; downloaded when allowed).  Never falls back to random weights.
    """
    from timemachine import clip_labeller

    clip_labeller.check_prompts(young, "young", species)
    clip_labeller.check_prompts(adult, "adult", species)
    clip_labeller.resolve_breed(species, breed)
    path = clip_labeller.resolve_clip_weights(clip_weights or env.clip_weights, open_zoo(env), progress=progress)
    return clip_labeller.ClipLabeller(path, species=species, young=young, adult=adult, breed=breed,
                                      device=prepare_device(device if device is not None else env.device,
                                                            malloc_tuning=env.malloc_tuning))


def find_detector(env: Environment, download: bool = False, progress=None) -> tuple[Optional[object], Optional[str]]:
    """(the zoo's eye detector, None), or (None, why there is none) - never raises.  Its weights are used when
    present and downloaded only when ``download`` (an explicit 'auto'; ``progress(done, total)`` sees it)."""
    from timemachine import detect

    report = (lambda name, done, total: progress(done, total)) if progress is not None else None
    return detect.find_detector(open_zoo(env), download=download, progress=report)


def with_resolved_precision(settings, model: LoadedModel):
    """A copy of projector or render ``settings`` with ``precision`` resolved for the model's device ('auto' ->
    'bf16', 'fp32' or 'fp16', see :func:`timemachine.device.resolve_precision`): what results and keys record."""
    return dataclasses.replace(settings, precision=resolve_precision(settings.precision, model.device))


def perceptual_id(perceptual: PerceptualDistance) -> str:
    """The perceptual network's identity for store keys: 'random' or the VGG16 file's name."""
    return RANDOM if perceptual.vgg_source == RANDOM else os.path.basename(perceptual.vgg_source)


@dataclasses.dataclass
class SharedNetworks:
    """The networks pipelines load on first need besides LPIPS, kept for every pipeline of a process that shares
    this object (a queue worker's or a UI's, one device): the CLIP labellers by species and prompts, and the eye
    detector (or why there is none, and whether a download was allowed when it was looked for)."""

    labellers: dict[tuple, object] = dataclasses.field(default_factory=dict)
    detector: Optional[tuple[Optional[object], Optional[str]]] = None
    detector_download: bool = False


class Pipeline:
    """Components registered once, and the jobs that use them.

    Args:
        env:        the environment (paths, switches), read once by the face.
        model:      the loaded generator.
        perceptual: an LPIPS network to use, or None to load one on first need.
        shared:     CLIP labellers and the eye detector shared with other pipelines on the same device (None:
                    this pipeline's own).
    """

    def __init__(self, env: Environment, model: LoadedModel, perceptual: Optional[PerceptualDistance] = None,
                 shared: Optional[SharedNetworks] = None):
        self.env = env
        self.model = model
        #: ``downloads(label)`` -> a context manager yielding a ``progress(done, total)`` callback, for networks
        #: the pipeline loads on first need (VGG16, CLIP); a face sets it to show their downloads.
        self.downloads: Optional[Callable[[str], ContextManager]] = None
        self._perceptual = perceptual
        self._shared = shared if shared is not None else SharedNetworks()
        self.projections = ProjectionCache(env.paths.projections)
        self.videos = ContentStore(env.paths.ui_videos, max_entries=MAX_STORED_VIDEOS)

    @classmethod
    def load(cls, spec: Union[str, os.PathLike], env: Environment, *, device: Union[str, torch.device, None] = None,
             progress=None, offline: Optional[bool] = None) -> "Pipeline":
        """A pipeline for the model ``spec`` names (see :func:`load_model`)."""
        return cls(env, load_model(spec, env, device=device, progress=progress, offline=offline))

    @property
    def G(self) -> Generator:
        return self.model.G

    @property
    def resolution(self) -> int:
        return int(self.model.G.img_resolution)

    def _download_progress(self, label: str, progress) -> ContextManager:
        if progress is not None or self.downloads is None:
            return contextlib.nullcontext(progress)
        return self.downloads(label)

    def perceptual(self, progress=None) -> PerceptualDistance:
        """The LPIPS network on the model's device, loaded on first use (``progress``, else :attr:`downloads`,
        sees its download)."""
        if self._perceptual is None:
            with self._download_progress("VGG16", progress) as bar:
                self._perceptual = load_perceptual(self.env, self.model.device, progress=bar)
        return self._perceptual

    def labeller(self, species: str, *, young=None, adult=None, breed: Optional[str] = None, progress=None):
        """The zero-shot CLIP labeller for ``species`` (prompts, breed) on the model's device, loaded once per
        set of prompts (``progress`` sees the weights' download)."""
        key = (species, tuple(young or ()), tuple(adult or ()), breed)
        labellers = self._shared.labellers
        if key not in labellers:
            with self._download_progress("CLIP", progress) as bar:
                labellers[key] = load_clip_labeller(self.env, species, young=young, adult=adult, breed=breed,
                                                    device=self.model.device, progress=bar)
        return labellers[key]

    # The jobs live in their own modules; these methods are the pipeline's one typed call per job.
    def check(self, request) -> None:
        """Refuse ``request`` (any request type) if it cannot work, before any work is done."""
        from timemachine.pipeline import projection, requests, vectors, videos

        if isinstance(request, requests.AgeVideoRequest):
            videos.check(self, request)
        elif isinstance(request, requests.ProjectionRequest):
            projection.check(self, request)
        elif isinstance(request, requests.VectorBuildRequest):
            vectors.check(self, request)
        elif isinstance(request, requests.RenderRequest):
            videos.check_render(self, request)
        elif isinstance(request, requests.PreviewStripRequest):
            videos.check_preview_strip(self, request.latent, request.edit)
        elif isinstance(request, requests.DiscoverRequest):
            from timemachine.pipeline import discovery

            discovery.precheck(self.env, request, self.model.spec)
        else:
            raise TypeError(f"not a pipeline request: {type(request).__name__}")

    def prepare_photo(self, source, *, alignment=None, crop=None, name: Optional[str] = None):
        """A :class:`Photo` for this model: framed as ``alignment`` asks (an :class:`AlignmentRequest`; default:
        ``crop`` as a box, else the centre square), resized to the model's resolution."""
        from timemachine.pipeline import photos

        detector, missing = self.detector(alignment.explicit) if alignment is not None and \
            alignment.method == "auto" else (None, None)
        return photos.prepare_photo(source, self.resolution, alignment=alignment, crop=crop, name=name,
                                        model_spec=self.model.spec, detector=detector, detector_missing=missing)

    def example_photo(self, seed: int = 0):
        """An adult animal made by the model, as a prepared photo (see :func:`photos.example_photo`); checked adult
        with CLIP when the model's species is known and CLIP's weights are there."""
        from timemachine.errors import TimemachineError, first_line
        from timemachine.pipeline import photos

        species = ZOO_SPECIES.get(self.model.spec)
        labeller = None
        reason: Optional[str] = "the model's species is not known"
        if species is not None:
            try:
                labeller, reason = self.labeller(species), None
            except TimemachineError as exc:
                reason = first_line(exc)
        return photos.example_photo(self.G, seed, labeller=labeller, unavailable=reason)

    def detector(self, download: bool = False) -> tuple[Optional[object], Optional[str]]:
        """(the eye detector, None) or (None, why there is none), found once: its weights are used when present,
        and downloaded only when ``download`` (an explicit 'auto')."""
        shared = self._shared
        if shared.detector is None or (shared.detector[0] is None and download and not shared.detector_download):
            with self._download_progress("the eye detector", None) as bar:
                shared.detector = find_detector(self.env, download=download, progress=bar)
            shared.detector_download = download
        return shared.detector

    def project(self, request, progress=None):
        from timemachine.pipeline import projection

        return projection.project(self, request, progress)

    def video_key(self, request) -> str:
        """The content key of the video an :class:`AgeVideoRequest` asks for (the video store's key)."""
        from timemachine.pipeline import videos

        vector, _, settings, _ = videos.check(self, request)
        return videos.video_key(self, request, vector, settings)

    def age_video(self, request, progress=None):
        from timemachine.pipeline import videos

        return videos.age_video(self, request, progress)

    def render(self, request, progress=None):
        from timemachine.pipeline import videos

        return videos.render(self, request, progress)

    def preview_strip(self, latent, edit, times, progress=None):
        from timemachine.pipeline import videos

        return videos.preview_strip(self, latent, edit, times, progress)

    def build_vector(self, request, progress=None):
        from timemachine.pipeline import vectors

        return vectors.build_vector(self, request, progress)

    def discover(self, request, progress=None):
        from timemachine.pipeline import discovery

        return discovery.discover(self, request, progress)
