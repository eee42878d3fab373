"""The StyleGAN2-ADA generator: mapping network, synthesis network, and the layers they are made of.

Semantics, parameter names and call signatures follow NVIDIA's StyleGAN2-ADA (PyTorch) so that a
state dict of an official ``G_ema`` loads unchanged and code written for it runs unchanged::

    G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=512, img_channels=3, ...)
    ws  = G.mapping(z, c, truncation_psi=0.7, truncation_cutoff=None)   # [N, G.num_ws, G.w_dim]
    img = G.synthesis(ws, noise_mode='const')                           # [N, 3, 512, 512], ~[-1, 1]
    img = G(z, c, truncation_psi=1, noise_mode='const')                 # both at once

Shapes and ranges:
    z  [N, z_dim] float32, standard normal.       c  [N, c_dim] float32 (one-hot class), or [N, 0] / None.
    ws [N, num_ws, w_dim] float32.                 img [N, img_channels, R, R] float32, nominally [-1, 1]
                                                   (not clamped: convert with ``(img + 1) * 127.5`` and clamp).

Precision: ``force_fp32=None`` (the default here) runs float32 on the CPU and the official float16 in the
top ``num_fp16_res`` blocks on CUDA.  Float16 on the CPU is correct but ~70x slower in the backward pass,
so it is used there only when asked for with ``force_fp32=False``.  ``precision=`` (not in the official API)
says it by name, overriding ``force_fp32``: 'fp32', 'fp16' (the official float16 blocks) or 'bf16' (a
bfloat16 path for CPUs with native BF16, see :meth:`SynthesisNetwork.forward`).

Differences from the official code, none visible to callers of the official API:
    * ``noise_mode`` also accepts per-layer noise tensors through ``noise=`` (see :meth:`SynthesisNetwork.forward`).
    * the modulation path (``fused_modconv``) defaults to the faster one for the device, see
      :func:`default_fused_modconv`.
    * on the CPU the activations are laid out channels-last (``channels_last``), see
      :func:`default_channels_last`.
"""

from __future__ import annotations

from typing import Callable, Hashable, Iterator, Optional

import numpy as np
import torch
from torch.utils.weak import WeakIdKeyDictionary

from stylegan_ops import bias_act as _bias_act
from stylegan_ops import conv2d_resample as _conv2d_resample
from stylegan_ops import fma as _fma
from stylegan_ops import upfirdn2d as _upfirdn2d

NOISE_MODES = ("random", "const", "none")
#: Synthesis precisions (``SynthesisNetwork.forward(precision=...)``); None there = the official rule.
PRECISIONS = ("fp32", "fp16", "bf16")
#: With precision='bf16', blocks below this resolution run in float32 (see :meth:`SynthesisBlock.compute_dtype`).
BF16_MIN_RESOLUTION = 32


_DERIVED: WeakIdKeyDictionary = WeakIdKeyDictionary()  # parameter -> {what: ((storage, version), value)}


