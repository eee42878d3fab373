"""GPU speed of synthesis, one projection step and rendering, by precision, next to the official path.

Run by ``benchmarks/gpu_check.sh`` on a machine with a CUDA GPU (it also runs on the CPU with ``--device cpu``,
which only checks that it works: the CPU figures come from bench_generator/bench_projector/bench_render).
AFHQ 512x512 architecture, random weights, random VGG16 (``TIMEMACHINE_VGG_WEIGHTS=random``).

Precisions (``G.synthesis(precision=...)``, the projector's and the renderer's ``precision`` setting):

* ``fp16``  the official float16 blocks (top 4 resolutions) with the custom CUDA kernels: NVIDIA's default on
            CUDA, and what ``--precision auto`` runs on a GPU;
* ``fp32``  float32 everywhere (NVIDIA's ``force_fp32=True``), TF32 off;
* ``bf16``  timemachine's bfloat16 path (made for CPUs; on a GPU, for comparison).

The official code: with ``--official DIR`` (a checkout of NVlabs/stylegan2-ada-pytorch, or
``$OFFICIAL_STYLEGAN2_ADA``) NVIDIA's own ``training.networks.Generator`` is built with the same weights and
its synthesis is timed beside ours (forward, and forward + backward w.r.t. ws), in its default precision and
with ``force_fp32``.  Without it, the ``fp16`` and ``fp32`` rows are the official algorithm and precision run by
our code (the same CUDA kernels, the official modulation path and memory layout on CUDA).

Every variant is measured once per round, in turn; the best of ``--rounds`` is kept (CUDA-synchronised).

Usage::

    python benchmarks/bench_gpu.py                       # cuda, 512x512, 3 rounds
    python benchmarks/bench_gpu.py --official ~/src/stylegan2-ada-pytorch
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PRECISIONS = ("fp16", "fp32", "bf16")


def timed(fn, device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def official_generator(checkout: str, G, device):
    """NVIDIA's Generator from ``checkout`` with G's configuration and weights (names are the same)."""
    sys.path.insert(0, os.path.abspath(checkout))
    from training.networks import Generator as OfficialGenerator  # noqa: E402  (NVIDIA's code, not ours)

    official = OfficialGenerator(**copy.deepcopy(G.init_kwargs))
    missing, unexpected = official.load_state_dict(G.state_dict(), strict=False)
    if missing or unexpected:
        raise SystemExit(f"NVIDIA's Generator does not take our weights: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    return official.eval().requires_grad_(False).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="projection steps per round and precision")
    parser.add_argument("--frames", type=int, default=16, help="walk frames per render measurement")
    parser.add_argument("--official", default=os.environ.get("OFFICIAL_STYLEGAN2_ADA"),
                        help="a checkout of NVlabs/stylegan2-ada-pytorch to time NVIDIA's own synthesis")
    args = parser.parse_args()

    os.environ["TIMEMACHINE_VGG_WEIGHTS"] = "random"
    warnings.simplefilter("ignore")
    import torch

    from timemachine.device import prepare_device

    device = prepare_device(args.device)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    tasks, precisions, official = build_tasks(args, device)
    best = measure(tasks, args.rounds, device)
    report(args, device, best, tasks, precisions, official is not None)


def build_tasks(args: argparse.Namespace, device) -> tuple:
    """The timed closures {(what, column): (fn, items per call)}, the precisions measured and NVIDIA's
    generator (None without ``--official``)."""
    import torch

    from bench_generator import build_generator
    from timemachine import projector as P
    from timemachine import render
    from timemachine.latents import LatentFile
    from timemachine.perceptual import PerceptualDistance

    G = build_generator(args.resolution).to(device)
    torch.manual_seed(0)
    perceptual = PerceptualDistance("random").to(device)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        ws = G.mapping(torch.randn(8, G.z_dim, generator=gen).to(device), None)
    target = (torch.rand(1, 3, args.resolution, args.resolution, generator=gen) * 2 - 1).to(device)
    latent = LatentFile(ws=ws[0].cpu())
    direction = torch.randn(G.num_ws, G.w_dim, generator=gen) * 0.5
    stats = P.compute_w_stats(G, 1000)
    official = official_generator(args.official, G, device) if args.official else None

    def synthesis(net, batch: int, **kw):
        return _synthesis(net, ws[:batch], **kw)

    def synthesis_backward(net, **kw):
        return _synthesis_backward(net, ws[:1], **kw)

    def projection(precision: str):
        settings = P.ProjectorSettings(steps=args.steps, w_avg_samples=1000, precision=precision)
        return lambda: P.project(G, target, settings, perceptual=perceptual, w_stats=stats)

    def rendering(precision: str, batch: int):
        def run():
            for _ in render.iter_walk_frames(G, latent, direction, args.frames, batch_size=batch, precision=precision):
                pass
        return run

    precisions = PRECISIONS if device.type == "cuda" else tuple(p for p in PRECISIONS if p != "fp16")
    tasks = {}
    for precision in precisions:
        tasks.update({
            ("synthesis forward, batch 1", precision): (synthesis(G, 1, precision=precision), 1),
            ("synthesis forward, batch 8", precision): (synthesis(G, 8, precision=precision), 8),
            ("synthesis forward + backward", precision): (synthesis_backward(G, precision=precision), 1),
            ("projection step", precision): (projection(precision), args.steps),
            ("rendering, batch 2", precision): (rendering(precision, 2), args.frames),
            ("rendering, batch 8", precision): (rendering(precision, 8), args.frames)})
    for label, force_fp32 in (("NVIDIA fp16", False), ("NVIDIA fp32", True)) if official is not None else ():
        tasks.update({
            ("synthesis forward, batch 1", label): (synthesis(official, 1, force_fp32=force_fp32), 1),
            ("synthesis forward, batch 8", label): (synthesis(official, 8, force_fp32=force_fp32), 8),
            ("synthesis forward + backward", label): (synthesis_backward(official, force_fp32=force_fp32), 1)})
    return tasks, precisions, official


def _synthesis(net, ws, **kw):
    """A closure: ``net.synthesis(ws)`` without gradients."""
    import torch

    def run():
        with torch.no_grad():
            net.synthesis(ws, noise_mode="const", **kw)
    return run


def _synthesis_backward(net, ws, **kw):
    """A closure: ``net.synthesis(ws)`` forward and backward with respect to ws."""
    def run():
        w = ws.clone().requires_grad_(True)
        net.synthesis(w, noise_mode="const", **kw).square().mean().backward()
    return run


def measure(tasks: dict, rounds: int, device) -> dict:
    """Best seconds per item of every task over ``rounds`` interleaved rounds (after one warm-up call each)."""
    for fn, _ in tasks.values():  # warm-up: kernels built and tuned, allocator pools
        fn()
    best = {key: float("inf") for key in tasks}
    for r in range(rounds):
        for key, (fn, count) in tasks.items():
            best[key] = min(best[key], timed(fn, device) / count)
        print(f"round {r + 1}/{rounds} done", flush=True)
    return best


def report(args: argparse.Namespace, device, best: dict, tasks: dict, precisions: tuple, has_official: bool) -> None:
    """Print the table of times per image, step and frame, frames/s and the ratios against float16."""
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{name}, torch {torch.__version__}, {args.resolution}x{args.resolution}, best of {args.rounds} rounds "
          f"(TF32 off){'; NVIDIA code: ' + args.official if has_official else ''}")
    columns = list(precisions) + (["NVIDIA fp16", "NVIDIA fp32"] if has_official else [])
    print(f"{'per image / step / frame':<30}" + "".join(f"{c:>14}" for c in columns))
    for what in dict.fromkeys(k[0] for k in tasks):
        cells = "".join(f"{best[what, c] * 1e3:>11.1f} ms" if (what, c) in best else f"{'':>14}" for c in columns)
        print(f"{what:<30}{cells}")
    print("\nframes/s: " + ", ".join(f"{c} batch 2 {1 / best['rendering, batch 2', c]:.1f}, batch 8 "
                                      f"{1 / best['rendering, batch 8', c]:.1f}" for c in precisions))
    for c in ("fp32", "bf16") if "fp16" in precisions else ():
        print(f"{c} against fp16 (the official default): projection step "
              f"{best['projection step', 'fp16'] / best['projection step', c]:.2f}x, synthesis "
              f"{best['synthesis forward, batch 1', 'fp16'] / best['synthesis forward, batch 1', c]:.2f}x")


if __name__ == "__main__":
    main()
