"""``timemachine render``: a projected latent walked along an age vector, as video."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from timemachine.cli import EXIT_OK, common

HELP = "render the age walk of a projected latent (projected_w.npz) into video"
DESCRIPTION = """\
Walk a latent along an age vector and write the frames: video.mp4, preview.gif, before.png, after.png,
projected_w.npz (a copy of the input) and run.json into --out; --side-by-side adds side_by_side.mp4
(photo | reconstruction | young, with --photo) and --png-frames every frame as PNG.

LATENT is a projected_w.npz from `timemachine project` (its optimised noise and pivotal-tuning weights are
used) or from NVIDIA's official projector.
"""


def register(subparsers, formatter) -> None:
    parser = subparsers.add_parser("render", help=HELP, description=DESCRIPTION, formatter_class=formatter)
    parser.add_argument("latent", metavar="LATENT", help="projected_w.npz")
    common.add_model_arguments(parser)
    common.add_age_arguments(parser)
    common.add_render_arguments(parser)
    parser.add_argument("--photo", help="the photo, for the side-by-side video's first panel")
    parser.add_argument("--crop", metavar="X,Y,SIZE", help="crop of --photo (as used when projecting)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from timemachine import images, latents, pipeline

    out = Path(args.out)
    common.check_out_dir(out)
    crop = images.parse_crop(args.crop) if args.crop else None
    vector = common.vector_library().load(args.age_vector)
    settings = common.render_settings(args, vector)
    model = common.load_model(args)
    latent = latents.load_latent(args.latent, num_ws=model.G.num_ws, w_dim=model.G.w_dim)
    fingerprint = latent.meta.get("model_fingerprint")
    if fingerprint and fingerprint != model.fingerprint and not args.force_model:
        from timemachine.errors import LatentError

        raise LatentError(f"{args.latent} was projected with another model (fingerprint {fingerprint}, this one is "
                          f"{model.fingerprint}); pass --force-model to render it anyway")
    pipeline.age_direction(model, vector, args.layers, args.force_model)
    photo = images.prepare_photo(args.photo, model.G.img_resolution, crop=crop) if args.photo else None

    with common.render_progress() as progress:
        result = pipeline.render_age_video(
            model, latent, vector, out, settings, layers=args.layers, force_model=args.force_model, photo=photo,
            gif=not args.no_gif, side_by_side=args.side_by_side, frames=args.png_frames, progress=progress,
            run_info={"latent": os.path.abspath(args.latent), "photo": os.path.abspath(args.photo) if args.photo else None})
    print(f"{result.run_info['render']['total_frames']} frames -> {result.files['video']}")
    return EXIT_OK