def derived(param: torch.Tensor, what: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()``, a tensor made from ``param`` alone (a cast, a scaled copy, a sum of squares), kept for the
    next call while ``param`` is unchanged: same storage, same version counter (every in-place change, an
    optimiser step or ``load_state_dict``, bumps it).  Recomputed every time when a gradient must flow to
    ``param`` (pivotal tuning).  A frozen generator (projection, rendering) then pays for these per-layer
    weight preparations once instead of on every synthesis call.
    """
    if param.requires_grad and torch.is_grad_enabled():
        return compute()
    stamp = (param.untyped_storage().data_ptr(), param.storage_offset(), param._version)
    entries = _DERIVED.get(param)
    if entries is None:
        entries = _DERIVED[param] = {}
    hit = entries.get(what)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    value = compute()
    if value is not param:  # (a cast to param's own dtype is param: keeping it would keep param alive forever)
        entries[what] = (stamp, value)
    return value


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale ``x`` so that its mean square along ``dim`` is 1."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def default_fused_modconv(x: torch.Tensor, dtype: torch.dtype, training: bool, kernel_size: int = 3) -> bool:
    """Which modulation path :func:`modulated_conv2d` takes when the caller does not say.

    On CUDA, the official rule: fused (per-sample weights, grouped convolution) in eval mode when running
    float32 or a batch of one; otherwise scale the activations.

    On the CPU (measured by ``benchmarks/bench_generator.py``): scaling the activations for 3x3 layers, in
    every mode.  Its backward pass needs no weight gradient (the fused path's grouped convolution does), and
    a shared weight turns a batch into one large convolution instead of many small ones.  Without autograd
    it is the faster one too: with channels-last activations (:func:`default_channels_last`) 1.07x faster
    than the official fused path at batch 1 and 1.2x at batch 4 (``benchmarks/bench_render.py``); the fused
    path itself gains nothing from channels-last, since its grouped convolution folds the batch into the
    channels.  1x1 layers (ToRGB, three output channels) take the fused path, which for them is a cheap
    batched matrix product.
    """
    if x.device.type == "cpu":
        return kernel_size == 1
    return (not training) and (dtype == torch.float32 or int(x.shape[0]) == 1)


def default_channels_last(device: torch.device, official_channels_last: bool) -> bool:
    """Whether a synthesis block lays out its activations channels-last (NHWC) when the caller does not say.

    On CUDA, the official rule (``official_channels_last``): channels-last only in float16 blocks built
    with ``fp16_channels_last``.

    On the CPU, channels-last in every block (measured by ``benchmarks/bench_generator.py``): oneDNN
    convolves, transposed-convolves and FIR-filters NHWC tensors without reordering them to and from its
    own blocked layout on every call, which in the contiguous (NCHW) layout costs most at the high
    resolutions, where the tensors are large and the channels few.  The result is the same to float32
    rounding.
    """
    if device.type == "cpu":
        return True
    return official_channels_last


def demodulation_coefficients(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """``d[n, o] = 1 / sqrt(sum_{i,ky,kx} (weight[o, i, ky, kx] * styles[n, i])**2 + 1e-8)``.

    Computed as ``styles**2 @ (sum_{ky,kx} weight**2).T``: the same sum, grouped so that the per-sample
    weights [N, O, I, kh, kw] are never built.  weight [O, I, kh, kw], styles [N, I] -> [N, O] float32.
    """
    weight_sq = derived(weight, "sum_sq", lambda: weight.to(torch.float32).square().sum(dim=[2, 3]))  # [O, I]
    return (styles.to(torch.float32).square() @ weight_sq.t() + 1e-8).rsqrt()


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: Optional[torch.Tensor] = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    resample_filter: Optional[torch.Tensor] = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = True,
    gain: float = 1,
) -> torch.Tensor:
    """StyleGAN2's modulated (and demodulated) convolution.

    Args:
        x:        [N, I, H, W] activations.
        weight:   [O, I, kh, kw] shared convolution weight.
        styles:   [N, I] per-sample scale of each input channel.
        noise:    tensor broadcastable to the output [N, O, H', W'] to add, or None.
        up, down, padding, resample_filter, flip_weight: as in ``conv2d_resample``.
        demodulate: normalise each output channel's per-sample weight to unit L2 norm.
        fused_modconv: True = build per-sample weights and run one grouped convolution; False = scale the
                  activations before and after a convolution with the shared weight (same result).
        gain:     scale of the convolution's output (before the noise is added), folded into the demodulation
                  coefficients (or, without demodulation, into the styles): no extra pass over the output.

    Returns:
        [N, O, H', W'] of x's dtype.
    """
    batch_size = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    if x.shape[1] != in_channels or styles.shape != (batch_size, in_channels):
        raise ValueError(f"modulated_conv2d: x {tuple(x.shape)}, weight {tuple(weight.shape)} and styles "
                         f"{tuple(styles.shape)} do not fit together")

    # Pre-normalise to keep float16 from overflowing (demodulation cancels the scale).
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / np.sqrt(in_channels * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    dcoefs = demodulation_coefficients(weight, styles) if demodulate else None  # [N, O]
    if gain != 1:
        if dcoefs is not None:
            dcoefs = dcoefs * gain
        else:
            styles = styles * gain
    path = _modconv_fused if fused_modconv else _modconv_unfused
    return path(x, weight, styles, dcoefs, noise, resample_filter, up, down, padding, flip_weight)


def _modconv_unfused(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, dcoefs: Optional[torch.Tensor],
                     noise: Optional[torch.Tensor], resample_filter: Optional[torch.Tensor], up: int, down: int,
                     padding: int, flip_weight: bool) -> torch.Tensor:
    """:func:`modulated_conv2d`'s unfused path: scale the activations before and after one convolution with the
    shared weight.  ``dcoefs`` [N, O] float32 (gain folded in) or None without demodulation."""
    batch_size = x.shape[0]
    x = x * styles.to(x.dtype).reshape(batch_size, -1, 1, 1)
    dtype = x.dtype
    x = _conv2d_resample.conv2d_resample(x, derived(weight, dtype, lambda: weight.to(dtype)), f=resample_filter,
                                         up=up, down=down, padding=padding, flip_weight=flip_weight)
    # x is the convolution's own output: with nothing to differentiate, scale it and add the noise in place.
    # (x requires grad whenever styles, and so dcoefs, do.)
    in_place = not torch.is_grad_enabled() or not (x.requires_grad or (noise is not None and noise.requires_grad))
    if dcoefs is None:
        return x if noise is None else x.add_(noise.to(x.dtype))
    scale = dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1)
    if noise is None:
        return x.mul_(scale) if in_place else x * scale
    if in_place:
        return torch.addcmul(noise.to(x.dtype), x, scale, out=x)
    return _fma.fma(x, scale, noise.to(x.dtype))


def _modconv_fused(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, dcoefs: Optional[torch.Tensor],
                   noise: Optional[torch.Tensor], resample_filter: Optional[torch.Tensor], up: int, down: int,
                   padding: int, flip_weight: bool) -> torch.Tensor:
    """:func:`modulated_conv2d`'s fused path: per-sample weights [N, O, I, kh, kw] and one grouped convolution
    (a batched matrix product for 1x1 kernels).  ``dcoefs`` as in :func:`_modconv_unfused`."""
    batch_size = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    w = weight.unsqueeze(0) * styles.reshape(batch_size, 1, -1, 1, 1)
    if dcoefs is not None:
        w = w * dcoefs.reshape(batch_size, -1, 1, 1, 1)
    if kh == 1 and kw == 1 and up == 1 and down == 1 and padding == 0:
        # A 1x1 convolution with per-sample weights is a batched matrix product.
        height, width = x.shape[2:]
        w = w.reshape(batch_size, out_channels, in_channels).to(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # [N, H*W, I] @ [N, I, O] on the NHWC layout as it lies in memory; the result stays NHWC.
            x = torch.bmm(x.permute(0, 2, 3, 1).reshape(batch_size, height * width, in_channels), w.transpose(1, 2))
            x = x.reshape(batch_size, height, width, out_channels).permute(0, 3, 1, 2)
        else:
            # [N, O, I] @ [N, I, H*W].
            x = torch.bmm(w, x.reshape(batch_size, in_channels, height * width))
            x = x.reshape(batch_size, out_channels, height, width)
    else:
        # One grouped convolution over the whole batch.
        x = x.reshape(1, -1, *x.shape[2:])
        w = w.reshape(-1, in_channels, kh, kw)
        x = _conv2d_resample.conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, down=down,
                                             padding=padding, groups=batch_size, flip_weight=flip_weight)
        x = x.reshape(batch_size, -1, *x.shape[2:])
    if noise is not None:
        x = x.add_(noise)
    return x


class FullyConnectedLayer(torch.nn.Module):
    """Dense layer with equalised learning rate: ``act(x @ (weight * weight_gain).T + bias * bias_gain)``.

    x [N, in_features] -> [N, out_features].
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1, bias_init: float = 0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(np.float32(bias_init)))) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        w = derived(self.weight, ("scaled", dtype, self.weight_gain), lambda: self.weight.to(dtype) * self.weight_gain)
        bias = self.bias
        b: Optional[torch.Tensor] = None
        if bias is not None:
            b = derived(bias, ("scaled", dtype, self.bias_gain), lambda: bias.to(dtype) * self.bias_gain)
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        x = x.matmul(w.t())
        return _bias_act.bias_act(x, b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(torch.nn.Module):
    """Convolution with equalised learning rate, optional up/downsampling, bias, activation and clamp.

    Used by the 'resnet' synthesis architecture for its skip connections.  x [N, I, H, W] -> [N, O, H', W'].
    """

    resample_filter: torch.Tensor   # buffer [K] or [K, K] FIR filter

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1, resample_filter=(1, 3, 3, 1),
                 conv_clamp: Optional[float] = None, channels_last: bool = False, trainable: bool = True):
        super().__init__()
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", _upfirdn2d.setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size ** 2))
        self.act_gain = _bias_act.activation_funcs[activation].def_gain
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        bias_tensor = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias_tensor) if bias_tensor is not None else None
        else:
            self.register_buffer("weight", weight)
            if bias_tensor is not None:
                self.register_buffer("bias", bias_tensor)
            else:
                self.bias = None

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        flip_weight = self.up == 1  # equivalent either way; correlation is slightly faster
        x = _conv2d_resample.conv2d_resample(x, w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down,
                                             padding=self.padding, flip_weight=flip_weight)
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return _bias_act.bias_act(x, b, act=self.activation, gain=act_gain, clamp=act_clamp)


