// Fused bias + activation + gain + clamp: the interface between bias_act.cpp (PyTorch binding, input
// checks) and bias_act.cu (the kernel).  See stylegan_ops/bias_act.py for the Python side.
//
// One kernel launch makes one pass over the elements.  Three modes:
//   grad 0 (forward):  y  = clamp(act(x + b) * gain, -clamp, clamp)
//   grad 1:            dx = dy * act'(xref + b) * gain,           0 where the output yref was clamped
//   grad 2:            d  = d_dx * dy * act''(xref + b) * gain,   0 where the output yref was clamped
// In modes 1 and 2 the kernel's main input ("x") is the incoming gradient (dy, resp. d_dx); act' and act''
// are computed from xref (the forward input, before the bias) or from yref (the forward output), whichever
// the activation needs (see kActivationRef in bias_act.cpp).
#pragma once

#include <cuda_runtime_api.h>

// Activation numbers, as `Activation.cuda_idx` in stylegan_ops/bias_act.py.
enum BiasActActivation : int {
    kLinear = 1,
    kRelu = 2,
    kLrelu = 3,
    kTanh = 4,
    kSigmoid = 5,
    kElu = 6,
    kSelu = 7,
    kSoftplus = 8,
    kSwish = 9,
};

struct BiasActParams {
    const void* x;     // [n] main input (x, dy or d_dx), dtype scalar_t
    const void* b;     // [b_size] bias, or nullptr
    const void* xref;  // [n] forward input before the bias, or nullptr
    const void* yref;  // [n] forward output, or nullptr
    const void* dy;    // [n] incoming gradient of mode 2, or nullptr
    void* y;           // [n] output
    int n;             // number of elements; all [n] tensors share one memory layout
    int b_size;        // x.size(dim) (bias length); 1 when there is no bias
    int b_step;        // x.stride(dim): the bias index of memory offset i is (i / b_step) % b_size
    int grad;          // 0, 1 or 2 (see above)
    int act;           // BiasActActivation
    double alpha;      // shape parameter (negative slope of lrelu)
    double gain;       // output scale
    double clamp;      // clamp bound; negative = no clamping
};

// Launch the kernel on `stream` with `num_blocks` blocks of `kBiasActThreads` threads (grid-stride loop).
// scalar_t: float, double, c10::Half or c10::BFloat16.
constexpr int kBiasActThreads = 256;

template <typename scalar_t>
void launch_bias_act(const BiasActParams& p, int num_blocks, cudaStream_t stream);
