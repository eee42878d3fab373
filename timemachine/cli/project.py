"""``timemachine project``: find the latent code of a pet photo."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from timemachine.cli import EXIT_OK, Terminated, common
from timemachine.errors import TimemachineError

HELP = "project photos into the generator's latent space (W or W+), optionally with pivotal tuning"
DESCRIPTION = """\
Find the latent code whose image is your pet: the official StyleGAN2-ADA projector (LPIPS on VGG16 features
plus noise regularisation, Adam with the official schedule), in W (one latent shared by all layers, best for
age editing) or W+ (one latent per layer, closer reconstructions).  --pti then fine-tunes a copy of the
generator around the found latent (pivotal tuning) for a closer match still.

The photo is cropped to a square (centred, or --crop X,Y,SIZE in pixels of the upright photo) and resized to
the model's resolution.  Several photos are projected together as one batch.

Writes into --out:  projected_w.npz (the official format: key 'w' [1, num_ws, w_dim], plus the optimised
noise; with --pti also projected_w.pti.safetensors), projection.png (the reconstruction), target.png (the
photo as projected) and projection.json (settings, metrics, timings).  With several photos, one
sub-directory per photo.  Projections are cached: projecting the same photo with the same model and
settings again is instant.

Interrupted?  A checkpoint is kept in --out every 50 steps; run the same command with --resume.
"""


def register(subparsers, formatter) -> None:
    parser = subparsers.add_parser("project", help=HELP, description=DESCRIPTION, formatter_class=formatter)
    parser.add_argument("photos", nargs="+", metavar="PHOTO", help="photo file(s): JPEG, PNG, WebP, ...")
    common.add_model_arguments(parser)
    common.add_projection_arguments(parser)
    parser.add_argument("--crop", metavar="X,Y,SIZE", help="square crop box in pixels (default: centred)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted projection in --out")
    parser.set_defaults(handler=run)


def _output_dirs(out: Path, photos: list[str]) -> list[Path]:
    """One photo: --out itself; several: --out/<photo stem>, made unique and safe."""
    if len(photos) == 1:
        return [out]
    dirs, used = [], set()
    for photo in photos:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(photo).stem).strip("._") or "photo"
        name, k = stem, 2
        while name in used:
            name, k = f"{stem}-{k}", k + 1
        used.add(name)
        dirs.append(out / name)
    return dirs


def run(args: argparse.Namespace) -> int:
    from timemachine import images, pipeline

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise TimemachineError(f"--out {out} exists and is not a directory")
    crop = images.parse_crop(args.crop) if args.crop else None
    settings, pti_settings = common.projection_settings(args)

    # Everything that can fail on bad input happens before anything is written.
    model = common.load_model(args)
    settings = pipeline.with_resolved_precision(settings, model)
    photos = [images.prepare_photo(p, model.G.img_resolution, crop=crop) for p in args.photos]
    perceptual = common.load_perceptual(args, model.device)
    cache = None if args.no_cache else pipeline.ProjectionCache(pipeline.cache_root())

    out.mkdir(parents=True, exist_ok=True)
    checkpoint = str(out / ".projection-checkpoint.pt")
    if not args.resume and os.path.exists(checkpoint):
        os.remove(checkpoint)
    with common.projection_progress(settings, pti_settings, len(photos)) as callback:
        try:
            results = pipeline.project_images(model, photos, settings, perceptual, pti_settings=pti_settings,
                                              cache=cache, callback=callback, checkpoint_path=checkpoint,
                                              resume=args.resume)
        except (KeyboardInterrupt, Terminated) as exc:
            if os.path.exists(checkpoint):
                exc.args = (f"{'interrupted' if isinstance(exc, KeyboardInterrupt) else 'terminated'}; run the "
                            "same command with --resume to continue from the last checkpoint",)
            raise

    for photo, directory, result in zip(args.photos, _output_dirs(out, list(args.photos)), results):
        summary = {"photo": os.path.abspath(photo), "crop": str(crop) if crop else "centre",
                   "model": model.spec, "model_fingerprint": model.fingerprint,
                   "settings": settings.to_dict(), "pti_settings": pti_settings.to_dict() if pti_settings else None}
        paths = pipeline.write_projection(directory, result, summary)
        m = result.metrics
        note = " (from cache)" if m["cached"] else ""
        pti = (f"; before PTI: LPIPS {m['lpips_before_pti']:.4f}, PSNR {m['psnr_before_pti']:.2f} dB"
               if "lpips_before_pti" in m else "")
        print(f"{photo}: LPIPS {m['lpips']:.4f}, PSNR {m['psnr']:.2f} dB{pti}{note} -> {paths['latent']}")
    return EXIT_OK