class MappingNetwork(torch.nn.Module):
    """z [N, z_dim] (+ c [N, c_dim]) -> ws [N, num_ws, w_dim], with truncation toward ``w_avg``."""

    w_avg: torch.Tensor             # buffer [w_dim]: the tracked average of W (when w_avg_beta is set)

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: Optional[int], num_layers: int = 8,
                 embed_features: Optional[int] = None, layer_features: Optional[int] = None,
                 activation: str = "lrelu", lr_multiplier: float = 0.01, w_avg_beta: Optional[float] = 0.995):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features_list = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]

        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features_list[idx], features_list[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: Optional[torch.Tensor], c: Optional[torch.Tensor], truncation_psi: float = 1,
                truncation_cutoff: Optional[int] = None, skip_w_avg_update: bool = False) -> torch.Tensor:
        """Map latents to W.

        Args:
            z: [N, z_dim] float32.
            c: [N, c_dim] float32 conditioning labels (ignored, and may be None, when c_dim == 0).
            truncation_psi: 1 = no truncation; psi < 1 pulls ws toward ``w_avg``.
            truncation_cutoff: truncate only the first this many of the num_ws latents (None = all).
            skip_w_avg_update: do not update ``w_avg`` in training mode.

        Returns:
            ws [N, num_ws, w_dim] float32 (or [N, w_dim] when num_ws is None).
        """
        x = self._embed(z, c)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)

        if self.w_avg_beta is not None and self.training and not skip_w_avg_update:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            x = self._truncate(x, truncation_psi, truncation_cutoff)
        return x

    def _embed(self, z: Optional[torch.Tensor], c: Optional[torch.Tensor]) -> torch.Tensor:
        """The first layer's input: normalised z [N, z_dim] and embedded c, concatenated [N, z_dim + embed]."""
        parts = []
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"z must have shape [N, {self.z_dim}], got {None if z is None else tuple(z.shape)}")
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"c must have shape [N, {self.c_dim}], got {None if c is None else tuple(c.shape)}")
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        if not parts:
            raise ValueError("a mapping network with z_dim == 0 and c_dim == 0 has no input")
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _truncate(self, x: torch.Tensor, truncation_psi: float, truncation_cutoff: Optional[int]) -> torch.Tensor:
        """x pulled toward ``w_avg`` by ``1 - truncation_psi`` (only its first ``truncation_cutoff`` ws if given)."""
        if self.w_avg_beta is None:
            raise ValueError("this mapping network tracks no w_avg, so it cannot truncate")
        if self.num_ws is None or truncation_cutoff is None:
            return self.w_avg.lerp(x, truncation_psi)
        x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 convolution (optionally 2x upsampling) + noise + bias + lrelu + clamp.

    x [N, I, R/up, R/up], w [N, w_dim] -> [N, O, R, R].
    """

    resample_filter: torch.Tensor   # buffer: FIR filter of the upsampling
    noise_const: torch.Tensor       # buffer [R, R]: the fixed noise of noise_mode='const' (with use_noise)

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu", resample_filter=(1, 3, 3, 1),
                 conv_clamp: Optional[float] = None, channels_last: bool = False):
        super().__init__()
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", _upfirdn2d.setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.act_gain = _bias_act.activation_funcs[activation].def_gain

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                fused_modconv: Optional[bool] = None, gain: float = 1,
                noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``noise`` [N or 1, 1, R, R], if given, replaces the noise that ``noise_mode`` would pick;
        ``fused_modconv=None`` picks the path with :func:`default_fused_modconv`."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        in_resolution = self.resolution // self.up
        if x.ndim != 4 or x.shape[1] != self.weight.shape[1] or x.shape[2:] != (in_resolution, in_resolution):
            raise ValueError(f"expected activations [N, {self.weight.shape[1]}, {in_resolution}, {in_resolution}], "
                             f"got {tuple(x.shape)}")
        styles = self.affine(w)

        layer_noise = None
        if self.use_noise:
            if noise is not None:
                layer_noise = noise * self.noise_strength
            elif noise_mode == "random":
                layer_noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) \
                    * self.noise_strength
            elif noise_mode == "const":
                layer_noise = self.noise_const * self.noise_strength

        if fused_modconv is None:
            fused_modconv = default_fused_modconv(x, x.dtype, self.training, self.weight.shape[-1])
        flip_weight = self.up == 1
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        # On the CPU, where every elementwise step is a pass over memory, the activation's gain is applied
        # before it, folded into the demodulation, the noise and the bias: act(z) * g = act(z * g) for the
        # positively homogeneous linear/relu/lrelu and g > 0.  (CUDA: the official order; bias_act is one kernel.)
        conv_gain = 1.0
        if x.device.type == "cpu" and self.activation in ("linear", "relu", "lrelu") and act_gain > 0:
            layer_noise = layer_noise * act_gain if layer_noise is not None else None
            conv_gain, act_gain = act_gain, 1.0
        x = modulated_conv2d(x, self.weight, styles, noise=layer_noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=flip_weight,
                             fused_modconv=fused_modconv, gain=conv_gain)
        dtype = x.dtype  # (under autocast, the convolution's output dtype)
        bias = derived(self.bias, ("scaled", dtype, conv_gain), lambda: self.bias.to(dtype) * conv_gain)
        # x is modulated_conv2d's own output and needed by nothing else: bias_act may overwrite it.
        return _bias_act.bias_act(x, bias, act=self.activation, gain=act_gain, clamp=act_clamp, inplace=True)


class ToRGBLayer(torch.nn.Module):
    """Modulated 1x1 convolution to RGB, without demodulation.  x [N, I, R, R], w [N, w_dim] -> [N, 3, R, R]."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: Optional[float] = None, channels_last: bool = False):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size ** 2))

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: Optional[bool] = None) -> torch.Tensor:
        if fused_modconv is None:
            fused_modconv = default_fused_modconv(x, x.dtype, self.training, self.weight.shape[-1])
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return _bias_act.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp, inplace=True)


