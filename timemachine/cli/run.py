"""``timemachine run``: photo in, puppyhood video out."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from timemachine.cli import EXIT_OK, Terminated, common

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
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from timemachine import images, pipeline

    out = Path(args.out)
    common.check_out_dir(out)
    crop = images.parse_crop(args.crop) if args.crop else None
    projection_settings, pti_settings = common.projection_settings(args)
    vector = common.vector_library().load(args.age_vector)
    render_settings = common.render_settings(args, vector)

    # Everything that can fail on bad input happens before anything is written.
    model = common.load_model(args)
    pipeline.age_direction(model, vector, args.layers, args.force_model)
    photo = images.prepare_photo(args.photo, model.G.img_resolution, crop=crop)
    perceptual = common.load_perceptual(args, model.device)
    cache = None if args.no_cache else pipeline.ProjectionCache(pipeline.cache_root())

    out.mkdir(parents=True, exist_ok=True)
    checkpoint = str(out / ".projection-checkpoint.pt")
    if not args.resume and os.path.exists(checkpoint):
        os.remove(checkpoint)
    with common.projection_progress(projection_settings, pti_settings, 1) as project_callback, \
            common.render_progress() as render_callback:
        try:
            result = pipeline.make_age_video(
                model, photo, vector, out, projection_settings, render_settings, perceptual,
                pti_settings=pti_settings, cache=cache, layers=args.layers, force_model=args.force_model,
                gif=not args.no_gif, side_by_side=args.side_by_side, frames=args.png_frames,
                project_callback=project_callback, render_progress=render_callback, checkpoint_path=checkpoint,
                resume=args.resume,
                photo_info={"path": os.path.abspath(args.photo), "crop": str(crop) if crop else "centre"})
        except (KeyboardInterrupt, Terminated) as exc:
            if os.path.exists(checkpoint):
                exc.args = (f"{'interrupted' if isinstance(exc, KeyboardInterrupt) else 'terminated'}; run the "
                            "same command with --resume to continue from the last checkpoint",)
            raise
    m = result.projection.metrics
    cached = " (projection from cache)" if m["cached"] else ""
    print(f"{args.photo}: LPIPS {m['lpips']:.4f}, PSNR {m['psnr']:.2f} dB{cached}; "
          f"{result.run_info['render']['total_frames']} frames -> {result.files['video']}")
    return EXIT_OK
