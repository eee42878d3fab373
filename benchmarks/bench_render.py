"""CPU speed and memory of rendering: synthesis by batch size, the MP4 encoder's share, memory of long renders.

Builds the AFHQ 512x512 architecture with random weights (``bench_generator.build_generator``), a random
start latent (mapped from z) and a random direction, and measures on the CPU:

* ``synthesis``  frames/s of ``G.synthesis(ws, noise_mode='const')`` under ``torch.no_grad()`` for batch
                 sizes 1, 2, 4, 8, on three paths: ours (our CPU defaults in float32: 3x3 layers scale the
                 activations around one shared-weight convolution, 1x1 ToRGB layers fused, channels-last
                 activations), ours in bfloat16 (``precision='bf16'``, what ``--precision auto`` renders with
                 on a CPU with native BF16) and fused (``fused_modconv=True, channels_last=False``:
                 per-sample weights in a grouped convolution everywhere on contiguous activations, the
                 official eval-mode float32 path).  All (path, batch) pairs are measured once per round, in
                 turn, for ``--rounds`` rounds; the best of the rounds is kept.
* ``peak``       the RSS high-water mark of one synthesis call per batch size, each in a fresh process.
* ``encoder``    the MP4 encoder's share of a render of ``--encoder-frames`` walk frames: the same frames
                 consumed without writing (``iter_frames``) against ``render_video`` writing an MP4 (CRF 18,
                 preset medium), interleaved, best of ``--rounds``; and the encoder alone (the frames fed to an
                 :class:`Mp4Writer` from memory).  ffmpeg runs in its own process, in parallel with synthesis.
* ``memory``     a long render (MP4 + GIF) in a fresh process per resolution (``--memory-resolutions``):
                 resident memory (RSS, /proc/self/statm) before rendering and after frame 1, 100, 500, 1000
                 (those <= ``--frames``), the process's RSS high-water mark (``getrusage``), and the RSS of
                 the running ffmpeg encoder (/proc/<pid>/status).

The machine may be shared: timings are best-of interleaved rounds, so noise hits all variants alike and the
least disturbed measurement is kept.  The figures printed as ratios come from this one run.

Usage::

    python benchmarks/bench_render.py                                   # everything, 512x512
    python benchmarks/bench_render.py --parts synthesis --rounds 5
    python benchmarks/bench_render.py --parts memory --frames 1000 --memory-resolutions 128,512
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PATHS = {"ours (fp32)": dict(fused_modconv=None, channels_last=None, precision="fp32"),
         "ours (bf16)": dict(fused_modconv=None, channels_last=None, precision="bf16"),
         "fused (official, NCHW)": dict(fused_modconv=True, channels_last=False, precision="fp32")}


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes() -> int:
    """This process's RSS high-water mark."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def children_rss_bytes() -> tuple[int, int]:
    """(current RSS, RSS high-water mark) of this process's running children (the ffmpeg encoders), summed."""
    pids = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids.update(f.read().split())
        except OSError:
            pass
    current = high = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        current += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        high += int(fields.get("VmHWM", "0 kB").split()[0]) * 1024
    return current, high


def make_inputs(resolution: int):
    import torch

    from bench_generator import build_generator
    from timemachine.latents import LatentFile

    G = build_generator(resolution)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim, generator=gen), None, truncation_psi=1)[0]
    direction = torch.randn(G.num_ws, G.w_dim, generator=gen) * 0.5
    return G, LatentFile(ws=ws), direction


# ----------------------------------------------------------------------------------------------------------


def bench_synthesis(resolution: int, rounds: int, batch_sizes: list[int]) -> None:
    import torch

    from timemachine.device import prepare_device

    prepare_device("cpu")
    G, latent, direction = make_inputs(resolution)
    ws = latent.ws.unsqueeze(0) + torch.linspace(0, 1, max(batch_sizes)).reshape(-1, 1, 1) * direction

    def run(batch: int, path: dict) -> float:
        with torch.no_grad():
            G.synthesis(ws[:batch], noise_mode="const", **path)

    for batch in batch_sizes:  # warm-up: oneDNN primitives for every shape, allocator pools
        for path in PATHS.values():
            run(batch, path)
    best = {(name, b): float("inf") for name in PATHS for b in batch_sizes}
    for r in range(rounds):
        for batch in batch_sizes:
            for name, path in PATHS.items():
                t0 = time.perf_counter()
                run(batch, path)
                best[name, batch] = min(best[name, batch], (time.perf_counter() - t0) / batch)
        print(f"  round {r + 1}/{rounds}, best so far, ms/frame {' / '.join(PATHS)}: "
              + "  ".join(f"b{b} " + "/".join(f"{best[n, b] * 1e3:.0f}" for n in PATHS) for b in batch_sizes),
              flush=True)

    ours_name, bf16_name, fused_name = tuple(PATHS)
    print()
    print(f"synthesis at {resolution}x{resolution}, forward only (no grad), best of {rounds} interleaved rounds")
    print(f"{'batch':>5} " + " ".join(f"{name:>28}" for name in PATHS) + f" {'fused/ours':>11} {'fused/bf16':>11}")
    for b in batch_sizes:
        cells = " ".join(f"{1 / best[name, b]:>13.3f} frames/s {best[name, b] * 1e3:>6.0f} ms" for name in PATHS)
        print(f"{b:>5} {cells} {best[fused_name, b] / best[ours_name, b]:>11.2f} "
              f"{best[fused_name, b] / best[bf16_name, b]:>11.2f}")
    for name in (ours_name, bf16_name):
        base = best[name, 1]
        print(f"{name}, speed-up over batch 1: " + ", ".join(f"batch {b}: {base / best[name, b]:.2f}x"
                                                             for b in batch_sizes))


