// The backward of the fused grouped conv + folded BatchNorm + ReLU, direct kernels (params.h has
// the formulas): dgrad, and wgrad as per-range partial sums plus a fixed-order finalize (which
// also adds wgrad v3's partial sums: grouped_conv_wgrad_v3.cu).
//
// These are the CUDA backward's first version: correct for every geometry the op allows, fp32
// arithmetic, 64-bit offsets, deterministic; not yet on tensor cores (docs/KERNELS.md, issue 15).
// Non-finite values behave as nn.Conv2d's backward: the gradient of one group never reaches
// another group's channels, the ReLU mask selects (a blocked NaN gradient stays out), and a
// passed gradient of 0 still multiplies, as does the zero padding (0 * NaN is NaN in aten's
// sums too). One difference in kind, not in finiteness: grad_scale is sum(G * w) and grad_w
// G * scale (aten: sum(gp * conv(x, w)) and sum(gp * scale * x)), so where infinities of both
// signs meet, one may be NaN where the other is +-inf.
#include <algorithm>
#include <cstdint>

#include "kernels/dtype_traits.cuh"
#include "kernels/indexing.cuh"
#include "kernels/launch.cuh"
#include "kernels/params.h"

namespace resnext_kernels {
namespace {

constexpr int kDgradThreads = 256;
constexpr int kWgradMaxThreads = 256;    // weight elements per wgrad block (one per thread)
constexpr int kFinalizeThreads = 128;
constexpr int64_t kWgradTargetBlocks = 2048;  // enough blocks to fill a GPU several times over
constexpr int64_t kWgradMinPixelsPerSplit = 1024;

// Whether the forward's ReLU passed the gradient of output pixel m (flat (n, ho, wo)), channel co.
__device__ __forceinline__ bool relu_passed(const uint8_t* mask, int64_t m, int64_t co,
                                            int64_t C_out) {
  if (mask == nullptr) return true;
  return (mask[(m >> 3) * C_out + co] >> (m & 7)) & 1;
}

// The output coordinate whose tap k read input coordinate i, if any: i = o * stride - pad + k * dil.
__device__ __forceinline__ bool output_of_tap(int64_t i, int64_t k, int64_t stride, int64_t pad,
                                              int64_t dil, int64_t size_out, int64_t& o) {
  const int64_t t = i + pad - k * dil;
  if (t < 0 || t % stride != 0) return false;
  o = t / stride;
  return o < size_out;
}

// ------------------------------------------------------------------------------------- dgrad
// (min 1 block per SM: without it, ptxas for sm_80 held the fp16/bf16 variants to 64 registers
// and spilled 32 B; with it, no spill on sm_80 or sm_90)
template <typename scalar_t>
__global__ void __launch_bounds__(kDgradThreads, 1)
    grouped_conv_dgrad_kernel(GroupedConvBackwardParams p) {
  using Cvt = Convert<scalar_t>;
  const scalar_t* __restrict__ grad_y = static_cast<const scalar_t*>(p.grad_y);
  const scalar_t* __restrict__ w = static_cast<const scalar_t*>(p.w);
  scalar_t* __restrict__ grad_x = static_cast<scalar_t*>(p.grad_x);
  const int64_t cpg_in = p.C_in / p.groups;
  const int64_t cpg_out = p.C_out / p.groups;
  const int64_t total = p.N * p.C_in * p.H * p.W;

  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, ci, h, wi;
    decode_index(idx, p.C_in, p.H, p.W, p.grad_x_channels_last, n, ci, h, wi);
    const int64_t co0 = (ci / cpg_in) * cpg_out;
    const int64_t ci_in_group = ci - (ci / cpg_in) * cpg_in;
    float acc = 0.f;
    for (int64_t kh = 0; kh < p.KH; ++kh) {
      int64_t ho;
      if (!output_of_tap(h, kh, p.stride_h, p.pad_h, p.dil_h, p.H_out, ho)) continue;
      for (int64_t kw = 0; kw < p.KW; ++kw) {
        int64_t wo;
        if (!output_of_tap(wi, kw, p.stride_w, p.pad_w, p.dil_w, p.W_out, wo)) continue;
        const int64_t m = (n * p.H_out + ho) * p.W_out + wo;
        // running pointers over the group's output channels: no 64-bit multiply per channel
        const scalar_t* gy = grad_y + n * p.grad_y_stride[0] + co0 * p.grad_y_stride[1] +
                             ho * p.grad_y_stride[2] + wo * p.grad_y_stride[3];
        const scalar_t* w_co = w + co0 * p.w_stride[0] + ci_in_group * p.w_stride[1] +
                               kh * p.w_stride[2] + kw * p.w_stride[3];
        const float* scale = p.scale + co0;
        const uint8_t* mask_byte = p.relu_mask != nullptr
                                       ? p.relu_mask + (m >> 3) * p.C_out + co0
                                       : nullptr;
        const int bit = static_cast<int>(m & 7);
        for (int64_t j = 0; j < cpg_out; ++j) {
          const bool passed = mask_byte == nullptr || ((mask_byte[j] >> bit) & 1);
          const float g = passed ? Cvt::to_float(*gy) : 0.f;
          acc += g * (Cvt::to_float(*w_co) * scale[j]);
          gy += p.grad_y_stride[1];
          w_co += p.w_stride[0];
        }
      }
    }
    grad_x[offset4(p.grad_x_stride, n, ci, h, wi)] = Cvt::from_float(acc);
  }
}

// ------------------------------------------------------------------------------------- wgrad
// Block (co, element chunk) x split: each thread owns one weight element e = (ci, kh, kw) of
// output channel co and sums gp[m, co] * x[m's input pixel under (kh, kw), ci] over the split's
// pixels m, in order. The block stages the gradients of blockDim.x pixels at a time in shared
// memory (read once, not once per weight element), with where each pixel's taps start.
struct StagedPixel {
  int64_t x_image;  // n * x_stride[0]
  int64_t hi0, wi0;  // ho * stride - pad (the tap (0, 0) input row and column)
  float gp;          // the gradient before the ReLU
};

// Sums v over the block's threads in a fixed order (a power-of-two tree): deterministic.
// blockDim.x a power of two; `scratch` holds blockDim.x floats. Every thread gets the sum.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int tid = threadIdx.x;
  scratch[tid] = v;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (tid < half) scratch[tid] += scratch[tid + half];
    __syncthreads();
  }
  const float total = scratch[0];
  __syncthreads();  // scratch may be reused after this
  return total;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kWgradMaxThreads)
    grouped_conv_wgrad_partial_kernel(GroupedConvBackwardParams p, int64_t element_chunks,
                                      int64_t pixels_per_split, float* partials) {
  using Cvt = Convert<scalar_t>;
  const scalar_t* __restrict__ grad_y = static_cast<const scalar_t*>(p.grad_y);
  const scalar_t* __restrict__ x = static_cast<const scalar_t*>(p.x);
  StagedPixel* staged = reinterpret_cast<StagedPixel*>(dynamic_shared_memory());

  const int64_t cpg_in = p.C_in / p.groups;
  const int64_t cpg_out = p.C_out / p.groups;
  const int64_t taps = p.KH * p.KW;
  const int64_t elements = cpg_in * taps;
  const int64_t co = blockIdx.x / element_chunks;
  const int64_t chunk = blockIdx.x - co * element_chunks;
  const int64_t split = blockIdx.y;
  const int64_t e = chunk * blockDim.x + threadIdx.x;
  const bool owns_element = e < elements;
  const int64_t ci = (co / cpg_out) * cpg_in + (owns_element ? e / taps : 0);
  const int64_t kh = owns_element ? (e % taps) / p.KW : 0;
  const int64_t kw = owns_element ? e % p.KW : 0;
  const scalar_t* x_channel = x + ci * p.x_stride[1];

  const int64_t M = p.N * p.H_out * p.W_out;
  const int64_t m_begin = split * pixels_per_split < M ? split * pixels_per_split : M;
  const int64_t m_end = m_begin + pixels_per_split < M ? m_begin + pixels_per_split : M;
  float acc = 0.f, gp_sum = 0.f;
  for (int64_t base = m_begin; base < m_end; base += blockDim.x) {
    const int64_t m = base + threadIdx.x;
    if (m < m_end) {
      const int64_t wo = m % p.W_out;
      const int64_t ho = (m / p.W_out) % p.H_out;
      const int64_t n = m / (p.W_out * p.H_out);
      const float g = relu_passed(p.relu_mask, m, co, p.C_out)
                          ? Cvt::to_float(grad_y[offset4(p.grad_y_stride, n, co, ho, wo)])
                          : 0.f;
      gp_sum += g;
      staged[threadIdx.x] = StagedPixel{n * p.x_stride[0], ho * p.stride_h - p.pad_h,
                                        wo * p.stride_w - p.pad_w, g};
    }
    __syncthreads();
    const int64_t count = m_end - base < blockDim.x ? m_end - base : blockDim.x;
    if (owns_element) {
      for (int64_t j = 0; j < count; ++j) {
        const StagedPixel px = staged[j];
        const int64_t hi = px.hi0 + kh * p.dil_h;
        const int64_t wi = px.wi0 + kw * p.dil_w;
        // the zero padding is multiplied too, as in aten's sums: a NaN/inf gradient of a
        // border pixel makes its padded taps NaN there as well
        const bool inside = hi >= 0 && hi < p.H && wi >= 0 && wi < p.W;
        const float xv = inside ? Cvt::to_float(x_channel[px.x_image + hi * p.x_stride[2] +
                                                          wi * p.x_stride[3]])
                                : 0.f;
        acc += px.gp * xv;
      }
    }
    __syncthreads();  // before the next round overwrites the staged pixels
  }
  // partials[split][co][0..elements): the split's sums; [elements]: its sum of gp
  float* out = partials + (split * p.C_out + co) * (elements + 1);
  if (owns_element) out[e] = acc;
  if (chunk == 0) {
    const float total = block_sum(gp_sum, reinterpret_cast<float*>(staged));
    if (threadIdx.x == 0) out[elements] = total;
  }
}

