// Kernel of the fused bias + activation op; the modes are described in bias_act.h.
//
// One thread handles one element at a time in a grid-stride loop over the memory of x.  All per-element
// tensors share x's memory layout (checked in bias_act.cpp), so the same offset addresses the same
// element in each, and the bias index of offset i is (i / b_step) % b_size.  Arithmetic runs in float for
// half/bfloat16/float and in double for double.

#include "bias_act.h"

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace {

// Constants of SELU (Klambauer et al. 2017), as torch.nn.functional.selu uses them.
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSeluScale = 1.0507009873554804934193349852946;
// torch.nn.functional.softplus returns x itself above this input (its `threshold` argument).
constexpr double kSoftplusThreshold = 20.0;

template <typename T>
__device__ __forceinline__ T sigmoid_of(T v) {
    return T(1) / (T(1) + exp(-v));
}

// act(v), where v is the input plus the bias.
template <int A, typename T>
__device__ __forceinline__ T activation(T v, T alpha) {
    if constexpr (A == kLinear) return v;
    if constexpr (A == kRelu) return v < T(0) ? T(0) : v;
    if constexpr (A == kLrelu) return v < T(0) ? v * alpha : v;
    if constexpr (A == kTanh) return tanh(v);
    if constexpr (A == kSigmoid) return sigmoid_of(v);
    if constexpr (A == kElu) return v > T(0) ? v : expm1(v);
    if constexpr (A == kSelu) return T(kSeluScale) * (v > T(0) ? v : T(kSeluAlpha) * expm1(v));
    if constexpr (A == kSoftplus) return v > T(kSoftplusThreshold) ? v : log1p(exp(v));
    if constexpr (A == kSwish) return v * sigmoid_of(v);
    return v;  // not reached: bias_act.cpp checks the activation number
}

// act'(v).  v = input plus bias (swish only), yy = act(v) (all others; the forward output / gain).
template <int A, typename T>
__device__ __forceinline__ T first_derivative(T v, T yy, T alpha) {
    if constexpr (A == kLinear) return T(1);
    if constexpr (A == kRelu) return yy > T(0) ? T(1) : T(0);
    if constexpr (A == kLrelu) return yy > T(0) ? T(1) : alpha;
    if constexpr (A == kTanh) return T(1) - yy * yy;
    if constexpr (A == kSigmoid) return yy * (T(1) - yy);
    if constexpr (A == kElu) return yy > T(0) ? T(1) : yy + T(1);                            // exp(v) = yy + 1
    if constexpr (A == kSelu) return yy > T(0) ? T(kSeluScale) : yy + T(kSeluScale * kSeluAlpha);
    if constexpr (A == kSoftplus) return -expm1(-yy);                                       // sigmoid(v)
    if constexpr (A == kSwish) {
        const T s = sigmoid_of(v);
        return s + v * s * (T(1) - s);
    }
    return T(0);
}

// act''(v), same arguments as first_derivative.
template <int A, typename T>
__device__ __forceinline__ T second_derivative(T v, T yy, T alpha) {
    if constexpr (A == kTanh) return T(-2) * yy * (T(1) - yy * yy);
    if constexpr (A == kSigmoid) return yy * (T(1) - yy) * (T(1) - T(2) * yy);
    if constexpr (A == kElu) return yy > T(0) ? T(0) : yy + T(1);
    if constexpr (A == kSelu) return yy > T(0) ? T(0) : yy + T(kSeluScale * kSeluAlpha);
    if constexpr (A == kSoftplus) return -expm1(-yy) * exp(-yy);                            // s * (1 - s)
    if constexpr (A == kSwish) {
        const T s = sigmoid_of(v);
        return s * (T(1) - s) * (T(2) + v * (T(1) - T(2) * s));
    }
    return T(0);  // linear, relu, lrelu: piecewise linear
}

template <typename scalar_t, int A, int G>
__global__ void __launch_bounds__(kBiasActThreads) bias_act_kernel(BiasActParams p) {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* x = static_cast<const scalar_t*>(p.x);
    const scalar_t* b = static_cast<const scalar_t*>(p.b);
    const scalar_t* xref = static_cast<const scalar_t*>(p.xref);
    const scalar_t* yref = static_cast<const scalar_t*>(p.yref);
    const scalar_t* dy = static_cast<const scalar_t*>(p.dy);
    scalar_t* y = static_cast<scalar_t*>(p.y);
    const T alpha = static_cast<T>(p.alpha);
    const T gain = static_cast<T>(p.gain);
    const T clamp = static_cast<T>(p.clamp);

    // 64-bit loop counter: i + stride must not overflow when n is close to INT_MAX.
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i64 = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i64 < p.n; i64 += stride) {
        const int i = static_cast<int>(i64);
        const T bias = b ? static_cast<T>(b[(i / p.b_step) % p.b_size]) : T(0);
        const T in = static_cast<T>(x[i]);
        T out;
        if constexpr (G == 0) {
            out = activation<A>(in + bias, alpha) * gain;
            if (clamp >= T(0)) out = out > clamp ? clamp : (out < -clamp ? -clamp : out);  // NaN stays NaN
        } else {
            const T v = xref ? static_cast<T>(xref[i]) + bias : T(0);
            const T y_out = yref ? static_cast<T>(yref[i]) : T(0);
            const T yy = gain != T(0) ? y_out / gain : T(0);
            if constexpr (G == 1) {
                out = in * first_derivative<A>(v, yy, alpha) * gain;
            } else {
                out = in * static_cast<T>(dy[i]) * second_derivative<A>(v, yy, alpha) * gain;
            }
            // Clamped outputs are constant: no gradient flows through them.
            if (clamp >= T(0) && !(y_out > -clamp && y_out < clamp)) out = T(0);
        }
        y[i] = static_cast<scalar_t>(out);
    }
}

