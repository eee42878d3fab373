"""The CPU fast path of bias_act against the reference: values, gradients of first and second order."""

import pytest
import torch

from stylegan_ops.bias_act import _BiasActCPU, bias_act


@pytest.mark.parametrize("act", ["linear", "relu", "lrelu"])
@pytest.mark.parametrize("clamp", [None, 0.4])
@pytest.mark.parametrize("gain", [None, 0.5, 3.0])
def test_cpu_fast_path_matches_reference(act, clamp, gain):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, generator=gen, requires_grad=True)
    y_ref = bias_act(x, b, act=act, clamp=clamp, gain=gain, impl="ref")
    y_cpu = bias_act(x, b, act=act, clamp=clamp, gain=gain, impl="cpu")
    assert y_cpu.grad_fn.name() == "_BiasActCPUBackward"
    torch.testing.assert_close(y_cpu, y_ref, rtol=0, atol=1e-12)
    dy = torch.randn(y_ref.shape, dtype=torch.float64, generator=gen)
    for g_ref, g_cpu in zip(torch.autograd.grad(y_ref, [x, b], dy), torch.autograd.grad(y_cpu, [x, b], dy)):
        torch.testing.assert_close(g_cpu, g_ref, rtol=0, atol=1e-12)
    fn = lambda x, b: bias_act(x, b, act=act, clamp=clamp, gain=gain, impl="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_automatic_choice_on_cpu_and_the_environment_override(monkeypatch):
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    b = torch.zeros(3)
    assert bias_act(x, b, act="lrelu", clamp=256).grad_fn.name() == "_BiasActCPUBackward"
    assert bias_act(x, b, act="tanh").grad_fn.name() != "_BiasActCPUBackward"        # not covered: reference
    assert bias_act(x, b, act="lrelu", gain=-1.0).grad_fn.name() != "_BiasActCPUBackward"
    monkeypatch.setenv("STYLEGAN_OPS_IMPL", "ref")
    assert bias_act(x, b, act="lrelu", clamp=256).grad_fn.name() != "_BiasActCPUBackward"


def test_float32_within_rounding_of_reference():
    x = torch.randn(1, 64, 32, 32) * 300                      # many values beyond the clamp
    b = torch.randn(64)
    torch.testing.assert_close(bias_act(x, b, act="lrelu", clamp=256, impl="cpu"),
                               bias_act(x, b, act="lrelu", clamp=256, impl="ref"))
    assert _BiasActCPU is not None
