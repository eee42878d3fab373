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

Precision.  :func:`resolve_precision` turns a precision setting (``'auto'``, ``'bf16'``, ``'fp32'``; see
:mod:`timemachine.settings`) into what actually runs on a device: ``'auto'`` is bfloat16 on a CPU with
native BF16 arithmetic (:func:`cpu_bf16_support`), float32 on other CPUs, and the official float16 blocks
(``'fp16'``) on CUDA.  Native BF16 means instructions that multiply bfloat16 pairs and accumulate in float32:
AVX512_BF16 or AMX-BF16 on x86 (AMD Zen 4 and later, Intel Cooper Lake and Sapphire Rapids and later), the
BF16 extension on Arm (Neoverse V1/N2 and later, Graviton 3 and later, Apple M2 and later).  Without them
oneDNN either emulates bfloat16 (AVX-512 without BF16: rounding costs, no speed-up) or has no bfloat16
kernels at all, so 'auto' stays float32 there.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import platform
import subprocess
from typing import Iterator, Optional, Union

import torch

from timemachine.errors import LOWER_BATCH, OutOfMemory, TimemachineError
from timemachine.settings import check_precision

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


# ----------------------------------------------------------------------------------------------------------
# Precision

#: CPU feature flags (Linux /proc/cpuinfo 'flags' on x86, 'Features' on Arm) that mean native BF16 arithmetic.
_X86_BF16_FLAGS = {"avx512_bf16": "AVX512_BF16", "amx_bf16": "AMX-BF16"}
_ARM_BF16_FLAGS = {"bf16": "BF16"}


@dataclasses.dataclass(frozen=True)
class Bf16Support:
    """Whether this CPU does bfloat16 arithmetic natively, and what was found.

    Attributes:
        native: True when the CPU has BF16 dot-product instructions and PyTorch's oneDNN can use bfloat16.
        detail: what was detected, for ``timemachine doctor`` (e.g. 'AVX512_BF16 (x86_64)').
    """

    native: bool
    detail: str


def _cpuinfo_flags(text: str) -> set[str]:
    """The feature flags of the first processor in /proc/cpuinfo's ``text`` (x86 'flags', Arm 'Features')."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def _macos_arm_bf16() -> bool:
    try:
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                             timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return out.strip() == "1"


def detect_cpu_bf16(cpuinfo: Optional[str] = None, machine: Optional[str] = None,
                    system: Optional[str] = None) -> Bf16Support:
    """Detect native BF16 on this CPU (arguments: for tests; default: read from this machine).

    Linux: the flags in /proc/cpuinfo (x86: avx512_bf16 or amx_bf16; Arm: bf16).  macOS on Apple silicon:
    ``sysctl hw.optional.arm.FEAT_BF16``.  Elsewhere: not detected (float32).  Native support also needs
    PyTorch's oneDNN with bfloat16 (``torch.ops.mkldnn._is_mkldnn_bf16_supported``).
    """
    machine = (machine or platform.machine()).lower()
    system = system or platform.system()
    found: list[str] = []
    if system == "Linux" or cpuinfo is not None:
        if cpuinfo is None:
            try:
                with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                    cpuinfo = f.read(1 << 20)
            except OSError:
                cpuinfo = ""
        flags = _cpuinfo_flags(cpuinfo)
        table = _ARM_BF16_FLAGS if machine in ("aarch64", "arm64") else _X86_BF16_FLAGS
        found = [name for flag, name in table.items() if flag in flags]
    elif system == "Darwin" and machine == "arm64" and _macos_arm_bf16():
        found = ["BF16"]
    if not found:
        return Bf16Support(False, f"no native BF16 instructions found ({machine}, {system})")
    if not torch.backends.mkldnn.is_available() or not _mkldnn_bf16():
        return Bf16Support(False, f"{', '.join(found)} ({machine}), but this PyTorch's oneDNN has no bfloat16")
    return Bf16Support(True, f"{', '.join(found)} ({machine})")


def _mkldnn_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.lru_cache(maxsize=None)
def cpu_bf16_support() -> Bf16Support:
    """:func:`detect_cpu_bf16` for this machine, detected once per process."""
    return detect_cpu_bf16()


def resolve_precision(precision: str, device: Union[str, torch.device, None] = None,
                      bf16_native: Optional[bool] = None) -> str:
    """What a precision setting runs as on ``device``: ``'bf16'``, ``'fp32'`` or ``'fp16'``.

    Args:
        precision:   'auto', 'bf16', 'fp32' (a user's choice), or an already resolved 'fp16'.
        device:      where the networks run (a ``torch.device`` or a name; None = the CPU).
        bf16_native: whether the CPU has native BF16; None = :func:`cpu_bf16_support` (tests force it off).

    'auto': CUDA -> 'fp16' (the official float16 blocks); a CPU with native BF16 -> 'bf16'; any other CPU ->
    'fp32'.  An explicit 'bf16' or 'fp32' is kept as asked (bfloat16 on a CPU without native BF16 runs, but
    slower than float32).  Raises :class:`TimemachineError` for an unknown value and for 'fp16' off CUDA
    (float16 convolutions on the CPU are ~70x slower).
    """
    check_precision(precision, TimemachineError, allow_resolved=True)
    device_type = torch.device(device).type if device is not None else "cpu"
    if precision == "auto":
        if device_type == "cuda":
            return "fp16"
        native = cpu_bf16_support().native if bf16_native is None else bf16_native
        return "bf16" if native else "fp32"
    if precision == "fp16" and device_type != "cuda":
        raise TimemachineError("float16 precision is for CUDA GPUs; on the CPU use 'bf16' or 'fp32'")
    return precision


__all__ = ["Bf16Support", "allocator_tuned", "cpu_bf16_support", "detect_cpu_bf16",
           "prepare_device", "resolve_device", "resolve_precision", "tune_cpu_allocator"]


@contextlib.contextmanager
def memory_errors(what: str, batch: int = 1) -> Iterator[None]:
    """Turn running out of memory while ``what`` into one sentence (:class:`OutOfMemory`), whose remedy is a
    smaller batch when ``batch`` > 1.  (Allocation failures only: a process the kernel's OOM killer ends cannot
    say anything.)"""
    try:
        yield
    except (MemoryError, torch.OutOfMemoryError):
        pass
    except RuntimeError as exc:
        text = str(exc).lower()
        if "can't allocate memory" not in text and "out of memory" not in text:
            raise
    else:
        return
    at_once = f" ({batch} at once)" if batch > 1 else ""
    raise OutOfMemory(f"the machine ran out of memory while {what}{at_once}",
                      remedy=LOWER_BATCH if batch > 1 else None) from None
