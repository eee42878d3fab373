"""Time to quality: how many projection steps reach the LPIPS that the official 1000-step schedule reaches.

The official schedule's shape (lr ramp-up 5 %, cosine ramp-down over the last 25 %, w-noise decaying over
75 %) is kept and compressed into fewer steps; each run projects the same targets.  Targets are images the
generator makes from random latents with *random* noise (so, like a photo, the noise maps must be found
too).  Random weights (no real weights can be downloaded here) and a random VGG16: the figures describe this
optimisation problem, not real photos - say so when quoting them.

For each schedule: final LPIPS, the first step whose LPIPS is at or below the official run's final LPIPS,
and wall time (steps x measured seconds per step at this resolution).

Usage::

    python benchmarks/bench_time_to_quality.py                       # 256x256, 2 targets, 1000/500/300/200 steps
    python benchmarks/bench_time_to_quality.py --resolution 512 --schedules 1000,300
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--targets", type=int, default=2)
    parser.add_argument("--schedules", default="1000,500,300,200", help="step counts; the first is the reference")
    args = parser.parse_args()
    schedules = [int(s) for s in args.schedules.split(",")]

    warnings.simplefilter("ignore")
    import numpy as np
    import torch

    from bench_generator import build_generator
    from timemachine import projector as P
    from timemachine.device import tune_cpu_allocator
    from timemachine.perceptual import PerceptualDistance

    tune_cpu_allocator()
    G = build_generator(args.resolution)
    perceptual = PerceptualDistance("random")   # asked for by name: no real weights here
    gen = torch.Generator().manual_seed(11)
    z = torch.randn(args.targets, G.z_dim, generator=gen)
    torch.manual_seed(12)
    with torch.no_grad():
        targets = G(z, None, truncation_psi=0.7, noise_mode="random").clamp(-1, 1)
    w_stats = P.compute_w_stats(G)

    curves, seconds = {}, {}
    for steps in schedules:
        started = time.perf_counter()
        result = P.project(G, targets, P.ProjectorSettings(steps=steps), perceptual=perceptual, w_stats=w_stats)
        seconds[steps] = (time.perf_counter() - started) / steps
        curves[steps] = result.lpips_curve.mean(axis=1)           # mean LPIPS over the targets, per step
        print(f"{steps} steps: final LPIPS {curves[steps][-1]:.4f} ({seconds[steps]:.2f} s/step)", flush=True)

    reference = schedules[0]
    goal = curves[reference][-1]
    step_time = float(np.median(list(seconds.values())))
    print()
    print(f"resolution {args.resolution}, {args.targets} targets, random weights and VGG; "
          f"goal = LPIPS of the {reference}-step official schedule = {goal:.4f}; {step_time:.2f} s/step")
    print(f"{'schedule':>9} {'final LPIPS':>12} {'vs goal':>8} {'first step <= goal':>19} {'time to goal':>13}")
    for steps in schedules:
        reached = np.nonzero(curves[steps] <= goal)[0]
        first = int(reached[0]) + 1 if reached.size else None
        when = f"{first}" if first else "not reached"
        time_to = f"{first * step_time / 60:.1f} min" if first else "-"
        print(f"{steps:>9} {curves[steps][-1]:>12.4f} {curves[steps][-1] / goal:>8.3f} {when:>19} {time_to:>13}")


if __name__ == "__main__":
    main()
