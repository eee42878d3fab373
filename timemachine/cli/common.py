"""Options, requests and progress bars shared by the commands that load a model and project or render.

Every option's default comes from the settings dataclasses (:mod:`timemachine.settings`); the handlers turn
the parsed options into the pipeline's requests and hand them over.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

from timemachine.env import ENV_BROKER_URL, ENV_MODEL, Environment
from timemachine.errors import TimemachineError
from timemachine.settings import (
    DEFAULT_PRECISION,
    EASINGS,
    PRECISION_CHOICES,
    ProjectorSettings,
    PTISettings,
    RenderSettings,
)

PROJECTOR = ProjectorSettings()
PTI = PTISettings()
RENDER = RenderSettings()


def environment(args: argparse.Namespace) -> Environment:
    """The environment, read once per command, with ``--offline``, ``--vgg-weights`` and ``--clip-weights``
    applied."""
    env = getattr(args, "_environment", None)
    if env is None:
        env = Environment.from_environ()
        if getattr(args, "offline", None):
            env = env.replace(offline=True)
        if getattr(args, "vgg_weights", None):
            env = env.replace(vgg_weights=args.vgg_weights)
        if getattr(args, "clip_weights", None):
            env = env.replace(clip_weights=args.clip_weights)
        args._environment = env
    return env


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=None, metavar="NAME|PATH|URL",
                       help="generator: zoo name (afhqdog, afhqcat, afhqwild), imported name, .pkl/.safetensors "
                            f"file or URL (default: ${ENV_MODEL})")
    group.add_argument("--device", default=None, help="'auto', 'cpu', 'cuda' or 'cuda:N' (default: auto)")
    group.add_argument("--precision", choices=PRECISION_CHOICES, default=DEFAULT_PRECISION,
                       help="numeric precision of the generator, LPIPS and projector: bf16 (about twice as fast on "
                            "CPUs with native BF16; results differ by rounding), fp32, or auto: bf16 where the CPU "
                            "has native BF16 (see `timemachine doctor`), fp32 on other CPUs, the official float16 "
                            f"blocks on CUDA (default: {DEFAULT_PRECISION})")
    group.add_argument("--offline", action="store_const", const=True, default=None,
                       help="never use the network (same as TIMEMACHINE_OFFLINE=1)")


def add_projection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("projection")
    group.add_argument("--space", choices=["w", "w+"], default=PROJECTOR.space,
                       help="W: one latent for all layers (edits age best); W+: one per layer (closer fit)")
    group.add_argument("--steps", type=int, default=PROJECTOR.steps, help="optimisation steps (official: 1000)")
    group.add_argument("--seed", type=int, default=PROJECTOR.seed, help="random seed of the projection")
    group.add_argument("--early-stop", type=int, default=PROJECTOR.early_stop_patience, metavar="STEPS",
                       help="stop when the loss has not improved for STEPS steps (0 = run all steps)")
    group.add_argument("--pti", action="store_true", help="pivotal tuning after projecting (closer, slower)")
    group.add_argument("--pti-steps", type=int, default=PTI.steps, help="pivotal tuning steps")
    group.add_argument("--vgg-weights", default=None, metavar="PATH|random",
                       help="VGG16 weights for LPIPS (default: downloaded/cached ImageNet weights; 'random' is "
                            "for tests and benchmarks only)")
    group.add_argument("--no-cache", action="store_true", help="do not read or write the projection cache")


def projection_settings(args: argparse.Namespace) -> tuple[ProjectorSettings, Optional[PTISettings]]:
    """(ProjectorSettings, PTISettings or None) from the parsed options, validated."""
    settings = ProjectorSettings(space=args.space, steps=args.steps, seed=args.seed,
                                 early_stop_patience=args.early_stop, precision=args.precision,
                                 batch_size=getattr(args, "projection_batch_size", PROJECTOR.batch_size))
    settings.validate()
    pti = None
    if args.pti:
        pti = PTISettings(steps=args.pti_steps)
        pti.validate()
    return settings, pti


def projection_request(args: argparse.Namespace, photos: list, out: Optional[Path] = None):
    """The :class:`ProjectionRequest` for ``photos``; its checkpoint lives in ``out`` (removed unless --resume)."""
    from timemachine.pipeline import ProjectionRequest

    settings, pti = projection_settings(args)
    checkpoint = None
    if out is not None:
        checkpoint = str(out / ".projection-checkpoint.pt")
        if not getattr(args, "resume", False) and os.path.exists(checkpoint):
            os.remove(checkpoint)
    return ProjectionRequest(photos=photos, settings=settings, pti=pti, use_cache=not args.no_cache,
                             checkpoint=checkpoint, resume=bool(getattr(args, "resume", False)))


def load_pipeline(args: argparse.Namespace, device: Optional[str] = None):
    """The :class:`Pipeline` for ``--model`` (licence notice and download bar when it is downloaded) on
    ``device`` (default: ``--device``)."""
    from timemachine.cli.weights import download_progress, licence_notice_if_downloading
    from timemachine.pipeline import Pipeline

    env = environment(args)
    spec = args.model or env.model
    if not spec:
        raise TimemachineError(f"no model given: pass --model NAME|PATH|URL or set {ENV_MODEL}")
    licence_notice_if_downloading(spec, env=env)
    with download_progress(spec) as progress:
        pipe = Pipeline.load(spec, env, device=device or args.device, progress=progress)
    pipe.downloads = download_progress
    return pipe


def load_perceptual(pipe) -> None:
    """Load the pipeline's LPIPS network now (with a download bar), so that a missing one is refused before
    anything is written."""
    pipe.perceptual()


#: The unit of each stage's bar.
UNITS = {"render": "frame", "sample": "sample", "project": "step", "pti": "step"}


class ProgressBars:
    """A pipeline progress callback drawing one tqdm bar per stage on stderr (hidden when not a terminal).

    Args:
        labels: the bar's label per stage ('project', 'pti', 'render', ...); stages without one get no bar.
    """

    def __init__(self, labels: dict[str, str]):
        self.labels = labels
        self.bars: dict[str, Any] = {}

    def __call__(self, event) -> None:
        label = self.labels.get(event.stage)
        if label is None or not event.total:
            return
        from tqdm import tqdm

        bar = self.bars.get(event.stage)
        if bar is None or event.done < bar.n or event.total != bar.total:
            if bar is not None:
                bar.close()
            bar = tqdm(total=event.total, initial=max(0, event.done - 1), desc=label,
                       unit=UNITS.get(event.stage, "step"), file=sys.stderr, disable=None, dynamic_ncols=True)
            self.bars[event.stage] = bar
        if "lpips" in event.extras:
            bar.set_postfix(loss=f"{event.extras['loss']:.4f}", lpips=f"{event.extras['lpips']:.4f}", refresh=False)
        bar.update(event.done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()

    def __enter__(self) -> "ProgressBars":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def progress_bars(num_photos: int = 1, render: bool = False) -> Iterator[ProgressBars]:
    """Bars for projecting (and pivotal tuning) ``num_photos`` photos, and for rendering frames."""
    labels = {"project": "projecting" if num_photos == 1 else f"projecting {num_photos} photos",
              "pti": "pivotal tuning"}
    if render:
        labels["render"] = "rendering"
    bars = ProgressBars(labels)
    try:
        yield bars
    finally:
        bars.close()


@contextlib.contextmanager
def resumable(checkpoint: Optional[str]) -> Iterator[None]:
    """Word an interruption of a projection as the way to continue it (when a checkpoint was left)."""
    from timemachine.cli import Terminated

    try:
        yield
    except (KeyboardInterrupt, Terminated) as exc:
        if checkpoint and os.path.exists(checkpoint):
            exc.args = (f"{'interrupted' if isinstance(exc, KeyboardInterrupt) else 'terminated'}; run the "
                        "same command with --resume to continue from the last checkpoint",)
        raise


def vector_library(args: Optional[argparse.Namespace] = None):
    """The age-vector library of ``$TIMEMACHINE_HOME`` (the environment is read at the edge, once per command)."""
    from timemachine.pipeline import vector_library as library

    return library(environment(args) if args is not None else Environment.from_environ())


def add_queue_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("job queue")
    group.add_argument("--broker", default=None, metavar="URL",
                       help="send the job to queue workers (timemachine worker) through this Redis, "
                            f"redis://host:port/db (default: ${ENV_BROKER_URL}); they must share TIMEMACHINE_HOME "
                            "with this machine")
    group.add_argument("--local", action="store_true", help=f"run here, even when ${ENV_BROKER_URL} is set")


def broker_url(args: argparse.Namespace) -> Optional[str]:
    """The broker to send the job to (None: run it here), after refusing options that only make sense here."""
    if args.local:
        if args.broker:
            raise TimemachineError("--broker and --local contradict each other: choose one")
        return None
    url = args.broker or environment(args).broker_url
    if url:
        if getattr(args, "resume", False):
            raise TimemachineError("--resume continues a projection run here; a job given back by a worker that "
                                   "died is run again by the workers themselves (drop --resume, or add --local)")
        if getattr(args, "vgg_weights", None):
            raise TimemachineError("--vgg-weights applies to a run here; the workers use their own "
                                   "TIMEMACHINE_VGG_WEIGHTS (drop it, or add --local)")
    return url


def model_for_workers(args: argparse.Namespace) -> str:
    """The model as the workers load it: a file by its absolute path, anything else as given."""
    spec = args.model or environment(args).model or ""
    return os.path.abspath(spec) if spec and os.path.isfile(spec) else spec


def run_on_workers(args: argparse.Namespace, url: str, kind: str, request, bars) -> Any:
    """Send the job to the workers behind ``url``, show its queue position and progress (``bars``), and return
    its result.  Ctrl-C (or SIGTERM) cancels the job on the workers before it is passed on."""
    import time

    from timemachine.cli import Terminated
    from timemachine.pipeline import JobSpec, make_executor

    env = environment(args).replace(broker_url=url)
    executor = make_executor(env)
    spec = args.model or env.model or ""
    try:
        handle = executor.submit(JobSpec(kind, request, model=model_for_workers(args), model_name=spec,
                                         label=kind, owner=f"cli-{os.getpid()}"))
        try:
            said = None
            while not handle.finished:
                ahead = handle.jobs_ahead()
                if ahead is not None and ahead != said:
                    print(f"queued: {ahead} job{'s' if ahead != 1 else ''} ahead of this one", file=sys.stderr)
                    said = ahead
                event = handle.progress()
                if event is not None:
                    bars(event)
                time.sleep(executor.settings.poll_seconds)
            event = handle.progress()
            if event is not None and handle.status == "done":
                bars(event)
        except (KeyboardInterrupt, Terminated):
            handle.cancel()
            raise
        return handle.get()
    finally:
        executor.close()


def _strength(text: str):
    """``--strength``: a number or 'auto'."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def add_age_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("age vector")
    group.add_argument("--age-vector", required=required, default=None, metavar="NAME|FILE",
                       help="age vector: a name from your library or the built-ins (timemachine age-vector list) "
                            "or a .safetensors file" + ("" if required else
                                                         " (default: the model's default vector)"))
    group.add_argument("--strength", type=_strength, default=None, metavar="NUMBER|auto",
                       help="how far to walk along the vector (default: the vector's own); 'auto': the smallest "
                            "strength whose last frame CLIP finds young without changing the coat colour")
    group.add_argument("--layers", default=None, metavar="GROUPS|RANGES",
                       help="layers to edit: coarse, middle, fine, all, or indices like 0-7 "
                            "(default: the vector's own)")
    group.add_argument("--force-model", action="store_true",
                       help="apply a vector built for another model anyway (results are usually meaningless)")


