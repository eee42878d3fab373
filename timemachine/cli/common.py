"""Options and progress bars shared by the commands that load a model and project photos."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Iterator, Optional

from timemachine.errors import TimemachineError
from timemachine.settings import DEFAULT_PRECISION, PRECISION_CHOICES

ENV_MODEL = "TIMEMACHINE_MODEL"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=os.environ.get(ENV_MODEL), metavar="NAME|PATH|URL",
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
    group.add_argument("--space", choices=["w", "w+"], default="w",
                       help="W: one latent for all layers (edits age best); W+: one per layer (closer fit)")
    group.add_argument("--steps", type=int, default=1000, help="optimisation steps (official: 1000)")
    group.add_argument("--seed", type=int, default=303, help="random seed of the projection")
    group.add_argument("--early-stop", type=int, default=0, metavar="STEPS",
                       help="stop when the loss has not improved for STEPS steps (0 = run all steps)")
    group.add_argument("--pti", action="store_true", help="pivotal tuning after projecting (closer, slower)")
    group.add_argument("--pti-steps", type=int, default=350, help="pivotal tuning steps")
    group.add_argument("--vgg-weights", default=None, metavar="PATH|random",
                       help="VGG16 weights for LPIPS (default: downloaded/cached ImageNet weights; 'random' is "
                            "for tests and benchmarks only)")
    group.add_argument("--no-cache", action="store_true", help="do not read or write the projection cache")


def projection_settings(args: argparse.Namespace):
    """(ProjectorSettings, PTISettings or None) from the parsed options, validated."""
    from timemachine.projector import ProjectorSettings, PTISettings

    settings = ProjectorSettings(space=args.space, steps=args.steps, seed=args.seed,
                                 early_stop_patience=args.early_stop, precision=args.precision)
    settings.validate()
    pti = None
    if args.pti:
        pti = PTISettings(steps=args.pti_steps)
        pti.validate()
    return settings, pti


def load_model(args: argparse.Namespace):
    """The :class:`timemachine.pipeline.LoadedModel` for ``--model``, with a licence notice and download bar."""
    from timemachine import pipeline
    from timemachine.cli.weights import download_progress, licence_notice_if_downloading

    if not args.model:
        raise TimemachineError(f"no model given: pass --model NAME|PATH|URL or set {ENV_MODEL}")
    licence_notice_if_downloading(args.model, offline=args.offline)
    with download_progress(args.model) as progress:
        return pipeline.load_model(args.model, device=args.device, offline=args.offline, progress=progress)


def load_perceptual(args: argparse.Namespace, device):
    from timemachine import pipeline
    from timemachine.cli.weights import download_progress

    with download_progress("vgg16") as progress:
        return pipeline.load_perceptual(device, vgg_weights=args.vgg_weights, offline=args.offline, progress=progress)


@contextlib.contextmanager
def projection_progress(settings, pti_settings, num_photos: int) -> Iterator:
    """A projector callback drawing tqdm bars on stderr: one for projecting, one per photo for PTI."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}
    label = "projecting" if num_photos == 1 else f"projecting {num_photos} photos"

    def callback(event) -> None:
        bar = bars.get(event.stage)
        if bar is None or event.step == 1:
            if bar is not None:
                bar.close()
            bar = tqdm(total=event.total, initial=event.step - 1, desc=label if event.stage == "project" else
                       "pivotal tuning", unit="step", file=sys.stderr, disable=None, dynamic_ncols=True)
            bars[event.stage] = bar
        bar.set_postfix(loss=f"{event.loss:.4f}", lpips=f"{float(event.lpips.mean()):.4f}", refresh=False)
        bar.update(event.step - bar.n)

    try:
        yield callback
    finally:
        for bar in bars.values():
            bar.close()


def add_age_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("age vector")
    group.add_argument("--age-vector", required=True, metavar="NAME|FILE",
                       help="age vector: a name from your library (timemachine age-vector list) or a .safetensors file")
    group.add_argument("--strength", type=float, default=None,
                       help="how far to walk along the vector (default: the vector's own, usually 1.0)")
    group.add_argument("--layers", default=None, metavar="GROUPS|RANGES",
                       help="layers to edit: coarse, middle, fine, all, or indices like 0-7 (default: the vector's own)")
    group.add_argument("--force-model", action="store_true",
                       help="apply a vector built for another model anyway (results are usually meaningless)")


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("video")
    group.add_argument("--frames", type=int, default=96, help="frames of the walk from adult to young (>= 2)")
    group.add_argument("--fps", type=float, default=24.0, help="frames per second")
    group.add_argument("--easing", choices=["linear", "smoothstep", "cosine"], default="smoothstep",
                       help="speed profile of the walk")
    group.add_argument("--hold-start", type=int, default=12, help="extra frames showing the adult before the walk")
    group.add_argument("--hold-end", type=int, default=24, help="extra frames showing the young animal at the end")
    group.add_argument("--pingpong", action="store_true", help="walk back again, for a seamless loop")
    group.add_argument("--batch-size", type=int, default=2, help="frames synthesised together (memory grows with it)")
    group.add_argument("--crf", type=int, default=18, help="MP4 quality: 1 (best) to 51 (worst)")
    group.add_argument("--no-gif", action="store_true", help="do not write preview.gif")
    group.add_argument("--side-by-side", action="store_true",
                       help="also write side_by_side.mp4: photo | reconstruction | young")
    group.add_argument("--png-frames", action="store_true", help="also write every frame as PNG into frames/")


def render_settings(args: argparse.Namespace, vector):
    """RenderSettings from the options; the strength defaults to the vector's."""
    from timemachine.render import RenderSettings

    strength = vector.default_strength if args.strength is None else args.strength
    settings = RenderSettings(frames=args.frames, strength=strength, easing=args.easing, hold_start=args.hold_start,
                              hold_end=args.hold_end, pingpong=args.pingpong, batch_size=args.batch_size,
                              fps=args.fps, crf=args.crf, precision=args.precision)
    settings.validate()
    return settings


@contextlib.contextmanager
def render_progress() -> Iterator:
    """A ``progress(done, total)`` callback drawing a tqdm frame bar on stderr."""
    from tqdm import tqdm

    bar = None

    def callback(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="rendering", unit="frame", file=sys.stderr, disable=None, dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        yield callback
    finally:
        if bar is not None:
            bar.close()


def check_out_dir(out) -> None:
    if out.exists() and not out.is_dir():
        raise TimemachineError(f"--out {out} exists and is not a directory")
