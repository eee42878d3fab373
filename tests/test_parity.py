"""Our generator against NVIDIA's: outputs of the official code on ../shared/fixtures/sg2ada_tiny.pkl.

Tolerances from ../shared/README.md: ws within 1e-5 absolute; images within 1e-4 x max|image|;
grad_ws within 1e-4 x max|grad_ws|; float16 paths within about 2e-2 x max|image|.
"""

import pytest
import torch


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got - ref).abs().max() / ref.abs().max()).item()


def test_loaded_attributes(tiny_G):
    G = tiny_G
    assert (G.z_dim, G.c_dim, G.w_dim, G.num_ws, G.img_resolution, G.img_channels) == (64, 0, 64, 8, 32, 3)
    assert G.mapping.w_avg.shape == (64,) and G.mapping.w_avg.abs().sum() > 0
    assert not G.training and not any(p.requires_grad for p in G.parameters())
    noise_buffers = [n for n, _ in G.synthesis.named_buffers() if n.endswith("noise_const")]
    assert noise_buffers == ["b4.conv1.noise_const", "b8.conv0.noise_const", "b8.conv1.noise_const",
                             "b16.conv0.noise_const", "b16.conv1.noise_const", "b32.conv0.noise_const",
                             "b32.conv1.noise_const"]


