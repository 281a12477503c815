// Tensor-core grouped 3x3 conv + folded BN + ReLU for channels_last fp16/bf16 at 16, 32 or 64
// channels per group (stride 1 or 2, padding 1, dilation 1): an implicit GEMM per group with
// WMMA 16x16x16 fragments and fp32 accumulation.
//
// Block: one image n, one group g, an output tile of kTileH x kTileW pixels (one warp per
// output row, 16 pixels = one M fragment), all CPG output channels (CPG/16 N fragments).
// The input tile with its halo is read from global memory once, with 16-byte loads, into
// shared memory laid out [row][col][channel]; for a tap (kh, kw) the A fragment of a warp is the
// 16 pixels of its row shifted by the tap, at a row stride of STRIDE*CPG elements. The weights
// of one tap ([ci][co], pre-transposed by the glue) are staged per tap. The epilogue goes through
// shared memory (fp32) so that scale, shift and ReLU are applied per channel and the output is
// written once, channel-contiguous.
#include <mma.h>

#include <algorithm>

#include "kernels/dtype_traits.cuh"
#include "kernels/params.h"

namespace resnext_kernels {
namespace {

constexpr int kTileH = 4;   // output rows per block (one warp each)
constexpr int kTileW = 16;  // output columns per block (the M fragment)
constexpr int kWarps = kTileH;
constexpr int kThreads = kWarps * 32;

template <int CPG, int STRIDE>
struct WmmaTile {
  static constexpr int kInH = (kTileH - 1) * STRIDE + 3;
  static constexpr int kInW = (kTileW - 1) * STRIDE + 3;
  static constexpr int kInElems = kInH * kInW * CPG;                 // 16-bit elements
  static constexpr int kWElems = CPG * CPG;                           // one tap, 16-bit
  static constexpr int kStageFloats = kWarps * kTileW * CPG;         // fp32 epilogue staging
  static constexpr size_t kInBytes = (kInElems * 2 + 127) / 128 * 128;
  static constexpr size_t kWBytes = (kWElems * 2 + 127) / 128 * 128;
  static constexpr size_t kSmemBytes = kInBytes + kWBytes + kStageFloats * sizeof(float);
};

// 16 bytes of zeros or of global memory.
__device__ __forceinline__ uint4 load16_or_zero(const void* ptr, bool valid) {
  return valid ? *static_cast<const uint4*>(ptr) : make_uint4(0, 0, 0, 0);
}

template <typename scalar_t, int CPG, int STRIDE>
__global__ void __launch_bounds__(kThreads)
    grouped_conv_bn_relu_wmma_kernel(GroupedConvParams p, const scalar_t* __restrict__ w_t,
                                     int64_t tiles_w, int64_t tiles_per_image) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  using Tile = WmmaTile<CPG, STRIDE>;
  using Cvt = Convert<scalar_t>;
  extern __shared__ __align__(128) unsigned char smem[];
  scalar_t* in_tile = reinterpret_cast<scalar_t*>(smem);                       // [kInH][kInW][CPG]
  scalar_t* w_tap = reinterpret_cast<scalar_t*>(smem + Tile::kInBytes);       // [CPG ci][CPG co]
  float* stage = reinterpret_cast<float*>(smem + Tile::kInBytes + Tile::kWBytes);  // [warp][16][CPG]

  const scalar_t* __restrict__ x = static_cast<const scalar_t*>(p.x);
  scalar_t* __restrict__ y = static_cast<scalar_t*>(p.y);
  const int64_t n = blockIdx.x / tiles_per_image;
  const int64_t tile = blockIdx.x % tiles_per_image;
  const int64_t oh0 = (tile / tiles_w) * kTileH;
  const int64_t ow0 = (tile % tiles_w) * kTileW;
  const int64_t g = blockIdx.y;
  const int64_t c0 = g * CPG;  // first input (= output) channel of the group
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  // 1. The input tile and its halo, once, 16 bytes (8 channels) per load; zeros for padding.
  const int64_t ih0 = oh0 * STRIDE - p.pad_h, iw0 = ow0 * STRIDE - p.pad_w;
  constexpr int kVecPerPixel = CPG / 8;
  for (int v = threadIdx.x; v < Tile::kInH * Tile::kInW * kVecPerPixel; v += kThreads) {
    const int pix = v / kVecPerPixel, cv = v % kVecPerPixel;
    const int r = pix / Tile::kInW, c = pix % Tile::kInW;
    const int64_t ih = ih0 + r, iw = iw0 + c;
    const bool inside = ih >= 0 && ih < p.H && iw >= 0 && iw < p.W;
    const scalar_t* src = x + n * p.x_stride[0] + (inside ? ih * p.x_stride[2] + iw * p.x_stride[3] : 0) +
                          c0 + cv * 8;
    *reinterpret_cast<uint4*>(in_tile + pix * CPG + cv * 8) = load16_or_zero(src, inside);
  }

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[CPG / 16];
#pragma unroll
  for (int j = 0; j < CPG / 16; ++j) wmma::fill_fragment(acc[j], 0.f);

