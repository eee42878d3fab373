"""What each choice of the bfloat16 path costs in accuracy and buys in time (issue #15: "measure each choice").

The shipped bfloat16 path (``precision='bf16'``, see ``timemachine.networks``) keeps in float32: the mapping
network, the styles (affine layers), the demodulation coefficients, the noise maps, the coarse blocks (below
``BF16_MIN_RESOLUTION``) and the image; everything else - activations, convolutions, ToRGB - is bfloat16.
Each variant below changes one of those choices (by patching the network in this process only):

* ``fp32``                      the float32 path: the reference of every PSNR;
* ``naive autocast``            ``torch.autocast('cpu', bfloat16)`` around the float32 path (issue #15's first try);
* ``bf16 (shipped)``            the shipped path;
* ``styles in bf16``            the affine layers computed in bfloat16;
* ``demodulation in bf16``      the demodulation coefficients computed in bfloat16;
* ``styles + demod in bf16``    both;
* ``all blocks bf16``           the coarse blocks (4-16) in bfloat16 too;
* ``blocks from 64 in bf16``    32x32 in float32 too;
* ``ToRGB in fp32``             the ToRGB layers' input converted to float32;
* ``fused modulation``          per-sample weights (``fused_modconv=True``) instead of scaled activations.

Accuracy: PSNR (dB, median and worst over the latents) of each variant's images against the float32 images of
the same ws, on (1) the official-format tiny generator (../shared/fixtures/sg2ada_tiny.pkl, 32x32) and (2) the
AFHQ 512x512 architecture with random weights, both with their ToRGB layers scaled so that the images have a
standard deviation of 0.5 (a trained model's range; the random images are mostly outside [-1, 1], where
clamping would hide the error).  Time: synthesis forward and forward + backward w.r.t. ws at 512x512, batch 1,
best of ``--rounds`` interleaved rounds.

Projection (``--projection``): the tiny generator, ``--targets`` reachable targets, 200 steps, random VGG16:
median PSNR and LPIPS of float32 reconstructions against the targets for G and VGG16 each in float32 or
bfloat16 - what tests/test_precision.py holds to 0.3 dB and 0.005.

Usage::

    python benchmarks/bench_precision_choices.py --rounds 3
    python benchmarks/bench_precision_choices.py --projection --targets 6
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

VARIANTS = ["fp32", "naive autocast", "bf16 (shipped)", "styles in bf16", "demodulation in bf16",
            "styles + demod in bf16", "all blocks bf16", "blocks from 64 in bf16", "ToRGB in fp32",
            "fused modulation"]


def _patch_forward(module, wrap, patched: list) -> None:
    """Replace ``module.forward`` (on the instance) by ``wrap(original bound forward)``; recorded in ``patched``."""
    original = type(module).forward.__get__(module)
    module.forward = wrap(original)
    patched.append((module, "forward"))


def _bf16_styles(G, patched: list) -> None:
    """Every synthesis layer's affine (style) layer in bfloat16."""
    from timemachine import networks

    for module in G.synthesis.modules():
        if isinstance(module, networks.SynthesisLayer):
            _patch_forward(module.affine, lambda f: lambda w: f(w.bfloat16()).float(), patched)


def _bf16_demod() -> None:
    """Demodulation coefficients in bfloat16, in every block (float32 ones included)."""
    from timemachine import networks

    def demodulation_coefficients(weight, styles):
        weight_sq = weight.bfloat16().square().sum(dim=[2, 3])
        return (styles.bfloat16().square() @ weight_sq.t() + 1e-8).rsqrt().float()
    networks.demodulation_coefficients = demodulation_coefficients


def _torgb_fp32(G, patched: list) -> None:
    """ToRGB layers convolve in float32 whatever their block's dtype."""
    from timemachine import networks

    for module in G.synthesis.modules():
        if isinstance(module, networks.ToRGBLayer):
            _patch_forward(module, lambda f: lambda x, w, **kw: f(x.float(), w, **kw), patched)


def _min_resolution(resolution: int):
    def patch(G, patched: list) -> None:
        from timemachine import networks
        networks.BF16_MIN_RESOLUTION = resolution
    return patch


#: What each bf16 variant changes beyond precision='bf16' (fp32, naive autocast and fused modulation aside).
_PATCHES = {
    "bf16 (shipped)": [],
    "styles in bf16": [_bf16_styles],
    "demodulation in bf16": [lambda G, patched: _bf16_demod()],
    "styles + demod in bf16": [_bf16_styles, lambda G, patched: _bf16_demod()],
    "all blocks bf16": [_min_resolution(4)],
    "blocks from 64 in bf16": [_min_resolution(64)],
    "ToRGB in fp32": [_torgb_fp32],
}


@contextlib.contextmanager
def variant(G, name: str):
    """Patch ``G`` (and timemachine.networks) for one variant; yields the synthesis keywords."""
    import torch

    from timemachine import networks

    saved_min, saved_demod = networks.BF16_MIN_RESOLUTION, networks.demodulation_coefficients
    patched: list = []  # (module, attribute name): instance attributes to delete afterwards
    kwargs: dict = dict(precision="fp32" if name in ("fp32", "naive autocast") else "bf16")
    context = torch.autocast("cpu", dtype=torch.bfloat16) if name == "naive autocast" else contextlib.nullcontext()
    if name == "fused modulation":
        kwargs["fused_modconv"] = True
    for patch in _PATCHES.get(name, []):
        patch(G, patched)
    try:
        with context:
            yield kwargs
    finally:
        networks.BF16_MIN_RESOLUTION, networks.demodulation_coefficients = saved_min, saved_demod
        for module, attribute in patched:
            delattr(module, attribute)


