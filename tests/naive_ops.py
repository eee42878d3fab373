"""Naive numpy versions of the stylegan_ops reference ops, written from their definitions, for tests.

Nothing here uses torch: each op is spelled out with explicit loops over pixels, taps and elements so that
it can be checked against the definitions in the stylegan_ops docstrings by reading it.  Everything is
float64 numpy and slow: keep inputs to a few pixels and channels.

* upfirdn2d: :func:`zero_insert` -> :func:`pad_or_crop` -> :func:`fir_valid` -> :func:`decimate`.
* conv2d_resample: the same pieces around a direct grouped convolution, :func:`conv2d_direct`.
* bias_act: :func:`bias_act_naive`, one scalar formula per activation, evaluated element by element.
* fma: :func:`fma_naive` and :func:`fma_grads_naive`, broadcasting done by index arithmetic.
"""

from __future__ import annotations

import itertools
import math
from typing import Optional, Sequence

import numpy as np

# ------------------------------------------------------------------------------------------------------
# upfirdn2d


class TooSmall(ValueError):
    """The (padded, upsampled) image is smaller than the filter or kernel that must fit inside it."""


def as_pair(value) -> tuple[int, int]:
    """``k`` -> ``(k, k)``; ``[kx, ky]`` -> ``(kx, ky)``."""
    if isinstance(value, int):
        return value, value
    kx, ky = value
    return kx, ky


def as_quad(padding) -> tuple[int, int, int, int]:
    """``p`` | ``[px, py]`` | ``[px0, px1, py0, py1]`` -> ``(px0, px1, py0, py1)``."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    px0, px1, py0, py1 = padding
    return px0, px1, py0, py1


def filter_2d(f: Optional[np.ndarray]) -> np.ndarray:
    """The 2D taps [fh, fw] a filter stands for: None is the 1x1 identity, a 1D filter is separable."""
    if f is None:
        return np.ones((1, 1))
    f = np.asarray(f, dtype=np.float64)
    if f.ndim == 1:
        taps_2d = np.zeros((f.size, f.size))
        for i in range(f.size):
            for j in range(f.size):
                taps_2d[i, j] = f[i] * f[j]
        return taps_2d
    return f


def zero_insert(x: np.ndarray, upx: int, upy: int) -> np.ndarray:
    """[N, C, H, W] -> [N, C, H*upy, W*upx]: pixel (i, j) moves to (i*upy, j*upx), zeros everywhere else."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, h * upy, w * upx))
    for i in range(h):
        for j in range(w):
            out[:, :, i * upy, j * upx] = x[:, :, i, j]
    return out


def pad_or_crop(x: np.ndarray, px0: int, px1: int, py0: int, py1: int) -> np.ndarray:
    """Add ``p`` zero rows/columns on a side (``p > 0``) or remove ``-p`` of them (``p < 0``).

    ``out[r, col] = x[r - py0, col - px0]`` where that pixel exists, else 0.
    """
    n, c, h, w = x.shape
    out_h, out_w = h + py0 + py1, w + px0 + px1
    if out_h < 1 or out_w < 1:
        raise TooSmall(f"cropped away the whole image: {out_h}x{out_w}")
    out = np.zeros((n, c, out_h, out_w))
    for r in range(out_h):
        for col in range(out_w):
            src_r, src_c = r - py0, col - px0
            if 0 <= src_r < h and 0 <= src_c < w:
                out[:, :, r, col] = x[:, :, src_r, src_c]
    return out


def fir_valid(x: np.ndarray, taps: np.ndarray, flip_filter: bool = False) -> np.ndarray:
    """Filter every channel with the 2D taps [fh, fw], keeping the outputs whose footprint lies inside x.

    ``flip_filter=False``: true convolution, ``y[r, c] = sum_ab taps[a, b] * x[r + fh-1-a, c + fw-1-b]``
    (output index counted from the first full overlap).  ``flip_filter=True``: correlation,
    ``y[r, c] = sum_ab taps[a, b] * x[r + a, c + b]``.
    """
    n, c, h, w = x.shape
    fh, fw = taps.shape
    out_h, out_w = h - fh + 1, w - fw + 1
    if out_h < 1 or out_w < 1:
        raise TooSmall(f"image {h}x{w} is smaller than the filter {fh}x{fw}")
    out = np.zeros((n, c, out_h, out_w))
    for r in range(out_h):
        for col in range(out_w):
            acc = np.zeros((n, c))
            for a in range(fh):
                for b in range(fw):
                    if flip_filter:
                        acc += taps[a, b] * x[:, :, r + a, col + b]
                    else:
                        acc += taps[a, b] * x[:, :, r + fh - 1 - a, col + fw - 1 - b]
            out[:, :, r, col] = acc
    return out


