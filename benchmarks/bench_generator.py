"""CPU speed of the generator: synthesis forward and forward+backward, ours against the official path.

Builds the AFHQ 512x512 architecture (z_dim=w_dim=512, channel_base=32768, channel_max=512, 8 mapping
layers, conv_clamp=256) with random weights and times, for one image:

* ``forward``          ``G.synthesis(ws, noise_mode='const')`` under ``torch.no_grad()``;
* ``forward+backward`` the same with ``ws.requires_grad_()`` and ``.backward()`` - what one projection
                       step costs in the generator.

Variants, each in its own worker process so that process-wide settings (the allocator) differ:

* ``official``  the official float32 path: per-sample weights in a grouped convolution ("fused
                modconv", the official eval-mode rule for float32), the reference ops
                (STYLEGAN_OPS_IMPL=ref), contiguous (NCHW) activations, glibc's default allocator.  (One
                difference from NVIDIA's code, in the baseline's favour: demodulation coefficients are
                computed without materialising the per-sample weights twice.);
* ``ours-nomalloc`` our default CPU path without the allocator tuning;
* ``ours-nchw`` our default CPU path with contiguous (NCHW) instead of channels-last activations;
* ``ours``      our default CPU path in float32 (timemachine.device.prepare_device('cpu')): modulated
                activations for 3x3 layers, channels-last activations, the tuned allocator;
* ``ours-bf16`` the same with ``precision='bf16'`` (bfloat16 blocks from 32x32 up, float32 styles,
                demodulation, noise and image; see ``timemachine.networks``): what ``--precision auto`` runs
                on a CPU with native BF16.

The workers take turns, one measurement each per round, so machine noise hits all of them alike; the
figure kept is the best of all rounds.  FLOPs are counted with ``torch.utils.flop_counter`` on the forward
pass (120.4 GFLOP at 512x512).  The sgemm peak is the best of ``torch.mm`` (MKL), ``numpy.matmul``
(OpenBLAS) and a oneDNN 1x1 convolution (a GEMM) at large sizes, the bf16 GEMM peak the best of ``torch.mm``
and a oneDNN 1x1 convolution on bfloat16 tensors (float32 accumulation), both measured by each worker in
every round; float32 variants are given as a share of the sgemm peak, bfloat16 ones of the bf16 peak.

Accuracy of the bfloat16 variant: PSNR of its image against ``ours`` (float32) of the same ws, after scaling
both by 0.5 / std(float32 image) - a random-weight generator's images lie mostly outside [-1, 1], where
clamping would hide the error; a trained model's have a standard deviation of about 0.5.

Usage::

    python benchmarks/bench_generator.py              # 512x512, 5 rounds, all variants
    python benchmarks/bench_generator.py --rounds 9 --resolution 256
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = {
    "official": dict(fused_modconv=True, channels_last=False, tune_malloc=False, ops="ref"),
    "ours-nomalloc": dict(fused_modconv=None, channels_last=None, tune_malloc=False, ops="auto"),
    "ours-nchw": dict(fused_modconv=None, channels_last=False, tune_malloc=True, ops="auto"),
    "ours": dict(fused_modconv=None, channels_last=None, tune_malloc=True, ops="auto"),
    "ours-bf16": dict(fused_modconv=None, channels_last=None, tune_malloc=True, ops="auto", precision="bf16"),
}


def build_generator(resolution: int, channel_base: int = 32768):
    """AFHQ's architecture (StyleGAN2-ADA skip generator, z_dim = w_dim = 512, 8 mapping layers, channel_max 512,
    conv_clamp 256) at ``resolution`` with random but realistic weights (noise on, biases non-zero), eval mode,
    no gradients.  ``channel_base`` 32768 is AFHQ's width; less is narrower and faster."""
    import torch

    from timemachine.networks import Generator

    torch.manual_seed(0)
    G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=resolution, img_channels=3,
                  mapping_kwargs=dict(num_layers=8),
                  synthesis_kwargs=dict(channel_base=channel_base, channel_max=512, num_fp16_res=4, conv_clamp=256))
    with torch.no_grad():  # random but realistic: noise on, biases non-zero
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.05)
            elif name.endswith("bias") and "affine" not in name:
                p.normal_(0, 0.1)
    return G.eval().requires_grad_(False)