def age_edit(args: argparse.Namespace):
    """The :class:`AgeEdit` of ``--age-vector``, ``--strength``, ``--layers`` and ``--force-model``."""
    from timemachine.pipeline import AgeEdit

    return AgeEdit(vector=args.age_vector, strength=args.strength, layers=args.layers, force_model=args.force_model)


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("video")
    group.add_argument("--frames", type=int, default=RENDER.frames,
                       help="frames of the walk from adult to young (>= 2)")
    group.add_argument("--fps", type=float, default=RENDER.fps, help="frames per second")
    group.add_argument("--easing", choices=EASINGS, default=RENDER.easing, help="speed profile of the walk")
    group.add_argument("--hold-start", type=int, default=RENDER.hold_start,
                       help="extra frames showing the adult before the walk")
    group.add_argument("--hold-end", type=int, default=RENDER.hold_end,
                       help="extra frames showing the young animal at the end")
    group.add_argument("--pingpong", action="store_true", help="walk back again, for a seamless loop")
    group.add_argument("--batch-size", type=int, default=RENDER.batch_size,
                       help="frames synthesised together (memory grows with it)")
    group.add_argument("--crf", type=int, default=RENDER.crf, help="MP4 quality: 1 (best) to 51 (worst)")
    group.add_argument("--no-gif", action="store_true", help="do not write preview.gif")
    group.add_argument("--side-by-side", action="store_true",
                       help="also write side_by_side.mp4: photo | reconstruction | young")
    group.add_argument("--png-frames", action="store_true", help="also write every frame as PNG into frames/")


