"""Upsample, pad, FIR-filter and downsample batches of 2D images (``upfirdn2d``), and its helpers.

For each channel of ``x`` [N, C, H, W], :func:`upfirdn2d` performs, as ``scipy.signal.upfirdn`` does in 1D:

1. upsample by inserting ``up - 1`` zeros after each pixel;
2. pad with zeros on each side (negative padding crops);
3. convolve with the 2D FIR filter ``f`` (a true convolution unless ``flip_filter``), keeping only the
   outputs whose footprint lies inside the padded image;
4. downsample by keeping every ``down``-th pixel.

Output size along x: ``(W * up_x + pad_x0 + pad_x1 - f_w) // down_x + 1`` (the same along y).

Implementations behind the one function: ``'ref'`` (:func:`upfirdn2d_ref`, standard PyTorch ops, any
device, any order of gradients) and ``'cuda'`` (``csrc/upfirdn2d.cu``), chosen as in
:mod:`stylegan_ops.plugin`.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from stylegan_ops import plugin

IntPair = Union[int, Sequence[int]]


def _parse_scaling(scaling: IntPair) -> tuple[int, int]:
    if isinstance(scaling, int):
        scaling = [scaling, scaling]
    if not (isinstance(scaling, (list, tuple)) and len(scaling) == 2 and all(isinstance(s, int) for s in scaling)):
        raise ValueError(f"scaling must be an int or a pair of ints, got {scaling!r}")
    sx, sy = scaling
    if sx < 1 or sy < 1:
        raise ValueError(f"scaling factors must be >= 1, got {scaling!r}")
    return sx, sy


def _parse_padding(padding: IntPair) -> tuple[int, int, int, int]:
    """``p`` | ``[px, py]`` | ``[px0, px1, py0, py1]`` -> ``(px0, px1, py0, py1)``."""
    if isinstance(padding, int):
        padding = [padding, padding]
    if not (isinstance(padding, (list, tuple)) and all(isinstance(p, int) for p in padding)):
        raise ValueError(f"padding must be an int or a list of ints, got {padding!r}")
    if len(padding) == 2:
        px, py = padding
        padding = [px, px, py, py]
    if len(padding) != 4:
        raise ValueError(f"padding must have 1, 2 or 4 entries, got {padding!r}")
    px0, px1, py0, py1 = padding
    return px0, px1, py0, py1


def _get_filter_size(f: Optional[torch.Tensor]) -> tuple[int, int]:
    """``(filter_width, filter_height)``; a separable filter [taps] is taps x taps; None is 1 x 1."""
    if f is None:
        return 1, 1
    if not (isinstance(f, torch.Tensor) and f.ndim in (1, 2)):
        raise ValueError("filter must be a 1D (separable) or 2D tensor, or None")
    fw = int(f.shape[-1])
    fh = int(f.shape[0])
    return fw, fh


def _check_filter(f: Optional[torch.Tensor], x: torch.Tensor) -> None:
    """Raise ValueError unless ``f`` is None or a float32 [fh, fw] / [taps] filter on x's device, without grad."""
    if f is None:
        return
    if not (isinstance(f, torch.Tensor) and f.ndim in (1, 2) and f.dtype == torch.float32):
        raise ValueError("filter must be a float32 tensor [fh, fw] or [taps]")
    if f.numel() == 0:
        raise ValueError("filter must not be empty")
    if f.requires_grad:
        raise ValueError("gradients with respect to the filter are not supported")
    if f.device != x.device:
        raise ValueError(f"filter must be on x's device ({x.device}), got {f.device}")