// Block per output channel: adds the splits in order, then grad_w = G * scale, grad_scale =
// sum(G * w) (a fixed-order block sum) and grad_shift = the splits' gp sums, in order.
template <typename scalar_t>
__global__ void __launch_bounds__(kFinalizeThreads)
    grouped_conv_wgrad_finalize_kernel(GroupedConvBackwardParams p, int64_t splits,
                                       const float* partials) {
  using Cvt = Convert<scalar_t>;
  const scalar_t* __restrict__ w = static_cast<const scalar_t*>(p.w);
  scalar_t* __restrict__ grad_w = static_cast<scalar_t*>(p.grad_w);
  __shared__ float scratch[kFinalizeThreads];
  const int64_t co = blockIdx.x;
  const int64_t taps = p.KH * p.KW;
  const int64_t elements = (p.C_in / p.groups) * taps;
  const int64_t split_stride = p.C_out * (elements + 1);
  const float* sums = partials + co * (elements + 1);
  const float scale = p.scale[co];
  float dot = 0.f;
  for (int64_t e = threadIdx.x; e < elements; e += blockDim.x) {
    float G = 0.f;
    for (int64_t s = 0; s < splits; ++s) G += sums[s * split_stride + e];
    const int64_t ci = e / taps, kh = (e % taps) / p.KW, kw = e % p.KW;
    dot += G * Cvt::to_float(w[offset4(p.w_stride, co, ci, kh, kw)]);
    grad_w[offset4(p.grad_w_stride, co, ci, kh, kw)] = Cvt::from_float(G * scale);
  }
  const float grad_scale = block_sum(dot, scratch);
  if (threadIdx.x == 0) {
    float shift = 0.f;
    for (int64_t s = 0; s < splits; ++s) shift += sums[s * split_stride + elements];
    p.grad_scale[co] = grad_scale;
    p.grad_shift[co] = shift;
  }
}

