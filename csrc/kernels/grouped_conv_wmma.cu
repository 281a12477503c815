// Tensor-core grouped 3x3 conv + folded BN + ReLU (stride 1 or 2, padding 1, dilation 1,
// C_in == C_out): an implicit GEMM per channel slab with WMMA fragments and fp32 accumulation.
// fp16/bf16 multiply as stored (16x16x16 fragments); fp32 multiplies as TF32 (16x16x8, inputs
// rounded with __float_to_tf32), which the planner picks only when TF32 is allowed.
//
// Channel slab: BC = 16, 32 or 64 consecutive channels that no group crosses. At 16, 32 or 64
// channels per group (cpg) a slab is one group. At cpg 1, 2, 4 or 8 a slab packs 16 / cpg groups:
// its per-tap weight matrix is block-diagonal (zeros between groups), built once per call by
// repack_weights_kernel, so the tensor cores do 16 / cpg times the useful FLOPs; the layers stay
// memory-bound (docs/KERNELS.md), so the packing costs bandwidth nothing.
//
// Block: one image n, one slab, an output tile of kTileH x kTileW pixels (one warp per output
// row, 16 pixels = one M fragment), all BC output channels (BC/16 N fragments).
//  1. The input tile with its halo is read from global memory once into shared memory laid out
//     [row][col][channel] in the storage dtype (16-byte loads when x is channels_last and
//     aligned, strided scalar
//     loads otherwise). For a tap (kh, kw) the A fragment of a warp is the 16 pixels of its row
//     shifted by the tap, at a row stride of STRIDE * BC elements.
//  2. Weights ([tap][ci][co] per slab) are staged in shared memory: all 9 taps at once for BC
//     <= 32, one tap at a time for BC 64 (73 KB would halve occupancy).
//  3. The epilogue goes through shared memory (fp32, aliasing the weight buffer) so that scale,
//     shift and ReLU are applied per channel and the output is written once: 16-byte stores
//     when y is channels_last and aligned, pixel-fastest scalar stores otherwise.
#include <mma.h>

#include <algorithm>

#include "kernels/dtype_traits.cuh"
#include "kernels/launch.cuh"
#include "kernels/params.h"

