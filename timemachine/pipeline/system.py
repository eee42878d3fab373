"""What this installation has and can do, for ``timemachine doctor``: the CUDA ops, ffmpeg, the CPU's
precision.

The faces ask here instead of reaching into the ops package (``stylegan_ops``) themselves.
"""

from __future__ import annotations

import shutil
from typing import Optional


def cuda_home() -> Optional[str]:
    """Where the CUDA toolkit is (nvcc under ``bin/``), or None."""
    from stylegan_ops import plugin

    return plugin.find_cuda_home()


def ops_forced_reference() -> bool:
    """Whether ``STYLEGAN_OPS_IMPL=ref`` forces the reference implementations."""
    from stylegan_ops import plugin

    return plugin.forced_reference()


def ops_names() -> list[str]:
    from stylegan_ops import plugin

    return list(plugin.PLUGIN_SOURCES)


def ops_status() -> dict[str, str]:
    """{op name: its state in this process} (not built, built, verified, failed ...)."""
    from stylegan_ops import plugin

    return dict(plugin.plugin_status())


def build_op(name: str, verbose: bool = False, gpu: bool = False) -> tuple[bool, str]:
    """Compile and load the CUDA op ``name`` now; on a GPU (``gpu``) also check it against the reference.
    Returns (ok, what happened in words)."""
    from stylegan_ops import plugin

    try:
        plugin.build_plugin(name, verbose=verbose)
    except plugin.PluginError as exc:
        return False, f"FAILED: {exc}"
    if not gpu:
        return True, "built and loaded (no GPU here to verify it on)"
    if plugin.get_plugin(name) is None:
        return False, f"self-check failed: {plugin.plugin_status()[name]}"
    return True, "verified on GPU"


def ffmpeg_status() -> str:
    """The ffmpeg binary videos are encoded with, or why there is none."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # imageio-ffmpeg raises RuntimeError when it finds no binary
        found = shutil.which("ffmpeg")
        return found if found else "not found (videos cannot be written; install imageio-ffmpeg)"


def precision_status() -> str:
    """What precision 'auto' runs as here, and why (the device, the CPU's BF16 support)."""
    from timemachine.device import cpu_bf16_support, resolve_device, resolve_precision

    device = resolve_device(None)
    if device.type == "cuda":
        return "fp16 (the official float16 blocks on the GPU)"
    support = cpu_bf16_support()
    if support.native:
        return f"bf16 (native BF16 on this CPU: {support.detail})"
    return f"{resolve_precision('auto', device, bf16_native=False)} (no native BF16: {support.detail})"


def bf16_words() -> str:
    """Whether this CPU has native BF16, in a few words for a help text."""
    from timemachine.device import cpu_bf16_support

    support = cpu_bf16_support()
    return f"{'detected' if support.native else 'not detected'} here: {support.detail}"
