// Torch glue for the CUDA train-mode BatchNorm around the conv (csrc/kernels/batchnorm_train.cu):
// checks, outputs, one workspace, device guard, current stream, launches and launch checks. The
// Python ops (resnext_kernels/ops/grouped_conv_bn_relu_train.py) validate with friendlier
// messages first; these checks keep direct callers from reaching a kernel with arguments it
// would read out of bounds.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "kernels/params.h"
#include "torch/tensor_checks.h"

namespace resnext_kernels {
namespace {

// z's geometry and dtype into p; the checks every op shares.
DType check_z(const at::Tensor& z, BatchNormTrainParams& p) {
  TORCH_CHECK(z.dim() == 4, "z: expected a 4-D [N, C, H, W] tensor, got ", z.dim(), "-D");
  check_cuda(z, "z", z);
  const DType dtype = to_kernel_dtype(z, "z");
  p.N = z.size(0); p.C = z.size(1); p.H = z.size(2); p.W = z.size(3);
  TORCH_CHECK((p.C + 31) / 32 <= 65535, "z: C = ", p.C, " is more channels than the CUDA "
              "train-mode BatchNorm kernels' grid covers (at most 65535 * 32)");
  TORCH_CHECK((p.N * p.H * p.W + 255) / 256 <= 0x7fffffffLL, "z: N * H * W = ",
              p.N * p.H * p.W, " is more pixels than the kernels' grid covers");
  p.z = z.data_ptr();
  copy_strides4(z, p.z_stride);
  return dtype;
}

// A per-channel vector as the kernels read it: fp32, contiguous.
at::Tensor per_channel(const at::Tensor& t, const char* name, const at::Tensor& z) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == z.size(1), name, ": expected shape [", z.size(1),
              "] (one per channel of z), got ", t.sizes());
  check_cuda(t, name, z);
  TORCH_CHECK(t.is_floating_point(), name, ": expected a floating-point tensor, got ",
              t.scalar_type());
  return t.to(at::kFloat).contiguous();
}

void check_grad_y_and_mask(const at::Tensor& grad_y, const at::Tensor& relu_mask,
                           const at::Tensor& z, BatchNormTrainParams& p) {
  TORCH_CHECK(grad_y.sizes() == z.sizes() && grad_y.scalar_type() == z.scalar_type(),
              "grad_y: expected z's shape ", z.sizes(), " and dtype ", z.scalar_type(), ", got ",
              grad_y.sizes(), " ", grad_y.scalar_type());
  check_cuda(grad_y, "grad_y", z);
  check_cuda(relu_mask, "relu_mask", z);
  const int64_t rows = (p.N * p.H * p.W + 7) / 8;
  TORCH_CHECK(relu_mask.scalar_type() == at::kByte && relu_mask.dim() == 2 &&
                  relu_mask.size(1) == p.C &&
                  (relu_mask.size(0) == rows || relu_mask.size(0) == 0) &&
                  relu_mask.is_contiguous(),
              "relu_mask: expected a contiguous uint8 [", rows, ", ", p.C, "] (or [0, ", p.C,
              "]: no ReLU), got ", relu_mask.scalar_type(), " ", relu_mask.sizes());
  p.grad_y = grad_y.data_ptr();
  copy_strides4(grad_y, p.grad_y_stride);
  p.relu_mask = relu_mask.size(0) > 0 ? relu_mask.data_ptr<uint8_t>() : nullptr;
}

at::Tensor workspace_for(const BatchNormTrainParams& p, const at::Tensor& z) {
  return at::empty({std::max<int64_t>(batchnorm_train_workspace_floats(p), 1)},
                   z.options().dtype(at::kFloat));
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, ": kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace

// (y, relu_mask, batch_mean, batch_var): the statistics of z, then y = relu?(BN(z)) in z's
// dtype and memory format with its mask ([0, C] without a ReLU). A batch of 0: zero statistics.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batchnorm_train_forward_cuda(
    const at::Tensor& z, const at::Tensor& gamma, const at::Tensor& beta, double eps,
    bool relu) {
  BatchNormTrainParams p{};
  const DType dtype = check_z(z, p);
  TORCH_CHECK(eps >= 0, "eps: expected a non-negative value, got ", eps);
  const at::Tensor gamma_f = per_channel(gamma, "gamma", z);
  const at::Tensor beta_f = per_channel(beta, "beta", z);
  c10::cuda::CUDAGuard device_guard(z.device());
  const int64_t M = p.N * p.H * p.W;
  at::Tensor y = at::empty(z.sizes(), z.options().memory_format(z.suggest_memory_format()));
  at::Tensor mask = at::empty({relu ? (M + 7) / 8 : 0, p.C}, z.options().dtype(at::kByte));
  at::Tensor mean = at::empty({p.C}, z.options().dtype(at::kFloat));
  at::Tensor var = at::empty_like(mean);
  if (M == 0 || p.C == 0) {  // nothing to normalize; aten leaves the statistics alone
    mean.zero_();
    var.zero_();
    return {y, mask, mean, var};
  }
  at::Tensor workspace = workspace_for(p, z);
  p.out = y.data_ptr();
  copy_strides4(y, p.out_stride);
  p.relu_mask = relu ? mask.data_ptr<uint8_t>() : nullptr;
  p.gamma = gamma_f.data_ptr<float>();
  p.beta = beta_f.data_ptr<float>();
  p.mean_out = mean.data_ptr<float>();
  p.var_out = var.data_ptr<float>();
  p.mean = p.mean_out;
  p.var = p.var_out;
  p.workspace = workspace.data_ptr<float>();
  p.eps = static_cast<float>(eps);
  p.relu = relu;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  check_launch(launch_batchnorm_train_statistics(p, dtype, stream), "batchnorm_train statistics");
  check_launch(launch_batchnorm_train_normalize(p, dtype, stream), "batchnorm_train normalize");
  return {y, mask, mean, var};
}

