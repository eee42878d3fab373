// upfirdn2d: upsample (zero insertion), pad/crop, FIR filter, downsample.  The interface between
// upfirdn2d.cpp (PyTorch binding, input checks) and upfirdn2d.cu (the kernels).  Semantics: upfirdn2d_ref
// in stylegan_ops/upfirdn2d.py.
//
// Index arithmetic shared by all kernels.  Call "upsampled coordinates" the coordinates of the image after
// zero insertion, in which input pixel iy sits at row iy * up_y (rows in between are zeros).  Output pixel
// (oy, ox) is the correlation of the padded, upsampled image with the filter taps w, placed at padded row
// oy * down_y, i.e. at upsampled row
//     py = oy * down_y - pad_y0:
//   out[oy][ox] = gain * sum over (fy, fx) of w[fy][fx] * upsampled[py + fy][px + fx]
// where w[fy][fx] = f[fh - 1 - fy][fw - 1 - fx] (true convolution), or f[fy][fx] with flip_filter.
// Only rows py + fy that are multiples of up_y hold input pixels: iy = (py + fy) / up_y, 0 <= iy < in_h.
#pragma once

#include <cuda_runtime_api.h>

struct Upfirdn2dParams {
    const void* x;     // input [N, C, in_h, in_w], dtype scalar_t, element strides below
    const float* f;    // filter [filter_h, filter_w], contiguous float32
    void* y;           // output [N, C, out_h, out_w], dtype scalar_t, element strides below
    int n, c, in_h, in_w;
    int x_stride_n, x_stride_c, x_stride_h, x_stride_w;
    int out_h, out_w;
    int y_stride_n, y_stride_c, y_stride_h, y_stride_w;
    int up_x, up_y, down_x, down_y;
    int pad_x0, pad_y0;  // pad_x1 / pad_y1 only decide the output size, computed in upfirdn2d.cpp
    int filter_w, filter_h;
    bool flip_filter;
    double gain;
};

// Which kernel runs: one thread per output pixel reading global memory (any parameters), or one of the
// shared-memory tile kernels specialised for what StyleGAN2 uses (filters up to 4x4, and up=2 | down=2 |
// no resampling, the same in x and y).
enum class Upfirdn2dKernel : int {
    kAuto = -1,      // the fastest applicable one
    kGeneral = 0,    // any parameters
    kTiled = 1,      // the tile kernel that fits; an error if none fits
};

// True when a tile kernel exists for these parameters.
bool upfirdn2d_tiled_applicable(const Upfirdn2dParams& p);

// Run `kernel` (kAuto: tiled when applicable and the output is NCHW-contiguous and large enough).
// Returns the kernel that ran.  scalar_t: float, double, c10::Half or c10::BFloat16.
template <typename scalar_t>
Upfirdn2dKernel launch_upfirdn2d(const Upfirdn2dParams& p, Upfirdn2dKernel kernel, int num_multiprocessors,
                                 cudaStream_t stream);
