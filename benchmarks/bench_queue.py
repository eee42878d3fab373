"""Throughput of the job queue with 1 and 2 Celery workers, and its overhead per job against the in-process executor.

Starts a Redis server (Debian's ``redis-server``) on a free port in a temporary directory, a temporary home with a
small random generator (64x64 by default) and an age vector, and measures small render jobs (``render``: a
latent file walked along the vector, ``--frames`` frames, MP4 + GIF written into the home):

* ``direct``     the jobs run one after another by ``Pipeline.render`` in this process (no executor): the
                 work itself.
* ``inprocess``  the same jobs submitted at once to the in-process executor (one worker thread).
* ``celery-1``   submitted at once to one ``timemachine worker`` process; ``celery-2``: to two of them.
* ``latency``    one short job (``--latency-frames``) at a time (submit, wait for the result), ``--latency-jobs``
                 times, in-process against
                 one idle worker: the difference is the queue's overhead per job (encoding, Redis round trips,
                 Celery's dispatch, the client's polling every ``--poll`` seconds, decoding the result).

Workers are started and warmed up (model loaded, one job run) before timing.  Every process gets
``--threads`` PyTorch threads (in-process runs too), so 2 workers use twice the cores of one.  Throughput is
jobs per minute over the wall time from the first submission to the last result.

Usage::

    python benchmarks/bench_queue.py                         # 12 jobs, 64x64, 24 frames
    python benchmarks/bench_queue.py --jobs 20 --resolution 128 --threads 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(workdir: Path, server: str | None = None, timeout: float = 20) -> tuple[subprocess.Popen, str]:
    """A throwaway ``redis-server`` (``server``: its path; default: found on PATH) on a free port of 127.0.0.1,
    keeping nothing on disk, answering pings; returns (its process, its URL).  RuntimeError when it does not
    start within ``timeout`` seconds.  (Shared with tests/test_queue.py.)"""
    import redis

    server = server or shutil.which("redis-server")
    if server is None:
        raise RuntimeError("needs redis-server (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
                             "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return proc, f"redis://127.0.0.1:{port}/0"
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    proc.kill()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
    finally:
        client.close()


def setup_home(root: Path, resolution: int) -> tuple[str, Path]:
    """A home with a small generator and an age vector 'bench'; returns (model path, latent path)."""
    import torch

    from timemachine import age
    from timemachine.checkpoint import model_fingerprint, save_generator
    from timemachine.env import Paths
    from timemachine.latents import save_latent
    from timemachine.networks import Generator

    torch.manual_seed(0)
    G = Generator(z_dim=64, c_dim=0, w_dim=64, img_resolution=resolution, img_channels=3,
                  mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=16 * resolution, channel_max=128)).eval().requires_grad_(False)
    model = root / "model.safetensors"
    save_generator(G, model)
    ws = G.mapping(torch.randn(3, G.z_dim), None)
    vector = age.build_vector("bench", ws[:1], ws[1:2], method="pair", model_fingerprint=model_fingerprint(G))
    age.VectorLibrary(Paths(root / "home")).save(vector)
    latent = root / "home" / "bench" / "latent.npz"
    latent.parent.mkdir(parents=True)
    save_latent(latent, ws[2], meta={"model_fingerprint": model_fingerprint(G)})
    return str(model), latent


def render_request(latent: Path, out: Path, frames: int):
    from timemachine.pipeline import AgeEdit, RenderRequest, VideoOutputs
    from timemachine.settings import RenderSettings

    return RenderRequest(latent=str(latent), edit=AgeEdit("bench"),
                         render=RenderSettings(frames=frames, hold_start=0, hold_end=0),
                         outputs=VideoOutputs(directory=str(out), gif=True))


def run_batch(executor, model: str, latent: Path, outdir: Path, jobs: int, frames: int, tag: str) -> float:
    """Submit ``jobs`` render jobs at once; seconds until every result is in."""
    from timemachine.pipeline import JobSpec

    started = time.perf_counter()
    handles = [executor.submit(JobSpec("render", render_request(latent, outdir / f"{tag}-{i}", frames),
                                       model=model, owner=f"bench-{tag}-{i}")) for i in range(jobs)]
    for handle in handles:
        handle.get(600)
    return time.perf_counter() - started


def latencies(executor, model: str, latent: Path, outdir: Path, n: int, frames: int, tag: str) -> list[float]:
    from timemachine.pipeline import JobSpec

    out = []
    for i in range(n):
        started = time.perf_counter()
        executor.submit(JobSpec("render", render_request(latent, outdir / f"{tag}-{i}", frames), model=model,
                                owner="bench")).get(600)
        out.append(time.perf_counter() - started)
    return out


class Workers:
    def __init__(self, count: int, url: str, env: dict, root: Path):
        self.procs = []
        self.logs = []
        for i in range(count):
            log = root / f"worker{i}-{time.monotonic_ns()}.log"
            self.logs.append(log)
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "timemachine", "worker", "--name", f"bench{i}", "--loglevel", "WARNING"],
                env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True))

    def stop(self) -> None:
        for proc in self.procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=12, help="render jobs per throughput measurement")
    parser.add_argument("--frames", type=int, default=24, help="walk frames per job")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads per process")
    parser.add_argument("--latency-jobs", type=int, default=8)
    parser.add_argument("--latency-frames", type=int, default=2, help="walk frames of the one-at-a-time jobs")
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between a client's reads of a job's state")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    env = dict(os.environ, TIMEMACHINE_HOME=str(root / "home"), TIMEMACHINE_OFFLINE="1", TIMEMACHINE_DEVICE="cpu",
               TIMEMACHINE_VGG_WEIGHTS="random", OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=str(REPO))
    env.pop("TIMEMACHINE_BROKER_URL", None)
    os.environ.update({k: env[k] for k in ("TIMEMACHINE_HOME", "TIMEMACHINE_OFFLINE", "TIMEMACHINE_DEVICE",
                                           "TIMEMACHINE_VGG_WEIGHTS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    import torch

    torch.set_num_threads(args.threads)
    from timemachine.env import Environment
    from timemachine.pipeline import InProcessExecutor, Pipeline
    from timemachine.pipeline.executor_celery import CeleryExecutor
    from timemachine.settings import QueueSettings

    try:
        redis_proc, url = start_redis(root)
    except RuntimeError as exc:
        sys.exit(str(exc))
    env["TIMEMACHINE_BROKER_URL"] = url
    model, latent = setup_home(root, args.resolution)
    outdir = root / "home" / "bench"
    settings = QueueSettings(max_waiting=1000, per_visitor=1000, poll_seconds=args.poll)
    base = Environment.from_environ()
    results: dict[str, float] = {}
    try:
        # direct: the work itself
        pipe = Pipeline.load(model, base)
        pipe.render(render_request(latent, outdir / "warm", args.frames))
        started = time.perf_counter()
        for i in range(args.jobs):
            pipe.render(render_request(latent, outdir / f"direct-{i}", args.frames))
        results["direct"] = time.perf_counter() - started

        local = InProcessExecutor(base, settings)
        run_batch(local, model, latent, outdir, 1, args.frames, "warm-inprocess")
        results["inprocess"] = run_batch(local, model, latent, outdir, args.jobs, args.frames, "inprocess")
        local_latency = latencies(local, model, latent, outdir, args.latency_jobs, args.latency_frames,
                                  "lat-inprocess")

        remote = CeleryExecutor(base.replace(broker_url=url), settings)
        queue_latency: list[float] = []
        for count in (1, 2):
            workers = Workers(count, url, env, root)
            try:
                # warm up: every worker loads the model and runs one job
                run_batch(remote, model, latent, outdir, 2 * count, args.frames, f"warm-{count}")
                results[f"celery-{count}"] = run_batch(remote, model, latent, outdir, args.jobs, args.frames,
                                                       f"celery{count}")
                if count == 1:
                    queue_latency = latencies(remote, model, latent, outdir, args.latency_jobs, args.latency_frames,
                                              "lat-celery")
            finally:
                workers.stop()
        remote.close()
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)

    print(f"{args.jobs} render jobs of {args.frames} frames at {args.resolution}x{args.resolution} (MP4 + GIF), "
          f"{args.threads} PyTorch thread(s) per process, {os.cpu_count()} CPUs visible")
    print(f"{'run':<12} {'seconds':>8} {'jobs/min':>9} {'vs in-process':>14}")
    for name, seconds in results.items():
        rate = 60 * args.jobs / seconds
        ratio = results["inprocess"] / seconds
        print(f"{name:<12} {seconds:8.2f} {rate:9.1f} {ratio:13.2f}x")
    lo, lq = statistics.median(local_latency), statistics.median(queue_latency)
    print(f"one job of {args.latency_frames} frames at a time, median of {args.latency_jobs}: "
          f"in-process {lo * 1000:.0f} ms, one worker {lq * 1000:.0f} ms: "
          f"the queue adds {(lq - lo) * 1000:.0f} ms per job (client polling every {args.poll * 1000:.0f} ms)")
    print(f"2 workers / 1 worker throughput: {results['celery-1'] / results['celery-2']:.2f}x")


if __name__ == "__main__":
    main()
