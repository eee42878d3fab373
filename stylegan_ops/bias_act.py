"""Fused bias + activation + gain + clamp: ``y = clamp(act(x + b) * gain, -clamp, clamp)``.

One public function, :func:`bias_act`, with three implementations behind it:

* ``'ref'``  - plain PyTorch ops (:func:`bias_act_ref`): any device, any dtype, autograd of any order.
* ``'cuda'`` - our CUDA kernel (``csrc/bias_act.cu``): one pass over memory for the forward pass and
  one for the backward pass, gradients of any order through a chain of autograd Functions.
* ``'cpu'``  - the CPU fast path (:class:`_BiasActCPU`) for the activations StyleGAN2 uses ('linear',
  'relu', 'lrelu') with a positive gain: the forward pass works in place on a single new tensor (or, with
  ``inplace=True``, on x itself), and the backward pass needs only the output, from which it reads the
  derivative and the clamp mask with two fused PyTorch kernels.  The reference builds four tensors and
  keeps them all for the backward pass.

``impl=None`` picks ``'cuda'`` for CUDA tensors when the extension built and passed its self-check
(see :mod:`stylegan_ops.plugin`), ``'cpu'`` for CPU tensors it covers, and ``'ref'`` otherwise;
``STYLEGAN_OPS_IMPL=ref`` forces the reference.  All agree to float rounding (the fast paths zero the
gradient where the output sits exactly on the clamp limit, the reference passes it there: a set of
measure zero).
"""

from __future__ import annotations

import dataclasses
import math
from types import ModuleType
from typing import Any, Callable, Optional

import torch

from stylegan_ops import plugin


@dataclasses.dataclass(frozen=True)
class Activation:
    """One activation function and the facts the kernels need about it.

    ``ref`` says which tensor the first derivative can be computed from: ``'x'`` (the input plus bias),
    ``'y'`` (the output, cheaper: nothing else needs saving) or ``''`` (derivative is constant).
    ``cuda_idx`` is the activation's number in ``csrc/bias_act.cu``.
    """

    func: Callable[..., torch.Tensor]
    def_alpha: float
    def_gain: float
    cuda_idx: int
    ref: str
    has_2nd_grad: bool


activation_funcs: dict[str, Activation] = {
    "linear":   Activation(lambda x, **_: x,                                        0.0, 1.0,          1, "",  False),
    "relu":     Activation(lambda x, **_: torch.nn.functional.relu(x),              0.0, math.sqrt(2), 2, "y", False),
    "lrelu":    Activation(lambda x, alpha, **_: torch.nn.functional.leaky_relu(x, alpha),
                                                                                    0.2, math.sqrt(2), 3, "y", False),
    "tanh":     Activation(lambda x, **_: torch.tanh(x),                            0.0, 1.0,          4, "y", True),
    "sigmoid":  Activation(lambda x, **_: torch.sigmoid(x),                         0.0, 1.0,          5, "y", True),
    "elu":      Activation(lambda x, **_: torch.nn.functional.elu(x),               0.0, 1.0,          6, "y", True),
    "selu":     Activation(lambda x, **_: torch.nn.functional.selu(x),              0.0, 1.0,          7, "y", True),
    "softplus": Activation(lambda x, **_: torch.nn.functional.softplus(x),          0.0, 1.0,          8, "y", True),
    "swish":    Activation(lambda x, **_: torch.sigmoid(x) * x,                     0.0, math.sqrt(2), 9, "x", True),
}


def _resolve_params(act: str, alpha: Optional[float], gain: Optional[float], clamp: Optional[float]):
    """Fill in the activation's defaults; ``clamp=-1`` means no clamping (the kernels' convention)."""
    if act not in activation_funcs:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(activation_funcs)}")
    spec = activation_funcs[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp if clamp is not None else -1)
    if clamp != -1 and clamp < 0:
        raise ValueError(f"clamp must be non-negative or None, got {clamp}")
    return spec, alpha, gain, clamp


