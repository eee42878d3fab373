"""``timemachine doctor``: what this installation has and can do."""

from __future__ import annotations

import argparse
import os
import platform

from timemachine.cli import EXIT_FAILED_CHECK, EXIT_OK

HELP = "check the installation: PyTorch, CUDA, the custom ops, ffmpeg, weights"
DESCRIPTION = """\
Report the PyTorch and CUDA versions, the device timemachine will use, whether the custom CUDA ops are
built and verified, whether ffmpeg is available for video, and which model weights are present.

With --build-ops, compile and load the CUDA extensions now (this works without a GPU when nvcc is
installed; set TORCH_CUDA_ARCH_LIST to choose architectures) and, when a GPU is present, check them
against the reference implementations.  Exits with 1 when that fails.
"""


def register(subparsers, formatter) -> None:
    parser = subparsers.add_parser("doctor", help=HELP, description=DESCRIPTION, formatter_class=formatter)
    parser.add_argument("--build-ops", action="store_true", help="compile and load the CUDA extensions now")
    parser.add_argument("--verbose", action="store_true", help="show the compiler's output with --build-ops")
    parser.set_defaults(handler=run)


def _line(label: str, value: str) -> None:
    print(f"{label:<22} {value}")


def run(args: argparse.Namespace) -> int:
    import torch

    from timemachine.pipeline import system

    gpu = torch.cuda.is_available()
    _line("timemachine", __import__("timemachine").__version__)
    _line("python", platform.python_version())
    _line("torch", torch.__version__)
    _line("torch CUDA build", torch.version.cuda or "none (CPU-only build)")
    if gpu:
        _line("device", f"cuda: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} GPU(s))")
    else:
        _line("device", f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    _line("precision auto", system.precision_status())
    cuda_home = system.cuda_home()
    _line("nvcc", os.path.join(cuda_home, "bin", "nvcc") if cuda_home else "not found (CUDA ops cannot be built)")
    _line("ops implementation", "reference (forced by STYLEGAN_OPS_IMPL=ref)" if system.ops_forced_reference()
          else "CUDA kernels on GPU tensors, reference elsewhere")
    _line("ffmpeg", system.ffmpeg_status())
    _line("weights", _weights_status())

    status = EXIT_OK
    if args.build_ops:
        for name in system.ops_names():
            ok, result = system.build_op(name, verbose=args.verbose, gpu=gpu)
            if not ok:
                status = EXIT_FAILED_CHECK
            _line(f"cuda op {name}", result)
    else:
        for name, state in system.ops_status().items():
            _line(f"cuda op {name}", state if gpu else "unused (no GPU); --build-ops compiles it")
    return status


def _weights_status() -> str:
    """Which zoo networks are here, e.g. 'afhqdog verified, vgg16 not downloaded (cache: ~/.local/share/...)'."""
    from timemachine.cli.weights import open_zoo
    from timemachine.errors import TimemachineError

    zoo = open_zoo()
    try:
        statuses = zoo.status()
    except TimemachineError as exc:
        return f"cannot tell: {exc}"
    words = {"verified": "verified", "unverified": "present", "partial": "partial", "missing": "not downloaded"}
    parts = [f"{s.entry.name} {words[s.state]}" for s in statuses]
    return f"{', '.join(parts)} (cache: {zoo.models_dir})"