def decimate(x: np.ndarray, downx: int, downy: int) -> np.ndarray:
    """Keep pixels (i*downy, j*downx), starting with the first."""
    n, c, h, w = x.shape
    out_h, out_w = (h + downy - 1) // downy, (w + downx - 1) // downx
    out = np.zeros((n, c, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            out[:, :, i, j] = x[:, :, i * downy, j * downx]
    return out


def upfirdn2d_naive(x: np.ndarray, f, up=1, down=1, padding=0, flip_filter: bool = False,
                    gain: float = 1) -> np.ndarray:
    """Upsample by zero insertion, pad/crop, FIR-filter (valid outputs only), decimate, scale by gain."""
    upx, upy = as_pair(up)
    downx, downy = as_pair(down)
    px0, px1, py0, py1 = as_quad(padding)
    x = zero_insert(np.asarray(x, dtype=np.float64), upx, upy)
    x = pad_or_crop(x, px0, px1, py0, py1)
    x = fir_valid(x, filter_2d(f), flip_filter)
    x = decimate(x, downx, downy)
    return x * gain


# Where the resampling helpers put the filter (the layouts of upsample2d / downsample2d / filter2d):
# an fw-tap filter needs fw - 1 extra pixels in all; the split keeps the image centred.

def centring_padding_up(fw: int, up: int) -> tuple[int, int]:
    return (fw + up - 1) // 2, (fw - up) // 2


def centring_padding_down(fw: int, down: int) -> tuple[int, int]:
    return (fw - down + 1) // 2, (fw - down) // 2


def centring_padding_same(fw: int) -> tuple[int, int]:
    return fw // 2, (fw - 1) // 2


# ------------------------------------------------------------------------------------------------------
# conv2d_resample


def conv2d_direct(x: np.ndarray, w: np.ndarray, groups: int = 1, flip_weight: bool = True) -> np.ndarray:
    """Grouped 2D convolution without padding, one output pixel at a time.

    x [N, C_in, H, W], w [C_out, C_in // groups, kh, kw] -> [N, C_out, H - kh + 1, W - kw + 1].
    ``flip_weight=True``: correlation (what conv2d computes), ``out[o, r, c] = sum w[o, i, a, b] x[i, r+a, c+b]``;
    False: true convolution, the kernel taps meet the pixels in mirrored order.
    """
    n, c_in, h, wd = x.shape
    c_out, c_in_per_group, kh, kw = w.shape
    c_out_per_group = c_out // groups
    out_h, out_w = h - kh + 1, wd - kw + 1
    if out_h < 1 or out_w < 1:
        raise TooSmall(f"image {h}x{wd} is smaller than the kernel {kh}x{kw}")
    kernel = w if flip_weight else w[:, :, ::-1, ::-1]
    out = np.zeros((n, c_out, out_h, out_w))
    for group in range(groups):
        inputs = slice(group * c_in_per_group, (group + 1) * c_in_per_group)
        outputs = slice(group * c_out_per_group, (group + 1) * c_out_per_group)
        for r in range(out_h):
            for col in range(out_w):
                window = x[:, inputs, r:r + kh, col:col + kw]  # [N, C_in // groups, kh, kw]
                # out[n, o] = sum over (i, a, b) of window[n, i, a, b] * kernel[o, i, a, b]
                out[:, outputs, r, col] = np.einsum("niab,oiab->no", window, kernel[outputs])
    return out


def conv2d_resample_naive(x: np.ndarray, w: np.ndarray, f=None, up: int = 1, down: int = 1, padding=0,
                          groups: int = 1, flip_weight: bool = True, flip_filter: bool = False) -> np.ndarray:
    """The literal meaning of conv2d_resample.

    1. upsample by zero insertion (``up``), then pad once with the caller's padding plus the centring
       padding of the upsampling filter (if ``up > 1``) and of the downsampling filter (if ``down > 1``);
    2. if ``up > 1``: FIR-filter with ``f`` scaled by ``up**2`` (the zeros would otherwise dim the image);
    3. convolve with ``w`` (grouped, valid outputs only);
    4. if ``down > 1``: FIR-filter with ``f`` and keep every ``down``-th pixel.
    """
    taps = filter_2d(f)
    fh, fw = taps.shape
    px0, px1, py0, py1 = as_quad(padding)
    if up > 1:
        (ax0, ax1), (ay0, ay1) = centring_padding_up(fw, up), centring_padding_up(fh, up)
        px0, px1, py0, py1 = px0 + ax0, px1 + ax1, py0 + ay0, py1 + ay1
    if down > 1:
        (ax0, ax1), (ay0, ay1) = centring_padding_down(fw, down), centring_padding_down(fh, down)
        px0, px1, py0, py1 = px0 + ax0, px1 + ax1, py0 + ay0, py1 + ay1
    x = zero_insert(np.asarray(x, dtype=np.float64), up, up)
    x = pad_or_crop(x, px0, px1, py0, py1)
    if up > 1:
        x = fir_valid(x, taps * up ** 2, flip_filter)
    x = conv2d_direct(x, np.asarray(w, dtype=np.float64), groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = decimate(fir_valid(x, taps, flip_filter), down, down)
    return x


# ------------------------------------------------------------------------------------------------------
# bias_act

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

#: (default alpha, default gain) per activation, as StyleGAN2 defines them.
ACT_DEFAULTS = {
    "linear": (0.0, 1.0), "relu": (0.0, math.sqrt(2)), "lrelu": (0.2, math.sqrt(2)), "tanh": (0.0, 1.0),
    "sigmoid": (0.0, 1.0), "elu": (0.0, 1.0), "selu": (0.0, 1.0), "softplus": (0.0, 1.0),
    "swish": (0.0, math.sqrt(2)),
}


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))


def activation_scalar(act: str, v: float, alpha: float) -> float:
    """One activation applied to one number (alpha is used by 'lrelu' only)."""
    if act == "linear":
        return v
    if act == "relu":
        return v if v > 0 else 0.0
    if act == "lrelu":
        return v if v >= 0 else alpha * v
    if act == "tanh":
        return math.tanh(v)
    if act == "sigmoid":
        return _sigmoid(v)
    if act == "elu":
        return v if v > 0 else math.expm1(v)
    if act == "selu":
        return SELU_SCALE * (v if v > 0 else SELU_ALPHA * math.expm1(v))
    if act == "softplus":
        return max(v, 0.0) + math.log1p(math.exp(-abs(v)))  # log(1 + e^v), without overflow
    if act == "swish":
        return v * _sigmoid(v)
    raise KeyError(act)


def bias_act_naive(x: np.ndarray, b: Optional[np.ndarray] = None, dim: int = 1, act: str = "linear",
                   alpha: Optional[float] = None, gain: Optional[float] = None,
                   clamp: Optional[float] = None) -> np.ndarray:
    """``clamp(act(x + b) * gain, -clamp, clamp)`` element by element; b runs along ``dim``."""
    def_alpha, def_gain = ACT_DEFAULTS[act]
    alpha = def_alpha if alpha is None else alpha
    gain = def_gain if gain is None else gain
    x = np.asarray(x, dtype=np.float64)
    dim = dim % x.ndim
    out = np.zeros(x.shape)
    for index in np.ndindex(*x.shape):
        v = float(x[index]) + (float(b[index[dim]]) if b is not None else 0.0)
        y = activation_scalar(act, v, alpha) * gain
        if clamp is not None:
            y = min(max(y, -clamp), clamp)
        out[index] = y
    return out


# ------------------------------------------------------------------------------------------------------
# fma


def broadcast_shape(*shapes: Sequence[int]) -> tuple[int, ...]:
    """Right-align the shapes; along each dimension all sizes are equal or 1 (missing counts as 1)."""
    ndim = max(len(s) for s in shapes)
    result = []
    for d in range(ndim):
        sizes = {s[d - (ndim - len(s))] for s in shapes if d >= ndim - len(s)}
        sizes.discard(1)
        if len(sizes) > 1:
            raise ValueError(f"shapes {shapes} do not broadcast")
        result.append(sizes.pop() if sizes else 1)
    return tuple(result)


def source_index(out_index: tuple[int, ...], shape: Sequence[int]) -> tuple[int, ...]:
    """The element of a tensor of ``shape`` that broadcasting sends to ``out_index``."""
    lead = len(out_index) - len(shape)
    return tuple(0 if size == 1 else out_index[lead + k] for k, size in enumerate(shape))


def fma_naive(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    out_shape = broadcast_shape(a.shape, b.shape, c.shape)
    out = np.zeros(out_shape)
    for index in itertools.product(*[range(s) for s in out_shape]):
        out[index] = (a[source_index(index, a.shape)] * b[source_index(index, b.shape)]
                      + c[source_index(index, c.shape)])
    return out


def fma_grads_naive(a: np.ndarray, b: np.ndarray, c: np.ndarray, grad_out: np.ndarray):
    """Gradients of ``sum(grad_out * fma(a, b, c))`` with respect to a, b, c (each of its input's shape)."""
    da, db, dc = np.zeros(a.shape), np.zeros(b.shape), np.zeros(c.shape)
    for index in itertools.product(*[range(s) for s in grad_out.shape]):
        ia, ib, ic = source_index(index, a.shape), source_index(index, b.shape), source_index(index, c.shape)
        da[ia] += grad_out[index] * b[ib]
        db[ib] += grad_out[index] * a[ia]
        dc[ic] += grad_out[index]
    return da, db, dc
