// PyTorch binding of the fused bias + activation kernel: input checks, output allocation, dtype dispatch.
// Called from stylegan_ops/bias_act.py as
//   bias_act(x, b, xref, yref, dy, grad, dim, act, alpha, gain, clamp) -> y
// where an empty tensor means "not given" and clamp < 0 means no clamping (modes: see bias_act.h).

// Only the headers needed (not <torch/extension.h>, which pulls in all of libtorch's API): this halves the
// compile time of the file.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <climits>

#include "bias_act.h"

namespace {

// Number of multiprocessors of the current device (sizes grid-stride launches).
int multiprocessor_count() {
    int device = 0, count = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    return count;
}

// The derivatives of these activations are computed from the forward output (Activation.ref == 'y').
bool derivative_needs_output(int64_t act) {
    return act == kRelu || act == kLrelu || act == kTanh || act == kSigmoid || act == kElu || act == kSelu ||
           act == kSoftplus;
}

// ... and those of swish from the forward input (Activation.ref == 'x').
bool derivative_needs_input(int64_t act) { return act == kSwish; }

// Same sizes and the same strides in every dimension that has more than one element: then one memory
// offset addresses the same element in both tensors.
bool same_layout(const at::Tensor& a, const at::Tensor& b) {
    if (a.sizes() != b.sizes()) return false;
    for (int64_t d = 0; d < a.dim(); ++d) {
        if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
    }
    return true;
}

// xref, yref and dy are either empty ("not given") or match x in device, dtype, shape and layout.
void check_like_x(const at::Tensor& t, const at::Tensor& x, const char* name) {
    if (t.numel() == 0) return;
    TORCH_CHECK(t.device() == x.device(), "bias_act: ", name, " must be on x's device ", x.device(), ", got ",
                t.device());
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "bias_act: ", name, " must have x's dtype ", x.scalar_type(),
                ", got ", t.scalar_type());
    TORCH_CHECK(same_layout(t, x), "bias_act: ", name, " must have x's shape ", x.sizes(), " and memory layout, got ",
                t.sizes(), " with strides ", t.strides(), " (x has strides ", x.strides(), ")");
}

}  // namespace

at::Tensor bias_act(at::Tensor x, at::Tensor b, at::Tensor xref, at::Tensor yref, at::Tensor dy,
                       int64_t grad, int64_t dim, int64_t act, double alpha, double gain, double clamp) {
    TORCH_CHECK(x.is_cuda(), "bias_act: x must be a CUDA tensor, got one on ", x.device());
    const auto dtype = x.scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                "bias_act: x must be float16, bfloat16, float32 or float64, got ", dtype);
    TORCH_CHECK(x.is_non_overlapping_and_dense(),
                "bias_act: x must be dense (contiguous in some order of its dimensions), got strides ", x.strides());
    TORCH_CHECK(x.numel() <= INT_MAX, "bias_act: x has ", x.numel(), " elements; at most ", INT_MAX,
                " are supported (32-bit indexing)");
    TORCH_CHECK(grad >= 0 && grad <= 2, "bias_act: grad must be 0, 1 or 2, got ", grad);
    TORCH_CHECK(act >= kLinear && act <= kSwish, "bias_act: act must be an activation number 1..9, got ", act);

    const bool has_bias = b.numel() != 0;
    if (has_bias) {
        TORCH_CHECK(dim >= 0 && dim < x.dim(), "bias_act: dim must be in [0, ", x.dim(), "), got ", dim);
        TORCH_CHECK(b.dim() == 1 && b.size(0) == x.size(dim), "bias_act: b must have shape [", x.size(dim),
                    "] (x.shape[dim]), got ", b.sizes());
        TORCH_CHECK(b.device() == x.device(), "bias_act: b must be on x's device ", x.device(), ", got ", b.device());
        TORCH_CHECK(b.scalar_type() == dtype, "bias_act: b must have x's dtype ", dtype, ", got ", b.scalar_type());
        TORCH_CHECK(b.is_contiguous(), "bias_act: b must be contiguous");
    }
    check_like_x(xref, x, "xref");
    check_like_x(yref, x, "yref");
    check_like_x(dy, x, "dy");

    const c10::cuda::OptionalCUDAGuard device_guard(x.device());
    at::Tensor y = at::empty_like(x);  // x is dense, so y gets x's strides
    if (x.numel() == 0) return y;      // (then xref, yref and dy are empty too: "not given" is fine)

    if (grad >= 1) {
        TORCH_CHECK(!derivative_needs_output(act) || yref.numel() != 0,
                    "bias_act: the derivative of activation ", act, " needs yref (the forward output)");
        TORCH_CHECK(!derivative_needs_input(act) || xref.numel() != 0,
                    "bias_act: the derivative of activation ", act, " needs xref (the forward input)");
        TORCH_CHECK(clamp < 0 || yref.numel() != 0,
                    "bias_act: with clamping, the gradient needs yref (the forward output) to know what was clamped");
    }
    if (grad == 2) {
        TORCH_CHECK(dy.numel() != 0, "bias_act: grad=2 needs dy (the gradient of the forward output)");
    }

    BiasActParams p;
    p.x = x.data_ptr();
    p.b = has_bias ? b.data_ptr() : nullptr;
    p.xref = xref.numel() != 0 ? xref.data_ptr() : nullptr;
    p.yref = yref.numel() != 0 ? yref.data_ptr() : nullptr;
    p.dy = dy.numel() != 0 ? dy.data_ptr() : nullptr;
    p.y = y.data_ptr();
    p.n = static_cast<int>(x.numel());
    p.b_size = has_bias ? static_cast<int>(x.size(dim)) : 1;
    p.b_step = (has_bias && x.size(dim) > 1) ? static_cast<int>(x.stride(dim)) : 1;
    p.grad = static_cast<int>(grad);
    p.act = static_cast<int>(act);
    p.alpha = alpha;
    p.gain = gain;
    p.clamp = clamp;

    // Enough blocks to fill the GPU (8 x 256 threads per multiprocessor); the grid-stride loop does the rest.
    const int64_t blocks_needed = (x.numel() + kBiasActThreads - 1) / kBiasActThreads;
    const int64_t blocks_to_fill = int64_t(multiprocessor_count()) * 8;
    const int num_blocks = static_cast<int>(std::min(blocks_needed, blocks_to_fill));
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "bias_act",
                                    [&] { launch_bias_act<scalar_t>(p, num_blocks, stream); });
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &bias_act,
          "Fused bias + activation + gain + clamp (grad=0), or its first (grad=1) or second (grad=2) derivative.",
          py::arg("x"), py::arg("b"), py::arg("xref"), py::arg("yref"), py::arg("dy"), py::arg("grad"),
          py::arg("dim"), py::arg("act"), py::arg("alpha"), py::arg("gain"), py::arg("clamp"));
}
