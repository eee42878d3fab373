"""CPU speed of one projection step at 512x512, with a breakdown, against the official float32 path.

A projection step is: synthesise (G forward), LPIPS-VGG16 at 256x256 (VGG forward), backward through
both, Adam + noise renormalisation.  Measured on the AFHQ 512x512 architecture with random weights and a
random VGG16 (``PerceptualDistance('random')``: no weights can be downloaded here; speed does not depend
on the values).

Variants, each in its own worker process, taking turns round by round (best of all rounds is kept):

* ``official``  the official float32 path, re-created with timemachine's network (NVIDIA's code is not
                installed here): fused modulated convolutions (the official eval-mode rule for float32), the
                reference ops (STYLEGAN_OPS_IMPL=ref), contiguous (NCHW) activations, glibc's default
                allocator, the official projector's step otherwise.  (NVIDIA's own projector forced to float32
                was measured at ~3.9 s/step on this kind of machine, see issue #3: this stand-in is close to it.)
* ``ours``      timemachine's ``projector.project`` as shipped (CPU defaults, tuned allocator), float32;
* ``ours-bf16`` the same with ``precision='bf16'`` (generator and LPIPS-VGG16 in bfloat16; latent, noise maps,
                Adam and the loss in float32): what ``--precision auto`` runs on a CPU with native BF16.

Breakdown per step (ours variants; ``--no-breakdown`` skips it): G forward, VGG forward, VGG backward,
G backward, noise regulariser (forward + backward), optimiser, measured by running the step's phases
separately (``torch.autograd.grad`` to the image, then into G).

FLOP efficiency: the step's FLOPs are counted with ``torch.utils.flop_counter`` (G and VGG forward, and
their input-gradient backward: no weight gradients are needed); the lower bound is that count divided by
the best GEMM rate measured in the same run: sgemm for float32 variants, bf16 GEMM (float32 accumulation)
for ``ours-bf16``.

Usage::

    python benchmarks/bench_projector.py                  # 512x512, 4 rounds of 3 steps, with the breakdown
                                                          # (ours: 3 steps after a first one, timed alike)
    python benchmarks/bench_projector.py --no-breakdown
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_generator import bf16_gemm_gflops, build_generator, sgemm_gflops  # noqa: E402

PRECISION = {"official": None, "ours": "fp32", "ours-bf16": "bf16"}


def make_inputs(resolution: int):
    import torch

    warnings.simplefilter("ignore")
    from timemachine.perceptual import PerceptualDistance

    G = build_generator(resolution)
    torch.manual_seed(0)
    perceptual = PerceptualDistance("random")   # asked for by name: no real weights here
    target = torch.rand(1, 3, resolution, resolution) * 2 - 1
    return G, perceptual, target


def official_step_fn(G, perceptual, target, fused_modconv):
    """One step of the official projector's loop (W space), with the modulation path given and contiguous
    (NCHW) activations, as the official code lays them out in float32."""
    import torch

    from timemachine import projector as P

    w_avg, w_std = P.compute_w_stats(G, 1000)
    w_opt = w_avg.clone().requires_grad_(True)
    noise = {name: torch.randn([1, 1, res, res]).requires_grad_(True) for name, res in P._noise_shapes(G).items()}
    optimizer = torch.optim.Adam([w_opt] + list(noise.values()), lr=0.01)
    with torch.no_grad():
        target_features = perceptual.features(target)

    def step():
        ws = (w_opt + torch.randn_like(w_opt) * w_std * 0.01).repeat([1, G.num_ws, 1])
        synth = G.synthesis(ws, noise_mode="const", noise=noise, fused_modconv=fused_modconv, channels_last=False)
        loss = perceptual.distance(perceptual.features(synth), target_features).sum() \
            + P.noise_regularization(noise).sum() * 1e5
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for t in noise.values():
                t -= t.mean()
                t *= t.square().mean().rsqrt()

    return step


def count_step_flops(G, perceptual, target) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from timemachine import projector as P

    ws = torch.zeros(1, G.num_ws, G.w_dim, requires_grad=True)
    noise = {name: torch.randn([1, 1, res, res]).requires_grad_(True) for name, res in P._noise_shapes(G).items()}
    with torch.no_grad():
        target_features = perceptual.features(target)
    with FlopCounterMode(display=False) as counter:
        synth = G.synthesis(ws, noise_mode="const", noise=noise)
        perceptual.distance(perceptual.features(synth), target_features).sum().backward()
    return counter.get_total_flops()


def worker(variant: str, resolution: int, steps: int, breakdown: bool, conn) -> None:

    from timemachine import projector as P

    os.environ["STYLEGAN_OPS_IMPL"] = "ref" if variant == "official" else "auto"
    if variant != "official":
        from timemachine.device import tune_cpu_allocator

        tune_cpu_allocator()
    G, perceptual, target = make_inputs(resolution)
    flops = count_step_flops(G, perceptual, target)
    if variant == "official":
        step = official_step_fn(G, perceptual, target, fused_modconv=True)

        def run_steps() -> float:
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            return (time.perf_counter() - t0) / steps
    else:
        stats = P.compute_w_stats(G, 1000)
        settings = P.ProjectorSettings(steps=steps + 1, w_avg_samples=1000, precision=PRECISION[variant])

        def run_steps() -> float:
            # Steady-state steps: from the end of the first step to the end of the last one, as the official
            # variant's loop is timed (project()'s set-up - w_avg, target features, the checkpoint identity -
            # is the fixed cost, see bench_startup.py).
            ends = []
            P.project(G, target, settings, perceptual=perceptual, w_stats=stats,
                      callback=lambda event: ends.append(time.perf_counter()))
            return (ends[-1] - ends[0]) / steps
    run_steps()  # warm-up
    conn.send(("ready", flops))
    while True:
        message = conn.recv()
        if message == "stop":
            return
        per_step = run_steps()
        parts = measure_breakdown(G, perceptual, target, PRECISION[variant]) if breakdown and variant != "official" \
            else None
        conn.send((per_step, parts, sgemm_gflops(), bf16_gemm_gflops()))


def measure_breakdown(G, perceptual, target, precision: str) -> dict[str, float]:
    """Seconds of each phase of one step in ``precision``, measured separately."""
    import torch

    from timemachine import projector as P

    ws_leaf = torch.zeros(1, 1, G.w_dim, requires_grad=True)
    noise = {name: torch.randn([1, 1, res, res]).requires_grad_(True) for name, res in P._noise_shapes(G).items()}
    optimizer = torch.optim.Adam([ws_leaf] + list(noise.values()), lr=0.01)
    with torch.no_grad():
        target_features = perceptual.features(target, precision)
    t = {}
    s = time.perf_counter()
    synth = G.synthesis(ws_leaf.repeat(1, G.num_ws, 1), noise_mode="const", noise=noise, precision=precision)
    t["G forward"] = time.perf_counter() - s
    s = time.perf_counter()
    synth_leaf = synth.detach().requires_grad_(True)
    loss = perceptual.distance(perceptual.features(synth_leaf, precision), target_features).sum()
    t["VGG forward"] = time.perf_counter() - s
    s = time.perf_counter()
    (grad_img,) = torch.autograd.grad(loss, [synth_leaf])
    t["VGG backward"] = time.perf_counter() - s
    s = time.perf_counter()
    synth.backward(grad_img)
    t["G backward"] = time.perf_counter() - s
    s = time.perf_counter()
    (P.noise_regularization(noise).sum() * 1e5).backward()
    t["noise regulariser"] = time.perf_counter() - s
    s = time.perf_counter()
    optimizer.step()
    with torch.no_grad():
        for v in noise.values():
            v -= v.mean()
            v *= v.square().mean().rsqrt()
    t["optimiser"] = time.perf_counter() - s
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="steps per round and variant")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--breakdown", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the phases of a step (ours); on by default")
    parser.add_argument("--variants", default="official,ours,ours-bf16")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]

    ctx = mp.get_context("spawn")
    workers = {}
    for variant in variants:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(variant, args.resolution, args.steps, args.breakdown, child),
                           daemon=True)
        proc.start()
        workers[variant] = (proc, parent)
    flops = {}
    for variant, (_, conn) in workers.items():
        _, flops[variant] = conn.recv()
    results = run_rounds(workers, variants, args.rounds)
    for proc, conn in workers.values():
        conn.send("stop")
        proc.join(timeout=10)
    report(args, variants, flops[variants[0]] / 1e9, *results)


def run_rounds(workers: dict, variants: list[str], rounds: int) -> tuple:
    """Interleaved rounds: every variant's worker times its steps in turn.  Returns (best s/step per variant,
    best per phase per variant, best sgemm GFLOP/s, best bf16 GFLOP/s, load averages sampled each round)."""
    best = {v: float("inf") for v in variants}
    best_parts: dict[str, dict[str, float]] = {}
    peak = bf16_peak = 0.0
    load = [os.getloadavg()[0]]
    for r in range(rounds):
        for variant in variants:
            _, conn = workers[variant]
            conn.send("round")
            per_step, parts, gemm, bf16_gemm = conn.recv()
            best[variant] = min(best[variant], per_step)
            peak, bf16_peak = max(peak, gemm), max(bf16_peak, bf16_gemm)
            for k, v in (parts or {}).items():
                best_parts.setdefault(variant, {})[k] = min(best_parts.get(variant, {}).get(k, float("inf")), v)
        load.append(os.getloadavg()[0])
        print(f"round {r + 1}/{rounds}: " + "  ".join(f"{v} {best[v]:.2f} s/step" for v in variants), flush=True)
    return best, best_parts, peak, bf16_peak, load


def report(args: argparse.Namespace, variants: list[str], gflop: float, best: dict, best_parts: dict,
           peak: float, bf16_peak: float, load: list[float]) -> None:
    """Print the table: time per step, achieved GFLOP/s against the GEMM peaks, ratios, breakdowns."""
    print()
    print(f"resolution {args.resolution}; best of {args.rounds} interleaved rounds of {args.steps} steps; load "
          f"average {min(load):.1f}-{max(load):.1f} (1 min, sampled each round)")
    print(f"step FLOPs (G + VGG forward and input gradients): {gflop:.0f} GFLOP; best GEMM: sgemm {peak:.0f} "
          f"GFLOP/s (lower bound {gflop / peak:.2f} s/step), bf16 {bf16_peak:.0f} GFLOP/s (lower bound "
          f"{gflop / bf16_peak:.2f} s/step)")
    print()
    print(f"{'variant':<10} {'s/step':>8} {'GFLOP/s':>9} {'x lower bound':>20} {'1000 steps':>11}")
    for v in variants:
        is_bf16 = PRECISION[v] == "bf16"
        bound = gflop / (bf16_peak if is_bf16 else peak)
        gemm = "bf16" if is_bf16 else "sgemm"
        print(f"{v:<10} {best[v]:>8.2f} {gflop / best[v]:>9.0f} {best[v] / bound:>8.2f} ({gemm} GEMM) "
              f"{best[v] * 1000 / 60:>9.1f} min")
    print()
    for v in variants:
        if v != "official" and "official" in best:
            print(f"{v} vs official: {best['official'] / best[v]:.2f}x faster per step")
    for variant, parts in best_parts.items():
        total = sum(parts.values())
        print(f"\nbreakdown of one step ({variant}, each phase best of all rounds):")
        for k, v in parts.items():
            print(f"  {k:<17} {v * 1e3:7.0f} ms  {100 * v / total:5.1f} %")


if __name__ == "__main__":
    main()