  // 2. Per tap: stage its weights, then CPG/16 x CPG/16 fragment products per warp.
  const scalar_t* w_group = w_t + g * 9 * CPG * CPG;  // [g][tap][ci][co]
#pragma unroll 1
  for (int tap = 0; tap < 9; ++tap) {
    __syncthreads();  // previous tap's weights are no longer read (and the input tile is in)
    const uint4* w_src = reinterpret_cast<const uint4*>(w_group + tap * CPG * CPG);
    for (int v = threadIdx.x; v < CPG * CPG / 8; v += kThreads) {
      reinterpret_cast<uint4*>(w_tap)[v] = w_src[v];
    }
    __syncthreads();
    const int kh = tap / 3, kw = tap % 3;
    // A: 16 pixels of this warp's output row, shifted by the tap, at a pixel stride of STRIDE.
    const scalar_t* a_base = in_tile + ((warp * STRIDE + kh) * Tile::kInW + kw) * CPG;
#pragma unroll
    for (int kc = 0; kc < CPG / 16; ++kc) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, scalar_t, wmma::row_major> a;
      wmma::load_matrix_sync(a, a_base + kc * 16, STRIDE * CPG);
#pragma unroll
      for (int j = 0; j < CPG / 16; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, scalar_t, wmma::row_major> b;
        wmma::load_matrix_sync(b, w_tap + kc * 16 * CPG + j * 16, CPG);
        wmma::mma_sync(acc[j], a, b, acc[j]);
      }
    }
  }

  // 3. Epilogue: fragments -> this warp's fp32 staging rows -> scale, shift, ReLU -> global.
  float* my_stage = stage + warp * kTileW * CPG;  // [16 pixels][CPG channels]
#pragma unroll
  for (int j = 0; j < CPG / 16; ++j) {
    wmma::store_matrix_sync(my_stage + j * 16, acc[j], CPG, wmma::mem_row_major);
  }
  __syncwarp();
  const int64_t oh = oh0 + warp;
  if (oh < p.H_out) {
    for (int e = lane; e < kTileW * CPG; e += 32) {
      const int px = e / CPG, ch = e % CPG;
      const int64_t ow = ow0 + px;
      if (ow >= p.W_out) continue;
      const int64_t co = c0 + ch;
      float v = my_stage[e] * p.scale[co] + p.shift[co];
      if (p.relu) v = relu_keep_nan(v);
      y[n * p.y_stride[0] + co * p.y_stride[1] + oh * p.y_stride[2] + ow * p.y_stride[3]] =
          Cvt::from_float(v);
    }
  }
#else
  __trap();  // built only for sm_80+; the launcher never selects this kernel below sm_80
#endif
}

template <typename scalar_t, int CPG, int STRIDE>
cudaError_t launch_tile(const GroupedConvParams& p, const void* w_t, cudaStream_t stream) {
  using Tile = WmmaTile<CPG, STRIDE>;
  auto kernel = grouped_conv_bn_relu_wmma_kernel<scalar_t, CPG, STRIDE>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(Tile::kSmemBytes));
  if (err != cudaSuccess) return err;
  const int64_t tiles_h = (p.H_out + kTileH - 1) / kTileH;
  const int64_t tiles_w = (p.W_out + kTileW - 1) / kTileW;
  const int64_t blocks_x = p.N * tiles_h * tiles_w;
  if (blocks_x > 0x7fffffffLL || p.groups > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned int>(blocks_x), static_cast<unsigned int>(p.groups));
  kernel<<<grid, kThreads, Tile::kSmemBytes, stream>>>(
      p, static_cast<const scalar_t*>(w_t), tiles_w, tiles_h * tiles_w);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_typed(const GroupedConvParams& p, int64_t cpg, const void* w_t,
                         cudaStream_t stream) {
  const bool s2 = p.stride_h == 2;
  switch (cpg) {
    case 16: return s2 ? launch_tile<scalar_t, 16, 2>(p, w_t, stream) : launch_tile<scalar_t, 16, 1>(p, w_t, stream);
    case 32: return s2 ? launch_tile<scalar_t, 32, 2>(p, w_t, stream) : launch_tile<scalar_t, 32, 1>(p, w_t, stream);
    case 64: return s2 ? launch_tile<scalar_t, 64, 2>(p, w_t, stream) : launch_tile<scalar_t, 64, 1>(p, w_t, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

bool grouped_conv_wmma_supports(const GroupedConvParams& p, DType dtype, int device_major) {
  const int64_t cpg_in = p.C_in / p.groups, cpg_out = p.C_out / p.groups;
  const bool stride_ok = (p.stride_h == 1 && p.stride_w == 1) || (p.stride_h == 2 && p.stride_w == 2);
  return device_major >= 8 && dtype != DType::kFloat32 && cpg_in == cpg_out &&
         (cpg_in == 16 || cpg_in == 32 || cpg_in == 64) && p.KH == 3 && p.KW == 3 && stride_ok &&
         p.pad_h == 1 && p.pad_w == 1 && p.dil_h == 1 && p.dil_w == 1 &&
         // channels_last input and output, channel-contiguous, 16-byte aligned rows
         p.x_stride[1] == 1 && p.x_stride[3] == p.C_in && p.x_stride[2] == p.W * p.C_in &&
         p.y_stride[1] == 1 && p.C_in % 8 == 0 &&
         reinterpret_cast<uintptr_t>(p.x) % 16 == 0;
}

cudaError_t launch_grouped_conv_bn_relu_wmma(const GroupedConvParams& p, DType dtype,
                                             const void* w_t, cudaStream_t stream) {
  if (p.N * p.C_out * p.H_out * p.W_out == 0) return cudaSuccess;
  const int64_t cpg = p.C_in / p.groups;
  switch (dtype) {
    case DType::kFloat16: return launch_typed<__half>(p, cpg, w_t, stream);
    case DType::kBFloat16: return launch_typed<__nv_bfloat16>(p, cpg, w_t, stream);
    case DType::kFloat32: break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace resnext_kernels
