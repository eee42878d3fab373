"""Speed of the CUDA kernels against the reference ops, on StyleGAN2 (512x512 AFHQ) layer shapes.

    python benchmarks/bench_cuda_ops.py [--batch 4] [--dtype float16|float32] [--repeats 50]

Prints, per workload, the median time of each implementation and its speed-up over the reference, all
measured in this one run.  upfirdn2d is timed through the public function (auto kernel choice) and with
each kernel forced; bias_act forward and forward+backward.  Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stylegan_ops import bias_act, plugin, upfirdn2d  # noqa: E402


def time_ms(fn, repeats: int) -> float:
    """Median wall time of fn() in milliseconds, on the GPU's clock."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def report(name: str, timings: dict[str, float]) -> None:
    ref = timings["ref"]
    cells = "  ".join(f"{impl} {ms:8.3f} ms ({ref / ms:5.2f}x)" for impl, ms in timings.items())
    print(f"{name:44s} {cells}")


def bias_act_forward(x: torch.Tensor, b: torch.Tensor, impl: str) -> None:
    with torch.no_grad():
        bias_act.bias_act(x, b, act="lrelu", clamp=256, impl=impl)


def bias_act_forward_backward(x: torch.Tensor, b: torch.Tensor, dy: torch.Tensor, impl: str) -> None:
    y = bias_act.bias_act(x, b, act="lrelu", clamp=256, impl=impl)
    torch.autograd.grad(y, [x, b], dy)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float32")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_cuda_ops: needs a CUDA GPU; none is visible", file=sys.stderr)
        return 2
    for name in plugin.PLUGIN_SOURCES:
        if plugin.get_plugin(name) is None:
            print(f"bench_cuda_ops: the {name} kernel is not available: {plugin.plugin_status()[name]}",
                  file=sys.stderr)
            return 2
    dtype = getattr(torch, args.dtype)
    device = torch.device("cuda")
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device=device)
    ext = plugin.get_plugin("upfirdn2d")
    print(f"{torch.cuda.get_device_name()}  batch {args.batch}  {args.dtype}  (median of {args.repeats})")

    # (label, channels, input size, up, down, padding) as the 512x512 generator and its gradient use them
    upfirdn2d_workloads = [
        ("filter after transposed conv, 128ch 257px", 128, 257, 1, 1, [1, 1, 1, 1]),
        ("upsample2d (ToRGB skip), 3ch 256px", 3, 256, 2, 1, [2, 1, 2, 1]),
        ("grad of upsample2d, 3ch 512px", 3, 512, 1, 2, [2, 2, 2, 2]),
        ("filter, 512ch 17px", 512, 17, 1, 1, [1, 1, 1, 1]),
        ("filter, 64ch 513px", 64, 513, 1, 1, [1, 1, 1, 1]),
    ]
    for label, channels, size, up, down, padding in upfirdn2d_workloads:
        x = torch.randn([args.batch, channels, size, size], device=device, dtype=dtype)
        p = upfirdn2d._parse_padding(padding)
        gain = up * up
        public = functools.partial(upfirdn2d.upfirdn2d, x, f, up=up, down=down, padding=padding, gain=gain)
        timings = {
            "ref": time_ms(functools.partial(public, impl="ref"), args.repeats),
            "cuda": time_ms(functools.partial(public, impl="cuda"), args.repeats),
            "general": time_ms(functools.partial(ext.upfirdn2d, x, f, up, up, down, down, *p, False, gain, kernel=0),
                               args.repeats),
            "tiled": time_ms(functools.partial(ext.upfirdn2d, x, f, up, up, down, down, *p, False, gain, kernel=1),
                             args.repeats),
        }
        report(f"upfirdn2d {label}", timings)

    bias_act_workloads = [("lrelu 128ch 256px", [args.batch, 128, 256, 256]),
                          ("lrelu 512ch 16px", [args.batch, 512, 16, 16])]
    for label, shape in bias_act_workloads:
        x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
        b = torch.randn([shape[1]], device=device, dtype=dtype, requires_grad=True)
        dy = torch.randn(shape, device=device, dtype=dtype)
        report(f"bias_act forward, {label}",
               {impl: time_ms(functools.partial(bias_act_forward, x, b, impl), args.repeats)
                for impl in ("ref", "cuda")})
        report(f"bias_act forward+backward, {label}",
               {impl: time_ms(functools.partial(bias_act_forward_backward, x, b, dy, impl), args.repeats)
                for impl in ("ref", "cuda")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