def realistic(G, seed: int = 0):
    """G with its ToRGB layers scaled (a linear map: exact) so that its images have standard deviation 0.5, as a
    trained model's do (a random-weight generator's lie mostly outside [-1, 1], where clamping hides errors)."""
    import torch

    with torch.no_grad():
        ws = G.mapping(torch.randn(8, G.z_dim, generator=torch.Generator().manual_seed(seed)), None)
        scale = 0.5 / G.synthesis(ws, noise_mode="const", precision="fp32").std()
        for name, module in G.synthesis.named_modules():
            if name.endswith("torgb"):
                module.weight.mul_(scale)
                module.bias.mul_(scale)
    return G


def count_forward_flops(G, ws) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        G.synthesis(ws, noise_mode="const", fused_modconv=True)
    return counter.get_total_flops()


def sgemm_gflops() -> float:
    """Best sgemm rate (GFLOP/s) of three BLAS-like paths available in this process."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    an, bn = a.numpy(), b.numpy()
    outn = np.empty((n, n), np.float32)
    x = torch.randn(1, 1024, 64, 64)
    w = torch.randn(1024, 1024, 1, 1)
    candidates = [
        (lambda: torch.mm(a, b, out=out), 2 * n ** 3),
        (lambda: np.matmul(an, bn, out=outn), 2 * n ** 3),
        (lambda: F.conv2d(x, w), 2 * 1024 * 1024 * 64 * 64),
    ]
    return _best_rate(candidates)


def bf16_gemm_gflops() -> float:
    """Best bfloat16 GEMM rate (GFLOP/s, float32 accumulation) of torch.mm and a oneDNN 1x1 convolution."""
    import torch
    import torch.nn.functional as F

    n = 4096
    a, b = torch.randn(n, n).bfloat16(), torch.randn(n, n).bfloat16()
    x = torch.randn(1, 1024, 64, 64).bfloat16().contiguous(memory_format=torch.channels_last)
    w = torch.randn(1024, 1024, 1, 1).bfloat16()
    return _best_rate([(lambda: torch.mm(a, b), 2 * n ** 3), (lambda: F.conv2d(x, w), 2 * 1024 * 1024 * 64 * 64)])


def _best_rate(candidates) -> float:
    best = 0.0
    for fn, flops in candidates:
        fn()
        for _ in range(2):
            t = time.perf_counter()
            fn()
            best = max(best, flops / (time.perf_counter() - t) / 1e9)
    return best


def scaled_psnr(image, reference) -> float:
    """PSNR (dB, peak-to-peak 2, clamped to [-1, 1]) of ``image`` against ``reference`` after scaling both by
    0.5 / std(reference): the error as it would show on images with a trained model's range."""
    import torch

    k = 0.5 / reference.double().std()
    mse = ((image.double() * k).clamp(-1, 1) - (reference.double() * k).clamp(-1, 1)).square().mean()
    return float(10 * torch.log10(4 / mse)) if mse > 0 else float("inf")


