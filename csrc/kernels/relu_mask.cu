// The ReLU mask read back from the conv's output, for the paths whose epilogue does not write it
// (direct, WMMA): one thread per mask byte, i.e. 8 consecutive pixels of one channel. The
// layout is resnext_kernels/relu_mask.py's (params.h, GroupedConvParams::relu_mask).
#include "kernels/dtype_traits.cuh"
#include "kernels/indexing.cuh"
#include "kernels/launch.cuh"
#include "kernels/params.h"

namespace resnext_kernels {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) relu_mask_from_output_kernel(GroupedConvParams p) {
  using Cvt = Convert<scalar_t>;
  const scalar_t* __restrict__ y = static_cast<const scalar_t*>(p.y);
  const int64_t M = p.N * p.H_out * p.W_out;
  const int64_t total = (M + 7) / 8 * p.C_out;
  // channel fastest: neighbouring threads store neighbouring bytes (and, in channels_last,
  // read neighbouring elements)
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = idx % p.C_out, r = idx / p.C_out;
    unsigned int byte = 0;
    for (int j = 0; j < 8; ++j) {
      const int64_t m = r * 8 + j;
      if (m >= M) break;  // bits past the last pixel stay 0
      const int64_t wo = m % p.W_out, ho = (m / p.W_out) % p.H_out, n = m / (p.W_out * p.H_out);
      const float v = Cvt::to_float(y[offset4(p.y_stride, n, c, ho, wo)]);
      if (!(v <= 0.f)) byte |= 1u << j;  // NaN passes, as torch's ReLU backward lets it
    }
    p.relu_mask[idx] = static_cast<uint8_t>(byte);
  }
}

template <typename scalar_t>
cudaError_t launch_typed(const GroupedConvParams& p, cudaStream_t stream) {
  const int64_t total = (p.N * p.H_out * p.W_out + 7) / 8 * p.C_out;
  if (total == 0) return cudaSuccess;
  return launch_kernel(relu_mask_from_output_kernel<scalar_t>, grid_stride_grid(total, kThreads),
                       dim3(kThreads), 0, stream, p);
}

}  // namespace

cudaError_t launch_relu_mask_from_output(const GroupedConvParams& p, DType dtype,
                                         cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return launch_typed<decltype(tag)>(p, stream); });
}

}  // namespace resnext_kernels
