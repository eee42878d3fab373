"""2D convolution with optional FIR-filtered upsampling and downsampling, as StyleGAN2 uses it.

``conv2d_resample(x, w, f, up, down, padding)`` equals: upsample ``x`` by ``up`` with filter ``f``,
pad, convolve with ``w``, downsample by ``down`` with ``f`` - but picks the cheapest equivalent
sequence of ``torch.nn.functional.conv2d`` / ``conv_transpose2d`` and :func:`upfirdn2d` calls
(a transposed strided convolution for upsampling, a strided convolution for downsampling, 1x1 kernels
moved to the low-resolution side).  Padding is applied once, at the start.

:func:`conv2d_resample_ref` computes the same thing the literal way (upfirdn2d, conv2d, upfirdn2d) and
serves the tests as the definition.
"""

from __future__ import annotations

from typing import Optional

import torch

from stylegan_ops import upfirdn2d as _upfirdn2d
from stylegan_ops.upfirdn2d import IntPair, _get_filter_size, _parse_padding


def _conv2d(x: torch.Tensor, w: torch.Tensor, stride: int = 1, padding=0, groups: int = 1,
            transpose: bool = False, flip_weight: bool = True) -> torch.Tensor:
    """conv2d (a correlation) or conv_transpose2d; ``flip_weight=False`` makes it a true convolution."""
    kh, kw = w.shape[2:]
    if not flip_weight and (kw > 1 or kh > 1):
        w = w.flip([2, 3])
    if transpose:
        return torch.nn.functional.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return torch.nn.functional.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def _validate(x, w, f, up, down, groups):
    if not (isinstance(x, torch.Tensor) and x.ndim == 4):
        raise ValueError("x must be a 4D tensor [N, C, H, W]")
    if not (isinstance(w, torch.Tensor) and w.ndim == 4 and w.dtype == x.dtype):
        raise ValueError("w must be a 4D tensor [out_channels, in_channels // groups, kh, kw] of x's dtype")
    if f is not None and not (isinstance(f, torch.Tensor) and f.ndim in (1, 2) and f.dtype == torch.float32):
        raise ValueError("f must be None or a float32 filter from upfirdn2d.setup_filter()")
    for name, value in (("up", up), ("down", down), ("groups", groups)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups != 0:
        raise ValueError(f"w {tuple(w.shape)} does not fit x with {x.shape[1]} channels and groups={groups}: "
                         f"need w [C_out, C_in // groups, kh, kw] with C_out divisible by groups")


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: Optional[torch.Tensor] = None, up: int = 1,
                    down: int = 1, padding: IntPair = 0, groups: int = 1, flip_weight: bool = True,
                    flip_filter: bool = False) -> torch.Tensor:
    """2D convolution with optional up/downsampling.

    Args:
        x:           [N, C_in, H, W].
        w:           [C_out, C_in // groups, kh, kw], x's dtype.
        f:           float32 low-pass filter from ``upfirdn2d.setup_filter`` (None = identity).
        up, down:    integer resampling factors.
        padding:     ``p``, ``[px, py]`` or ``[px0, px1, py0, py1]``, relative to the upsampled image.
        groups:      grouped convolution, as in ``torch.nn.functional.conv2d``.
        flip_weight: True = correlation (like ``conv2d``), False = true convolution.
        flip_filter: False = convolve with ``f``, True = correlate.

    Returns:
        [N, C_out, H_out, W_out].
    """
    _validate(x, w, f, up, down, groups)
    out_channels, in_channels_per_group, kh, kw = w.shape
    fw, fh = _get_filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)

    # Padding that the resampling filter needs, on top of the caller's.
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    # 1x1 kernel, downsampling only: downsample first, then convolve (fewer pixels to convolve).
    if kw == 1 and kh == 1 and (down > 1 and up == 1):
        x = _upfirdn2d.upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv2d(x, w, groups=groups, flip_weight=flip_weight)

    # 1x1 kernel, upsampling only: convolve first, then upsample.
    if kw == 1 and kh == 1 and (up > 1 and down == 1):
        x = _conv2d(x, w, groups=groups, flip_weight=flip_weight)
        return _upfirdn2d.upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, flip_filter=flip_filter)

    # Downsampling only: filter, then a strided convolution.
    if down > 1 and up == 1:
        x = _upfirdn2d.upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv2d(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Upsampling (and maybe downsampling): a transposed strided convolution, then the filter.
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_channels_per_group, kh, kw)
            w = w.transpose(1, 2)
            w = w.reshape(groups * in_channels_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv2d(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True, flip_weight=not flip_weight)
        x = _upfirdn2d.upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2,
                                 flip_filter=flip_filter)
        if down > 1:
            x = _upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x

    # No resampling and symmetric, non-negative padding: conv2d pads by itself.
    if up == 1 and down == 1 and px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv2d(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)

    # Anything else: the literal sequence.
    return conv2d_resample_ref(x, w, f, up=up, down=down, padding=padding, groups=groups,
                               flip_weight=flip_weight, flip_filter=flip_filter)


def conv2d_resample_ref(x: torch.Tensor, w: torch.Tensor, f: Optional[torch.Tensor] = None, up: int = 1,
                        down: int = 1, padding: IntPair = 0, groups: int = 1, flip_weight: bool = True,
                        flip_filter: bool = False) -> torch.Tensor:
    """The definition of :func:`conv2d_resample` (same arguments): upsample+pad, convolve, downsample."""
    _validate(x, w, f, up, down, groups)
    kh, kw = w.shape[2:]
    fw, fh = _get_filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2
    x = _upfirdn2d.upfirdn2d(x, f if up > 1 else None, up=up, padding=[px0, px1, py0, py1], gain=up ** 2,
                             flip_filter=flip_filter)
    x = _conv2d(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = _upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter)
    return x