// (grad_gamma, grad_beta, grad_z's coefficients [4, C]), all fp32.
std::tuple<at::Tensor, at::Tensor, at::Tensor> batchnorm_train_backward_sums_cuda(
    const at::Tensor& grad_y, const at::Tensor& relu_mask, const at::Tensor& z,
    const at::Tensor& batch_mean, const at::Tensor& batch_var, const at::Tensor& gamma,
    double eps) {
  BatchNormTrainParams p{};
  const DType dtype = check_z(z, p);
  check_grad_y_and_mask(grad_y, relu_mask, z, p);
  TORCH_CHECK(eps >= 0, "eps: expected a non-negative value, got ", eps);
  const at::Tensor mean_f = per_channel(batch_mean, "batch_mean", z);
  const at::Tensor var_f = per_channel(batch_var, "batch_var", z);
  const at::Tensor gamma_f = per_channel(gamma, "gamma", z);
  c10::cuda::CUDAGuard device_guard(z.device());
  at::Tensor grad_gamma = at::empty({p.C}, z.options().dtype(at::kFloat));
  at::Tensor grad_beta = at::empty_like(grad_gamma);
  at::Tensor coef = at::empty({4, p.C}, z.options().dtype(at::kFloat));
  if (p.C == 0) return {grad_gamma, grad_beta, coef};
  at::Tensor workspace = workspace_for(p, z);
  p.mean = mean_f.data_ptr<float>();
  p.var = var_f.data_ptr<float>();
  p.gamma = gamma_f.data_ptr<float>();
  p.grad_gamma = grad_gamma.data_ptr<float>();
  p.grad_beta = grad_beta.data_ptr<float>();
  p.coef_out = coef.data_ptr<float>();
  p.workspace = workspace.data_ptr<float>();
  p.eps = static_cast<float>(eps);
  check_launch(launch_batchnorm_train_backward_sums(p, dtype,
                                                    c10::cuda::getCurrentCUDAStream()),
               "batchnorm_train backward sums");
  return {grad_gamma, grad_beta, coef};
}

// grad_z = k_gp * gp + k_x * (z - mean) + k_0 in z's dtype and memory format.
at::Tensor batchnorm_train_grad_z_cuda(const at::Tensor& grad_y, const at::Tensor& relu_mask,
                                       const at::Tensor& z, const at::Tensor& coef) {
  BatchNormTrainParams p{};
  const DType dtype = check_z(z, p);
  check_grad_y_and_mask(grad_y, relu_mask, z, p);
  TORCH_CHECK(coef.scalar_type() == at::kFloat && coef.dim() == 2 && coef.size(0) == 4 &&
                  coef.size(1) == p.C && coef.is_contiguous(),
              "grad_z_coefficients: expected a contiguous float32 [4, ", p.C, "], got ",
              coef.scalar_type(), " ", coef.sizes());
  check_cuda(coef, "grad_z_coefficients", z);
  c10::cuda::CUDAGuard device_guard(z.device());
  at::Tensor grad_z =
      at::empty(z.sizes(), z.options().memory_format(z.suggest_memory_format()));
  p.coef = coef.data_ptr<float>();
  p.out = grad_z.data_ptr();
  copy_strides4(grad_z, p.out_stride);
  check_launch(launch_batchnorm_train_grad_z(p, dtype, c10::cuda::getCurrentCUDAStream()),
               "batchnorm_train grad_z");
  return grad_z;
}

TORCH_LIBRARY_IMPL(resnext_kernels, CUDA, m) {
  m.impl("batchnorm_train_forward_cuda", &batchnorm_train_forward_cuda);
  m.impl("batchnorm_train_backward_sums_cuda", &batchnorm_train_backward_sums_cuda);
  m.impl("batchnorm_train_grad_z_cuda", &batchnorm_train_grad_z_cuda);
}

}  // namespace resnext_kernels