def render_settings(args: argparse.Namespace) -> RenderSettings:
    """RenderSettings from the options, validated (the strength is the age edit's, filled in by the pipeline)."""
    settings = RenderSettings(frames=args.frames, easing=args.easing, hold_start=args.hold_start,
                              hold_end=args.hold_end, pingpong=args.pingpong, batch_size=args.batch_size,
                              fps=args.fps, crf=args.crf, precision=args.precision)
    settings.validate()
    return settings


def video_outputs(args: argparse.Namespace, out: Path):
    from timemachine.pipeline import VideoOutputs

    return VideoOutputs(directory=out, gif=not args.no_gif, side_by_side=args.side_by_side, png_frames=args.png_frames)


def parse_crop(text: Optional[str]):
    """``--crop X,Y,SIZE`` (None: centred)."""
    from timemachine.pipeline import parse_crop as parse

    return parse(text) if text else None


def add_framing_arguments(parser: argparse.ArgumentParser, several: bool = False) -> None:
    """``--crop``, ``--eyes`` and ``--nose``: how the face is cut out of the photo(s)."""
    group = parser.add_argument_group("framing (how the face is cut out of the photo)")
    group.add_argument("--crop", default=None, metavar="auto|centre|X,Y,SIZE",
                       help="auto: align on the eyes found by the eye detector (used when its weights are "
                            "downloaded; asking for it explicitly downloads them), else the centre square with a "
                            "note; centre: the centred square; X,Y,SIZE: that square, in pixels (default: auto)")
    each = "PHOTO=" if several else ""
    group.add_argument("--eyes", action="append", default=None, metavar=f"[{each}]LX,LY,RX,RY",
                       help="the centres of the two eyes in the photo, in pixels: the face is rotated so they are "
                            "level and framed as the model's training faces" +
                            ("; with several photos, PHOTO=LX,LY,RX,RY, repeated for each photo" if several else ""))
    group.add_argument("--nose", action="append", default=None, metavar=f"[{each}]X,Y",
                       help="the tip of the nose, in pixels (optional, with --eyes): tells which way is up")