template <typename scalar_t>
cudaError_t launch_dgrad_typed(const GroupedConvBackwardParams& p, cudaStream_t stream) {
  const int64_t total = p.N * p.C_in * p.H * p.W;
  if (total == 0) return cudaSuccess;
  return launch_kernel(grouped_conv_dgrad_kernel<scalar_t>,
                       grid_stride_grid(total, kDgradThreads), dim3(kDgradThreads), 0, stream, p);
}

template <typename scalar_t>
cudaError_t launch_wgrad_partials_typed(const GroupedConvBackwardParams& p,
                                        const GroupedConvWgradPlan& plan, float* partials,
                                        cudaStream_t stream) {
  if (p.C_out * plan.element_chunks > INT32_MAX || plan.splits > 65535) {
    return cudaErrorInvalidConfiguration;  // a grid these kernels cannot address
  }
  const int64_t M = p.N * p.H_out * p.W_out;
  const int64_t pixels_per_split = (M + plan.splits - 1) / plan.splits;
  const dim3 grid(static_cast<unsigned int>(p.C_out * plan.element_chunks),
                  static_cast<unsigned int>(plan.splits));
  return launch_kernel(grouped_conv_wgrad_partial_kernel<scalar_t>, grid, dim3(plan.threads),
                       plan.threads * sizeof(StagedPixel), stream, p, plan.element_chunks,
                       pixels_per_split, partials);
}

}  // namespace

