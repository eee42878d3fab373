"""``timemachine project``: find the latent code of a pet photo."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from timemachine.cli import EXIT_OK, common

HELP = "project photos into the generator's latent space (W or W+), optionally with pivotal tuning"
DESCRIPTION = """\
Find the latent code whose image is your pet: the official StyleGAN2-ADA projector (LPIPS on VGG16 features
plus noise regularisation, Adam with the official schedule), in W (one latent shared by all layers, best for
age editing) or W+ (one latent per layer, closer reconstructions).  --pti then fine-tunes a copy of the
generator around the found latent (pivotal tuning) for a closer match still.

The face is framed the way the model's training faces were: from the two eyes (--eyes, or found by the eye
detector: --crop auto, the default when its weights are downloaded), rotated so the eyes are level, scaled and
placed as in AFHQ; or the centre square (--crop centre), or a square of your own (--crop X,Y,SIZE in pixels of
the upright photo).  projection.json records what was done.  Several photos are projected together,
--batch-size at a time.

Writes into --out:  projected_w.npz (the official format: key 'w' [1, num_ws, w_dim], plus the optimised
noise; with --pti also projected_w.pti.safetensors), projection.png (the reconstruction), target.png (the
photo as projected) and projection.json (settings, metrics, timings).  With several photos, one
sub-directory per photo.  Projections are cached: projecting the same photo with the same model and
settings again is instant.

Interrupted?  A checkpoint is kept in --out every 50 steps; run the same command with --resume.

With --broker redis://... (or TIMEMACHINE_BROKER_URL set) the photos are projected by the queue workers
(`timemachine worker`) that share TIMEMACHINE_HOME with this machine; the same files are written into --out.
"""


def register(subparsers, formatter) -> None:
    parser = subparsers.add_parser("project", help=HELP, description=DESCRIPTION, formatter_class=formatter)
    parser.add_argument("photos", nargs="+", metavar="PHOTO", help="photo file(s): JPEG, PNG, WebP, ...")
    common.add_model_arguments(parser)
    common.add_projection_arguments(parser)
    common.add_framing_arguments(parser, several=True)
    parser.add_argument("--batch-size", type=int, default=common.PROJECTOR.batch_size, dest="projection_batch_size",
                        help="photos projected together (memory grows with it; results do not depend on it)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted projection in --out")
    common.add_queue_arguments(parser)
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
    from timemachine.pipeline import write_projection

    out = Path(args.out)
    common.check_out_dir(out)
    framing = common.alignments(args, list(args.photos))
    common.projection_settings(args)

    broker = common.broker_url(args)

    # Everything that can fail on bad input happens before anything is written (with a broker the model is
    # loaded here on the CPU only to prepare the photos and check the request; the workers project them).
    pipe = common.load_pipeline(args, device="cpu" if broker else None)
    photos = [pipe.prepare_photo(p, alignment=framing[p]) for p in args.photos]
    request = common.projection_request(args, photos)
    pipe.check(request)
    if broker:
        with common.progress_bars(len(photos)) as bars:
            results = common.run_on_workers(args, broker, "project", request, bars)
        out.mkdir(parents=True, exist_ok=True)
    else:
        common.load_perceptual(pipe)
        out.mkdir(parents=True, exist_ok=True)
        request = common.projection_request(args, photos, out)
        with common.progress_bars(len(photos)) as bars, common.resumable(request.checkpoint):
            results = pipe.project(request, progress=bars)

    for name, photo in zip(args.photos, photos):
        common.print_notices(name, photo)
    for photo, directory, result in zip(args.photos, _output_dirs(out, list(args.photos)), results):
        summary = {"photo": result.photo_info.get("path", os.path.abspath(photo)), "crop": result.photo_info["crop"],
                   "alignment": result.photo_info.get("alignment"),
                   "model": pipe.model.spec, "model_fingerprint": pipe.model.fingerprint,
                   "settings": request.settings.to_dict(),
                   "pti_settings": request.pti.to_dict() if request.pti else None}
        paths = write_projection(directory, result, summary)
        m = result.metrics
        note = " (from cache)" if m["cached"] else ""
        pti = (f"; before PTI: LPIPS {m['lpips_before_pti']:.4f}, PSNR {m['psnr_before_pti']:.2f} dB"
               if "lpips_before_pti" in m else "")
        print(f"{photo}: LPIPS {m['lpips']:.4f}, PSNR {m['psnr']:.2f} dB{pti}{note} -> {paths['latent']}")
    return EXIT_OK
