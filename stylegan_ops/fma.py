"""Fused multiply-add ``a * b + c`` with broadcasting, and gradients reduced to each input's own shape.

Used by the modulated convolution to apply demodulation coefficients and add noise in one op.  The
reference is ``torch.addcmul``; there is no separate kernel (``addcmul`` is already one pass).
"""

from __future__ import annotations

import torch


def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a * b + c`` for tensors broadcastable to a common shape; result has that shape and their promoted dtype."""
    return _FusedMultiplyAdd.apply(a, b, c)


def fma_ref(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Reference: the same value with plain autograd."""
    return a * b + c


class _FusedMultiplyAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, c):  # pylint: disable=arguments-differ
        out = torch.addcmul(c, a, b)
        ctx.save_for_backward(a, b)
        ctx.c_shape = c.shape
        return out

    @staticmethod
    def backward(ctx, dout):  # pylint: disable=arguments-differ
        a, b = ctx.saved_tensors
        da = db = dc = None
        if ctx.needs_input_grad[0]:
            da = _reduce_product(dout, b, a.shape)
        if ctx.needs_input_grad[1]:
            db = _reduce_product(dout, a, b.shape)
        if ctx.needs_input_grad[2]:
            dc = _unbroadcast(dout, ctx.c_shape)
        return da, db, dc


def _reduce_product(dout: torch.Tensor, other: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``_unbroadcast(dout * other, shape)``.  For per-channel scales (shape [N, C, 1, 1] against [N, C, H, W],
    as in the modulated convolution) it is one batched dot product, without the full-size temporary."""
    if dout.ndim == 4 and other.shape == dout.shape and len(shape) == 4 and tuple(shape[2:]) == (1, 1) \
            and tuple(shape[:2]) == tuple(dout.shape[:2]) and dout.dtype == other.dtype \
            and dout.is_contiguous() and other.is_contiguous():
        return torch.einsum("nchw,nchw->nc", dout, other).reshape(shape)
    return _unbroadcast(dout * other, shape)


def _unbroadcast(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum ``x`` over the dimensions along which a tensor of ``shape`` was broadcast to x's shape."""
    extra_dims = x.ndim - len(shape)
    dims = [i for i in range(x.ndim) if i < extra_dims or (shape[i - extra_dims] == 1 and x.shape[i] > 1)]
    if dims:
        x = x.sum(dim=dims, keepdim=True)
    if extra_dims:
        x = x.reshape(-1, *x.shape[extra_dims + 1:])
    return x.reshape(shape)
