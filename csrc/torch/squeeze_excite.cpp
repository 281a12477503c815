// Torch glue for the CUDA squeeze-and-excitation: checks, fp32 weights, workspaces, device
// guard, current stream, launch and launch check. The kernels live in csrc/kernels/.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kernels/params.h"
#include "torch/tensor_checks.h"

namespace resnext_kernels {

at::Tensor squeeze_excite_cuda(const at::Tensor& u, const at::Tensor& w1,
                               const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                               const std::optional<at::Tensor>& b2,
                               const std::optional<at::Tensor>& residual, bool relu) {
  TORCH_CHECK(u.dim() == 4, "u: expected a 4-D [N, C, H, W] tensor, got ", u.dim(), "-D");
  const int64_t N = u.size(0), C = u.size(1), H = u.size(2), W = u.size(3);
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == C, "w1: expected [R, ", C, "], got ", w1.sizes());
  const int64_t R = w1.size(0);
  TORCH_CHECK(w2.dim() == 2 && w2.size(0) == C && w2.size(1) == R, "w2: expected [", C, ", ", R,
              "], got ", w2.sizes());
  TORCH_CHECK(!b1 || (b1->dim() == 1 && b1->numel() == R), "b1: expected [", R, "]");
  TORCH_CHECK(!b2 || (b2->dim() == 1 && b2->numel() == C), "b2: expected [", C, "]");
  check_cuda(u, "u", u);
  check_cuda(w1, "w1", u);
  check_cuda(w2, "w2", u);
  if (b1) check_cuda(*b1, "b1", u);
  if (b2) check_cuda(*b2, "b2", u);
  const DType dtype = to_kernel_dtype(u, "u");
  if (residual) {
    check_cuda(*residual, "residual", u);
    TORCH_CHECK(residual->sizes() == u.sizes(), "residual: expected shape ", u.sizes(), ", got ",
                residual->sizes());
    TORCH_CHECK_TYPE(residual->scalar_type() == u.scalar_type(), "residual: expected dtype ",
                     u.scalar_type(), " (the dtype of u), got ", residual->scalar_type());
  }
  TORCH_CHECK(C <= kSqueezeExciteMaxChannels && R <= kSqueezeExciteMaxChannels,
              "u, w1: C = ", C, " and R = ", R, " must each be at most ",
              kSqueezeExciteMaxChannels, " for the CUDA squeeze-excite kernels; use "
              "backend='triton' or 'reference'");
  TORCH_CHECK(N <= 0x7fffffffLL, "u: N = ", N, " is more images than the CUDA squeeze-excite "
              "kernels' grid covers (at most 2^31 - 1)");

  c10::cuda::CUDAGuard device_guard(u.device());
  const auto memory_format = u.suggest_memory_format();
  at::Tensor out = at::empty(u.sizes(), u.options().memory_format(memory_format));
  if (out.numel() == 0) return out;
  const at::Tensor w1_f = w1.to(at::kFloat).contiguous();
  const at::Tensor w2_f = w2.to(at::kFloat).contiguous();
  const at::Tensor b1_f = b1 ? b1->to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor b2_f = b2 ? b2->to(at::kFloat).contiguous() : at::Tensor();
  // one allocation: pooled [N, C], gate [N, C], the hidden layer's partial sums [splits, N, R]
  const int64_t splits = squeeze_excite_hidden_splits(C);
  at::Tensor workspace = at::empty({N * (2 * C + splits * R)}, u.options().dtype(at::kFloat));

  SqueezeExciteParams p{};
  p.u = u.data_ptr();
  p.residual = residual ? residual->data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.w1 = w1_f.data_ptr<float>();
  p.b1 = b1 ? b1_f.data_ptr<float>() : nullptr;
  p.w2 = w2_f.data_ptr<float>();
  p.b2 = b2 ? b2_f.data_ptr<float>() : nullptr;
  p.pooled = workspace.data_ptr<float>();
  p.gate = p.pooled + N * C;
  p.hidden = p.gate + N * C;
  p.N = N; p.C = C; p.H = H; p.W = W; p.R = R;
  copy_strides4(u, p.u_stride);
  if (residual) copy_strides4(*residual, p.residual_stride);
  copy_strides4(out, p.out_stride);
  p.relu = relu;
  p.channels_last = memory_format == at::MemoryFormat::ChannelsLast;

  const cudaError_t err = launch_squeeze_excite(p, dtype, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "squeeze_excite_cuda: kernel launch failed: ",
              cudaGetErrorString(err));
  return out;
}

TORCH_LIBRARY_IMPL(resnext_kernels, CUDA, m) {
  m.impl("squeeze_excite_cuda", &squeeze_excite_cuda);
}

}  // namespace resnext_kernels