def _per_photo(values: Optional[list[str]], photos: list[str], option: str) -> dict[str, str]:
    """``--eyes``/``--nose`` values by photo: 'PHOTO=...' for that photo, a bare value for the only photo."""
    found: dict[str, str] = {}
    for value in values or []:
        photo, sep, rest = value.rpartition("=")
        if not sep:
            if len(photos) != 1:
                raise TimemachineError(f"with several photos, give {option} PHOTO=... for each photo it is for")
            photo, rest = photos[0], value
        elif photo not in photos:
            raise TimemachineError(f"{option} {value!r} names {photo!r}, which is not one of the photos given")
        if photo in found:
            raise TimemachineError(f"{option} is given twice for {photo}")
        found[photo] = rest
    return found


def alignments(args: argparse.Namespace, photos: list[str]) -> dict[str, Any]:
    """The :class:`AlignmentRequest` of each photo from ``--crop``, ``--eyes`` and ``--nose``."""
    from timemachine.pipeline import request_from_options

    eyes = _per_photo(getattr(args, "eyes", None), photos, "--eyes")
    noses = _per_photo(getattr(args, "nose", None), photos, "--nose")
    # With several photos --crop frames those without eyes; where every photo has its eyes, a crop contradicts.
    crop_with_eyes = args.crop if set(photos) <= set(eyes) else None
    return {photo: request_from_options(crop_with_eyes if photo in eyes else args.crop, eyes.get(photo),
                                        noses.get(photo))
            for photo in photos}


def video_summary(name: str, result) -> str:
    """The last line of a video command: likeness, age and coat-colour scores, the strength, the video."""
    from timemachine.pipeline import scores_summary

    info = result.run_info
    m = result.metrics or {}
    likeness = f"LPIPS {m['lpips']:.4f}, PSNR {m['psnr']:.2f} dB" + (" (projection from cache)" if m.get("cached")
                                                                       else "") + "; " if "lpips" in m else ""
    vector = info.get("age_vector", {})
    chosen = {"built-in": " (the model's built-in default)", "chosen": " (the model's default)"}.get(
        vector.get("chosen"), "")
    strength = info.get("render", {}).get("strength")
    auto = " (auto)" if "strength_auto" in info else ""
    scores = f"; {scores_summary(info['scores'])}" if "scores" in info else ""
    return (f"{name}: {likeness}age vector {vector.get('name')}{chosen} at strength {strength:g}{auto}{scores}; "
            f"{info['render']['total_frames']} frames -> {result.files['video']}")


def print_notices(name: str, photo) -> None:
    """The framing's notices (a fallback to the centre square, say), one line each on stderr."""
    for notice in photo.notices:
        print(f"timemachine: note: {name}: {notice}", file=sys.stderr)


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise TimemachineError(f"--out {out} exists and is not a directory")
