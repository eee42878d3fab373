"""The generator's speed choices change speed, not results: memory layout (channels_last), modulation path
(fused_modconv), and the in-place arithmetic used when nothing is differentiated.

Each choice is compared with the others on small generators of both synthesis architectures the released
models use ('skip') or the official code offers ('resnet'), for images, gradients with respect to ws,
and gradients with respect to the weights (what pivotal tuning differentiates).
"""

import itertools

import pytest
import torch

from conftest import make_small_generator
from timemachine.networks import default_channels_last

# (channels_last, fused_modconv); None = the default for the device (on the CPU: channels-last, 3x3 layers
# modulating activations, 1x1 ToRGB layers fused).
PATHS = list(itertools.product([True, False, None], [True, False, None]))


@pytest.fixture(scope="module", params=["skip", "resnet"])
def G(request):
    return make_small_generator(resolution=16, w_dim=16, channel_max=32, noise_strength=0.3,
                                architecture=request.param, conv_clamp=2.0, bias_std=0.5)


@pytest.fixture(scope="module")
def ws(G):
    gen = torch.Generator().manual_seed(1)
    return G.mapping(torch.randn(2, G.z_dim, generator=gen), None)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got - ref).abs().max() / ref.abs().max()).item()


def test_cpu_default_is_channels_last_and_cuda_keeps_the_official_rule():
    assert default_channels_last(torch.device("cpu"), False) is True
    assert default_channels_last(torch.device("cuda"), False) is False   # float32 block
    assert default_channels_last(torch.device("cuda"), True) is True     # float16 block built channels-last


@pytest.mark.parametrize("channels_last, fused_modconv", PATHS)
def test_images_agree_across_paths(G, ws, channels_last, fused_modconv):
    with torch.no_grad():
        ref = G.synthesis(ws, noise_mode="const", channels_last=False, fused_modconv=True)
        img = G.synthesis(ws, noise_mode="const", channels_last=channels_last, fused_modconv=fused_modconv)
    assert img.is_contiguous() and img.shape == (2, 3, 16, 16)
    assert rel_err(img, ref) <= 1e-5
    assert (ref.abs() >= 2.0).any(), "conv_clamp must be reached somewhere, or the clamp path goes untested"


@pytest.mark.parametrize("channels_last, fused_modconv", PATHS)
def test_no_grad_in_place_arithmetic_equals_the_autograd_path(G, ws, channels_last, fused_modconv):
    """Without grad, modulated_conv2d and bias_act work in place; with grad they must not, and agree."""
    kwargs = dict(noise_mode="const", channels_last=channels_last, fused_modconv=fused_modconv)
    with torch.no_grad():
        img_no_grad = G.synthesis(ws, **kwargs)
    img_grad = G.synthesis(ws.clone().requires_grad_(True), **kwargs)
    assert img_grad.requires_grad
    torch.testing.assert_close(img_no_grad, img_grad.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("channels_last, fused_modconv", PATHS)
def test_gradients_agree_across_paths(G, ws, channels_last, fused_modconv):
    gen = torch.Generator().manual_seed(2)
    probe = torch.randn(2, 3, 16, 16, generator=gen)
    noise = {}
    for name in G.synthesis.noise_layer_names():  # 'b{res}.conv{k}'
        res = int(name.split(".")[0][1:])
        noise[name] = torch.randn([1, 1, res, res], generator=gen)

    def grads(**path):
        G.requires_grad_(True)
        try:
            w = ws.clone().requires_grad_(True)
            noise_opt = {k: v.clone().requires_grad_(True) for k, v in noise.items()}
            img = G.synthesis(w, noise=noise_opt, **path)
            params = list(G.synthesis.parameters())
            return torch.autograd.grad((img * probe).sum(), [w] + list(noise_opt.values()) + params)
        finally:
            G.requires_grad_(False)

    ref = grads(channels_last=False, fused_modconv=True)
    got = grads(channels_last=channels_last, fused_modconv=fused_modconv)
    for g_ref, g_got in zip(ref, got):
        assert g_got.shape == g_ref.shape
        if g_ref.abs().max() > 0:
            assert rel_err(g_got, g_ref) <= 1e-4


def test_weight_cache_does_not_keep_discarded_copies_alive(G, ws):
    """The per-parameter cache of derived weights (networks.derived) must not outlive its parameter: a float32
    cast of a float32 weight is the weight itself, and keeping it would keep every deep copy of a generator
    (pivotal-tuning renders make one per call) alive for good."""
    import copy
    import gc
    import weakref

    alive = []
    for _ in range(3):
        copied = copy.deepcopy(G)
        with torch.no_grad():
            copied.synthesis(ws, noise_mode="const", precision="fp32", fused_modconv=False)
        alive.append(weakref.ref(copied.synthesis.b8.conv0.weight))
        del copied
    gc.collect()
    assert [ref() is None for ref in alive] == [True, True, True]
