"""Custom ops of StyleGAN2-ADA: each a reference path in plain PyTorch and, where it pays, a CUDA kernel.

Modules (one op each): :mod:`~stylegan_ops.bias_act`, :mod:`~stylegan_ops.upfirdn2d`,
:mod:`~stylegan_ops.conv2d_resample`, :mod:`~stylegan_ops.fma`; :mod:`~stylegan_ops.plugin` builds,
loads and self-checks the CUDA extensions.
"""

from stylegan_ops import bias_act, conv2d_resample, fma, plugin, upfirdn2d

__all__ = ["bias_act", "conv2d_resample", "fma", "plugin", "upfirdn2d"]
