"""Shared test fixtures: paths to ../shared, deterministic seeds, small generators."""

from __future__ import annotations

import contextlib
import os
import pathlib

import numpy as np
import pytest
import torch

from timemachine.device import tune_cpu_allocator

tune_cpu_allocator()  # as the CLI and UI do: large tensors are reused instead of re-mapped

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
#: Reference material outside the repository (fixtures, real latents); see ../shared/README.md.
SHARED_DIR = pathlib.Path(os.environ.get("TIMEMACHINE_SHARED_DIR", REPO_ROOT.parent / "shared"))
TINY_PKL = SHARED_DIR / "fixtures" / "sg2ada_tiny.pkl"
TINY_REF = SHARED_DIR / "fixtures" / "sg2ada_tiny_ref.npz"
LATENTS_DIR = SHARED_DIR / "latents"


def require_shared(path: pathlib.Path) -> pathlib.Path:
    """Skip the calling test, saying why, when a file from ../shared is not available."""
    if not path.exists():
        pytest.skip(f"{path} not found: set TIMEMACHINE_SHARED_DIR to the shared fixtures directory")
    return path


@pytest.fixture(autouse=True)
def _deterministic_seeds():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(autouse=True)
def _float32_unless_asked(monkeypatch):
    """Precision 'auto' resolves to float32 in every test, whatever this machine's CPU: results must not depend
    on whether the CPU has native BF16.  The bfloat16 path is tested by asking for it by name, and the detection
    itself in tests/test_precision.py (which forces it on and off)."""
    from timemachine import device

    monkeypatch.setattr(device, "cpu_bf16_support",
                        lambda: device.Bf16Support(False, "forced off by tests/conftest.py"))


@pytest.fixture(scope="session")
def tiny_pkl() -> pathlib.Path:
    return require_shared(TINY_PKL)


@pytest.fixture(scope="session")
def tiny_ref() -> dict:
    with np.load(require_shared(TINY_REF)) as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


@pytest.fixture(scope="session")
def tiny_G(tiny_pkl):
    from timemachine.checkpoint import load_generator

    return load_generator(tiny_pkl, device="cpu")


has_gpu = torch.cuda.is_available()
gpu_only = pytest.mark.skipif(not has_gpu, reason="needs a CUDA GPU; none is visible on this machine")


def make_small_generator(seed: int = 0, resolution: int = 32, w_dim: int = 32, channel_max: int = 64,
                         noise_strength: float = 0.1, architecture: str = "skip", conv_clamp=None,
                         bias_std: float = 0.0):
    """A small, randomly initialised generator whose images are roughly in [-1, 1] (eval, no grad).

    ``bias_std`` > 0 draws the layers' biases (not the affine ones) from N(0, bias_std) instead of zeros."""
    from timemachine.networks import Generator

    synthesis_kwargs = dict(channel_base=16 * resolution, channel_max=channel_max)
    if architecture != "skip":
        synthesis_kwargs["architecture"] = architecture
    if conv_clamp is not None:
        synthesis_kwargs["conv_clamp"] = conv_clamp
    torch.manual_seed(seed)
    G = Generator(z_dim=w_dim, c_dim=0, w_dim=w_dim, img_resolution=resolution, img_channels=3,
                  mapping_kwargs=dict(num_layers=2), synthesis_kwargs=synthesis_kwargs)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(noise_strength)
            elif bias_std > 0 and name.endswith("bias") and "affine" not in name:
                p.normal_(0, bias_std)
    return G.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def small_G():
    return make_small_generator()


@pytest.fixture(scope="session")
def random_lpips():
    """LPIPS with a random VGG16 (asked for by name, as a user would have to)."""
    import warnings

    from timemachine.perceptual import PerceptualDistance, RandomWeightsWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return PerceptualDistance("random")


def write_photo(path: pathlib.Path, width: int = 100, height: int = 80, seed: int = 2, **save) -> str:
    """A photo of random pixels (numpy seed ``seed``) saved at ``path`` (PIL ``save`` options); its path."""
    from PIL import Image

    Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype(np.uint8)).save(path, **save)
    return str(path)


@pytest.fixture()
def cli_home(tmp_path, monkeypatch, small_G) -> dict:
    """A home for CLI runs in tmp_path (offline, the random VGG16 asked for by name) with ``small_G`` saved as
    a model file and the pair vector 'pups' for it in the library.  Returns {"model": model path, "tmp":
    tmp_path, "ws": the two mapped latents [2, num_ws, w_dim] the vector was built from, "vector": it}."""
    from timemachine import age
    from timemachine.checkpoint import model_fingerprint, save_generator
    from timemachine.env import Environment

    monkeypatch.setenv("TIMEMACHINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TIMEMACHINE_OFFLINE", "1")
    monkeypatch.setenv("TIMEMACHINE_VGG_WEIGHTS", "random")
    model = tmp_path / "small.safetensors"
    save_generator(small_G, model)
    ws = small_G.mapping(torch.randn(2, small_G.z_dim, generator=torch.Generator().manual_seed(3)), None)
    vector = age.build_vector("pups", ws[:1], ws[1:], method="pair", model_fingerprint=model_fingerprint(small_G))
    age.VectorLibrary(Environment.from_environ().paths).save(vector)
    return {"model": str(model), "tmp": tmp_path, "ws": ws, "vector": vector}


def mutate_bytes(content: bytes, data, max_edits: int = 8) -> bytes:
    """``content`` with 1..max_edits random bit flips, truncations and insertions drawn from hypothesis ``data``."""
    from hypothesis import strategies as st

    content = bytearray(content)
    for _ in range(data.draw(st.integers(1, max_edits))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(content) - 1)))
        if kind == "flip" and content:
            content[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "truncate":
            del content[pos:]
        else:
            content[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    return bytes(content)


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


@contextlib.contextmanager
def address_space_limit(extra_bytes: int):
    """Cap this process's address space at its current size + extra_bytes, so an oversized allocation fails."""
    resource = pytest.importorskip("resource")
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs Linux /proc to measure the address space")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_size() + extra_bytes
    if hard != resource.RLIM_INFINITY and hard < limit:
        pytest.skip("the hard address-space limit is already lower")
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
