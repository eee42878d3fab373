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


@pytest.mark.parametrize("act, clamp", [("lrelu", 0.4), ("linear", None), ("relu", 1.0)])
def test_cpu_inplace_overwrites_x_and_matches_out_of_place(act, clamp):
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 5, 6, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, generator=gen, requires_grad=True)
    dy = torch.randn(2, 5, 6, 7, dtype=torch.float64, generator=gen)
    y_ref = bias_act(x0 * 2, b, act=act, clamp=clamp, impl="cpu")
    x = x0 * 2                                   # an intermediate nothing else needs: may be given up
    y = bias_act(x, b, act=act, clamp=clamp, impl="cpu", inplace=True)
    assert y.data_ptr() == x.data_ptr(), "the CPU path must write into x"
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    for g, g_ref in zip(torch.autograd.grad(y, [x0, b], dy), torch.autograd.grad(y_ref, [x0, b], dy)):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=0)
    fn = lambda x0, b: bias_act(x0 * 2, b, act=act, clamp=clamp, impl="cpu", inplace=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x0, b))
    assert torch.autograd.gradgradcheck(fn, (x0, b))


def test_cpu_inplace_on_a_tensor_the_graph_still_needs_raises_instead_of_using_wrong_values():
    x0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    x = x0.exp()                                 # exp's backward needs its output, x
    y = bias_act(x, None, act="lrelu", impl="cpu", inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        bias_act(x0, None, act="lrelu", impl="cpu", inplace=True)


def test_inplace_without_grad_and_on_the_reference_path():
    x = torch.randn(2, 3, 4, 4)
    b = torch.randn(3)
    expected = bias_act(x, b, act="lrelu", clamp=0.5, impl="ref")
    with torch.no_grad():
        x_cpu = x.clone()
        y = bias_act(x_cpu, b, act="lrelu", clamp=0.5, impl="cpu", inplace=True)
    assert y.data_ptr() == x_cpu.data_ptr()
    torch.testing.assert_close(y, expected)
    x_ref = x.clone()
    y = bias_act(x_ref, b, act="lrelu", clamp=0.5, impl="ref", inplace=True)   # allowed, not required, to overwrite
    torch.testing.assert_close(y, expected)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    y = bias_act(channels_last, b, act="lrelu", clamp=0.5, impl="cpu", inplace=True)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, expected)