namespace resnext_kernels {
namespace {

constexpr int kTileH = 4;   // output rows per block (one warp each)
constexpr int kTileW = 16;  // output columns per block (the M fragment)
constexpr int kWarps = kTileH;
constexpr int kThreads = kWarps * 32;
constexpr int kRepackThreads = 256;

constexpr size_t round_up_128(size_t bytes) { return (bytes + 127) / 128 * 128; }

template <typename scalar_t, int BC, int STRIDE>
struct WmmaTile {
  static constexpr int kInH = (kTileH - 1) * STRIDE + 3;
  static constexpr int kInW = (kTileW - 1) * STRIDE + 3;
  static constexpr int kTapsPerStage = BC <= 32 ? 9 : 1;
  static constexpr int kVec = 16 / sizeof(scalar_t);  // elements per 16-byte load or store
  static constexpr size_t kInBytes = round_up_128(size_t{kInH} * kInW * BC * sizeof(scalar_t));
  static constexpr size_t kWBytes =
      round_up_128(size_t{kTapsPerStage} * BC * BC * sizeof(scalar_t));
  static constexpr size_t kStageBytes = size_t{kWarps} * kTileW * BC * sizeof(float);
  // The fp32 epilogue staging reuses the weight buffer once the last MMA has read it.
  static constexpr size_t kSmemBytes = kInBytes + std::max(kWBytes, kStageBytes);
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
// One MMA step per storage type: 16-bit types multiply as stored with K = 16; fp32 multiplies as
// TF32 with K = 8, each loaded fragment rounded to TF32 first (as cuDNN does with TF32 allowed).
template <typename scalar_t>
struct MmaStep {
  using Operand = scalar_t;
  static constexpr int kK = 16;
  template <typename Fragment>
  __device__ __forceinline__ static void round_inputs(Fragment&) {}
};
template <>
struct MmaStep<float> {
  using Operand = nvcuda::wmma::precision::tf32;
  static constexpr int kK = 8;
  template <typename Fragment>
  __device__ __forceinline__ static void round_inputs(Fragment& f) {
#pragma unroll
    for (int t = 0; t < f.num_elements; ++t) f.x[t] = nvcuda::wmma::__float_to_tf32(f.x[t]);
  }
};
#endif

// 16 bytes of zeros or of global memory.
__device__ __forceinline__ uint4 load16_or_zero(const void* ptr, bool valid) {
  return valid ? *static_cast<const uint4*>(ptr) : make_uint4(0, 0, 0, 0);
}

// w_t[slab][tap][ci][co] = w[slab*BC + co, (slab*BC + ci) % cpg, kh, kw] when input channel ci
// and output channel co of the slab are in the same group, else 0 (block-diagonal packing).
template <typename scalar_t, int BC>
__global__ void __launch_bounds__(kRepackThreads)
    repack_weights_kernel(GroupedConvParams p, scalar_t* __restrict__ w_t) {
  const scalar_t* __restrict__ w = static_cast<const scalar_t*>(p.w);
  const int64_t cpg = p.C_in / p.groups;
  const int64_t total = p.C_in * 9 * BC;  // (C / BC) slabs x 9 taps x BC x BC
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t co = i % BC, ci = (i / BC) % BC, tap = (i / (BC * BC)) % 9;
    const int64_t slab = i / (9 * BC * BC);
    const int64_t c_out = slab * BC + co, c_in = slab * BC + ci;
    scalar_t v = Convert<scalar_t>::from_float(0.f);
    if (c_in / cpg == c_out / cpg) {
      v = w[c_out * p.w_stride[0] + (c_in % cpg) * p.w_stride[1] + (tap / 3) * p.w_stride[2] +
            (tap % 3) * p.w_stride[3]];
    }
    w_t[i] = v;
  }
}

// The block's image and first output pixel. 32-bit arithmetic (the launcher keeps the grid under
// 2^31 blocks): a 64-bit division is a called subroutine, and values live across the call spill
// (it cost 8-16 bytes of spills on sm_80 before this).
struct BlockCoords {
  int64_t n, oh0, ow0;
};
__device__ __forceinline__ BlockCoords block_coords(int tiles_w, int tiles_per_image) {
  const unsigned int tile = blockIdx.x % static_cast<unsigned int>(tiles_per_image);
  return BlockCoords{blockIdx.x / static_cast<unsigned int>(tiles_per_image),
                     static_cast<int64_t>(tile / static_cast<unsigned int>(tiles_w)) * kTileH,
                     static_cast<int64_t>(tile % static_cast<unsigned int>(tiles_w)) * kTileW};
}

template <typename scalar_t, int BC, int STRIDE>
__global__ void __launch_bounds__(kThreads)
    grouped_conv_bn_relu_wmma_kernel(GroupedConvParams p,
                                     const scalar_t* __restrict__ w_t,  // [slab][tap][ci][co]
                                     int tiles_w,           // output tiles along W
                                     int tiles_per_image,   // tiles_w * tiles along H
                                     bool vector_loads,        // x: channels_last, 16 B aligned
                                     bool vector_stores) {     // y: channels_last, 16 B aligned
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  using Tile = WmmaTile<scalar_t, BC, STRIDE>;
  using Cvt = Convert<scalar_t>;
  using Step = MmaStep<scalar_t>;
  constexpr int kVec = Tile::kVec;
  unsigned char* smem = dynamic_shared_memory();
  scalar_t* in_tile = reinterpret_cast<scalar_t*>(smem);                  // [kInH][kInW][BC]
  scalar_t* w_stage = reinterpret_cast<scalar_t*>(smem + Tile::kInBytes);  // [taps][ci][co]
  float* stage = reinterpret_cast<float*>(smem + Tile::kInBytes);          // [warp][16][BC]

  const scalar_t* __restrict__ x = static_cast<const scalar_t*>(p.x);
  scalar_t* __restrict__ y = static_cast<scalar_t*>(p.y);
  const BlockCoords block = block_coords(tiles_w, tiles_per_image);
  const int64_t n = block.n, oh0 = block.oh0, ow0 = block.ow0;
  const int64_t slab = blockIdx.y;
  const int64_t c0 = slab * BC;  // first input (= output) channel of the slab
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const scalar_t* x_n = x + n * p.x_stride[0];

  // 1. The input tile and its halo, once; zeros for padding.
  const int64_t ih0 = oh0 * STRIDE - p.pad_h, iw0 = ow0 * STRIDE - p.pad_w;
  constexpr int kInPixels = Tile::kInH * Tile::kInW;
  if (vector_loads) {
    constexpr int kVecPerPixel = BC / kVec;  // 16-byte loads per pixel
    for (int v = threadIdx.x; v < kInPixels * kVecPerPixel; v += kThreads) {
      const int pix = v / kVecPerPixel, cv = v % kVecPerPixel;
      const int64_t ih = ih0 + pix / Tile::kInW, iw = iw0 + pix % Tile::kInW;
      const bool inside = ih >= 0 && ih < p.H && iw >= 0 && iw < p.W;
      const scalar_t* src =
          x_n + (inside ? ih * p.x_stride[2] + iw * p.x_stride[3] : 0) + c0 + cv * kVec;
      *reinterpret_cast<uint4*>(in_tile + pix * BC + cv * kVec) = load16_or_zero(src, inside);
    }
  } else {
    // Pixel-fastest, so neighbouring threads read neighbouring columns of an NCHW row.
    for (int v = threadIdx.x; v < kInPixels * BC; v += kThreads) {
      const int pix = v % kInPixels, ch = v / kInPixels;
      const int64_t ih = ih0 + pix / Tile::kInW, iw = iw0 + pix % Tile::kInW;
      const bool inside = ih >= 0 && ih < p.H && iw >= 0 && iw < p.W;
      in_tile[pix * BC + ch] =
          inside ? x_n[(c0 + ch) * p.x_stride[1] + ih * p.x_stride[2] + iw * p.x_stride[3]]
                 : Cvt::from_float(0.f);
    }
  }

  wmma::fragment<wmma::accumulator, 16, 16, Step::kK, float> acc[BC / 16];
#pragma unroll
  for (int j = 0; j < BC / 16; ++j) wmma::fill_fragment(acc[j], 0.f);

  // 2. Per weight stage (9 taps, or 1): stage its weights, then BC/16 x BC/16 products per tap.
  const scalar_t* w_slab = w_t + slab * 9 * BC * BC;
#pragma unroll 1
  for (int tap0 = 0; tap0 < 9; tap0 += Tile::kTapsPerStage) {
    __syncthreads();  // the previous stage's weights are no longer read (and the tile is in)
    const uint4* w_src = reinterpret_cast<const uint4*>(w_slab + tap0 * BC * BC);
    for (int v = threadIdx.x; v < Tile::kTapsPerStage * BC * BC / kVec; v += kThreads) {
      reinterpret_cast<uint4*>(w_stage)[v] = w_src[v];
    }
    __syncthreads();
#pragma unroll 1
    for (int t = 0; t < Tile::kTapsPerStage; ++t) {
      const int kh = (tap0 + t) / 3, kw = (tap0 + t) % 3;
      const scalar_t* w_tap = w_stage + t * BC * BC;
      // A: 16 pixels of this warp's output row, shifted by the tap, at a pixel stride of STRIDE.
      const scalar_t* a_base = in_tile + ((warp * STRIDE + kh) * Tile::kInW + kw) * BC;
#pragma unroll
      for (int kc = 0; kc < BC / Step::kK; ++kc) {
        wmma::fragment<wmma::matrix_a, 16, 16, Step::kK, typename Step::Operand, wmma::row_major> a;
        wmma::load_matrix_sync(a, a_base + kc * Step::kK, STRIDE * BC);
        Step::round_inputs(a);
#pragma unroll
        for (int j = 0; j < BC / 16; ++j) {
          wmma::fragment<wmma::matrix_b, 16, 16, Step::kK, typename Step::Operand, wmma::row_major> b;
          wmma::load_matrix_sync(b, w_tap + kc * Step::kK * BC + j * 16, BC);
          Step::round_inputs(b);
          wmma::mma_sync(acc[j], a, b, acc[j]);
        }
      }
    }
  }

  // 3. Epilogue: fragments -> this warp's fp32 staging rows -> scale, shift, ReLU -> global.
  __syncthreads();  // every warp is done with the weights the staging area aliases
  float* my_stage = stage + warp * kTileW * BC;  // [16 pixels][BC channels]
#pragma unroll
  for (int j = 0; j < BC / 16; ++j) {
    wmma::store_matrix_sync(my_stage + j * 16, acc[j], BC, wmma::mem_row_major);
  }
  __syncwarp();
  const int64_t oh = oh0 + warp;
  if (oh >= p.H_out) return;
  scalar_t* y_row = y + n * p.y_stride[0] + oh * p.y_stride[2];
  if (vector_stores) {
    constexpr int kVecPerPixel = BC / kVec;
    for (int q = lane; q < kTileW * kVecPerPixel; q += 32) {
      const int px = q / kVecPerPixel, c8 = (q % kVecPerPixel) * kVec;
      const int64_t ow = ow0 + px;
      if (ow >= p.W_out) continue;
      alignas(16) scalar_t out[kVec];
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        float v = my_stage[px * BC + c8 + k] * p.scale[c0 + c8 + k] + p.shift[c0 + c8 + k];
        if (p.relu) v = relu_keep_nan(v);
        out[k] = Cvt::from_float(v);
      }
      *reinterpret_cast<uint4*>(y_row + ow * p.y_stride[3] + c0 + c8) =
          *reinterpret_cast<const uint4*>(out);
    }
  } else {
    // Pixel-fastest, so neighbouring threads write neighbouring columns of an NCHW row.
    for (int e = lane; e < kTileW * BC; e += 32) {
      const int px = e % kTileW, ch = e / kTileW;
      const int64_t ow = ow0 + px;
      if (ow >= p.W_out) continue;
      float v = my_stage[px * BC + ch] * p.scale[c0 + ch] + p.shift[c0 + ch];
      if (p.relu) v = relu_keep_nan(v);
      y_row[(c0 + ch) * p.y_stride[1] + ow * p.y_stride[3]] = Cvt::from_float(v);
    }
  }
#else
  __trap();  // built only for sm_80+; the launcher never selects this kernel below sm_80
#endif
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Channel-contiguous with every pixel's channels starting on a 16-byte boundary.
bool channels_last_aligned16(const void* ptr, const int64_t* stride, int64_t vec) {
  return aligned16(ptr) && stride[1] == 1 && stride[0] % vec == 0 && stride[2] % vec == 0 &&
         stride[3] % vec == 0;
}

template <typename scalar_t, int BC, int STRIDE>
cudaError_t launch_tile(const GroupedConvParams& p, void* workspace, cudaStream_t stream) {
  using Tile = WmmaTile<scalar_t, BC, STRIDE>;
  scalar_t* w_t = static_cast<scalar_t*>(workspace);
  cudaError_t err = launch_kernel(repack_weights_kernel<scalar_t, BC>,
                                  grid_stride_grid(p.C_in * 9 * BC, kRepackThreads, 4096),
                                  dim3(kRepackThreads), 0, stream, p, w_t);
  if (err != cudaSuccess) return err;

  auto kernel = grouped_conv_bn_relu_wmma_kernel<scalar_t, BC, STRIDE>;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(Tile::kSmemBytes));
  if (err != cudaSuccess) return err;
  const int64_t tiles_h = (p.H_out + kTileH - 1) / kTileH;
  const int64_t tiles_w = (p.W_out + kTileW - 1) / kTileW;
  const int64_t blocks_x = p.N * tiles_h * tiles_w;
  const int64_t slabs = p.C_in / BC;
  if (blocks_x > 0x7fffffffLL || slabs > 65535) return cudaErrorInvalidConfiguration;
  const bool vector_loads = channels_last_aligned16(p.x, p.x_stride, Tile::kVec);
  const bool vector_stores = channels_last_aligned16(p.y, p.y_stride, Tile::kVec);
  return launch_kernel(kernel, dim3(static_cast<unsigned int>(blocks_x),
                                    static_cast<unsigned int>(slabs)),
                       dim3(kThreads), Tile::kSmemBytes, stream, p,
                       static_cast<const scalar_t*>(w_t), static_cast<int>(tiles_w),
                       static_cast<int>(tiles_h * tiles_w),
                       vector_loads, vector_stores);
}

template <typename scalar_t>
cudaError_t launch_typed(const GroupedConvParams& p, int block_channels, void* workspace,
                         cudaStream_t stream) {
  const bool s2 = p.stride_h == 2;
  switch (block_channels) {
    case 16: return s2 ? launch_tile<scalar_t, 16, 2>(p, workspace, stream)
                       : launch_tile<scalar_t, 16, 1>(p, workspace, stream);
    case 32: return s2 ? launch_tile<scalar_t, 32, 2>(p, workspace, stream)
                       : launch_tile<scalar_t, 32, 1>(p, workspace, stream);
    case 64: return s2 ? launch_tile<scalar_t, 64, 2>(p, workspace, stream)
                       : launch_tile<scalar_t, 64, 1>(p, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

int grouped_conv_wmma_block_channels(const GroupedConvParams& p, DType dtype, int device_major,
                                     bool allow_tf32) {
  if (device_major < 8 || (dtype == DType::kFloat32 && !allow_tf32)) return 0;
  if (p.groups <= 0 || p.C_in != p.C_out || p.C_in % p.groups != 0) return 0;
  const bool stride_ok =
      (p.stride_h == 1 && p.stride_w == 1) || (p.stride_h == 2 && p.stride_w == 2);
  if (!(p.KH == 3 && p.KW == 3 && stride_ok && p.pad_h == 1 && p.pad_w == 1 && p.dil_h == 1 &&
        p.dil_w == 1)) {
    return 0;
  }
  const int64_t cpg = p.C_in / p.groups;
  int64_t bc = 0;
  if (cpg == 16 || cpg == 32 || cpg == 64) bc = cpg;                  // one group per slab
  if (cpg == 1 || cpg == 2 || cpg == 4 || cpg == 8) bc = 16;          // 16 / cpg groups packed
  if (bc == 0 || p.C_in % bc != 0) return 0;
  return static_cast<int>(bc);
}

int64_t grouped_conv_wmma_workspace_bytes(const GroupedConvParams& p, DType dtype,
                                          int block_channels) {
  const int64_t element_bytes = dtype == DType::kFloat32 ? 4 : 2;
  return p.C_in * 9 * block_channels * element_bytes;  // (C / BC) slabs x 9 taps x BC x BC
}

cudaError_t launch_grouped_conv_bn_relu_wmma(const GroupedConvParams& p, DType dtype,
                                             int block_channels, void* workspace,
                                             cudaStream_t stream) {
  if (p.N * p.C_out * p.H_out * p.W_out == 0) return cudaSuccess;
  if (!aligned16(workspace)) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::kFloat16: return launch_typed<__half>(p, block_channels, workspace, stream);
    case DType::kBFloat16:
      return launch_typed<__nv_bfloat16>(p, block_channels, workspace, stream);
    case DType::kFloat32: return launch_typed<float>(p, block_channels, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace resnext_kernels
