// Torch glue for the CUDA backward of grouped conv + BN + ReLU (csrc/kernels/
// grouped_conv_backward.cu): checks, output and workspace allocation, device guard, current
// stream, launch and launch check. The Python ops (resnext_kernels/ops/
// grouped_conv_bn_relu_backward.py) validate with friendlier messages first; these checks keep
// direct callers from reaching a kernel with arguments it would read out of bounds.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "kernels/params.h"
#include "torch/planner_inputs.h"
#include "torch/tensor_checks.h"

namespace resnext_kernels {
namespace {

// The checks dgrad and wgrad share; fills the params every kernel reads (geometry, grad_y,
// mask, w, scale). input: [N, C_in, H, W], the forward's input size.
GroupedConvBackwardParams backward_params(const at::Tensor& grad_y, const at::Tensor& relu_mask,
                                          const at::Tensor& weight, const at::Tensor& scale,
                                          at::IntArrayRef input, at::IntArrayRef stride,
                                          at::IntArrayRef padding, at::IntArrayRef dilation,
                                          int64_t groups, DType& dtype) {
  TORCH_CHECK(grad_y.dim() == 4, "grad_y: expected a 4-D tensor, got ", grad_y.dim(), "-D");
  TORCH_CHECK(weight.dim() == 4, "weight: expected [C_out, C_in/groups, KH, KW], got ",
              weight.sizes());
  TORCH_CHECK(input.size() == 4, "input size: expected [N, C_in, H, W], got ", input);
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "stride, padding, dilation: expected 2 values each");
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "stride: expected positive values, got ", stride);
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, "dilation: expected positive values, got ",
              dilation);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, "padding: expected non-negative values, got ",
              padding);
  const int64_t C_out = weight.size(0), C_in = input[1];
  TORCH_CHECK(groups > 0 && C_out % groups == 0 && C_in % groups == 0,
              "groups: expected a positive divisor of C_in (", C_in, ") and C_out (", C_out,
              "), got ", groups);
  TORCH_CHECK(weight.size(1) * groups == C_in, "weight: expected shape[1] == C_in/groups = ",
              C_in / groups, ", got ", weight.size(1));
  const int64_t KH = weight.size(2), KW = weight.size(3);
  TORCH_CHECK(KH > 0 && KW > 0, "weight: expected a kernel of at least 1x1, got ", KH, "x", KW);
  // (C++ division truncates where Python's floors: refuse first what would convolve to nothing)
  TORCH_CHECK(input[2] + 2 * padding[0] >= dilation[0] * (KH - 1) + 1 &&
                  input[3] + 2 * padding[1] >= dilation[1] * (KW - 1) + 1,
              "input size: ", input[2], "x", input[3], " is too small for this kernel, padding "
              "and dilation");
  const int64_t H_out = (input[2] + 2 * padding[0] - dilation[0] * (KH - 1) - 1) / stride[0] + 1;
  const int64_t W_out = (input[3] + 2 * padding[1] - dilation[1] * (KW - 1) - 1) / stride[1] + 1;
  TORCH_CHECK(grad_y.size(0) == input[0] && grad_y.size(1) == C_out && grad_y.size(2) == H_out &&
                  grad_y.size(3) == W_out,
              "grad_y: expected [", input[0], ", ", C_out, ", ", H_out, ", ", W_out,
              "] (the input size convolved), got ", grad_y.sizes());
  TORCH_CHECK(scale.dim() == 1 && scale.numel() == C_out, "scale: expected shape [", C_out,
              "], got ", scale.sizes());
  TORCH_CHECK_TYPE(scale.is_floating_point(), "scale: expected a floating-point tensor, got ",
                   scale.scalar_type());
  const int64_t M = input[0] * H_out * W_out;
  TORCH_CHECK(relu_mask.scalar_type() == at::kByte && relu_mask.dim() == 2 &&
                  relu_mask.is_contiguous() && relu_mask.size(1) == C_out &&
                  (relu_mask.size(0) == (M + 7) / 8 || relu_mask.size(0) == 0),
              "relu_mask: expected a contiguous uint8 [", (M + 7) / 8, ", ", C_out,
              "] (or [0, ", C_out, "]: no ReLU), got ", relu_mask.scalar_type(), " ",
              relu_mask.sizes());
  check_cuda(grad_y, "grad_y", grad_y);
  check_cuda(relu_mask, "relu_mask", grad_y);
  check_cuda(weight, "weight", grad_y);
  check_cuda(scale, "scale", grad_y);
  dtype = to_kernel_dtype(grad_y, "grad_y");
  TORCH_CHECK_TYPE(weight.scalar_type() == grad_y.scalar_type(), "weight: expected dtype ",
                   grad_y.scalar_type(), " (grad_y's), got ", weight.scalar_type());

  GroupedConvBackwardParams p{};
  p.grad_y = grad_y.data_ptr();
  p.relu_mask = relu_mask.size(0) > 0 ? relu_mask.data_ptr<uint8_t>() : nullptr;
  p.w = weight.data_ptr();
  p.N = input[0]; p.C_in = C_in; p.H = input[2]; p.W = input[3];
  p.C_out = C_out; p.H_out = H_out; p.W_out = W_out;
  p.groups = groups; p.KH = KH; p.KW = KW;
  p.stride_h = stride[0]; p.stride_w = stride[1];
  p.pad_h = padding[0]; p.pad_w = padding[1];
  p.dil_h = dilation[0]; p.dil_w = dilation[1];
  copy_strides4(grad_y, p.grad_y_stride);
  copy_strides4(weight, p.w_stride);
  return p;
}

}  // namespace

