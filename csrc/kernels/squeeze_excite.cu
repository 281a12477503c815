// Squeeze-and-excitation in three deterministic launches (see params.h for the contract).
#include "kernels/dtype_traits.cuh"
#include "kernels/indexing.cuh"
#include "kernels/launch.cuh"
#include "kernels/params.h"


namespace resnext_kernels {
namespace {

constexpr int kSqueezeChannels = 32;  // channels per squeeze block (blockDim.x in NHWC mode)
constexpr int kSqueezeRows = 8;       // blockDim.y
constexpr int kExciteThreads = 256;
constexpr int kScaleThreads = 256;

__device__ __forceinline__ float warp_sum(float v) {
  // Fixed butterfly order: the same inputs give the same bits every run.
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// pooled[n, c] = mean over (h, w) of u[n, c, h, w]. Block: 32 x 8 threads, 32 channels of one n.
// channels_last: x walks channels (coalesced), y strides over pixels, then a fixed-order sum of
// the 8 partials. NCHW: x walks pixels (coalesced), each warp row owns 4 channels, warp_sum.
template <typename scalar_t>
__global__ void __launch_bounds__(kSqueezeChannels * kSqueezeRows)
    se_squeeze_kernel(SqueezeExciteParams p) {
  using Cvt = Convert<scalar_t>;
  const scalar_t* __restrict__ u = static_cast<const scalar_t*>(p.u);
  const int64_t n = blockIdx.x;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * kSqueezeChannels;
  const int64_t HW = p.H * p.W;
  const float inv_hw = 1.f / static_cast<float>(HW);
  const scalar_t* u_n = u + n * p.u_stride[0];
  if (p.channels_last) {
    __shared__ float partial[kSqueezeRows][kSqueezeChannels];
    const int64_t c = c0 + threadIdx.x;
    float acc = 0.f;
    if (c < p.C) {
      for (int64_t hw = threadIdx.y; hw < HW; hw += kSqueezeRows) {
        const int64_t h = hw / p.W, w = hw % p.W;
        acc += Cvt::to_float(u_n[offset4(p.u_stride, 0, c, h, w)]);
      }
    }
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < p.C) {
      float total = 0.f;
#pragma unroll
      for (int r = 0; r < kSqueezeRows; ++r) total += partial[r][threadIdx.x];
      p.pooled[n * p.C + c] = total * inv_hw;
    }
  } else {
    for (int j = threadIdx.y; j < kSqueezeChannels; j += kSqueezeRows) {
      const int64_t c = c0 + j;
      if (c >= p.C) break;  // uniform across the warp: c depends on threadIdx.y only
      float acc = 0.f;
      for (int64_t hw = threadIdx.x; hw < HW; hw += 32) {
        const int64_t h = hw / p.W, w = hw % p.W;
        acc += Cvt::to_float(u_n[offset4(p.u_stride, 0, c, h, w)]);
      }
      acc = warp_sum(acc);
      if (threadIdx.x == 0) p.pooled[n * p.C + c] = acc * inv_hw;
    }
  }
}

// gate[n, :] = sigmoid(W2 relu(W1 pooled[n, :] + b1) + b2). One block per n; pooled and the
// hidden vector live in shared memory ((C + R) floats).
__global__ void __launch_bounds__(kExciteThreads) se_excite_kernel(SqueezeExciteParams p) {
  float* pooled = reinterpret_cast<float*>(dynamic_shared_memory());  // [C]
  float* hidden = pooled + p.C;                                         // [R]
  const int64_t n = blockIdx.x;
  for (int64_t c = threadIdx.x; c < p.C; c += blockDim.x) pooled[c] = p.pooled[n * p.C + c];
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int64_t r = warp; r < p.R; r += warps) {
    const float* w1_row = p.w1 + r * p.C;
    float acc = 0.f;
    for (int64_t c = lane; c < p.C; c += 32) acc += w1_row[c] * pooled[c];
    acc = warp_sum(acc);
    if (lane == 0) hidden[r] = relu_keep_nan(acc + (p.b1 ? p.b1[r] : 0.f));  // as torch.relu
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < p.C; c += blockDim.x) {
    const float* w2_row = p.w2 + c * p.R;
    float a = p.b2 ? p.b2[c] : 0.f;
    for (int64_t r = 0; r < p.R; ++r) a += w2_row[r] * hidden[r];
    p.gate[n * p.C + c] = 1.f / (1.f + __expf(-a));
  }
}

// out = act(u * gate[n, c] + residual), one element per thread, walked in memory order.
template <typename scalar_t>
__global__ void __launch_bounds__(kScaleThreads) se_scale_kernel(SqueezeExciteParams p) {
  using Cvt = Convert<scalar_t>;
  const scalar_t* __restrict__ u = static_cast<const scalar_t*>(p.u);
  const scalar_t* __restrict__ res = static_cast<const scalar_t*>(p.residual);
  scalar_t* __restrict__ out = static_cast<scalar_t*>(p.out);
  const int64_t total = p.N * p.C * p.H * p.W;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, c, h, w;
    decode_index(idx, p.C, p.H, p.W, p.channels_last, n, c, h, w);
    float v = Cvt::to_float(u[offset4(p.u_stride, n, c, h, w)]) * p.gate[n * p.C + c];
    if (res) v += Cvt::to_float(res[offset4(p.residual_stride, n, c, h, w)]);
    if (p.relu) v = relu_keep_nan(v);
    out[offset4(p.out_stride, n, c, h, w)] = Cvt::from_float(v);
  }
}

template <typename scalar_t>
cudaError_t launch_typed(const SqueezeExciteParams& p, cudaStream_t stream) {
  const int64_t total = p.N * p.C * p.H * p.W;
  if (total == 0) return cudaSuccess;
  if (p.C > 65535LL * kSqueezeChannels) return cudaErrorInvalidValue;  // grid.y limit
  if (p.N > 0x7fffffffLL) return cudaErrorInvalidValue;
  const int64_t smem = squeeze_excite_smem_bytes(p.C, p.R);
  if (smem > kSqueezeExciteMaxSmemBytes) return cudaErrorInvalidValue;

  const dim3 squeeze_grid(static_cast<unsigned int>(p.N),
                          static_cast<unsigned int>((p.C + kSqueezeChannels - 1) / kSqueezeChannels));
  cudaError_t err = launch_kernel(se_squeeze_kernel<scalar_t>, squeeze_grid,
                                  dim3(kSqueezeChannels, kSqueezeRows), 0, stream, p);
  if (err != cudaSuccess) return err;

  err = launch_kernel(se_excite_kernel, dim3(static_cast<unsigned int>(p.N)), dim3(kExciteThreads),
                      static_cast<size_t>(smem), stream, p);
  if (err != cudaSuccess) return err;

  return launch_kernel(se_scale_kernel<scalar_t>, grid_stride_grid(total, kScaleThreads),
                       dim3(kScaleThreads), 0, stream, p);
}

}  // namespace

cudaError_t launch_squeeze_excite(const SqueezeExciteParams& p, DType dtype, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return launch_typed<decltype(tag)>(p, stream); });
}

}  // namespace resnext_kernels