def _check_bias(x: torch.Tensor, b: Optional[torch.Tensor], dim: int) -> int:
    """Validate the bias against ``x``; return ``dim`` counted from the front (negative dims allowed)."""
    if b is None:
        return dim
    if not (isinstance(dim, int) and -x.ndim <= dim < x.ndim):
        raise ValueError(f"dim must be an integer in [{-x.ndim}, {x.ndim}) for a {x.ndim}D x, got {dim!r}")
    dim = dim % x.ndim
    if not isinstance(b, torch.Tensor) or b.ndim != 1 or b.shape[0] != x.shape[dim]:
        raise ValueError(f"bias must have shape [{x.shape[dim]}], got {tuple(getattr(b, 'shape', ()))}")
    if b.dtype != x.dtype or b.device != x.device:
        raise ValueError("bias must have the dtype and device of x")
    return dim


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1, act: str = "linear",
             alpha: Optional[float] = None, gain: Optional[float] = None, clamp: Optional[float] = None,
             impl: Optional[str] = None, inplace: bool = False) -> torch.Tensor:
    """Add a bias along one dimension, apply an activation, scale by ``gain``, clamp to ``[-clamp, clamp]``.

    Args:
        x:     input of any shape and floating dtype, e.g. activations [N, C, H, W].
        b:     bias [x.shape[dim]] of x's dtype, or None.
        dim:   the dimension of ``x`` that ``b`` runs along.
        act:   one of ``activation_funcs`` ('linear', 'relu', 'lrelu', 'tanh', 'sigmoid', 'elu', 'selu',
               'softplus', 'swish').
        alpha: shape parameter (the negative slope of 'lrelu'); None = the activation's default.
        gain:  output scale; None = the activation's default (sqrt(2) for relu/lrelu/swish, else 1).
        clamp: clamp the output to +-clamp; None = no clamping.
        impl:  'ref', 'cuda', 'cpu' or None (automatic, see module docstring).
        inplace: the caller gives x up: the result may be written into x's memory, and x's contents are
               unspecified afterwards; use the returned tensor.  The CPU path then allocates nothing
               (autograd-safe: x is marked as modified, so a graph that still needs it raises an error
               instead of using wrong values); the other paths return a new tensor as usual.

    Returns:
        tensor of x's shape, dtype and device.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError("x must be a tensor")
    dim = _check_bias(x, b, dim)
    if impl == "cpu":
        if x.device.type != "cpu":
            raise ValueError("impl='cpu' needs a CPU tensor")
        chosen = "cpu"
    else:
        chosen = plugin.choose_impl(impl, x)
        if chosen == "ref" and impl is None and x.device.type == "cpu" and not plugin.forced_reference():
            chosen = "cpu"
    spec, resolved_alpha, resolved_gain, resolved_clamp = _resolve_params(act, alpha, gain, clamp)
    if act == "linear" and b is None and resolved_gain == 1 and resolved_clamp < 0:
        return x  # nothing to do; every implementation returns x itself (no autograd Function around it)
    if chosen == "cuda" and (ext := plugin.get_plugin("bias_act")) is not None:
        return _bias_act_cuda(ext, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp).apply(x, b)
    if chosen == "cpu" and act in _CPU_ACTIVATIONS and resolved_gain > 0:
        return _BiasActCPU.apply(x, b, dim, act, resolved_alpha, resolved_gain, resolved_clamp, inplace)
    return bias_act_ref(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)


def bias_act_ref(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1, act: str = "linear",
                 alpha: Optional[float] = None, gain: Optional[float] = None,
                 clamp: Optional[float] = None) -> torch.Tensor:
    """Reference implementation of :func:`bias_act` with standard PyTorch ops (same arguments)."""
    spec, alpha, gain, clamp = _resolve_params(act, alpha, gain, clamp)
    dim = _check_bias(x, b, dim)
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha=alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


# ------------------------------------------------------------------------------------------------------
# CPU fast path.  For act in {linear, relu, lrelu} and gain > 0, y = clamp(act(x + b) * gain) and
#   dy/dx = gain * act'(x + b) * [|y| < clamp],   with act'(x + b) = 1 if y > 0 else alpha (0 for relu)
# - everything the backward pass needs is in y.

_CPU_ACTIVATIONS = ("linear", "relu", "lrelu")


class _BiasActCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, dim, act, alpha, gain, clamp, inplace):  # pylint: disable=arguments-differ
        if inplace:
            y = x.add_(b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])) if b is not None else x
            ctx.mark_dirty(x)
        else:
            y = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)]) if b is not None else x.clone()
        if act == "lrelu":
            torch.nn.functional.leaky_relu_(y, alpha)
        elif act == "relu":
            y.relu_()
        if gain != 1:
            y.mul_(gain)
        if clamp >= 0:
            y.clamp_(-clamp, clamp)
        ctx.save_for_backward(y)
        ctx.params = (dim, act, 0.0 if act == "relu" else alpha, gain, clamp)
        return y

    @staticmethod
    def backward(ctx, dy):  # pylint: disable=arguments-differ
        (y,) = ctx.saved_tensors
        dim, act, slope, gain, clamp = ctx.params
        if torch.is_grad_enabled():
            # Differentiable form for higher-order gradients: the masks are piecewise constant in x.
            factor = torch.where(y > 0, gain, gain * slope) if act != "linear" else torch.full_like(y, gain)
            if clamp >= 0:
                factor = factor * (y.abs() < clamp)
            dx = dy * factor
        else:
            # One new tensor: the first mask writes it, the rest work on it in place (dy is not ours to modify).
            dx = dy
            if clamp >= 0:
                dx = torch.ops.aten.hardtanh_backward(dx, y, -clamp, clamp)  # 0 where |y| >= clamp
            if act != "linear":
                if dx is dy:
                    dx = torch.ops.aten.leaky_relu_backward(dx, y, slope, True)  # * slope where y <= 0
                else:
                    torch.ops.aten.leaky_relu_backward.grad_input(dx, y, slope, True, grad_input=dx)
            if gain != 1:
                dx = dx * gain if dx is dy else dx.mul_(gain)
        db = dx.sum([i for i in range(dx.ndim) if i != dim]) if ctx.needs_input_grad[1] else None
        return dx, db, None, None, None, None, None, None


# ------------------------------------------------------------------------------------------------------
# CUDA implementation: an autograd Function per parameter set, cached.  The kernel (csrc/bias_act.h) computes
#   grad=0 (forward):      y = clamp(act(x + b) * gain)
#   grad=1 (1st grad):     dx = dy * act'(x + b) * gain, zeroed where the output was clamped
#   grad=2 (2nd grad):     d_x = d_dx * dy * act''(x + b) * gain, same zeros: d(dx)/dx for activations
#                          with a second derivative
# with act' and act'' computed from x (input before the bias, plus b) or y (output), as the activation's
# ``ref`` says.  With clamping, y is always kept: the gradient needs it to know which outputs were clamped.
# The kernel accepts any dense memory layout shared by all its tensors; 4D inputs laid out channels-last
# stay channels-last, everything else is made contiguous.

def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.ndim == 4 and x.stride(1) == 1 else torch.contiguous_format


_cuda_cache: dict = {}


def _bias_act_cuda(ext: ModuleType, dim: int, act: str, alpha, gain, clamp) -> type[torch.autograd.Function]:
    spec, alpha, gain, clamp = _resolve_params(act, alpha, gain, clamp)
    key = (dim, act, alpha, gain, clamp)
    if key in _cuda_cache:
        return _cuda_cache[key]
    empty = torch.empty([0])
    BiasActCudaGrad = _bias_act_cuda_grad(ext, dim, spec, alpha, gain, clamp)

    class BiasActCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, b):  # pylint: disable=arguments-differ
            ctx.memory_format = _memory_format(x)
            x = x.contiguous(memory_format=ctx.memory_format)
            b = b.contiguous() if b is not None else empty.to(x)
            y = x
            if act != "linear" or gain != 1 or clamp >= 0 or b.numel() != 0:
                y = ext.bias_act(x, b, empty.to(x), empty.to(x), empty.to(x), 0, dim, spec.cuda_idx,
                                 alpha, gain, clamp)
            ctx.save_for_backward(
                x if "x" in spec.ref or spec.has_2nd_grad else empty.to(x),
                b if "x" in spec.ref or spec.has_2nd_grad else empty.to(x),
                y if "y" in spec.ref or clamp >= 0 else empty.to(x))
            return y

        @staticmethod
        def backward(ctx, dy):  # pylint: disable=arguments-differ
            dy = dy.contiguous(memory_format=ctx.memory_format)
            x, b, y = ctx.saved_tensors
            dx = db = None
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                dx = dy
                if act != "linear" or gain != 1 or clamp >= 0:
                    dx = BiasActCudaGrad.apply(dy, x, b, y)
                if ctx.needs_input_grad[1]:
                    db = dx.sum([i for i in range(dx.ndim) if i != dim])
            return dx, db

    _cuda_cache[key] = BiasActCuda
    return BiasActCuda


def _bias_act_cuda_grad(ext: ModuleType, dim: int, spec: Any, alpha: float, gain: float,
                        clamp: float) -> type[torch.autograd.Function]:
    """The autograd Function of the kernel's gradient (grad=1), whose own backward is the grad=2 kernel; for
    the resolved parameters of :func:`_bias_act_cuda`."""
    empty = torch.empty([0])

    class BiasActCudaGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, dy, x, b, y):  # pylint: disable=arguments-differ
            ctx.memory_format = _memory_format(dy)
            dx = ext.bias_act(dy, b, x, y, empty.to(dy), 1, dim, spec.cuda_idx, alpha, gain, clamp)
            ctx.save_for_backward(dy if spec.has_2nd_grad else empty.to(dy), x, b, y)
            return dx

        @staticmethod
        def backward(ctx, d_dx):  # pylint: disable=arguments-differ
            d_dx = d_dx.contiguous(memory_format=ctx.memory_format)
            dy, x, b, y = ctx.saved_tensors
            d_dy = d_x = d_b = d_y = None
            if ctx.needs_input_grad[0]:
                d_dy = BiasActCudaGrad.apply(d_dx, x, b, y)
            if spec.has_2nd_grad and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
                d_x = ext.bias_act(d_dx, b, x, y, dy, 2, dim, spec.cuda_idx, alpha, gain, clamp)
                if ctx.needs_input_grad[2]:
                    d_b = d_x.sum([i for i in range(d_x.ndim) if i != dim])
            return d_dy, d_x, d_b, d_y

    return BiasActCudaGrad


def self_check() -> None:
    """Compare the CUDA kernel with :func:`bias_act_ref` on a small CUDA input, forward and gradients.

    Run once by :func:`stylegan_ops.plugin.get_plugin` before the kernel is trusted; raises
    ``AssertionError`` naming the first activation that disagrees.
    """
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn([3, 10, 5, 7], device="cuda", generator=gen)
    b = torch.randn([10], device="cuda", generator=gen)
    dy = torch.randn([3, 10, 5, 7], device="cuda", generator=gen)
    for act in activation_funcs:
        for clamp in (None, 0.7):
            results = []
            for impl in ("ref", "cuda"):
                xi = x.clone().requires_grad_(True)
                bi = b.clone().requires_grad_(True)
                y = bias_act(xi, bi, act=act, clamp=clamp, impl=impl)
                dx, db = torch.autograd.grad(y, [xi, bi], dy)
                results.append((y, dx, db))
            for what, ref, got in zip(("output", "grad x", "grad b"), *results):
                if not torch.allclose(ref, got, rtol=1e-4, atol=1e-4):
                    err = (ref - got).abs().max().item()
                    raise AssertionError(f"act={act} clamp={clamp}: {what} differs by {err:.3g}")
