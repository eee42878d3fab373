"""The fixed cost of a CLI projection: everything before the first optimisation step, and the first step itself.

Measured at 512x512 (the AFHQ architecture, random weights), each phase the best of ``--rounds``:

* ``import``           a fresh ``python -c 'import timemachine.cli'`` (what every command pays), then the
                       imports a projection adds: torch, the lpips package (torchvision, scipy), the projector;
* ``model load``       ``checkpoint.load_generator`` of an official-format network pickle (G and G_ema, as
                       NVIDIA's snapshots hold them; written by tests/official_pickle.py) and of our
                       .safetensors; ``model_fingerprint`` (SHA-256 of the weights) is timed on its own;
* ``VGG16``            ``PerceptualDistance`` from a torchvision-format VGG16 file (the real-weights path) and
                       with 'random' weights;
* ``w_avg``            ``projector.compute_w_stats`` with the official 10,000 samples;
* ``first step``       a one-step projection in a fresh process against a second one in the same process: the
                       first pays oneDNN's kernel creation for every shape (per precision).

Usage::

    python benchmarks/bench_startup.py               # 3 rounds
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
sys.path.insert(0, os.path.join(REPO, "tests"))

IMPORTS = {
    "import timemachine.cli": "import timemachine.cli",
    "+ import torch": "import timemachine.cli, torch",
    "+ import lpips (torchvision, scipy)": "import timemachine.cli, torch, lpips",
    "+ import the projector and pipeline": "import timemachine.cli, torch, lpips, timemachine.pipeline",
}

FIRST_STEP = """
import os, sys, time, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, {benchmarks!r})
os.environ["TIMEMACHINE_VGG_WEIGHTS"] = "random"
from bench_generator import build_generator
from timemachine import projector as P
from timemachine.device import prepare_device
from timemachine.perceptual import PerceptualDistance
prepare_device("cpu")
G = build_generator({resolution})
perceptual = PerceptualDistance("random")
target = __import__("torch").rand(1, 3, {resolution}, {resolution}) * 2 - 1
stats = P.compute_w_stats(G, 1000)
settings = P.ProjectorSettings(steps=1, w_avg_samples=1000, precision={precision!r})
times = []
for _ in range(2):
    t = time.perf_counter()
    P.project(G, target, settings, perceptual=perceptual, w_stats=stats)
    times.append(time.perf_counter() - t)
print(times[0], times[1])
"""


def best_of(rounds: int, fn) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def fresh_python(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=512)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    load = [os.getloadavg()[0]]
    rows: list[tuple[str, float]] = []

    for label, code in IMPORTS.items():
        rows.append((label, min(fresh_python(code) for _ in range(args.rounds))))
    baseline = fresh_python("pass")
    rows.append(("(a bare python -c pass, for reference)", min(baseline, fresh_python("pass"))))

    import torch

    from bench_generator import build_generator
    from official_pickle import record_init_args, write_official_pickle
    from timemachine import projector as P
    from timemachine.checkpoint import load_generator, model_fingerprint, save_generator
    from timemachine.device import prepare_device
    from timemachine.perceptual import PerceptualDistance

    prepare_device("cpu")
    with record_init_args():  # the official pickle stores each module's constructor arguments
        G = build_generator(args.resolution)
    with tempfile.TemporaryDirectory() as tmp:
        pkl = os.path.join(tmp, "network-snapshot.pkl")
        import copy

        write_official_pickle(pkl, G, G=copy.deepcopy(G))
        st = os.path.join(tmp, "model.safetensors")
        save_generator(G, st)
        rows.append((f"load official pickle ({os.path.getsize(pkl) / 2**20:.0f} MiB, G + G_ema)",
                     best_of(args.rounds, lambda: load_generator(pkl, device="cpu"))))
        rows.append((f"load .safetensors ({os.path.getsize(st) / 2**20:.0f} MiB)",
                     best_of(args.rounds, lambda: load_generator(st, device="cpu"))))
        rows.append(("model_fingerprint (SHA-256 of the weights)", best_of(args.rounds, lambda: model_fingerprint(G))))

        vgg = os.path.join(tmp, "vgg16-397923af.pth")
        from torchvision.models.vgg import cfgs, make_layers

        torch.save({f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}, vgg)
        rows.append(("PerceptualDistance(VGG16 file)", best_of(args.rounds, lambda: PerceptualDistance(vgg))))
        rows.append(("PerceptualDistance('random')", best_of(args.rounds, lambda: PerceptualDistance("random"))))
    rows.append(("compute_w_stats, 10,000 samples", best_of(args.rounds, lambda: P.compute_w_stats(G, 10000))))
    load.append(os.getloadavg()[0])

    first = {}
    for precision in ("fp32", "bf16"):
        code = FIRST_STEP.format(benchmarks=os.path.join(REPO, "benchmarks"), resolution=args.resolution,
                                 precision=precision)
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO)
        first[precision] = tuple(float(v) for v in out.stdout.split()[-2:])
    load.append(os.getloadavg()[0])

    print(f"\nfixed cost of a projection at {args.resolution}x{args.resolution}, best of {args.rounds}; load average "
          f"{min(load):.1f}-{max(load):.1f}")
    for label, seconds in rows:
        print(f"  {label:<52} {seconds:7.2f} s")
    for precision, (cold, warm) in first.items():
        print(f"  first projection step, {precision} (fresh process / again){'':<14} {cold:7.2f} s / {warm:.2f} s "
              f"(first-call overhead {cold - warm:.2f} s)")


if __name__ == "__main__":
    main()
