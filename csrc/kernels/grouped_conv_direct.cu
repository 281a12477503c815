// Direct grouped convolution + folded BatchNorm + ReLU: one thread per output element.
// The baseline every faster kernel is checked against on the GPU; it handles any stride,
// padding, dilation, kernel size, channels per group and memory layout.
#include "kernels/dtype_traits.cuh"
#include "kernels/indexing.cuh"
#include "kernels/launch.cuh"
#include "kernels/params.h"

namespace resnext_kernels {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    grouped_conv_bn_relu_direct_kernel(GroupedConvParams p) {
  using Cvt = Convert<scalar_t>;
  const scalar_t* __restrict__ x = static_cast<const scalar_t*>(p.x);
  const scalar_t* __restrict__ w = static_cast<const scalar_t*>(p.w);
  scalar_t* __restrict__ y = static_cast<scalar_t*>(p.y);
  const int64_t cpg_in = p.C_in / p.groups;
  const int64_t cpg_out = p.C_out / p.groups;
  const int64_t total = p.N * p.C_out * p.H_out * p.W_out;

  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // Walk outputs in the output's memory order so neighbouring threads store neighbours.
    int64_t n, co, ho, wo;
    decode_index(idx, p.C_out, p.H_out, p.W_out, p.y_channels_last, n, co, ho, wo);
    const int64_t ci0 = (co / cpg_out) * cpg_in;
    const scalar_t* x_n = x + n * p.x_stride[0];
    const scalar_t* w_co = w + co * p.w_stride[0];

    float acc = 0.f;
    for (int64_t kh = 0; kh < p.KH; ++kh) {
      const int64_t hi = ho * p.stride_h - p.pad_h + kh * p.dil_h;
      if (hi < 0 || hi >= p.H) continue;
      for (int64_t kw = 0; kw < p.KW; ++kw) {
        const int64_t wi = wo * p.stride_w - p.pad_w + kw * p.dil_w;
        if (wi < 0 || wi >= p.W) continue;
        const scalar_t* x_px = x_n + hi * p.x_stride[2] + wi * p.x_stride[3];
        const scalar_t* w_tap = w_co + kh * p.w_stride[2] + kw * p.w_stride[3];
        for (int64_t ci = 0; ci < cpg_in; ++ci) {
          acc += Cvt::to_float(x_px[(ci0 + ci) * p.x_stride[1]]) *
                 Cvt::to_float(w_tap[ci * p.w_stride[1]]);
        }
      }
    }
    float v = acc * p.scale[co] + p.shift[co];
    if (p.relu) v = relu_keep_nan(v);
    y[offset4(p.y_stride, n, co, ho, wo)] = Cvt::from_float(v);
  }
}

template <typename scalar_t>
cudaError_t launch_typed(const GroupedConvParams& p, cudaStream_t stream) {
  const int64_t total = p.N * p.C_out * p.H_out * p.W_out;
  if (total == 0) return cudaSuccess;
  return launch_kernel(grouped_conv_bn_relu_direct_kernel<scalar_t>,
                       grid_stride_grid(total, kThreads), dim3(kThreads), 0, stream, p);
}

}  // namespace

cudaError_t launch_grouped_conv_bn_relu_direct(const GroupedConvParams& p, DType dtype,
                                               cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return launch_typed<decltype(tag)>(p, stream); });
}

}  // namespace resnext_kernels