def setup_filter(f, device: Optional[torch.device] = None, normalize: bool = True,
                 flip_filter: bool = False, gain: float = 1, separable: Optional[bool] = None) -> torch.Tensor:
    """Turn a list/array/tensor of taps into a float32 filter for :func:`upfirdn2d`.

    Args:
        f:           [fh, fw] (2D), [taps] (1D), a scalar (impulse) or None (identity).
        normalize:   scale so the taps sum to 1 (a constant image keeps its value).
        flip_filter: flip the taps.
        gain:        overall gain of the filtered signal (applied as gain**(ndim/2) to the taps).
        separable:   return the 1D form; None = only for 1D filters with 8 taps or more.
        device:      result device; None = torch's default device (the CPU unless a device context is set).

    Returns:
        float32 tensor [taps] (separable) or [fh, fw] on ``device``.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim not in (0, 1, 2) or f.numel() == 0:
        raise ValueError("filter must be a non-empty scalar, 1D or 2D array")
    if f.ndim == 0:
        f = f[np.newaxis]
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if f.ndim != (1 if separable else 2):
        raise ValueError("a 2D filter cannot be made separable")
    if normalize:
        if f.device.type != "meta" and f.sum() == 0:  # meta tensors (models built without memory) hold no taps
            raise ValueError("cannot normalize a filter whose taps sum to 0; pass normalize=False")
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f if device is None else f.to(device=device)


def upfirdn2d(x: torch.Tensor, f: Optional[torch.Tensor], up: IntPair = 1, down: IntPair = 1,
              padding: IntPair = 0, flip_filter: bool = False, gain: float = 1,
              impl: Optional[str] = None) -> torch.Tensor:
    """Pad, upsample, filter and downsample ``x`` (see the module docstring).

    Args:
        x:           [N, C, H, W] float16/32/64.
        f:           float32 filter from :func:`setup_filter`: [fh, fw], [taps] (separable) or None.
        up, down:    integer factors, or ``[x, y]`` pairs.
        padding:     ``p``, ``[px, py]`` or ``[px0, px1, py0, py1]``, in upsampled pixels; negative crops.
        flip_filter: False = convolution, True = correlation.
        gain:        overall gain of the signal.
        impl:        'ref', 'cuda' or None (automatic).

    Returns:
        [N, C, H_out, W_out] of x's dtype.
    """
    if not (isinstance(x, torch.Tensor) and x.ndim == 4):
        raise ValueError("x must be a 4D tensor [N, C, H, W]")
    _check_filter(f, x)
    if plugin.choose_impl(impl, x) == "cuda" and (ext := plugin.get_plugin("upfirdn2d")) is not None:
        return _upfirdn2d_cuda(ext, up=up, down=down, padding=padding, flip_filter=flip_filter,
                               gain=gain).apply(x, f)
    return upfirdn2d_ref(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)


def upfirdn2d_ref(x: torch.Tensor, f: Optional[torch.Tensor], up: IntPair = 1, down: IntPair = 1,
                  padding: IntPair = 0, flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    """Reference implementation of :func:`upfirdn2d` (same arguments) with standard PyTorch ops."""
    if not (isinstance(x, torch.Tensor) and x.ndim == 4):
        raise ValueError("x must be a 4D tensor [N, C, H, W]")
    _check_filter(f, x)
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    batch_size, num_channels, in_height, in_width = x.shape
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    up_width = in_width * upx + padx0 + padx1
    up_height = in_height * upy + pady0 + pady1
    if up_width < f.shape[-1] or up_height < f.shape[0]:
        raise ValueError("the padded, upsampled image is smaller than the filter")

    # 1. Upsample by inserting zeros.
    if upx > 1 or upy > 1:
        x = x.reshape([batch_size, num_channels, in_height, 1, in_width, 1])
        x = torch.nn.functional.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape([batch_size, num_channels, in_height * upy, in_width * upx])

    # 2. Pad (positive) and crop (negative).  Padding that is the same on both sides of an axis is left to
    # the convolution, which pads without writing a padded copy of x.
    conv_pady = pady0 if pady0 == pady1 and pady0 > 0 else 0
    conv_padx = padx0 if padx0 == padx1 and padx0 > 0 else 0
    pads = [max(padx0, 0) - conv_padx, max(padx1, 0) - conv_padx, max(pady0, 0) - conv_pady, max(pady1, 0) - conv_pady]
    if any(pads):
        x = torch.nn.functional.pad(x, pads)
    x = x[:, :, max(-pady0, 0): x.shape[2] - max(-pady1, 0), max(-padx0, 0): x.shape[3] - max(-padx1, 0)]

    # 3. Convolve: conv2d computes a correlation, so a true convolution flips the taps.
    f = f.to(torch.promote_types(f.dtype, x.dtype))  # scale in float64 for float64 x: exact to its precision
    f = f * (gain ** (f.ndim / 2))
    f = f.to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f[np.newaxis, np.newaxis].repeat([num_channels, 1] + [1] * f.ndim)
    if f.ndim == 4:
        x = torch.nn.functional.conv2d(x, f, padding=[conv_pady, conv_padx], groups=num_channels)
    else:
        x = torch.nn.functional.conv2d(x, f.unsqueeze(2), padding=[0, conv_padx], groups=num_channels)
        x = torch.nn.functional.conv2d(x, f.unsqueeze(3), padding=[conv_pady, 0], groups=num_channels)

    # 4. Downsample by keeping every down-th pixel.
    return x[:, :, ::downy, ::downx]


def filter2d(x: torch.Tensor, f: Optional[torch.Tensor], padding: IntPair = 0, flip_filter: bool = False,
             gain: float = 1, impl: Optional[str] = None) -> torch.Tensor:
    """Filter ``x`` [N, C, H, W] with ``f``, padded so the output has x's size (plus ``padding``)."""
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [padx0 + fw // 2, padx1 + (fw - 1) // 2, pady0 + fh // 2, pady1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x: torch.Tensor, f: Optional[torch.Tensor], up: IntPair = 2, padding: IntPair = 0,
               flip_filter: bool = False, gain: float = 1, impl: Optional[str] = None) -> torch.Tensor:
    """Upsample ``x`` [N, C, H, W] to [N, C, H*up, W*up] (plus ``padding``) with the low-pass filter ``f``."""
    upx, upy = _parse_scaling(up)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [padx0 + (fw + upx - 1) // 2, padx1 + (fw - upx) // 2,
         pady0 + (fh + upy - 1) // 2, pady1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x: torch.Tensor, f: Optional[torch.Tensor], down: IntPair = 2, padding: IntPair = 0,
                 flip_filter: bool = False, gain: float = 1, impl: Optional[str] = None) -> torch.Tensor:
    """Downsample ``x`` [N, C, H, W] to [N, C, H/down, W/down] (plus ``padding``) with the low-pass filter ``f``."""
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [padx0 + (fw - downx + 1) // 2, padx1 + (fw - downx) // 2,
         pady0 + (fh - downy + 1) // 2, pady1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


# ------------------------------------------------------------------------------------------------------
# CUDA implementation.  The kernel (csrc/upfirdn2d.cu) handles one 2D filter per call, reading x with any
# strides (a channels_last x gives a channels_last result); a separable filter is applied as a horizontal
# pass followed by a vertical one.  The gradient of upfirdn2d is again an upfirdn2d (with up
# and down swapped, the filter flipped and the padding mirrored), so gradients of any order chain.

_cuda_cache: dict = {}


def _upfirdn2d_cuda(ext: ModuleType, up: IntPair = 1, down: IntPair = 1, padding: IntPair = 0,
                    flip_filter: bool = False, gain: float = 1) -> type[torch.autograd.Function]:
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    key = (upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip_filter, gain)
    if key in _cuda_cache:
        return _cuda_cache[key]

    class Upfirdn2dCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, f):  # pylint: disable=arguments-differ
            if f is None:
                f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
            if f.ndim == 1 and f.shape[0] == 1:
                f = f.square().unsqueeze(0)  # a 1-tap separable filter is a 1x1 2D filter
            y = x
            if f.ndim == 2:
                y = ext.upfirdn2d(y, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip_filter, gain)
            else:
                y = ext.upfirdn2d(y, f.unsqueeze(0), upx, 1, downx, 1, padx0, padx1, 0, 0, flip_filter, 1.0)
                y = ext.upfirdn2d(y, f.unsqueeze(1), 1, upy, 1, downy, 0, 0, pady0, pady1, flip_filter, gain)
            ctx.save_for_backward(f)
            ctx.x_shape = x.shape
            return y

        @staticmethod
        def backward(ctx, dy):  # pylint: disable=arguments-differ
            (f,) = ctx.saved_tensors
            _, _, ih, iw = ctx.x_shape
            _, _, oh, ow = dy.shape
            fw, fh = _get_filter_size(f)
            p = [fw - padx0 - 1, iw * upx - ow * downx + padx0 - upx + 1,
                 fh - pady0 - 1, ih * upy - oh * downy + pady0 - upy + 1]
            dx = None
            if ctx.needs_input_grad[0]:
                dx = _upfirdn2d_cuda(ext, up=[downx, downy], down=[upx, upy], padding=p,
                                     flip_filter=not flip_filter, gain=gain).apply(dy, f)
            return dx, None

    _cuda_cache[key] = Upfirdn2dCuda
    return Upfirdn2dCuda


