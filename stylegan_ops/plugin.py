"""Building, loading and self-checking the CUDA extensions behind the ops.

Each op with a CUDA kernel (``bias_act``, ``upfirdn2d``) has its sources in ``csrc/``.  The first time
an op runs on a CUDA tensor, :func:`get_plugin` JIT-compiles the extension with ninja (via
``torch.utils.cpp_extension.load``), loads it, and runs the op module's ``self_check`` on a small
input against the reference implementation.  If the build, the load or the check fails, the op falls
back to its reference implementation and one warning says why.  Nothing here needs a GPU to *build*:
:func:`build_plugin` compiles and loads an extension on a machine without one.

Environment:
    STYLEGAN_OPS_IMPL=ref     force the reference implementations everywhere (default: auto).
    STYLEGAN_OPS_BUILD_DIR    where compiled extensions are cached (default: torch's extensions dir).
    TORCH_CUDA_ARCH_LIST      GPU architectures to compile for.  Without it, the architecture of the
                              visible GPU, or DEFAULT_CUDA_ARCH_LIST when no GPU can be queried.
"""

from __future__ import annotations

import glob
import importlib
import os
import shutil
import sys
import threading
import warnings
from types import ModuleType
from typing import Optional

import torch

ENV_IMPL = "STYLEGAN_OPS_IMPL"
ENV_BUILD_DIR = "STYLEGAN_OPS_BUILD_DIR"

CSRC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")

#: Sources of each extension, relative to ``csrc/``.
PLUGIN_SOURCES: dict[str, list[str]] = {
    "bias_act": ["bias_act.cpp", "bias_act.cu"],
    "upfirdn2d": ["upfirdn2d.cpp", "upfirdn2d.cu"],
}
PLUGIN_HEADERS: dict[str, list[str]] = {
    "bias_act": ["bias_act.h"],
    "upfirdn2d": ["upfirdn2d.h"],
}


#: Architectures compiled for when no GPU can be queried and TORCH_CUDA_ARCH_LIST is unset:
#: Turing, Ampere (A100, RTX 30xx), Ada (RTX 40xx), Hopper (H100) and PTX for anything newer.
DEFAULT_CUDA_ARCH_LIST = "7.5;8.0;8.6;8.9;9.0+PTX"


class PluginError(RuntimeError):
    """An extension could not be built, loaded or verified; the message says which step and why."""


_lock = threading.RLock()  # re-entrant: the self-check runs the op, which asks for the plugin again
_loaded: dict[str, Optional[ModuleType]] = {}   # name -> verified module, or None after a failure
_status: dict[str, str] = {}                    # name -> 'verified' | 'built' | failure reason


def forced_reference() -> bool:
    """True when ``STYLEGAN_OPS_IMPL=ref`` forces the reference implementations."""
    value = os.environ.get(ENV_IMPL, "auto").strip().lower()
    if value not in ("auto", "ref", ""):
        raise ValueError(f"{ENV_IMPL} must be 'auto' or 'ref', got {value!r}")
    return value == "ref"


def choose_impl(impl: Optional[str], x: torch.Tensor) -> str:
    """Resolve an op's ``impl`` argument to ``'ref'`` or ``'cuda'`` for input ``x``.

    ``None`` means automatic: CUDA tensors use the kernel unless the environment forces the reference.
    ``'cuda'`` on a CPU tensor runs the reference (there is no CPU kernel to run).
    """
    if impl not in (None, "ref", "cuda"):
        raise ValueError(f"impl must be None, 'ref' or 'cuda', got {impl!r}")
    if impl == "ref" or x.device.type != "cuda" or forced_reference():
        return "ref"
    return "cuda"


def cuda_include_dirs() -> list[str]:
    """Include directories for CUDA library headers shipped in pip wheels (``nvidia/cu13/include``...).

    The torch wheels depend on ``nvidia-*`` packages that carry cuBLAS/cuSPARSE headers which torch's own
    headers include; a system CUDA toolkit may lack them.
    """
    dirs = []
    for base in sys.path:
        dirs.extend(sorted(glob.glob(os.path.join(base, "nvidia", "cu*", "include"))))
        dirs.extend(sorted(glob.glob(os.path.join(base, "nvidia", "*", "include"))))
    seen, result = set(), []
    for d in dirs:
        if os.path.isdir(d) and d not in seen:
            seen.add(d)
            result.append(d)
    return result


