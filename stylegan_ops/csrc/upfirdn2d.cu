// Kernels of upfirdn2d (index arithmetic: see upfirdn2d.h).
//
// upfirdn2d_general_kernel: one thread per output pixel (grid-stride loop), reading the input pixels under
//   the filter straight from global memory and skipping the inserted zeros.  Any up/down/pad/filter size,
//   any input strides; outputs are visited channel-fastest for channels_last outputs, width-fastest else.
// upfirdn2d_tile_kernel: one block per TILE_H x TILE_W tile of output pixels (looping over planes).  The
//   block stages the input pixels its tile needs in shared memory (zeros outside the image) together with
//   the filter taps (zero-padded to PF x PF, PF a multiple of UP, pre-multiplied by the gain), then each
//   thread computes output pixels from shared memory with a fully unrolled TAPS x TAPS loop: with upsampling,
//   only every UP-th tap meets an input pixel, starting at a "phase" that depends on the output position.
// Arithmetic runs in float for half/bfloat16/float and in double for double.

#include "upfirdn2d.h"

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>

namespace {

constexpr int kThreads = 256;
constexpr int kMaxGridY = 65535;
constexpr int kMaxGridZ = 65535;

// floor(a / b) and ceil(a / b) for b > 0 and a of either sign (C++ '/' truncates towards zero).
__host__ __device__ __forceinline__ int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
__host__ __device__ __forceinline__ int ceil_div(int a, int b) { return -floor_div(-a, b); }

template <typename scalar_t, bool CHANNELS_FASTEST>
__global__ void __launch_bounds__(kThreads) upfirdn2d_general_kernel(Upfirdn2dParams p) {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* x = static_cast<const scalar_t*>(p.x);
    scalar_t* y = static_cast<scalar_t*>(p.y);
    const T gain = static_cast<T>(p.gain);

    const int64_t total = int64_t(p.n) * p.c * p.out_h * p.out_w;
    const int64_t stride = int64_t(blockDim.x) * gridDim.x;
    for (int64_t i64 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i64 < total; i64 += stride) {
        int rest = static_cast<int>(i64);
        int n, c, oy, ox;
        if constexpr (CHANNELS_FASTEST) {
            c = rest % p.c;      rest /= p.c;
            ox = rest % p.out_w; rest /= p.out_w;
            oy = rest % p.out_h; n = rest / p.out_h;
        } else {
            ox = rest % p.out_w; rest /= p.out_w;
            oy = rest % p.out_h; rest /= p.out_h;
            c = rest % p.c;      n = rest / p.c;
        }
        // Upsampled coordinates under filter tap (0, 0), and the input pixels inside the filter window.
        const int py = oy * p.down_y - p.pad_y0;
        const int px = ox * p.down_x - p.pad_x0;
        const int iy_begin = max(ceil_div(py, p.up_y), 0);
        const int iy_end = min(floor_div(py + p.filter_h - 1, p.up_y), p.in_h - 1);  // inclusive
        const int ix_begin = max(ceil_div(px, p.up_x), 0);
        const int ix_end = min(floor_div(px + p.filter_w - 1, p.up_x), p.in_w - 1);  // inclusive

        const scalar_t* x_plane = x + n * p.x_stride_n + c * p.x_stride_c;
        T acc = T(0);
        for (int iy = iy_begin; iy <= iy_end; ++iy) {
            const int fy = iy * p.up_y - py;  // tap row in correlation order, 0 <= fy < filter_h
            const float* f_row = p.f + (p.flip_filter ? fy : p.filter_h - 1 - fy) * p.filter_w;
            for (int ix = ix_begin; ix <= ix_end; ++ix) {
                const int fx = ix * p.up_x - px;
                const T tap = static_cast<T>(f_row[p.flip_filter ? fx : p.filter_w - 1 - fx]);
                acc += static_cast<T>(x_plane[iy * p.x_stride_h + ix * p.x_stride_w]) * tap;
            }
        }
        y[n * p.y_stride_n + c * p.y_stride_c + oy * p.y_stride_h + ox * p.y_stride_w] = static_cast<scalar_t>(acc * gain);
    }
}

// A tile kernel's compile-time shape: resampling factors (the same in x and y), the largest filter it
// takes, and the output tile of one block.
template <int UP_, int DOWN_, int MAX_FILTER_, int TILE_W_, int TILE_H_>
struct TileConfig {
    static constexpr int UP = UP_, DOWN = DOWN_, MAX_FILTER = MAX_FILTER_, TILE_W = TILE_W_, TILE_H = TILE_H_;
    static constexpr int TAPS = (MAX_FILTER + UP - 1) / UP;  // taps per output pixel and axis that meet input pixels
    static constexpr int PF = TAPS * UP;                     // filter size padded with zero taps to a multiple of UP
    // Input pixels one tile reads per axis: tiles starting anywhere need at most this many (see upfirdn2d.h:
    // the window of the tile's last pixel ends (TILE - 1) * DOWN + PF - 1 upsampled pixels after the first's).
    static constexpr int IN_TILE_W = ((TILE_W - 1) * DOWN + PF - 1) / UP + 1;
    static constexpr int IN_TILE_H = ((TILE_H - 1) * DOWN + PF - 1) / UP + 1;
};

using TileFilter = TileConfig<1, 1, 4, 32, 32>;  // plain filtering (filter2d, conv2d_resample after a transposed conv)
using TileUp2 = TileConfig<2, 1, 4, 32, 32>;     // upsample2d
using TileDown2 = TileConfig<1, 2, 4, 32, 16>;   // downsample2d, and the gradient of upsample2d

template <typename scalar_t, typename Cfg>
__global__ void __launch_bounds__(kThreads) upfirdn2d_tile_kernel(Upfirdn2dParams p) {
    using T = at::opmath_type<scalar_t>;
    constexpr int UP = Cfg::UP, DOWN = Cfg::DOWN, TAPS = Cfg::TAPS, PF = Cfg::PF;
    constexpr int TILE_W = Cfg::TILE_W, TILE_H = Cfg::TILE_H;
    constexpr int IN_TILE_W = Cfg::IN_TILE_W, IN_TILE_H = Cfg::IN_TILE_H;
    __shared__ T s_filter[PF][PF];           // taps in correlation order, times gain, zero beyond the filter
    __shared__ T s_x[IN_TILE_H][IN_TILE_W];  // input pixels [tile_iy0 + row][tile_ix0 + col] of one plane

    const scalar_t* x = static_cast<const scalar_t*>(p.x);
    scalar_t* y = static_cast<scalar_t*>(p.y);
    const T gain = static_cast<T>(p.gain);

    // Loops below stride by kThreads, the block size of every launch (compile-time: they unroll).
    for (int k = threadIdx.x; k < PF * PF; k += kThreads) {
        const int fy = k / PF, fx = k % PF;
        T tap = T(0);
        if (fy < p.filter_h && fx < p.filter_w) {
            const int f_row = p.flip_filter ? fy : p.filter_h - 1 - fy;
            const int f_col = p.flip_filter ? fx : p.filter_w - 1 - fx;
            tap = static_cast<T>(p.f[f_row * p.filter_w + f_col]) * gain;
        }
        s_filter[fy][fx] = tap;
    }

    // The tile's first output pixel, and the first input pixel its filter window can meet.
    const int tile_ox0 = blockIdx.x * TILE_W;
    const int tile_oy0 = blockIdx.y * TILE_H;
    const int tile_ix0 = ceil_div(tile_ox0 * DOWN - p.pad_x0, UP);
    const int tile_iy0 = ceil_div(tile_oy0 * DOWN - p.pad_y0, UP);

    for (int plane = blockIdx.z; plane < p.n * p.c; plane += gridDim.z) {
        const int n = plane / p.c, c = plane % p.c;
        const scalar_t* x_plane = x + n * p.x_stride_n + c * p.x_stride_c;
        scalar_t* y_plane = y + n * p.y_stride_n + c * p.y_stride_c;

        __syncthreads();  // the previous plane's pixels are no longer read (and s_filter is written)
        for (int k = threadIdx.x; k < IN_TILE_H * IN_TILE_W; k += kThreads) {
            const int row = k / IN_TILE_W, col = k % IN_TILE_W;
            const int iy = tile_iy0 + row, ix = tile_ix0 + col;
            T v = T(0);
            if (iy >= 0 && iy < p.in_h && ix >= 0 && ix < p.in_w) {
                v = static_cast<T>(x_plane[iy * p.x_stride_h + ix * p.x_stride_w]);
            }
            s_x[row][col] = v;
        }
        __syncthreads();

        for (int k = threadIdx.x; k < TILE_H * TILE_W; k += kThreads) {
            const int oy = tile_oy0 + k / TILE_W, ox = tile_ox0 + k % TILE_W;
            if (oy >= p.out_h || ox >= p.out_w) continue;
            const int py = oy * DOWN - p.pad_y0;  // as in the general kernel
            const int px = ox * DOWN - p.pad_x0;
            const int iy_first = ceil_div(py, UP);  // first input pixel in the window (maybe outside the image)
            const int ix_first = ceil_div(px, UP);
            const int fy_first = iy_first * UP - py;  // its tap, the phase: 0 <= fy_first < UP
            const int fx_first = ix_first * UP - px;
            const int row0 = iy_first - tile_iy0, col0 = ix_first - tile_ix0;
            T acc = T(0);
#pragma unroll
            for (int ty = 0; ty < TAPS; ++ty) {
#pragma unroll
                for (int tx = 0; tx < TAPS; ++tx) {
                    acc += s_x[row0 + ty][col0 + tx] * s_filter[fy_first + ty * UP][fx_first + tx * UP];
                }
            }
            y_plane[oy * p.y_stride_h + ox * p.y_stride_w] = static_cast<scalar_t>(acc);
        }
    }
}

template <typename Cfg>
bool tile_config_fits(const Upfirdn2dParams& p) {
    return p.up_x == Cfg::UP && p.up_y == Cfg::UP && p.down_x == Cfg::DOWN && p.down_y == Cfg::DOWN &&
           p.filter_w <= Cfg::MAX_FILTER && p.filter_h <= Cfg::MAX_FILTER &&
           (p.out_h + Cfg::TILE_H - 1) / Cfg::TILE_H <= kMaxGridY;
}

template <typename scalar_t, typename Cfg>
void launch_tiled(const Upfirdn2dParams& p, cudaStream_t stream) {
    const dim3 grid((p.out_w + Cfg::TILE_W - 1) / Cfg::TILE_W, (p.out_h + Cfg::TILE_H - 1) / Cfg::TILE_H,
                    std::min(p.n * p.c, kMaxGridZ));
    upfirdn2d_tile_kernel<scalar_t, Cfg><<<grid, kThreads, 0, stream>>>(p);
}

}  // namespace