def psnr(a, b):
    import torch

    mse = (a.clamp(-1, 1) - b.clamp(-1, 1)).double().square().mean(dim=[1, 2, 3])
    return (10 * torch.log10(4 / mse)).numpy()


def accuracy(G, ws) -> dict[str, tuple[float, float]]:
    import numpy as np
    import torch

    out = {}
    with torch.no_grad():
        for name in VARIANTS:
            with variant(G, name) as kwargs:
                out[name] = G.synthesis(ws, noise_mode="const", **kwargs).float()
    return {name: (float(np.median(psnr(img, out["fp32"]))), float(psnr(img, out["fp32"]).min()))
            for name, img in out.items() if name != "fp32"}


def timing(G, rounds: int) -> dict[str, tuple[float, float]]:
    import torch

    ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(3)), None)

    def measure(name):
        with variant(G, name) as kwargs:
            t0 = time.perf_counter()
            with torch.no_grad():
                G.synthesis(ws, noise_mode="const", **kwargs)
            t1 = time.perf_counter()
            w = ws.clone().requires_grad_(True)
            G.synthesis(w, noise_mode="const", **kwargs).float().square().mean().backward()
            return t1 - t0, time.perf_counter() - t1

    for name in VARIANTS:
        measure(name)  # warm-up
    best = {name: (float("inf"), float("inf")) for name in VARIANTS}
    for r in range(rounds):
        for name in VARIANTS:
            fwd, fwdbwd = measure(name)
            best[name] = (min(best[name][0], fwd), min(best[name][1], fwdbwd))
        print(f"  timing round {r + 1}/{rounds} (load {os.getloadavg()[0]:.1f})", flush=True)
    return best


def projection(G, targets: int, steps: int) -> None:
    import numpy as np
    import torch

    from timemachine import projector as P
    from timemachine.perceptual import PerceptualDistance

    lpips = PerceptualDistance("random")
    with torch.no_grad():
        ws = G.mapping(torch.randn(targets, G.z_dim, generator=torch.Generator().manual_seed(5)), None,
                       truncation_psi=0.7)
        target = G.synthesis(ws, noise_mode="random", precision="fp32").clamp(-1, 1)
    features = lpips.features
    results = {}
    for g_precision, vgg_precision in (("fp32", "fp32"), ("bf16", "fp32"), ("fp32", "bf16"), ("bf16", "bf16")):
        lpips.features = lambda images, precision="fp32", v=vgg_precision: features(images, v)
        t = time.perf_counter()
        result = P.project(G, target, P.ProjectorSettings(steps=steps, precision=g_precision), perceptual=lpips)
        seconds = time.perf_counter() - t
        lpips.features = features
        with torch.no_grad():
            images = G.synthesis(result.ws, noise_mode="const", noise=result.noise, precision="fp32")
            results[g_precision, vgg_precision] = (np.median(P.psnr(images, target)),
                                                   np.median(lpips(images, target).numpy()), seconds)
    base = results["fp32", "fp32"]
    print(f"\nprojection, tiny generator, {targets} targets, {steps} steps, random VGG16 (medians over targets)")
    for (g, v), (p, lp, seconds) in results.items():
        print(f"  G {g}, VGG16 {v}: PSNR {p:6.2f} dB ({p - base[0]:+.2f}), LPIPS {lp:.4f} ({lp - base[1]:+.4f}), "
              f"{seconds:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--projection", action="store_true", help="also the projection measurement")
    parser.add_argument("--targets", type=int, default=6)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--shared", default=os.environ.get("TIMEMACHINE_SHARED_DIR",
                                                           os.path.join(REPO, "..", "shared")))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import torch

    from bench_generator import build_generator, realistic
    from timemachine.checkpoint import load_generator
    from timemachine.device import prepare_device

    prepare_device("cpu")
    tiny = realistic(load_generator(os.path.join(args.shared, "fixtures", "sg2ada_tiny.pkl"), device="cpu"))
    big = realistic(build_generator(512))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        tiny_ws = tiny.mapping(torch.randn(8, tiny.z_dim, generator=gen), None)
        big_ws = big.mapping(torch.randn(4, big.z_dim, generator=gen), None)
    acc_tiny, acc_big = accuracy(tiny, tiny_ws), accuracy(big, big_ws)
    load = os.getloadavg()[0]
    times = timing(big, args.rounds)
    print(f"\nPSNR against float32 (median / worst; 8 latents tiny 32x32, 4 latents AFHQ 512x512, images scaled to "
          f"std 0.5); time at 512x512, batch 1, best of {args.rounds} rounds; load average {load:.1f}-"
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'variant':<26} {'tiny 32x32':>16} {'AFHQ 512x512':>16} {'forward':>9} {'fwd+bwd':>9}")
    for name in VARIANTS:
        fwd, fwdbwd = times[name]
        cells = "".join(f"{'reference':>16}" if name == "fp32" else f"{a[name][0]:>9.1f} / {a[name][1]:4.1f}"
                        for a in (acc_tiny, acc_big))
        print(f"{name:<26} {cells} {fwd * 1e3:>6.0f} ms {fwdbwd * 1e3:>6.0f} ms")
    if args.projection:
        projection(tiny, args.targets, args.steps)


if __name__ == "__main__":
    main()