def find_cuda_home() -> Optional[str]:
    """The CUDA toolkit directory (holding ``bin/nvcc`` and ``include/cuda.h``), or None.

    ``CUDA_HOME`` / ``CUDA_PATH`` win; then ``/usr/local/cuda``; then the directory above an ``nvcc`` on
    PATH (skipping wrapper scripts whose directory has no CUDA headers).
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for home in candidates:
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")) and \
                os.path.isfile(os.path.join(home, "include", "cuda.h")):
            return home
    return None


def _build_directory(name: str) -> Optional[str]:
    root = os.environ.get(ENV_BUILD_DIR)
    if not root:
        return None
    path = os.path.join(root, f"{name}_torch{torch.__version__}".replace("+", "_"))
    os.makedirs(path, exist_ok=True)
    return path


def build_plugin(name: str, verbose: bool = False) -> ModuleType:
    """Compile (if needed) and load extension ``name``; no GPU is needed.  Raises :class:`PluginError`."""
    if name not in PLUGIN_SOURCES:
        raise PluginError(f"unknown extension {name!r}")
    if torch.version.cuda is None:
        raise PluginError(f"{name}: this PyTorch build has no CUDA support ({torch.__version__})")
    cuda_home = find_cuda_home()
    if cuda_home is None:
        raise PluginError(f"{name}: no CUDA toolkit found (set CUDA_HOME to the directory holding bin/nvcc)")
    os.environ["CUDA_HOME"] = cuda_home
    from torch.utils import cpp_extension  # imported lazily: it is slow and needs setuptools

    cpp_extension.CUDA_HOME = cuda_home  # it reads the environment once, at import; keep it consistent
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
    sources = [os.path.join(CSRC_DIR, s) for s in PLUGIN_SOURCES[name]]
    for path in sources + [os.path.join(CSRC_DIR, h) for h in PLUGIN_HEADERS[name]]:
        if not os.path.isfile(path):
            raise PluginError(f"{name}: source file missing: {path}")
    try:
        return cpp_extension.load(
            name=f"stylegan_ops_{name}",
            sources=sources,
            extra_include_paths=[CSRC_DIR] + cuda_include_dirs(),
            extra_cflags=["-O3"],
            # No --use_fast_math: it turns tanhf into tanh.approx.f32 (relative error ~5e-4) and expf into
            # ex2.approx; the kernels are memory-bound, so exact float math costs next to nothing.
            extra_cuda_cflags=["-O3"],
            build_directory=_build_directory(name),
            verbose=verbose,
        )
    except Exception as exc:  # compiler errors arrive as RuntimeError/subprocess errors of many kinds
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PluginError(f"{name}: build failed: {first_line}") from exc


def get_plugin(name: str) -> Optional[ModuleType]:
    """The verified extension ``name``, building and checking it on first use; None means: use the reference.

    Called only for CUDA tensors.  A failure is reported once per process with a warning.
    """
    with _lock:
        if name in _loaded:
            return _loaded[name]
        try:
            module = build_plugin(name)
            op_module = importlib.import_module(f"stylegan_ops.{name}")
            _loaded[name] = module          # the self-check calls the op, which looks the module up here
            try:
                op_module.self_check()
            except Exception as exc:
                raise PluginError(f"{name}: self-check against the reference failed: {exc}") from exc
            _status[name] = "verified"
        except PluginError as exc:
            _loaded[name] = None
            _status[name] = str(exc)
            warnings.warn(f"stylegan_ops: falling back to the reference implementation of {name}: {exc}",
                          RuntimeWarning, stacklevel=3)
        return _loaded[name]


def plugin_status() -> dict[str, str]:
    """Per extension: 'verified', 'not used yet', or the reason it fell back to the reference."""
    return {name: _status.get(name, "not used yet") for name in PLUGIN_SOURCES}