at::Tensor grouped_conv_dgrad_cuda(const at::Tensor& grad_y, const at::Tensor& relu_mask,
                                   const at::Tensor& weight, const at::Tensor& scale,
                                   at::IntArrayRef input_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation,
                                   int64_t groups, bool channels_last) {
  DType dtype;
  GroupedConvBackwardParams p = backward_params(grad_y, relu_mask, weight, scale, input_size,
                                                stride, padding, dilation, groups, dtype);
  c10::cuda::CUDAGuard device_guard(grad_y.device());
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor grad_x = at::empty(input_size, grad_y.options().memory_format(format));
  if (grad_x.numel() == 0) return grad_x;
  const at::Tensor scale_f = scale.to(at::kFloat).contiguous();
  p.scale = scale_f.data_ptr<float>();
  p.grad_x = grad_x.data_ptr();
  copy_strides4(grad_x, p.grad_x_stride);
  p.grad_x_channels_last = channels_last;
  const GroupedConvDgradPlan plan =
      plan_grouped_conv_dgrad(p, dtype, device_compute_major(grad_y), cuda_v3_allowed());
  // (16-byte aligned: the caching allocator gives 512)
  const at::Tensor workspace =
      at::empty({std::max<int64_t>(plan.workspace_bytes, 1)}, grad_y.options().dtype(at::kByte));
  const cudaError_t err = launch_grouped_conv_dgrad(p, dtype, plan, workspace.data_ptr(),
                                                    c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "grouped_conv_dgrad_cuda: kernel launch failed: ",
              cudaGetErrorString(err));
  return grad_x;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grouped_conv_wgrad_cuda(
    const at::Tensor& grad_y, const at::Tensor& relu_mask, const at::Tensor& x,
    const at::Tensor& weight, const at::Tensor& scale, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(x.dim() == 4, "x: expected a 4-D tensor, got ", x.dim(), "-D");
  DType dtype;
  GroupedConvBackwardParams p = backward_params(grad_y, relu_mask, weight, scale, x.sizes(),
                                                stride, padding, dilation, groups, dtype);
  check_cuda(x, "x", grad_y);
  TORCH_CHECK_TYPE(x.scalar_type() == grad_y.scalar_type(), "x: expected dtype ",
                   grad_y.scalar_type(), " (grad_y's), got ", x.scalar_type());
  c10::cuda::CUDAGuard device_guard(grad_y.device());
  // weight's strides, as the op's fake says (empty_like keeps a dense weight's layout)
  at::Tensor grad_w = at::empty_like(weight);
  const int64_t C_out = weight.size(0);
  at::Tensor grad_scale = at::empty({C_out}, grad_y.options().dtype(at::kFloat));
  at::Tensor grad_shift = at::empty({C_out}, grad_y.options().dtype(at::kFloat));
  if (C_out == 0) return {grad_w, grad_scale, grad_shift};
  const at::Tensor scale_f = scale.to(at::kFloat).contiguous();
  p.scale = scale_f.data_ptr<float>();
  p.x = x.data_ptr();
  copy_strides4(x, p.x_stride);
  p.grad_w = grad_w.data_ptr();
  copy_strides4(grad_w, p.grad_w_stride);
  p.grad_scale = grad_scale.data_ptr<float>();
  p.grad_shift = grad_shift.data_ptr<float>();
  const GroupedConvWgradPlan plan =
      plan_grouped_conv_wgrad(p, dtype, device_compute_major(grad_y), cuda_v3_allowed());
  const at::Tensor workspace =
      at::empty({std::max<int64_t>(plan.workspace_bytes, 4)}, x.options().dtype(at::kByte));
  const cudaError_t err = launch_grouped_conv_wgrad(p, dtype, plan, workspace.data_ptr(),
                                                    c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "grouped_conv_wgrad_cuda: kernel launch failed: ",
              cudaGetErrorString(err));
  return {grad_w, grad_scale, grad_shift};
}

TORCH_LIBRARY_IMPL(resnext_kernels, CUDA, m) {
  m.impl("grouped_conv_dgrad_cuda", &grouped_conv_dgrad_cuda);
  m.impl("grouped_conv_wgrad_cuda", &grouped_conv_wgrad_cuda);
}

}  // namespace resnext_kernels