def self_check() -> None:
    """Compare the CUDA kernel with :func:`upfirdn2d_ref` on small CUDA inputs, forward and gradient.

    Covers the cases StyleGAN2 uses (2x up/down with a 4x4 filter, plain filtering, float16) and an
    odd separable filter; raises ``AssertionError`` naming the first case that disagrees.
    """
    gen = torch.Generator(device="cuda").manual_seed(0)
    f2d = setup_filter([1, 3, 3, 1], device=torch.device("cuda"))
    fsep = setup_filter(torch.rand([9], generator=gen, device="cuda").cpu(), device=torch.device("cuda"))
    cases: list[dict[str, Any]] = [
        dict(f=f2d, up=2, padding=[2, 1, 2, 1], gain=4),
        dict(f=f2d, down=2, padding=1),
        dict(f=f2d, padding=[1, 2, 2, 1]),
        dict(f=fsep, up=[2, 1], down=[1, 3], padding=[3, 4, -1, 2], flip_filter=True),
        dict(f=None, up=3, padding=-1),
    ]
    for dtype in (torch.float32, torch.float16):
        x = torch.randn([2, 5, 11, 9], device="cuda", generator=gen).to(dtype)
        for case in cases:
            results = []
            for impl in ("ref", "cuda"):
                xi = x.clone().requires_grad_(True)
                y = upfirdn2d(xi, impl=impl, **case)
                dy = torch.ones_like(y).mul_(torch.arange(y.numel(), device="cuda").reshape(y.shape) % 7 - 3)
                (dx,) = torch.autograd.grad(y, [xi], dy)
                results.append((y.float(), dx.float()))
            tol = 1e-4 if dtype == torch.float32 else 2e-2
            for what, ref, got in zip(("output", "grad x"), *results):
                if ref.shape != got.shape or not torch.allclose(ref, got, rtol=tol, atol=tol * ref.abs().max().item()):
                    raise AssertionError(f"{dtype} case {case}: {what} differs")
