// PyTorch binding of upfirdn2d: input checks, output allocation, dtype dispatch.  Called from
// stylegan_ops/upfirdn2d.py as
//   upfirdn2d(x, f, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1, flip_filter, gain, kernel=-1)
// with x [N, C, H, W] (any strides; a channels_last x gives a channels_last output, anything else an
// NCHW-contiguous one) and f a float32 [fh, fw] filter on x's device.  `kernel`: -1 automatic, 0 the general
// kernel, 1 the shared-memory tile kernel (an error where none fits); tests use it to check both.

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

#include <climits>
#include <cstdlib>

#include "upfirdn2d.h"

namespace {

// Number of multiprocessors of the current device (sizes grid-stride launches).
int multiprocessor_count() {
    int device = 0, count = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    return count;
}

// Bound on the upsampled, padded extent of an axis: keeps every coordinate the kernels compute (sums and
// differences of these terms) far inside the int32 range.
constexpr int64_t kMaxExtent = int64_t(1) << 29;

// The largest element offset a tensor's strides reach (0 for an empty tensor).
int64_t max_offset(const at::Tensor& t) {
    if (t.numel() == 0) return 0;
    int64_t offset = 0;
    for (int64_t d = 0; d < t.dim(); ++d) offset += (t.size(d) - 1) * t.stride(d);
    return offset;
}

// Stride of dimension d as an int; 0 where the dimension has one element (its stride is never used).
int stride_or_zero(const at::Tensor& t, int64_t d) { return t.size(d) > 1 ? static_cast<int>(t.stride(d)) : 0; }

// Output size along one axis, after checking that everything about the axis fits the kernels' int32 math.
int64_t output_size(const char* axis, int64_t in_size, int64_t up, int64_t down, int64_t pad0, int64_t pad1,
                    int64_t filter_size) {
    const int64_t extent = in_size * up + std::llabs(pad0) + std::llabs(pad1) + filter_size + down;
    TORCH_CHECK(extent <= kMaxExtent, "upfirdn2d: along ", axis, ", size ", in_size, " x up ", up, " with padding ",
                pad0, ", ", pad1, " is too large (at most 2^29 upsampled pixels)");
    const int64_t padded = in_size * up + pad0 + pad1;
    TORCH_CHECK(padded >= filter_size, "upfirdn2d: along ", axis, ", the upsampled, padded image (", padded,
                " pixels) is smaller than the filter (", filter_size, " taps)");
    return (padded - filter_size) / down + 1;
}

}  // namespace