class SynthesisBlock(torch.nn.Module):
    """One resolution of the synthesis network: (const | 2x up) conv0, conv1, and a ToRGB into the image.

    x [N, I, R/2, R/2] (None for the first block), img [N, C, R/2, R/2] or None, ws [N, num_conv + num_torgb, w_dim]
    -> x [N, O, R, R], img [N, C, R, R] float32.
    """

    resample_filter: torch.Tensor   # buffer: FIR filter of the image upsampling

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter=(1, 3, 3, 1),
                 conv_clamp: Optional[float] = None, use_fp16: bool = False, fp16_channels_last: bool = False,
                 **layer_kwargs):
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"unknown synthesis architecture {architecture!r}")
        super().__init__()
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", _upfirdn2d.setup_filter(list(resample_filter)))
        self.num_conv = 0
        self.num_torgb = 0

        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        if in_channels != 0:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp,
                                        channels_last=self.channels_last, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                    channels_last=self.channels_last)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter, channels_last=self.channels_last)

    def compute_dtype(self, force_fp32: bool, precision: Optional[str] = None) -> torch.dtype:
        """The dtype of this block's activations and convolutions.

        float16 in the official float16 blocks unless ``force_fp32``; with ``precision='bf16'``, bfloat16 in
        the blocks at :data:`BF16_MIN_RESOLUTION` and above (their convolutions hold nearly all the FLOPs;
        the coarse blocks shape the whole image, and float32 there costs little time for a measured gain in
        accuracy, see README: Performance); float32 otherwise.  Whatever the blocks' dtype, the styles,
        demodulation coefficients and noise maps are computed in float32 and the image is accumulated in
        float32.
        """
        if precision == "bf16":
            return torch.bfloat16 if self.resolution >= BF16_MIN_RESOLUTION else torch.float32
        return torch.float16 if self.use_fp16 and not force_fp32 else torch.float32

    def layer_names(self) -> list[str]:
        """Names of this block's synthesis layers in the order they consume ws."""
        return (["conv0"] if self.in_channels != 0 else []) + ["conv1"]

    def forward(self, x: Optional[torch.Tensor], img: Optional[torch.Tensor], ws: torch.Tensor,
                force_fp32: Optional[bool] = None, fused_modconv: Optional[bool] = None,
                noise: Optional[dict] = None, channels_last: Optional[bool] = None, precision: Optional[str] = None,
                **layer_kwargs):
        if ws.ndim != 3 or ws.shape[1] != self.num_conv + self.num_torgb or ws.shape[2] != self.w_dim:
            raise ValueError(f"block b{self.resolution} expects ws [N, {self.num_conv + self.num_torgb}, "
                             f"{self.w_dim}], got {tuple(ws.shape)}")
        if precision is not None:
            force_fp32 = precision != "fp16"
        elif force_fp32 is None:
            force_fp32 = ws.device.type != "cuda"
        w_iter = iter(ws.unbind(dim=1))
        dtype = self.compute_dtype(force_fp32, precision)
        if channels_last is None:
            channels_last = default_channels_last(ws.device, self.channels_last and not force_fp32)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        x = self._block_input(x, ws.shape[0], dtype, memory_format)
        x = self._convs(x, w_iter, fused_modconv, noise or {}, **layer_kwargs)

        if img is not None:
            img = _upfirdn2d.upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img.add_(y) if img is not None else y
        return x, img


    def _block_input(self, x: Optional[torch.Tensor], batch_size: int, dtype: torch.dtype,
                     memory_format: torch.memory_format) -> torch.Tensor:
        """The activations the first layer convolves: the learned constant repeated over the batch in the first
        block, else the previous block's x [N, in_channels, R/2, R/2], in ``dtype`` and ``memory_format``."""
        if self.in_channels == 0:
            x = self.const.to(dtype=dtype)
            return x.unsqueeze(0).repeat([batch_size, 1, 1, 1]).contiguous(memory_format=memory_format)
        if x is None or x.shape[1:] != (self.in_channels, self.resolution // 2, self.resolution // 2):
            raise ValueError(f"block b{self.resolution} expects x [N, {self.in_channels}, "
                             f"{self.resolution // 2}, {self.resolution // 2}]")
        return x.to(dtype=dtype, memory_format=memory_format)

    def _convs(self, x: torch.Tensor, w_iter: Iterator[torch.Tensor], fused_modconv: Optional[bool],
               noise: dict, **layer_kwargs) -> torch.Tensor:
        """The block's synthesis layers (and resnet skip) on x, each taking the next w of ``w_iter``."""
        if self.in_channels == 0:
            return self.conv1(x, next(w_iter), fused_modconv=fused_modconv, noise=noise.get("conv1"), **layer_kwargs)
        if self.architecture == "resnet":
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, noise=noise.get("conv0"), **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, gain=np.sqrt(0.5),
                           noise=noise.get("conv1"), **layer_kwargs)
            return y + x  # not in place: y may be kept for the backward pass (bias_act fast paths)
        x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, noise=noise.get("conv0"), **layer_kwargs)
        return self.conv1(x, next(w_iter), fused_modconv=fused_modconv, noise=noise.get("conv1"), **layer_kwargs)


