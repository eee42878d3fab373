"""``timemachine render``: a projected latent walked along an age vector, as video."""

from __future__ import annotations

import argparse
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
    from timemachine.pipeline import RenderRequest

    out = Path(args.out)
    common.check_out_dir(out)
    crop = common.parse_crop(args.crop)
    settings = common.render_settings(args)
    pipe = common.load_pipeline(args)
    photo = pipe.prepare_photo(args.photo, crop=crop) if args.photo else None
    request = RenderRequest(latent=args.latent, edit=common.age_edit(args), render=settings,
                            outputs=common.video_outputs(args, out), photo=photo)
    pipe.check(request)
    with common.progress_bars(render=True) as bars:
        result = pipe.render(request, progress=bars)
    print(f"{result.run_info['render']['total_frames']} frames -> {result.files['video']}")
    return EXIT_OK
