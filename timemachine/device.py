"""Choosing the device, and making the CPU path fast.

:func:`resolve_device` turns a user's ``--device`` into a ``torch.device`` with a clear error for a
device that is not there.  :func:`prepare_device` is called once by the faces (CLI, UI) and by
long-running library entry points before heavy work; on the CPU it tunes the memory allocator.

Why the allocator matters: the generator's activations at 512x512 are 16-70 MB each.  glibc's malloc
serves blocks that large with fresh ``mmap`` calls and returns them on ``free``, so every temporary
tensor costs page faults and zeroing of its pages by the kernel - measured here (benchmarks/
bench_generator.py) this more than doubled the time of a forward+backward pass of the 512x512 generator.
:func:`tune_cpu_allocator` asks glibc (``mallopt``) to serve large blocks from its heap and keep freed
memory for reuse.  The price: memory freed after a peak is kept by the process instead of returned to the
system.  ``TIMEMACHINE_CPU_MALLOC_TUNING=0`` turns it off (the faces read it into
:class:`timemachine.env.Environment` and pass ``malloc_tuning``); on non-glibc systems it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from typing import Optional, Union

import torch

from timemachine.errors import TimemachineError

# glibc mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_allocator_tuned: Optional[bool] = None


def resolve_device(spec: Union[str, torch.device, None] = None) -> torch.device:
    """``None``/``'auto'`` -> CUDA when available, else CPU; else the named device.

    Raises:
        TimemachineError: a CUDA device was asked for but is not available, or the name is not a device.
    """
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise TimemachineError(f"unknown device {spec!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TimemachineError(f"device {spec!r} asked for, but PyTorch sees no CUDA GPU on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TimemachineError(f"device {spec!r} asked for, but there are only {torch.cuda.device_count()} GPU(s)")
    elif device.type != "cpu":
        raise TimemachineError(f"unsupported device {spec!r}: use 'cpu' or 'cuda'")
    return device


def tune_cpu_allocator(enabled: bool = True) -> bool:
    """Make glibc keep large freed blocks for reuse (see the module docstring).  Returns True if tuned.

    Idempotent; a no-op returning False on non-Linux/non-glibc systems or when not ``enabled``
    (``TIMEMACHINE_CPU_MALLOC_TUNING=0``).
    """
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if not enabled:
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
    except (OSError, AttributeError):
        return False
    _allocator_tuned = ok
    return ok


def allocator_tuned() -> bool:
    """Whether :func:`tune_cpu_allocator` succeeded in this process."""
    return bool(_allocator_tuned)


def prepare_device(device: Union[str, torch.device, None] = None, malloc_tuning: bool = True) -> torch.device:
    """Resolve ``device`` and, for the CPU, tune the allocator (unless ``malloc_tuning`` is off).  Returns the
    ``torch.device``."""
    device = resolve_device(device)
    if device.type == "cpu":
        tune_cpu_allocator(malloc_tuning)
    return device