class SynthesisNetwork(torch.nn.Module):
    """ws [N, num_ws, w_dim] -> img [N, img_channels, img_resolution, img_resolution] float32, ~[-1, 1]."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 0, **block_kwargs):
        if img_resolution < 4 or img_resolution & (img_resolution - 1) != 0:
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        channels_dict = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)

        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels_dict[res // 2] if res > 4 else 0
            out_channels = channels_dict[res]
            use_fp16 = res >= fp16_resolution
            is_last = res == self.img_resolution
            block = SynthesisBlock(in_channels, out_channels, w_dim=w_dim, resolution=res, img_channels=img_channels,
                                   is_last=is_last, use_fp16=use_fp16, **block_kwargs)
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def noise_layer_names(self) -> list[str]:
        """Names ``'b{res}.conv{0,1}'`` of the layers that take noise, from coarse to fine."""
        names = []
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            names += [f"b{res}.{layer}" for layer in block.layer_names() if getattr(block, layer).use_noise]
        return names

    def can_stop_at(self, resolution: int) -> bool:
        """True when :meth:`forward` can return the image at ``resolution`` (see its ``resolution``)."""
        if resolution == self.img_resolution:
            return True
        first = getattr(self, f"b{self.block_resolutions[0]}")
        return resolution in self.block_resolutions and first.architecture == "skip"

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", force_fp32: Optional[bool] = None,
                fused_modconv: Optional[bool] = None, noise: Optional[dict] = None,
                channels_last: Optional[bool] = None, resolution: Optional[int] = None,
                precision: Optional[str] = None,
                **layer_kwargs) -> torch.Tensor:
        """Synthesise images.

        Args:
            ws:            [N, num_ws, w_dim] float32.
            noise_mode:    'random' (fresh noise), 'const' (the stored ``noise_const`` buffers) or 'none'.
            force_fp32:    True = float32 everywhere; False = float16 in the top ``num_fp16_res`` blocks (the
                           official default); None = float32 on the CPU, float16 blocks on CUDA.
            precision:     overrides ``force_fp32`` when given: 'fp32' (float32 everywhere), 'fp16' (the official
                           float16 blocks) or 'bf16': bfloat16 activations, convolutions and matrix products
                           (float32 accumulation inside oneDNN) in the blocks from :data:`BF16_MIN_RESOLUTION`
                           up; the styles, demodulation coefficients, noise maps, the coarse blocks and the
                           image itself stay float32.  Differs from float32 by rounding (PSNR >= 40 dB,
                           tests/test_precision.py); gradients flow to ws and noise in float32.
            fused_modconv: modulation path, see :func:`modulated_conv2d`; None = :func:`default_fused_modconv`.
            noise:         optional {'b{res}.conv{k}': [N or 1, 1, res, res]} overriding noise_mode per layer.
            channels_last: lay out the activations channels-last (NHWC); None = :func:`default_channels_last`.
                           Changes speed, not the result (beyond float rounding).
            resolution:    stop after the block of this resolution and return the image so far; None = the
                           full resolution.  Only 'skip' generators (the official config-f and AFHQ ones) have
                           an image at every block: the running sum of every block's RGB output, each
                           upsampled, to which the finer blocks add detail (:meth:`can_stop_at`).  ``ws`` may
                           then hold only the rows those blocks read.

        Returns:
            img [N, img_channels, resolution, resolution] float32.
        """
        if resolution is not None and resolution != self.img_resolution:
            if not self.can_stop_at(resolution):
                raise ValueError(f"cannot stop at {resolution} px: only 'skip' generators have an image at every "
                                 f"block ({', '.join(map(str, self.block_resolutions))} px)")
            blocks = self.block_resolutions[:self.block_resolutions.index(resolution) + 1]
            rows = sum(getattr(self, f"b{res}").num_conv for res in blocks) + 1
            if ws.ndim != 3 or ws.shape[1] < rows or ws.shape[2] != self.w_dim:
                raise ValueError(f"ws must have shape [N, >= {rows}, {self.w_dim}], got {tuple(ws.shape)}")
        elif ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must have shape [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        else:
            blocks = self.block_resolutions
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS} or None, got {precision!r}")
        ws = ws.to(torch.float32)
        block_noise: dict = {}
        for name, tensor in (noise or {}).items():
            block_name, layer_name = name.split(".")
            block_noise.setdefault(block_name, {})[layer_name] = tensor

        x = img = None
        w_idx = 0
        for res in blocks:
            block = getattr(self, f"b{res}")
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, block_ws, noise_mode=noise_mode, force_fp32=force_fp32,
                           fused_modconv=fused_modconv, noise=block_noise.get(f"b{res}"),
                           channels_last=channels_last, precision=precision, **layer_kwargs)
        if img is None:
            raise ValueError(f"no block ran up to resolution {resolution}")
        return img


class Generator(torch.nn.Module):
    """The StyleGAN2-ADA generator: ``G(z, c) = synthesis(mapping(z, c))``.

    Attributes: ``z_dim, c_dim, w_dim, num_ws, img_resolution, img_channels``; submodules ``mapping`` and
    ``synthesis``; ``init_kwargs`` (the constructor arguments, as stored in official pickles).
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 mapping_kwargs: Optional[dict] = None, synthesis_kwargs: Optional[dict] = None):
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        synthesis_kwargs = dict(synthesis_kwargs or {})
        self.init_kwargs = dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                                img_channels=img_channels, mapping_kwargs=dict(mapping_kwargs),
                                synthesis_kwargs=dict(synthesis_kwargs))
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor], truncation_psi: float = 1,
                truncation_cutoff: Optional[int] = None, **synthesis_kwargs) -> torch.Tensor:
        """z [N, z_dim], c [N, c_dim] -> img [N, img_channels, R, R]; keywords as in mapping and synthesis."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, **synthesis_kwargs)