template <typename scalar_t, int A>
void launch_for_activation(const BiasActParams& p, int num_blocks, cudaStream_t stream) {
    switch (p.grad) {
        case 0: bias_act_kernel<scalar_t, A, 0><<<num_blocks, kBiasActThreads, 0, stream>>>(p); break;
        case 1: bias_act_kernel<scalar_t, A, 1><<<num_blocks, kBiasActThreads, 0, stream>>>(p); break;
        case 2: bias_act_kernel<scalar_t, A, 2><<<num_blocks, kBiasActThreads, 0, stream>>>(p); break;
        default: TORCH_CHECK(false, "bias_act: grad must be 0, 1 or 2, got ", p.grad);
    }
}

}  // namespace

template <typename scalar_t>
void launch_bias_act(const BiasActParams& p, int num_blocks, cudaStream_t stream) {
    switch (p.act) {
        case kLinear: launch_for_activation<scalar_t, kLinear>(p, num_blocks, stream); break;
        case kRelu: launch_for_activation<scalar_t, kRelu>(p, num_blocks, stream); break;
        case kLrelu: launch_for_activation<scalar_t, kLrelu>(p, num_blocks, stream); break;
        case kTanh: launch_for_activation<scalar_t, kTanh>(p, num_blocks, stream); break;
        case kSigmoid: launch_for_activation<scalar_t, kSigmoid>(p, num_blocks, stream); break;
        case kElu: launch_for_activation<scalar_t, kElu>(p, num_blocks, stream); break;
        case kSelu: launch_for_activation<scalar_t, kSelu>(p, num_blocks, stream); break;
        case kSoftplus: launch_for_activation<scalar_t, kSoftplus>(p, num_blocks, stream); break;
        case kSwish: launch_for_activation<scalar_t, kSwish>(p, num_blocks, stream); break;
        default: TORCH_CHECK(false, "bias_act: unknown activation number ", p.act);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void launch_bias_act<float>(const BiasActParams&, int, cudaStream_t);
template void launch_bias_act<double>(const BiasActParams&, int, cudaStream_t);
template void launch_bias_act<c10::Half>(const BiasActParams&, int, cudaStream_t);
template void launch_bias_act<c10::BFloat16>(const BiasActParams&, int, cudaStream_t);