def peak_worker(resolution: int, batch: int, conn) -> None:
    import torch

    from timemachine.device import prepare_device

    prepare_device("cpu")
    G, latent, direction = make_inputs(resolution)
    ws = latent.ws.unsqueeze(0) + torch.linspace(0, 1, batch).reshape(-1, 1, 1) * direction
    before = max_rss_bytes()
    with torch.no_grad():
        G.synthesis(ws, noise_mode="const")
    conn.send((before, max_rss_bytes()))


def bench_peak(resolution: int, batch_sizes: list[int]) -> None:
    """RSS high-water mark of one synthesis call per batch size, each in a fresh process."""
    ctx = mp.get_context("spawn")
    mib = 2 ** 20
    print(f"memory of synthesis at {resolution}x{resolution} by batch size (fresh process each, our CPU path)")
    for batch in batch_sizes:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=peak_worker, args=(resolution, batch, child), daemon=True)
        proc.start()
        before, after = parent.recv()
        proc.join(timeout=30)
        print(f"  batch {batch}: high-water {after / mib:6.0f} MiB (model loaded: {before / mib:.0f} MiB; "
              f"synthesis adds {(after - before) / mib:.0f} MiB)", flush=True)


# ----------------------------------------------------------------------------------------------------------


def textured_frames(count: int, resolution: int) -> list:
    """Frames with detail at several scales that drift, plus fresh grain each frame: uint8 [R, R, 3] each."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (resolution // 8, resolution // 8, 3), dtype=np.uint8)
    frames = []
    for k in range(count):
        smooth = np.asarray(Image.fromarray(np.roll(base, k, axis=1)).resize((resolution, resolution),
                                                                             Image.Resampling.BICUBIC))
        grain = rng.integers(-20, 21, smooth.shape)
        frames.append(np.clip(smooth.astype(int) + grain, 0, 255).astype(np.uint8))
    return frames


def bench_encoder(resolution: int, rounds: int, frames: int, batch: int, precision: str) -> None:
    from timemachine import render, video
    from timemachine.device import prepare_device

    prepare_device("cpu")
    G, latent, direction = make_inputs(resolution)
    settings = render.RenderSettings(frames=frames, hold_start=0, hold_end=0, batch_size=batch, crf=18,
                                     preset="medium", precision=precision)
    kept = [f.copy() for f in render.iter_frames(G, latent, direction, settings)]  # warm-up, frames for part (c)
    textured = textured_frames(frames, resolution)
    with tempfile.TemporaryDirectory() as tmp:
        best = {"synthesis only": float("inf"), "render_video to MP4": float("inf"), "encoder alone": float("inf"),
                "encoder alone, textured": float("inf")}
        inside_writers = float("inf")
        for r in range(rounds):
            for variant in (["synthesis only", "render_video to MP4"] if r % 2 == 0 else
                            ["render_video to MP4", "synthesis only"]):  # alternate the order: no drift bias
                t0 = time.perf_counter()
                if variant == "synthesis only":
                    for _ in render.iter_frames(G, latent, direction, settings):
                        pass
                else:
                    result = render.render_video(G, latent, direction,
                                                 render.RenderOutputs(video=os.path.join(tmp, "v.mp4")), settings)
                    inside_writers = min(inside_writers, result.writing_seconds)
                best[variant] = min(best[variant], time.perf_counter() - t0)

            for variant, source in (("encoder alone", kept), ("encoder alone, textured", textured)):
                t0 = time.perf_counter()
                writer = video.Mp4Writer(os.path.join(tmp, "e.mp4"), fps=24, crf=18, preset="medium")
                for frame in source:
                    writer.append(frame)
                writer.commit()
                best[variant] = min(best[variant], time.perf_counter() - t0)
            print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {v:.1f} s" for k, v in best.items()), flush=True)
        size = os.path.getsize(os.path.join(tmp, "v.mp4"))

    synth, full, alone = best["synthesis only"], best["render_video to MP4"], best["encoder alone"]
    print()
    print(f"MP4 encoder share, {frames} frames at {resolution}x{resolution}, batch {batch}, precision {precision}, "
          f"CRF 18 preset medium; best of {rounds} interleaved rounds")
    print(f"  synthesis only            {synth:8.1f} s   {synth / frames * 1e3:6.0f} ms/frame")
    print(f"  render_video to MP4       {full:8.1f} s   {full / frames * 1e3:6.0f} ms/frame   ({size / 1e6:.2f} MB)")
    print(f"  encoder alone (from RAM)  {alone:8.1f} s   {alone / frames * 1e3:6.0f} ms/frame")
    textured_time = best["encoder alone, textured"]
    print(f"  encoder alone, textured   {textured_time:8.1f} s   {textured_time / frames * 1e3:6.0f} ms/frame   "
          f"(= {textured_time / synth * 100:.1f} % of synthesis; detail at all scales + per-frame grain, a "
          "harder case for x264 than these smooth random-weights images)")
    print(f"  encoder's share of the render's wall time: {max(0.0, full - synth) / full * 100:.1f} % "
          f"(render_video / synthesis only = {full / synth:.3f}); time inside the writers "
          f"{inside_writers:.2f} s = {inside_writers / full * 100:.1f} %")
    print(f"  encoder alone / synthesis only = {alone / synth * 100:.1f} % "
          "(ffmpeg runs in parallel, so it costs the render less than this on an idle machine)")


# ----------------------------------------------------------------------------------------------------------


def memory_worker(resolution: int, frames: int, batch: int, precision: str, conn) -> None:
    from timemachine import render
    from timemachine.device import prepare_device

    prepare_device("cpu")
    G, latent, direction = make_inputs(resolution)
    checkpoints = sorted({1, 100, 500, 1000, frames} & set(range(1, frames + 1)))
    samples = {}
    before = (rss_bytes(), max_rss_bytes())
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done in checkpoints:
            samples[done] = (rss_bytes(), max_rss_bytes(), children_rss_bytes()[0], time.perf_counter() - started)
            conn.send(("sample", done, samples[done]))

    settings = render.RenderSettings(frames=frames, hold_start=0, hold_end=0, batch_size=batch, preset="medium",
                                     precision=precision)
    with tempfile.TemporaryDirectory() as tmp:
        outputs = render.RenderOutputs(video=os.path.join(tmp, "v.mp4"), gif=os.path.join(tmp, "p.gif"))
        result = render.render_video(G, latent, direction, outputs, settings, progress=progress)
        sizes = {k: os.path.getsize(v) for k, v in result.files.items()}
    conn.send(("done", before, samples, max_rss_bytes(), result.seconds, sizes))


def bench_memory(resolution: int, frames: int, batch: int, precision: str) -> None:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=memory_worker, args=(resolution, frames, batch, precision, child), daemon=True)
    proc.start()
    mib = 2 ** 20
    while True:
        message = parent.recv()
        if message[0] == "sample":
            _, done, (rss, peak, encoders, seconds) = message
            print(f"  {resolution}x{resolution} frame {done:>5}: RSS {rss / mib:7.0f} MiB, high-water "
                  f"{peak / mib:7.0f} MiB, ffmpeg RSS {encoders / mib:5.0f} MiB, {seconds:7.0f} s", flush=True)
            continue
        _, before, samples, peak, seconds, sizes = message
        break
    proc.join(timeout=30)
    print()
    print(f"memory of a {frames}-frame render (MP4 + GIF) at {resolution}x{resolution}, batch {batch}, "
          f"{seconds:.0f} s ({frames / seconds:.2f} frames/s)")
    print(f"  before rendering (model loaded): RSS {before[0] / mib:.0f} MiB, high-water {before[1] / mib:.0f} MiB")
    for done, (rss, high, encoders, _) in sorted(samples.items()):
        print(f"  after frame {done:>5}: RSS {rss / mib:7.0f} MiB   high-water {high / mib:7.0f} MiB   "
              f"ffmpeg RSS {encoders / mib:5.0f} MiB")
    keys = sorted(samples)
    if len(keys) >= 3:
        first, last = samples[keys[1]][0], samples[keys[-1]][0]
        print(f"  RSS change from frame {keys[1]} to frame {keys[-1]}: {(last - first) / mib:+.1f} MiB "
              f"(the frames themselves: {(keys[-1] - keys[1]) * resolution * resolution * 3 / mib:.0f} MiB)")
    print(f"  process high-water mark {peak / mib:.0f} MiB; files: "
          + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="synthesis,peak,encoder,memory")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--batch", type=int, default=2, help="batch size of the encoder and memory parts")
    parser.add_argument("--encoder-frames", type=int, default=24)
    parser.add_argument("--frames", type=int, default=1000, help="walk frames of the memory part")
    parser.add_argument("--memory-resolutions", default="512")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                        help="precision of the encoder and memory parts (the synthesis part measures both)")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]

    import torch

    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.1f} at start")
    if "synthesis" in parts:
        bench_synthesis(args.resolution, args.rounds, [int(b) for b in args.batch_sizes.split(",")])
        print()
    if "peak" in parts:
        bench_peak(args.resolution, [int(b) for b in args.batch_sizes.split(",")])
        print()
    if "encoder" in parts:
        bench_encoder(args.resolution, args.rounds, args.encoder_frames, args.batch, args.precision)
        print()
    if "memory" in parts:
        for resolution in [int(r) for r in args.memory_resolutions.split(",")]:
            bench_memory(resolution, args.frames, args.batch, args.precision)
            print()
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