def worker(variant: str, resolution: int, threads: int, conn) -> None:
    """Build the model, then answer 'round' requests with (forward_s, fwdbwd_s, sgemm_gflops)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    settings = VARIANTS[variant]
    os.environ["STYLEGAN_OPS_IMPL"] = settings["ops"]
    if settings["tune_malloc"]:
        from timemachine.device import tune_cpu_allocator

        tune_cpu_allocator()
    G = build_generator(resolution)
    ws = torch.randn(1, G.num_ws, 512, generator=torch.Generator().manual_seed(1)) * 0.5
    path = dict(fused_modconv=settings["fused_modconv"], channels_last=settings["channels_last"],
                precision=settings.get("precision"))
    flops = count_forward_flops(G, ws)

    def forward():
        with torch.no_grad():
            G.synthesis(ws, noise_mode="const", **path)

    def forward_backward():
        w = ws.clone().requires_grad_(True)
        img = G.synthesis(w, noise_mode="const", **path)
        img.square().mean().backward()

    forward()
    forward_backward()  # warm-up: oneDNN primitive caches, allocator pools
    with torch.no_grad():
        image = G.synthesis(ws, noise_mode="const", **path)
    conn.send(("ready", flops, image))
    while True:
        message = conn.recv()
        if message == "stop":
            return
        t0 = time.perf_counter()
        forward()
        t1 = time.perf_counter()
        forward_backward()
        t2 = time.perf_counter()
        conn.send((t1 - t0, t2 - t1, sgemm_gflops(), bf16_gemm_gflops()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (0 = torch default)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset of: " + ", ".join(VARIANTS))
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]

    ctx = mp.get_context("spawn")
    workers = {}
    for variant in variants:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(variant, args.resolution, args.threads, child), daemon=True)
        proc.start()
        workers[variant] = (proc, parent)
    flops, images = {}, {}
    for variant, (_, conn) in workers.items():
        tag, flops[variant], images[variant] = conn.recv()
    best = {v: [float("inf"), float("inf")] for v in variants}
    peak = bf16_peak = 0.0
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for variant in variants:  # one worker at a time: they never compete for the cores
            _, conn = workers[variant]
            conn.send("round")
            fwd, fwdbwd, gemm, bf16_gemm = conn.recv()
            best[variant][0] = min(best[variant][0], fwd)
            best[variant][1] = min(best[variant][1], fwdbwd)
            peak = max(peak, gemm)
            bf16_peak = max(bf16_peak, bf16_gemm)
        load.append(os.getloadavg()[0])
        print(f"round {r + 1}/{args.rounds}: " + "  ".join(
            f"{v} fwd {best[v][0] * 1e3:.0f} ms, fwd+bwd {best[v][1] * 1e3:.0f} ms" for v in variants), flush=True)
    for proc, conn in workers.values():
        conn.send("stop")
        proc.join(timeout=10)

    import torch

    gflop = flops[variants[0]] / 1e9
    print()
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"resolution {args.resolution}; best of {args.rounds} interleaved rounds; load average "
          f"{min(load):.1f}-{max(load):.1f} (1 min, sampled each round)")
    print(f"forward FLOPs: {gflop:.1f} GFLOP; best GEMM in the same run: sgemm {peak:.0f} GFLOP/s, "
          f"bf16 {bf16_peak:.0f} GFLOP/s ({bf16_peak / peak:.2f}x)")
    print()
    print(f"{'variant':<15} {'forward ms':>11} {'GFLOP/s':>9} {'% peak':>15} {'fwd+bwd ms':>11} {'fwd+bwd/fwd':>12}")
    for v in variants:
        fwd, fwdbwd = best[v]
        rate = gflop / fwd
        is_bf16 = VARIANTS[v].get("precision") == "bf16"
        share = f"{100 * rate / (bf16_peak if is_bf16 else peak):.0f}% {'bf16' if is_bf16 else 'sgemm'}"
        print(f"{v:<15} {fwd * 1e3:>11.0f} {rate:>9.0f} {share:>15} {fwdbwd * 1e3:>11.0f} {fwdbwd / fwd:>12.2f}")
    print()
    for v in variants:
        if v != "official" and "official" in best:
            print(f"{v} vs official: forward {best['official'][0] / best[v][0]:.2f}x faster, "
                  f"forward+backward {best['official'][1] / best[v][1]:.2f}x faster")
    if "ours" in images and "ours-bf16" in images:
        psnr = scaled_psnr(images["ours-bf16"], images["ours"])
        print(f"\nours-bf16 against ours (float32), same ws: PSNR {psnr:.1f} dB (images scaled to std 0.5); "
              "ours-bf16 forward "
              f"{best['ours'][0] / best['ours-bf16'][0]:.2f}x faster than ours")


if __name__ == "__main__":
    main()