bool upfirdn2d_tiled_applicable(const Upfirdn2dParams& p) {
    return tile_config_fits<TileFilter>(p) || tile_config_fits<TileUp2>(p) || tile_config_fits<TileDown2>(p);
}

template <typename scalar_t>
Upfirdn2dKernel launch_upfirdn2d(const Upfirdn2dParams& p, Upfirdn2dKernel kernel, int num_multiprocessors,
                                 cudaStream_t stream) {
    if (kernel == Upfirdn2dKernel::kAuto) {
        // Tiles pay off on NCHW outputs of some size; small images (StyleGAN2's 4x4 .. 8x8 layers) keep more
        // threads busy with one thread per pixel, and channels_last outputs want the channel-fastest order.
        const bool nchw = p.y_stride_w == 1 && p.y_stride_h == p.out_w;
        const bool large = p.out_w >= 16 && p.out_h >= 16;
        kernel = (nchw && large && upfirdn2d_tiled_applicable(p)) ? Upfirdn2dKernel::kTiled : Upfirdn2dKernel::kGeneral;
    }
    if (kernel == Upfirdn2dKernel::kTiled) {
        if (tile_config_fits<TileFilter>(p)) {
            launch_tiled<scalar_t, TileFilter>(p, stream);
        } else if (tile_config_fits<TileUp2>(p)) {
            launch_tiled<scalar_t, TileUp2>(p, stream);
        } else if (tile_config_fits<TileDown2>(p)) {
            launch_tiled<scalar_t, TileDown2>(p, stream);
        } else {
            TORCH_CHECK(false, "upfirdn2d: no tiled kernel fits these parameters (up ", p.up_x, "x", p.up_y, ", down ",
                        p.down_x, "x", p.down_y, ", filter ", p.filter_h, "x", p.filter_w, ")");
        }
    } else {
        const int64_t total = int64_t(p.n) * p.c * p.out_h * p.out_w;
        const int64_t blocks_needed = (total + kThreads - 1) / kThreads;
        const int num_blocks = static_cast<int>(std::min<int64_t>(blocks_needed, int64_t(num_multiprocessors) * 8));
        const bool channels_fastest = p.y_stride_c == 1 && p.c > 1;
        if (channels_fastest) {
            upfirdn2d_general_kernel<scalar_t, true><<<num_blocks, kThreads, 0, stream>>>(p);
        } else {
            upfirdn2d_general_kernel<scalar_t, false><<<num_blocks, kThreads, 0, stream>>>(p);
        }
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return kernel;
}

template Upfirdn2dKernel launch_upfirdn2d<float>(const Upfirdn2dParams&, Upfirdn2dKernel, int, cudaStream_t);
template Upfirdn2dKernel launch_upfirdn2d<double>(const Upfirdn2dParams&, Upfirdn2dKernel, int, cudaStream_t);
template Upfirdn2dKernel launch_upfirdn2d<c10::Half>(const Upfirdn2dParams&, Upfirdn2dKernel, int, cudaStream_t);
template Upfirdn2dKernel launch_upfirdn2d<c10::BFloat16>(const Upfirdn2dParams&, Upfirdn2dKernel, int, cudaStream_t);
