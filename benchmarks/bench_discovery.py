"""Speed of age-direction discovery: rendering samples at full and reduced resolution, and CLIP labelling.

Builds the AFHQ 512x512 architecture with random weights (``bench_generator.build_generator``) and measures on
this machine's CPU (or ``--device``):

* ``render``   samples/s of :func:`timemachine.discover.render` (W latent -> uint8 image, constant noise,
               batches of ``--batch-size``) at the full 512 px and at the reduced resolutions of
               ``--resolutions`` (the synthesis stops at that block of the skip generator), and the forward
               FLOPs per sample at each (``torch.utils.flop_counter``).  All resolutions are measured once per
               round, in turn, for ``--rounds`` rounds; the best round is kept.
* ``change``   what stopping early changes: the reduced image against the full image area-downsampled to the
               same size (PSNR, mean absolute difference in 0-255 levels) over ``--change-samples`` samples.
               With random weights the finest blocks add arbitrary texture, so this bounds the change of a
               trained generator only loosely; it is reported, not interpreted.
* ``clip``     CLIP image-encoding cost per image (ms) of the candidate architectures ``--clip-models`` with
               random weights (timing does not depend on the weights), at batch ``--batch-size``, on images of
               256 px resized to the network's input, best of rounds; and the one-off cost of encoding the
               prompts (text tower) per prompt.
* ``total``    discovery throughput (samples rendered and labelled per second) and minutes for 1000 samples,
               from the best render and labelling times of this run, at full and reduced resolution.

The machine may be shared: timings are best-of interleaved rounds, so noise hits all variants alike.

Usage::

    python benchmarks/bench_discovery.py                     # everything
    python benchmarks/bench_discovery.py --parts render,clip --rounds 5 --clip-models ViT-B-32,ViT-B-16,RN50
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="render,change,clip,total")
    parser.add_argument("--resolutions", default="256,128", help="reduced resolutions to compare with 512")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--change-samples", type=int, default=16)
    parser.add_argument("--clip-models", default="ViT-B-32,ViT-B-16,RN50")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))

    import torch

    from bench_generator import build_generator
    from timemachine import discover
    from timemachine.device import prepare_device
    from timemachine.perceptual import RandomWeightsWarning

    warnings.simplefilter("ignore", RandomWeightsWarning)
    device = prepare_device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    G = build_generator(512).to(device)
    resolutions = [512] + [int(r) for r in args.resolutions.split(",") if r]
    w = discover.sample_latents(G, 0, range(args.batch_size), 0.7)
    discover.render(G, w, 512, args.batch_size)                           # warm-up (allocator, kernels)

    render_s = bench_render(G, w, resolutions, device, args) if parts & {"render", "total"} else {}
    if "change" in parts:
        bench_change(G, resolutions, args)
    label_s = bench_clip(G, device, args) if parts & {"clip", "total"} else {}
    if "total" in parts and render_s and label_s:
        arch = "ViT-B-32" if "ViT-B-32" in label_s else next(iter(label_s))
        for r in resolutions:
            per_sample = render_s[r] + label_s[arch]
            print(f"discovery at {r:4d} px with {arch}: {1 / per_sample:.2f} samples/s rendered and labelled, "
                  f"{1000 * per_sample / 60:.1f} min for 1000 samples")
    return 0


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_render(G, w, resolutions: list[int], device, args) -> dict[int, float]:
    """FLOPs per sample and the best seconds per sample of rendering at each resolution; prints both."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from timemachine import discover

    for r in resolutions:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            discover.render(G, w[:1], r, 1)
        print(f"render {r:4d} px: {counter.get_total_flops() / 1e9:7.1f} GFLOP per sample")
    best = {r: float("inf") for r in resolutions}
    for _ in range(args.rounds):
        for r in resolutions:
            sync(device)
            t0 = time.perf_counter()
            discover.render(G, w, r, args.batch_size)
            sync(device)
            best[r] = min(best[r], (time.perf_counter() - t0) / len(w))
    for r in resolutions:
        print(f"render {r:4d} px: {1 / best[r]:7.2f} samples/s ({best[r] * 1000:7.1f} ms per sample), "
              f"{best[512] / best[r]:.2f}x the full resolution's rate")
    return best


def bench_change(G, resolutions: list[int], args) -> None:
    """Prints how far each reduced resolution's image is from the full one, area-downsampled."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from timemachine import discover

    ws = discover.sample_latents(G, 1, range(args.change_samples), 0.7)
    full = discover.render(G, ws, 512, args.batch_size)
    for r in resolutions[1:]:
        part = discover.render(G, ws, r, args.batch_size).astype(np.float64)
        x = torch.from_numpy(full).permute(0, 3, 1, 2).double()
        down = F.interpolate(x, size=(r, r), mode="area").permute(0, 2, 3, 1).numpy()
        mse = ((part - down) ** 2).mean()
        psnr = 10 * np.log10(255 ** 2 / mse) if mse > 0 else float("inf")
        print(f"change {r:4d} px: the block's image vs the 512 px image area-downsampled: PSNR {psnr:.2f} dB, "
              f"mean |difference| {np.abs(part - down).mean():.1f} levels (random weights)")


def bench_clip(G, device, args) -> dict[str, float]:
    """The best seconds per image of labelling 256 px images with each CLIP architecture; prints them."""
    from timemachine import clip_labeller, discover

    images = discover.render(G, discover.sample_latents(G, 2, range(args.batch_size), 0.7), 256,
                             args.batch_size)
    label_s = {}
    for arch in args.clip_models.split(","):
        t0 = time.perf_counter()
        labeller = clip_labeller.ClipLabeller("random", species="dog", architecture=arch, device=device,
                                              batch_size=args.batch_size)
        build = time.perf_counter() - t0
        prompts = len(labeller.prompts["young"]) + len(labeller.prompts["adult"])
        labeller(images)                                                    # warm-up
        best = float("inf")
        for _ in range(args.rounds):
            sync(device)
            t0 = time.perf_counter()
            labeller(images)
            sync(device)
            best = min(best, (time.perf_counter() - t0) / len(images))
        label_s[arch] = best
        print(f"clip {arch:9}: {best * 1000:7.1f} ms per image; building it and encoding its {prompts} prompts "
              f"took {build:.1f} s")
    return label_s


if __name__ == "__main__":
    sys.exit(main())
