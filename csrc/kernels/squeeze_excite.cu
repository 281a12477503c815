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
constexpr int kScalePixels = 16;    // channels_last scale: pixels per tile (a loop per thread)
constexpr int kScaleChannels = 32;  // NCHW scale: channels per tile (grid.y = C / 32 <= 65535)

// Advances the pixel (h, w) by `step` pixels in row-major order without a division: the
// kernels below decode a pixel index once per thread and then walk it.
__device__ __forceinline__ void advance_pixel(int64_t& h, int64_t& w, int64_t step, int64_t W) {
  w += step;
  while (w >= W) {
    w -= W;
    ++h;
  }
}

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
      int64_t h = 0, w = 0;
      advance_pixel(h, w, threadIdx.y, p.W);
      for (int64_t hw = threadIdx.y; hw < HW; hw += kSqueezeRows) {
        acc += Cvt::to_float(u_n[offset4(p.u_stride, 0, c, h, w)]);
        advance_pixel(h, w, kSqueezeRows, p.W);
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
      int64_t h = 0, w = 0;
      advance_pixel(h, w, threadIdx.x, p.W);
      for (int64_t hw = threadIdx.x; hw < HW; hw += 32) {
        acc += Cvt::to_float(u_n[offset4(p.u_stride, 0, c, h, w)]);
        advance_pixel(h, w, 32, p.W);
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

// The scale pass's tiles of one image: kScalePixels pixels (channels_last) or kScaleThreads
// pixels (NCHW) each; the kernel and its launcher both count them here.
__host__ __device__ __forceinline__ int64_t scale_pixels_per_tile(bool channels_last) {
  return channels_last ? kScalePixels : kScaleThreads;
}
__host__ __device__ __forceinline__ int64_t scale_tiles_per_image(const SqueezeExciteParams& p) {
  const int64_t per_tile = scale_pixels_per_tile(p.channels_last);
  return (p.H * p.W + per_tile - 1) / per_tile;
}

// out = act(u * gate + residual) at element offsets (u, residual, out) of one element.
template <typename scalar_t>
__device__ __forceinline__ void scale_element(const SqueezeExciteParams& p, int64_t u_off,
                                              int64_t res_off, int64_t out_off, float gate) {
  using Cvt = Convert<scalar_t>;
  const scalar_t* __restrict__ u = static_cast<const scalar_t*>(p.u);
  const scalar_t* __restrict__ res = static_cast<const scalar_t*>(p.residual);
  scalar_t* __restrict__ out = static_cast<scalar_t*>(p.out);
  float v = Cvt::to_float(u[u_off]) * gate;
  if (res) v += Cvt::to_float(res[res_off]);
  if (p.relu) v = relu_keep_nan(v);
  out[out_off] = Cvt::from_float(v);
}

// The scale pass over tiles of one image, indices decoded once per thread and tile (no
// division or multiplication per element: offsets advance by the strides), grid-stride over
// the tiles along x:
//   channels_last: a tile is kScaleThreads channels (grid.y) x kScalePixels pixels; each thread
//     owns a channel (one gate load) and walks the tile's pixels; a warp reads 32 neighbouring
//     channels of one pixel.
//   NCHW: a tile is kScaleThreads pixels x kScaleChannels channels (grid.y); each thread owns a
//     pixel and walks the channels; a warp reads 32 neighbouring pixels of one channel.
template <typename scalar_t>
__global__ void __launch_bounds__(kScaleThreads) se_scale_kernel(SqueezeExciteParams p) {
  const int64_t HW = p.H * p.W;
  const int64_t pixels_per_tile = scale_pixels_per_tile(p.channels_last);
  const int64_t tiles_per_image = scale_tiles_per_image(p);
  const int64_t* us = p.u_stride;
  const int64_t* rs = p.residual_stride;
  const int64_t* os = p.out_stride;
  for (int64_t tile = blockIdx.x; tile < p.N * tiles_per_image; tile += gridDim.x) {
    const int64_t n = tile / tiles_per_image;
    const int64_t hw0 = (tile % tiles_per_image) * pixels_per_tile;
    if (p.channels_last) {
      const int64_t c = static_cast<int64_t>(blockIdx.y) * kScaleThreads + threadIdx.x;
      if (c >= p.C) continue;
      const float gate = p.gate[n * p.C + c];
      const int64_t count = hw0 + kScalePixels < HW ? kScalePixels : HW - hw0;
      int64_t h = hw0 / p.W, w = hw0 % p.W;
      int64_t u_off = offset4(us, n, c, h, w), r_off = offset4(rs, n, c, h, w);
      int64_t o_off = offset4(os, n, c, h, w);
      for (int64_t i = 0; i < count; ++i) {
        scale_element<scalar_t>(p, u_off, r_off, o_off, gate);
        if (++w < p.W) {  // next pixel in the row
          u_off += us[3], r_off += rs[3], o_off += os[3];
        } else {  // first pixel of the next row
          w = 0;
          u_off += us[2] - (p.W - 1) * us[3];
          r_off += rs[2] - (p.W - 1) * rs[3];
          o_off += os[2] - (p.W - 1) * os[3];
        }
      }
    } else {
      const int64_t hw = hw0 + threadIdx.x;
      if (hw >= HW) continue;
      const int64_t h = hw / p.W, w = hw % p.W;
      const int64_t c0 = static_cast<int64_t>(blockIdx.y) * kScaleChannels;
      const int64_t c_end = c0 + kScaleChannels < p.C ? c0 + kScaleChannels : p.C;
      int64_t u_off = offset4(us, n, c0, h, w), r_off = offset4(rs, n, c0, h, w);
      int64_t o_off = offset4(os, n, c0, h, w);
      for (int64_t c = c0; c < c_end; ++c) {
        scale_element<scalar_t>(p, u_off, r_off, o_off, p.gate[n * p.C + c]);
        u_off += us[1], r_off += rs[1], o_off += os[1];
      }
    }
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

  const int64_t tiles = p.N * scale_tiles_per_image(p);
  const int64_t channel_tiles = p.channels_last ? (p.C + kScaleThreads - 1) / kScaleThreads
                                                : (p.C + kScaleChannels - 1) / kScaleChannels;
  const dim3 scale_grid(static_cast<unsigned int>(std::min<int64_t>(tiles, int64_t{1} << 20)),
                        static_cast<unsigned int>(channel_tiles));
  return launch_kernel(se_scale_kernel<scalar_t>, scale_grid, dim3(kScaleThreads), 0, stream, p);
}

}  // namespace

cudaError_t launch_squeeze_excite(const SqueezeExciteParams& p, DType dtype, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return launch_typed<decltype(tag)>(p, stream); });
}

}  // namespace resnext_kernels
