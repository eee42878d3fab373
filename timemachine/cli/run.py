"""``timemachine run``: photo in, puppyhood video out."""

from __future__ import annotations

import argparse
from pathlib import Path

from timemachine.cli import EXIT_OK, common
from timemachine.errors import TimemachineError

HELP = "the whole job: crop, project (cached), walk along an age vector, write the video"
DESCRIPTION = """\
Turn a photo of an adult pet into a video of it growing young.

  1. crop the photo to a square (centred, or --crop X,Y,SIZE) and resize it to the model's resolution;
  2. project it into the generator's latent space (cached: the same photo, model and settings are projected
     only once, so re-rendering with another strength or vector is quick);
  3. walk the latent along the age vector: w(t) = w + strength * a(t) * v on the chosen layers;
  4. write into --out: video.mp4, preview.gif, before.png (the reconstruction), after.png (the young
     animal), projected_w.npz, run.json (settings, model fingerprint, timings); with --side-by-side also
     side_by_side.mp4 (photo | reconstruction | young).

Age vectors come from your library: build one with `timemachine age-vector build` from photos of puppies and
adults of the breed.  Interrupted while projecting?  Run the same command with --resume.

With --broker redis://... (or TIMEMACHINE_BROKER_URL set) the job runs on the queue workers (`timemachine
worker`) that share TIMEMACHINE_HOME with this machine; this command shows their progress and writes the same
files into --out.
"""


def register(subparsers, formatter) -> None:
    parser = subparsers.add_parser("run", help=HELP, description=DESCRIPTION, formatter_class=formatter)
    parser.add_argument("photo", metavar="PHOTO", help="photo of the adult pet")
    common.add_model_arguments(parser)
    common.add_age_arguments(parser)
    common.add_projection_arguments(parser)
    common.add_render_arguments(parser)
    parser.add_argument("--crop", metavar="X,Y,SIZE", help="square crop box in pixels (default: centred)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted projection in --out")
    common.add_queue_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from timemachine.pipeline import AgeVideoRequest, export_video

    out = Path(args.out)
    common.check_out_dir(out)
    crop = common.parse_crop(args.crop)
    settings = common.render_settings(args)
    edit = common.age_edit(args)
    common.projection_settings(args)
    broker = common.broker_url(args)
    if broker and Path(args.age_vector).is_file():
        raise TimemachineError("with --broker the age vector must be a name from the library the workers share "
                               "(import the file with `timemachine age-vector import`), or add --local")

    # Everything that can fail on bad input happens before anything is written.  With a broker the model is
    # loaded here only to prepare the photo and check the request (on the CPU); the workers do the work.
    pipe = common.load_pipeline(args, device="cpu" if broker else None)
    photo = pipe.prepare_photo(args.photo, crop=crop)
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
    m = result.metrics
    cached = " (projection from cache)" if m["cached"] else ""
    print(f"{args.photo}: LPIPS {m['lpips']:.4f}, PSNR {m['psnr']:.2f} dB{cached}; "
          f"{result.run_info['render']['total_frames']} frames -> {result.files['video']}")
    return EXIT_OK
