// Torch glue for the CUDA grouped conv + BN + ReLU: checks, output allocation, device guard,
// current stream, launch and launch check. The kernels live in csrc/kernels/.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <tuple>

#include "kernels/params.h"
#include "torch/planner_inputs.h"
#include "torch/tensor_checks.h"

namespace resnext_kernels {
namespace {

// RESNEXT_KERNELS_CUDA_V3_BAND_PIXELS: the most output pixels in one v3 CTA's band, for tuning
// sweeps (benchmarks/grouped_conv.py's cuda_v3_band* providers); unset: v3's default.
int64_t v3_band_pixels_from_env() {
  const char* text = std::getenv("RESNEXT_KERNELS_CUDA_V3_BAND_PIXELS");
  if (text == nullptr || *text == '\0') return 0;
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  TORCH_CHECK(*end == '\0' && value >= 16 && value <= 256,
              "RESNEXT_KERNELS_CUDA_V3_BAND_PIXELS: expected an integer from 16 to 256, got '",
              text, "'");
  return value;
}

}  // namespace

// The forward, and with `with_mask` its ReLU mask (resnext_kernels/relu_mask.py's layout;
// [0, C_out] without ReLU): the v3 kernel writes it in its epilogue, the others' calls read it
// back from y in one more pass.
static std::tuple<at::Tensor, at::Tensor> run_grouped_conv_bn_relu(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
    const at::Tensor& shift, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, bool relu, bool with_mask) {
  // The Python op validates everything with friendlier messages; these checks keep direct
  // callers of this op from reaching the kernel with arguments it would read out of bounds.
  TORCH_CHECK(x.dim() == 4, "x: expected a 4-D [N, C, H, W] tensor, got ", x.dim(), "-D");
  TORCH_CHECK(weight.dim() == 4, "weight: expected [C_out, C_in/groups, KH, KW], got ",
              weight.sizes());
  TORCH_CHECK(groups > 0, "groups: expected a positive integer, got ", groups);
  TORCH_CHECK(x.size(1) % groups == 0 && weight.size(0) % groups == 0,
              "groups: C_in (", x.size(1), ") and C_out (", weight.size(0),
              ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(weight.size(1) * groups == x.size(1), "weight: expected shape[1] == C_in/groups = ",
              x.size(1) / groups, ", got ", weight.size(1));
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "stride, padding, dilation: expected 2 values each");
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "stride: expected positive values, got ", stride);
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, "dilation: expected positive values, got ",
              dilation);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, "padding: expected non-negative values, got ",
              padding);
  const int64_t C_out = weight.size(0);
  TORCH_CHECK(scale.dim() == 1 && scale.numel() == C_out, "scale: expected shape [", C_out,
              "], got ", scale.sizes());
  TORCH_CHECK(shift.dim() == 1 && shift.numel() == C_out, "shift: expected shape [", C_out,
              "], got ", shift.sizes());
  check_cuda(x, "x", x);
  check_cuda(weight, "weight", x);
  check_cuda(scale, "scale", x);
  check_cuda(shift, "shift", x);
  const DType dtype = to_kernel_dtype(x, "x");
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), "weight: expected dtype ",
                   x.scalar_type(), " (the dtype of x), got ", weight.scalar_type());

  const int64_t N = x.size(0), H = x.size(2), W = x.size(3);
  const int64_t KH = weight.size(2), KW = weight.size(3);
  const int64_t H_out = (H + 2 * padding[0] - dilation[0] * (KH - 1) - 1) / stride[0] + 1;
  const int64_t W_out = (W + 2 * padding[1] - dilation[1] * (KW - 1) - 1) / stride[1] + 1;
  TORCH_CHECK(H_out > 0 && W_out > 0, "x: spatial size ", H, "x", W,
              " is too small for this kernel, padding and dilation (output would be ", H_out,
              "x", W_out, ")");

  c10::cuda::CUDAGuard device_guard(x.device());
  const auto memory_format = x.suggest_memory_format();
  at::Tensor y = at::empty({N, C_out, H_out, W_out}, x.options().memory_format(memory_format));
  const int64_t mask_rows = with_mask && relu ? (N * H_out * W_out + 7) / 8 : 0;
  at::Tensor mask = at::empty({mask_rows, C_out}, x.options().dtype(at::kByte));
  if (y.numel() == 0) return {y, mask};
  const at::Tensor scale_f = scale.to(at::kFloat).contiguous();
  const at::Tensor shift_f = shift.to(at::kFloat).contiguous();

  GroupedConvParams p{};
  p.x = x.data_ptr();
  p.w = weight.data_ptr();
  p.scale = scale_f.data_ptr<float>();
  p.shift = shift_f.data_ptr<float>();
  p.y = y.data_ptr();
  p.N = N; p.C_in = x.size(1); p.H = H; p.W = W;
  p.C_out = C_out; p.H_out = H_out; p.W_out = W_out;
  p.groups = groups; p.KH = KH; p.KW = KW;
  p.stride_h = stride[0]; p.stride_w = stride[1];
  p.pad_h = padding[0]; p.pad_w = padding[1];
  p.dil_h = dilation[0]; p.dil_w = dilation[1];
  copy_strides4(x, p.x_stride);
  copy_strides4(weight, p.w_stride);
  copy_strides4(y, p.y_stride);
  p.relu = relu;
  p.y_channels_last = memory_format == at::MemoryFormat::ChannelsLast;
  p.relu_mask = mask_rows > 0 ? mask.data_ptr<uint8_t>() : nullptr;
  p.v3_band_pixels = v3_band_pixels_from_env();

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // fp32 follows torch.backends.cudnn.allow_tf32, like the aten convolution it replaces.
  const bool allow_tf32 = at::globalContext().allowTF32CuDNN();
  const GroupedConvPlan plan = plan_grouped_conv_bn_relu(p, dtype, device_compute_major(x),
                                                         allow_tf32, cuda_v3_allowed());
  // Scratch for the re-laid-out weights, and on v3 for an x with neither 16-byte channel
  // chunks nor contiguous rows (a view with gaps) packed channels_last: x's bytes more, for the
  // call's duration (v3 reads and writes NCHW itself). 16-byte aligned: the caching allocator
  // gives 512.
  const at::Tensor workspace =
      at::empty({std::max<int64_t>(plan.workspace_bytes, 1)}, x.options().dtype(at::kByte));
  const cudaError_t err = launch_grouped_conv_bn_relu(p, dtype, plan, workspace.data_ptr(), stream);
  TORCH_CHECK(err == cudaSuccess, "grouped_conv_bn_relu_cuda: kernel launch failed: ",
              cudaGetErrorString(err));
  return {y, mask};
}

at::Tensor grouped_conv_bn_relu_cuda(const at::Tensor& x, const at::Tensor& weight,
                                     const at::Tensor& scale, const at::Tensor& shift,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, int64_t groups, bool relu) {
  return std::get<0>(run_grouped_conv_bn_relu(x, weight, scale, shift, stride, padding,
                                              dilation, groups, relu, /*with_mask=*/false));
}

std::tuple<at::Tensor, at::Tensor> grouped_conv_bn_relu_masked_cuda(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
    const at::Tensor& shift, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, bool relu) {
  return run_grouped_conv_bn_relu(x, weight, scale, shift, stride, padding, dilation, groups,
                                  relu, /*with_mask=*/true);
}

TORCH_LIBRARY_IMPL(resnext_kernels, CUDA, m) {
  m.impl("grouped_conv_bn_relu_cuda", &grouped_conv_bn_relu_cuda);
  m.impl("grouped_conv_bn_relu_masked_cuda", &grouped_conv_bn_relu_masked_cuda);
}

}  // namespace resnext_kernels
