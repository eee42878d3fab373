"""What alignment buys, and what it costs: projection LPIPS with and without it, and the eye detector's CPU time.

Part 1, projection.  Targets are images of an AFHQ-architecture generator (random weights: no real weights can
be downloaded here) at a small resolution and, by default, an eighth of AFHQ's width from 16x16 up (512
channels up to 8x8), so that the default run stays short on 2 cores (``--channel-base 32768``: full width).
Each target is turned into a "photo": rotated, rescaled and shifted onto a larger canvas (beyond the target,
the canvas is the target mirrored and blurred: more of the same scene, out of focus).  The generator's own
images are aligned faces by definition, so the eyes of a target are put at AFHQ's framing
(timemachine.align.DEFAULT_FRAMING) and their true positions in the photo follow from the transform that made
it.  The photo is then prepared five ways and projected for N steps:

    target       the generator's image itself (the best any framing can do)
    centre       the centre square of the photo (what timemachine did before alignment)
    eyes         aligned on the true eye positions
    eyes+noise   aligned on eye positions off by a click's error (Gaussian, sd 3 % of the eye distance)
    framing off  aligned on the true eyes, but to a framing off by about its measured uncertainty (eyes 10 %
                 closer together, 2 % of the side lower than where the generator has them)

and the final LPIPS (projection vs what it was given) is reported, with the LPIPS of each prepared image
against the target (how far the framing itself is from the generator's).  VGG16 is random too: the figures
compare framings on this optimisation problem; they are not the LPIPS of real photos.

Part 2, detector time per photo on the CPU: the real networks when their weights are in the zoo
(``timemachine weights download animal-boxes animal-keypoints``), otherwise ONNX stand-ins with the same
signatures and about the same multiply-adds (tests/onnx_standins.py: 3.1 G for YOLOX-Tiny at 416, 2.7 G for
RTMPose-m at 256) - which of the two ran is printed; real networks (depthwise convolutions, attention) may
run faster or slower than a plain convolution stack of the same arithmetic.  The cut itself (align.cut at 512,
and at 256 without supersampling, as a UI preview would) is timed too.  Best of N runs (the machine may be
shared; the load average is printed).

Usage::

    python benchmarks/bench_alignment.py                         # 64x64, 3 targets, 100 steps; detector timing
    python benchmarks/bench_alignment.py --resolution 128 --steps 300 --targets 6 --channel-base 32768
    python benchmarks/bench_alignment.py --part detector
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))


def make_photo(target, rng, *, scale_range=(1.4, 2.4), max_degrees=30.0):
    """Put uint8 [R, R, 3] ``target`` into a photo of 4R x 3R: rotated, scaled, shifted.  Returns the photo and
    the map from target coordinates (pixel edges, as timemachine.align) to photo coordinates."""
    import numpy as np
    from PIL import Image, ImageFilter

    r = target.shape[0]
    width, height = 4 * r, 3 * r
    scale = rng.uniform(*scale_range)
    angle = math.radians(rng.uniform(-max_degrees, max_degrees))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    half = scale * r / 2 * (abs(math.cos(angle)) + abs(math.sin(angle)))   # half extent of the rotated target
    centre = np.array([rng.uniform(half * 0.6, width - half * 0.6), rng.uniform(half * 0.6, height - half * 0.6)])

    def to_photo(q):
        return centre + scale * (np.asarray(q, np.float64) - r / 2) @ rot.T

    # Photo pixel p -> target q = rot^T (p - centre) / scale + r/2; the target mirrored far enough to cover all.
    pad = 4 * r
    mirrored = np.pad(target, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    inverse = rot.T / scale
    offset = -inverse @ centre + r / 2 + pad
    coefficients = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    photo = Image.fromarray(mirrored).transform((width, height), Image.Transform.AFFINE, coefficients,
                                                resample=Image.Resampling.BICUBIC)
    # Beyond the target: the mirrored scene, out of focus (no second sharp face for a centre crop to catch).
    inside = np.zeros(mirrored.shape[:2], np.uint8)
    inside[pad:pad + r, pad:pad + r] = 255
    mask = Image.fromarray(inside).transform((width, height), Image.Transform.AFFINE, coefficients,
                                             resample=Image.Resampling.BILINEAR)
    background = photo.filter(ImageFilter.GaussianBlur(scale * r / 12))
    return np.asarray(Image.composite(photo, background, mask), dtype=np.uint8).copy(), to_photo


def projection_part(args) -> None:
    import numpy as np
    import torch

    from bench_generator import build_generator
    from timemachine import align, images, projector
    from timemachine.perceptual import PerceptualDistance

    R = args.resolution
    G = build_generator(R, args.channel_base)
    perceptual = PerceptualDistance("random")
    with torch.no_grad():
        z = torch.randn(args.targets, G.z_dim, generator=torch.Generator().manual_seed(5))
        generated = images.from_tensor(G(z, None, truncation_psi=0.7, noise_mode="const"))
    framing = align.DEFAULT_FRAMING
    half = framing.eye_distance / 2
    canonical_eyes = np.array([[framing.eyes_x - half, framing.eyes_y], [framing.eyes_x + half, framing.eyes_y]]) * R

    rng = np.random.default_rng(args.seed)
    # A framing off by about its own uncertainty: eyes 10 % closer together and 2 % of the side lower.
    off = dataclasses.replace(framing, name="off", eye_distance=framing.eye_distance * 0.9,
                              eyes_y=framing.eyes_y + 0.02)
    prepared = {"target": [], "centre": [], "eyes": [], "eyes+noise": [], "framing off": []}
    for target in generated:
        photo, to_photo = make_photo(target, rng)
        eyes = to_photo(canonical_eyes)
        distance = float(np.hypot(*(eyes[1] - eyes[0])))
        noisy = eyes + rng.normal(0, 0.03 * distance, eyes.shape)
        prepared["target"].append(target)
        prepared["centre"].append(align.align_photo(photo, R, method="centre").image)
        prepared["eyes"].append(align.align_photo(photo, R, method="eyes", eyes=tuple(map(tuple, eyes))).image)
        prepared["eyes+noise"].append(align.align_photo(photo, R, method="eyes",
                                                        eyes=tuple(map(tuple, noisy))).image)
        prepared["framing off"].append(align.align_photo(photo, R, method="eyes", eyes=tuple(map(tuple, eyes)),
                                                         framing=off).image)

    w_stats = projector.compute_w_stats(G, num_samples=args.w_avg_samples)
    settings = projector.ProjectorSettings(steps=args.steps, w_avg_samples=args.w_avg_samples)
    reference = images.to_tensor(np.stack(prepared["target"]))
    # One batch for all inputs: each latent and noise map is optimised on its own (Adam is per element and the
    # losses add up), so this is the same as separate runs, in less time.
    batch = images.to_tensor(np.concatenate([np.stack(v) for v in prepared.values()]))
    with torch.no_grad():
        gaps = perceptual(batch, reference.repeat(len(prepared), 1, 1, 1)).flatten().numpy()
    started = time.perf_counter()
    result = projector.project(G, batch, settings, perceptual=perceptual, w_stats=w_stats)
    seconds = time.perf_counter() - started
    finals = result.lpips_curve[-1]
    n = args.targets
    rows = [(name, finals[i * n:(i + 1) * n].tolist(), gaps[i * n:(i + 1) * n].tolist())
            for i, name in enumerate(prepared)]
    print()
    print(f"projection at {R}x{R}, {args.targets} targets, {args.steps} steps ({seconds:.0f} s), random generator "
          f"(AFHQ architecture, channel_base {args.channel_base}) and VGG16; photos rotated +-30 deg, scaled "
          "1.4-2.4x, shifted")
    print(f"{'input':11} {'LPIPS after N steps: mean':>26} {'median':>8} {'vs target':>10} "
          f"{'input vs target (LPIPS)':>24}")
    base = statistics.mean(rows[0][1])
    for name, final, gap in rows:
        print(f"{name:11} {statistics.mean(final):>26.4f} {statistics.median(final):>8.4f} "
              f"{statistics.mean(final) / base:>9.2f}x {statistics.mean(gap):>24.4f}")


def detector_part(args) -> None:
    import numpy as np

    from timemachine import align, detect
    from timemachine.env import Environment
    from timemachine.zoo import Zoo

    zoo = Zoo(Environment.from_environ())
    present = all(zoo.zoo_path(zoo.entry(n)).is_file() for n in (detect.BOX_MODEL, detect.KEYPOINT_MODEL))
    if present:
        detector = detect.load_detector(zoo, download=False)
        what = "the real networks (zoo weights)"
    else:
        import onnx_standins

        box_model, keypoint_model = onnx_standins.heavy_box_standin(416), onnx_standins.heavy_keypoint_standin(256)
        detector = detect.OnnxAnimalDetector(box_model, keypoint_model)
        what = ("ONNX stand-ins of the real networks' signatures and multiply-adds (the zoo weights are not here): "
                f"{onnx_standins.macs(box_model) / 1e9:.1f} G + "
                f"{onnx_standins.macs(keypoint_model) / 1e9:.1f} G multiply-adds")
    rng = np.random.default_rng(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"eye detector on the CPU ({os.cpu_count()} cores, load average {load:.1f} at the start), {what}; "
          f"best of {args.repeats} runs")
    print(f"{'photo':>11} {'boxes':>8} {'keypoints':>10} {'detector':>9} {'align.cut 512':>14} "
          f"{'preview 256 (supersample 1)':>28}")
    for width, height in ((1024, 768), (4032, 3024)):
        img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        box = np.array([width * 0.25, height * 0.2, width * 0.75, height * 0.9])
        detector(img)  # warm-up
        t_boxes, t_keypoints, t_total, t_cut, t_preview = [], [], [], [], []
        crop = align.crop_for_eyes((width * 0.4, height * 0.45), (width * 0.6, height * 0.47))
        for _ in range(args.repeats):
            started = time.perf_counter()
            detector.boxes(img)
            t_boxes.append(time.perf_counter() - started)
            started = time.perf_counter()
            detector.keypoints(img, box, 0.9, "dog")
            t_keypoints.append(time.perf_counter() - started)
            started = time.perf_counter()
            detector(img)
            t_total.append(time.perf_counter() - started)
            started = time.perf_counter()
            align.cut(img, crop, 512)
            t_cut.append(time.perf_counter() - started)
            started = time.perf_counter()
            align.cut(img, crop, 256, supersample=1)
            t_preview.append(time.perf_counter() - started)
        ms = [1000 * min(t) for t in (t_boxes, t_keypoints, t_total, t_cut, t_preview)]
        print(f"{width:>5}x{height:<5} {ms[0]:>6.0f}ms {ms[1]:>8.0f}ms {ms[2]:>7.0f}ms {ms[3]:>12.0f}ms "
              f"{ms[4]:>26.0f}ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "projection", "detector"), default="all")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--channel-base", type=int, default=4096, help="32768 = AFHQ's full width")
    parser.add_argument("--targets", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--w-avg-samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.part in ("all", "projection"):
        projection_part(args)
        print()
    if args.part in ("all", "detector"):
        detector_part(args)


if __name__ == "__main__":
    main()