at::Tensor upfirdn2d(at::Tensor x, at::Tensor f, int64_t up_x, int64_t up_y, int64_t down_x, int64_t down_y,
                        int64_t pad_x0, int64_t pad_x1, int64_t pad_y0, int64_t pad_y1, bool flip_filter, double gain,
                        int64_t kernel) {
    TORCH_CHECK(x.is_cuda(), "upfirdn2d: x must be a CUDA tensor, got one on ", x.device());
    TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must have shape [N, C, H, W], got ", x.sizes());
    const auto dtype = x.scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                "upfirdn2d: x must be float16, bfloat16, float32 or float64, got ", dtype);
    TORCH_CHECK(f.device() == x.device(), "upfirdn2d: f must be on x's device ", x.device(), ", got ", f.device());
    TORCH_CHECK(f.scalar_type() == at::kFloat, "upfirdn2d: f must be float32, got ", f.scalar_type());
    TORCH_CHECK(f.dim() == 2 && f.numel() > 0, "upfirdn2d: f must be a non-empty 2D filter [fh, fw], got ", f.sizes());
    TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1,
                "upfirdn2d: up and down factors must be >= 1, got up ", up_x, "x", up_y, ", down ", down_x, "x", down_y);
    TORCH_CHECK(kernel >= -1 && kernel <= 1, "upfirdn2d: kernel must be -1 (auto), 0 (general) or 1 (tiled), got ",
                kernel);
    for (int64_t d = 0; d < 4; ++d) {
        TORCH_CHECK(x.stride(d) >= 0, "upfirdn2d: x must have non-negative strides, got ", x.strides());
    }
    TORCH_CHECK(max_offset(x) <= INT_MAX, "upfirdn2d: x spans more than 2^31 elements (32-bit indexing)");

    const int64_t n = x.size(0), c = x.size(1), in_h = x.size(2), in_w = x.size(3);
    const int64_t filter_h = f.size(0), filter_w = f.size(1);
    const int64_t out_w = output_size("x", in_w, up_x, down_x, pad_x0, pad_x1, filter_w);
    const int64_t out_h = output_size("y", in_h, up_y, down_y, pad_y0, pad_y1, filter_h);
    // (checked in steps, so that no product can overflow int64)
    TORCH_CHECK(n <= INT_MAX && c <= INT_MAX && n * c <= INT_MAX && out_h * out_w <= INT_MAX &&
                    n * c * out_h * out_w <= INT_MAX, "upfirdn2d: the output [", n, ", ", c, ", ", out_h, ", ", out_w,
                "] has more than 2^31 elements (32-bit indexing)");

    const c10::cuda::OptionalCUDAGuard device_guard(x.device());
    const auto memory_format = x.suggest_memory_format();  // channels_last stays channels_last
    at::Tensor y = at::empty({n, c, out_h, out_w}, x.options().memory_format(memory_format));
    if (y.numel() == 0) return y;
    const at::Tensor filter = f.contiguous();

    Upfirdn2dParams p;
    p.x = x.data_ptr();
    p.f = filter.data_ptr<float>();
    p.y = y.data_ptr();
    p.n = static_cast<int>(n);
    p.c = static_cast<int>(c);
    p.in_h = static_cast<int>(in_h);
    p.in_w = static_cast<int>(in_w);
    p.x_stride_n = stride_or_zero(x, 0);
    p.x_stride_c = stride_or_zero(x, 1);
    p.x_stride_h = stride_or_zero(x, 2);
    p.x_stride_w = stride_or_zero(x, 3);
    p.out_h = static_cast<int>(out_h);
    p.out_w = static_cast<int>(out_w);
    p.y_stride_n = static_cast<int>(y.stride(0));
    p.y_stride_c = static_cast<int>(y.stride(1));
    p.y_stride_h = static_cast<int>(y.stride(2));
    p.y_stride_w = static_cast<int>(y.stride(3));
    p.up_x = static_cast<int>(up_x);
    p.up_y = static_cast<int>(up_y);
    p.down_x = static_cast<int>(down_x);
    p.down_y = static_cast<int>(down_y);
    p.pad_x0 = static_cast<int>(pad_x0);
    p.pad_y0 = static_cast<int>(pad_y0);
    p.filter_w = static_cast<int>(filter_w);
    p.filter_h = static_cast<int>(filter_h);
    p.flip_filter = flip_filter;
    p.gain = gain;

    const auto requested = static_cast<Upfirdn2dKernel>(kernel);
    TORCH_CHECK(requested != Upfirdn2dKernel::kTiled || upfirdn2d_tiled_applicable(p),
                "upfirdn2d: no tiled kernel fits these parameters (up ", up_x, "x", up_y, ", down ", down_x, "x",
                down_y, ", filter ", filter_h, "x", filter_w, ")");
    const int num_multiprocessors = multiprocessor_count();
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "upfirdn2d", [&] {
        launch_upfirdn2d<scalar_t>(p, requested, num_multiprocessors, stream);
    });
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &upfirdn2d, "Upsample, pad, FIR-filter and downsample a batch of images [N, C, H, W].",
          py::arg("x"), py::arg("f"), py::arg("up_x"), py::arg("up_y"), py::arg("down_x"), py::arg("down_y"),
          py::arg("pad_x0"), py::arg("pad_x1"), py::arg("pad_y0"), py::arg("pad_y1"), py::arg("flip_filter"),
          py::arg("gain"), py::arg("kernel") = -1);
}