@pytest.mark.parametrize("key, psi, cutoff", [("ws", 1, None), ("ws_psi0_5", 0.5, None), ("ws_psi0_7_cutoff2", 0.7, 2)])
def test_mapping(tiny_G, tiny_ref, key, psi, cutoff):
    ws = tiny_G.mapping(tiny_ref["z"], tiny_ref["c"], truncation_psi=psi, truncation_cutoff=cutoff)
    assert ws.shape == (4, 8, 64)
    assert (ws - tiny_ref[key]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("ws_key, img_key, noise_mode", [
    ("ws", "img_const", "const"), ("ws", "img_none", "none"), ("ws_psi0_5", "img_psi0_5_const", "const")])
@pytest.mark.parametrize("fused_modconv", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_synthesis_float32(tiny_G, tiny_ref, ws_key, img_key, noise_mode, fused_modconv, channels_last):
    img = tiny_G.synthesis(tiny_ref[ws_key], noise_mode=noise_mode, fused_modconv=fused_modconv,
                           channels_last=channels_last)
    assert img.shape == (4, 3, 32, 32) and img.dtype == torch.float32
    assert rel_err(img, tiny_ref[img_key]) <= 1e-4


def test_generator_call_matches_mapping_then_synthesis(tiny_G, tiny_ref):
    img = tiny_G(tiny_ref["z"], tiny_ref["c"], truncation_psi=0.5, noise_mode="const")
    assert rel_err(img, tiny_ref["img_psi0_5_const"]) <= 1e-4


def test_synthesis_official_default_precision(tiny_G, tiny_ref):
    """force_fp32=False runs the official float16 blocks, even on the CPU."""
    img = tiny_G.synthesis(tiny_ref["ws"], noise_mode="const", force_fp32=False)
    assert rel_err(img, tiny_ref["img_const_default_precision"]) <= 2e-2
    # ... and it is genuinely the float16 path, not float32 in disguise
    img32 = tiny_G.synthesis(tiny_ref["ws"], noise_mode="const")
    assert (img - img32).abs().max() > 0


def test_cpu_default_is_float32(tiny_G, tiny_ref):
    img = tiny_G.synthesis(tiny_ref["ws"], noise_mode="const")
    assert rel_err(img, tiny_ref["img_const"]) <= 1e-4


@pytest.mark.parametrize("fused_modconv", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_gradient_wrt_ws(tiny_G, tiny_ref, fused_modconv, channels_last):
    ws = tiny_ref["ws"][:1].clone().requires_grad_(True)
    img = tiny_G.synthesis(ws, noise_mode="const", fused_modconv=fused_modconv, channels_last=channels_last)
    (img * tiny_ref["grad_probe"]).sum().backward()
    assert rel_err(ws.grad, tiny_ref["grad_ws"]) <= 1e-4


def test_random_noise_mode_varies_and_is_seeded(tiny_G, tiny_ref):
    ws = tiny_ref["ws"][:2]
    torch.manual_seed(1)
    a = tiny_G.synthesis(ws, noise_mode="random")
    torch.manual_seed(1)
    b = tiny_G.synthesis(ws, noise_mode="random")
    c = tiny_G.synthesis(ws, noise_mode="random")
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3
    assert (a - tiny_ref["img_const"][:2]).abs().max() > 1e-3


def test_explicit_noise_overrides_noise_mode(tiny_G, tiny_ref):
    """noise={'b{res}.conv{k}': tensor} with the const buffers reproduces noise_mode='const'."""
    noise = {name: getattr(getattr(tiny_G.synthesis, name.split(".")[0]), name.split(".")[1]).noise_const[None, None]
             for name in tiny_G.synthesis.noise_layer_names()}
    img = tiny_G.synthesis(tiny_ref["ws"], noise_mode="none", noise=noise)
    assert rel_err(img, tiny_ref["img_const"]) <= 1e-4


def test_bad_ws_shape_is_a_clear_error(tiny_G):
    with pytest.raises(ValueError, match=r"ws must have shape \[N, 8, 64\]"):
        tiny_G.synthesis(torch.zeros([1, 7, 64]))
    with pytest.raises(ValueError, match="noise_mode"):
        tiny_G.synthesis(torch.zeros([1, 8, 64]), noise_mode="bogus")


@pytest.mark.parametrize("precision", ["fp32", None])
def test_float32_by_name_is_the_parity_path(tiny_G, tiny_ref, precision):
    """precision='fp32' (what --precision fp32, and 'auto' without native BF16, run) is the float32 parity path."""
    img = tiny_G.synthesis(tiny_ref["ws"], noise_mode="const", precision=precision)
    assert rel_err(img, tiny_ref["img_const"]) <= 1e-4


# ---------------------------------------------------------------------------------------------- GPU
# The same references on CUDA (benchmarks/gpu_check.sh runs these): float32 with TF32 off, the official
# float16 blocks (what 'auto' runs on CUDA) with the custom CUDA kernels, and the gradient.

gpu_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none is visible on this machine")


@pytest.fixture()
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@gpu_only
@pytest.mark.gpu
@pytest.mark.parametrize("precision, key, tolerance", [
    ("fp32", "img_const", 1e-4), ("fp16", "img_const_default_precision", 2e-2),
    (None, "img_const_default_precision", 2e-2)])
def test_gpu_synthesis_matches_nvidia(tiny_G, tiny_ref, no_tf32, precision, key, tolerance):
    import copy

    G = copy.deepcopy(tiny_G).cuda()
    with torch.no_grad():
        img = G.synthesis(tiny_ref["ws"].cuda(), noise_mode="const", precision=precision).cpu()
    assert rel_err(img, tiny_ref[key]) <= tolerance


@gpu_only
@pytest.mark.gpu
def test_gpu_gradient_wrt_ws_matches_nvidia(tiny_G, tiny_ref, no_tf32):
    import copy

    G = copy.deepcopy(tiny_G).cuda()
    ws = tiny_ref["ws"][:1].cuda().requires_grad_(True)
    img = G.synthesis(ws, noise_mode="const", precision="fp32")
    (img * tiny_ref["grad_probe"].cuda()).sum().backward()
    assert rel_err(ws.grad.cpu(), tiny_ref["grad_ws"]) <= 1e-4


@gpu_only
@pytest.mark.gpu
def test_gpu_bf16_is_within_bf16_rounding(tiny_G, tiny_ref):
    import copy

    G = copy.deepcopy(tiny_G).cuda()
    with torch.no_grad():
        img = G.synthesis(tiny_ref["ws"].cuda(), noise_mode="const", precision="bf16").cpu()
    ref = tiny_ref["img_const"]
    assert 0 < ((img - ref).norm() / ref.norm()).item() < 1e-2