cudaError_t launch_grouped_conv_dgrad_direct(const GroupedConvBackwardParams& p, DType dtype,
                                             cudaStream_t stream) {
  return dispatch_dtype(dtype,
                        [&](auto tag) { return launch_dgrad_typed<decltype(tag)>(p, stream); });
}

GroupedConvWgradPlan plan_grouped_conv_wgrad_direct(const GroupedConvBackwardParams& p) {
  GroupedConvWgradPlan plan;
  const int64_t elements = (p.C_in / p.groups) * p.KH * p.KW;
  while (plan.threads < kWgradMaxThreads && plan.threads < elements) plan.threads *= 2;
  plan.element_chunks = std::max<int64_t>(1, (elements + plan.threads - 1) / plan.threads);
  const int64_t M = p.N * p.H_out * p.W_out;
  const int64_t blocks_per_split = std::max<int64_t>(1, p.C_out * plan.element_chunks);
  const int64_t wanted = (kWgradTargetBlocks + blocks_per_split - 1) / blocks_per_split;
  const int64_t most = std::max<int64_t>(1, M / kWgradMinPixelsPerSplit);
  plan.splits = std::max<int64_t>(1, std::min<int64_t>({wanted, most, 65535}));
  plan.workspace_bytes = grouped_conv_wgrad_partials_bytes(p, plan.splits);
  return plan;
}

cudaError_t launch_grouped_conv_wgrad_direct_partials(const GroupedConvBackwardParams& p,
                                                      DType dtype,
                                                      const GroupedConvWgradPlan& plan,
                                                      float* partials, cudaStream_t stream) {
  if (p.C_out == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    return launch_wgrad_partials_typed<decltype(tag)>(p, plan, partials, stream);
  });
}

cudaError_t launch_grouped_conv_wgrad_finalize(const GroupedConvBackwardParams& p, DType dtype,
                                               int64_t splits, const float* partials,
                                               cudaStream_t stream) {
  if (p.C_out == 0) return cudaSuccess;
  if (p.C_out > INT32_MAX) return cudaErrorInvalidConfiguration;
  return dispatch_dtype(dtype, [&](auto tag) {
    return launch_kernel(grouped_conv_wgrad_finalize_kernel<decltype(tag)>,
                         dim3(static_cast<unsigned int>(p.C_out)), dim3(kFinalizeThreads), 0,
                         stream, p, splits, partials);
  });
}

}  // namespace resnext_kernels
