"""``timemachine run``: photo in, puppyhood video out."""

from __future__ import annotations

import argparse
from pathlib import Path

from timemachine.cli import EXIT_OK, common
from timemachine.errors import TimemachineError

HELP = "the whole job: frame, project (cached), walk along an age vector, write the video and its scores"
DESCRIPTION = """\
Turn a photo of an adult pet into a video of it growing young.

  1. frame the face as the model's training faces were (from the eyes: --eyes, or found by the eye detector,
     the default when its weights are downloaded; else the centre square, or --crop) and resize it;
  2. project it into the generator's latent space (cached: the same photo, model and settings are projected
     only once, so re-rendering with another strength or vector is quick);
  3. walk the latent along the age vector: w(t) = w + strength * a(t) * v on the chosen layers;
  4. write into --out: video.mp4, preview.gif, before.png (the reconstruction), after.png (the young
     animal), projected_w.npz, run.json (settings, model fingerprint, timings, scores); with --side-by-side
     also side_by_side.mp4 (photo | reconstruction | young).

Every video is scored (run.json and the last line): how young it looks at the start and the end (CLIP's
P(young); 'unavailable', with the reason, without CLIP's weights), how close the reconstruction is to the
photo (LPIPS, PSNR), and how much the coat colour changed (CIEDE2000; a warning above 10).

The age vector: --age-vector NAME, or the model's default (afhqdog has a built-in one, 'yorkshire'; mark your
own with `timemachine age-vector set NAME --default`, or make one for any model with `timemachine age-vector
discover`).  --strength auto picks the strength for you.  No photo at hand?  --example makes an adult animal
with the model and uses it as the photo.  Interrupted while projecting?  Run the same command with --resume.

With --broker redis://... (or TIMEMACHINE_BROKER_URL set) the job runs on the queue workers (`timemachine
worker`) that share TIMEMACHINE_HOME with this machine; this command shows their progress and writes the same
files into --out.
"""


def register(subparsers, formatter) -> None:
    parser = subparsers.add_parser("run", help=HELP, description=DESCRIPTION, formatter_class=formatter)
    parser.add_argument("photo", metavar="PHOTO", nargs="?", default=None, help="photo of the adult pet")
    parser.add_argument("--example", nargs="?", type=int, const=0, default=None, metavar="SEED",
                        help="instead of a photo, an adult animal the model makes (sample SEED, default 0)")
    common.add_model_arguments(parser)
    common.add_age_arguments(parser, required=False)
    common.add_projection_arguments(parser)
    common.add_render_arguments(parser)
    common.add_framing_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted projection in --out")
    common.add_queue_arguments(parser)
    parser.set_defaults(handler=run)


def _photo(args: argparse.Namespace, pipe, framing: dict):
    """The prepared photo: the file given (framed as ``framing``, from common.alignments, asks), or the model's
    example animal."""
    if args.example is not None:
        return "example", pipe.example_photo(args.example)
    return args.photo, pipe.prepare_photo(args.photo, alignment=framing[args.photo])


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from timemachine.pipeline import AgeVideoRequest, export_video

    if (args.photo is None) == (args.example is None):
        raise TimemachineError("give a photo of your pet, or --example for an animal the model makes (not both)")
    if args.example is not None and (args.crop or args.eyes or args.nose):
        raise TimemachineError("--example makes a photo that is framed already: leave out --crop, --eyes and --nose")
    if args.example is not None and not 0 <= args.example <= 2**31 - 1:
        raise TimemachineError(f"the example's seed must be a whole number from 0 to {2**31 - 1}")
    # malformed --eyes/--crop: refused before the model loads
    framing = common.alignments(args, [args.photo]) if args.photo is not None else {}
    out = Path(args.out)
    common.check_out_dir(out)
    settings = common.render_settings(args)
    edit = common.age_edit(args)
    common.projection_settings(args)
    broker = common.broker_url(args)
    if broker and args.age_vector and Path(args.age_vector).is_file():
        raise TimemachineError("with --broker the age vector must be a name from the library the workers share "
                               "(import the file with `timemachine age-vector import`), or add --local")

    # Everything that can fail on bad input happens before anything is written.  With a broker the model is
    # loaded here only to prepare the photo and check the request (on the CPU); the workers do the work.
    pipe = common.load_pipeline(args, device="cpu" if broker else None)
    name, photo = _photo(args, pipe, framing)
    projection = common.projection_request(args, [photo])
    outputs = common.video_outputs(args, out)
    request = AgeVideoRequest(photo=photo, edit=edit, projection=projection, render=settings,
                              outputs=dataclasses.replace(outputs, directory=None) if broker else outputs)
    pipe.check(request)
    if broker:
        with common.progress_bars(render=True) as bars:
            stored = common.run_on_workers(args, broker, "age_video", request, bars)
        result = export_video(stored, out)
    else:
        common.load_perceptual(pipe)
        out.mkdir(parents=True, exist_ok=True)
        request.projection = common.projection_request(args, [photo], out)
        with common.progress_bars(render=True) as bars, common.resumable(request.projection.checkpoint):
            result = pipe.age_video(request, progress=bars)
    common.print_notices(name, photo)
    print(common.video_summary(name, result))
    return EXIT_OK
