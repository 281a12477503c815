// Squeeze-and-excitation in four deterministic launches (see params.h for the contract).
#include <cstring>

#include "kernels/dtype_traits.cuh"
#include "kernels/indexing.cuh"
#include "kernels/launch.cuh"
#include "kernels/params.h"
#include "kernels/ptx_sm80.cuh"
#include "kernels/vector_access.cuh"


namespace resnext_kernels {
namespace {

constexpr int kSqueezeChannels = 32;  // channels per squeeze block (blockDim.x in NHWC mode)
constexpr int kSqueezeRows = 8;       // blockDim.y
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

// ---- 16-byte channel chunks (the vector paths) -------------------------------------------
// A channels_last tensor whose pixels are evenly spaced (the pixel p of image n starts at
// n * stride_n + p * stride_w) and whose rows of C channels split into 16-byte-aligned chunks
// of kVec channels (8 fp16/bf16, 4 fp32) is read and written a chunk per thread and access:
// a warp's request covers 512 contiguous bytes (16 sectors, the minimum) instead of 64 (2)
// (Pack, load_pack, store_pack: kernels/vector_access.cuh).

// Whether a tensor (strides in elements of `elem_bytes`) takes the chunked path.
inline bool chunked_layout(const void* ptr, const int64_t* stride, int64_t C, int64_t H,
                           int64_t W, int64_t elem_bytes) {
  const int64_t vec = 16 / elem_bytes;
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && stride[1] == 1 && C % vec == 0 &&
         stride[3] % vec == 0 && stride[0] % vec == 0 && (H == 1 || stride[2] == W * stride[3]);
}

// The chunked paths need u, the residual (if any) and out in that layout, and at most 65535
// images (the scale's grid.z).
inline bool chunked_path(const SqueezeExciteParams& p, int64_t elem_bytes) {
  return p.channels_last && p.N <= 65535 &&
         chunked_layout(p.u, p.u_stride, p.C, p.H, p.W, elem_bytes) &&
         chunked_layout(p.out, p.out_stride, p.C, p.H, p.W, elem_bytes) &&
         (!p.residual ||
          chunked_layout(p.residual, p.residual_stride, p.C, p.H, p.W, elem_bytes));
}

// Chunked squeeze: a block is kSqueezeChunks chunks (64 fp16 / 32 fp32 channels) x
// kSqueezeChunkRows pixel rows of one image; each thread sums its chunk over every 32nd pixel
// (four loads in flight), then a fixed-order sum over the rows in shared memory.
constexpr int kSqueezeChunks = 8;
constexpr int kSqueezeChunkRows = 32;

template <typename scalar_t>
__global__ void __launch_bounds__(kSqueezeChunks * kSqueezeChunkRows)
    se_squeeze_chunked_kernel(SqueezeExciteParams p) {
  using Cvt = Convert<scalar_t>;
  constexpr int kVec = Pack<scalar_t>::kSize;
  constexpr int kTileChannels = kSqueezeChunks * kVec;
  __shared__ float partial[kSqueezeChunkRows][kTileChannels];
  const int chunk = threadIdx.x % kSqueezeChunks, row = threadIdx.x / kSqueezeChunks;
  const int64_t n = blockIdx.x;
  const int64_t tile_c0 = static_cast<int64_t>(blockIdx.y) * kTileChannels;
  const int64_t c0 = tile_c0 + chunk * kVec;
  const int64_t HW = p.H * p.W;
  float acc[kVec];
#pragma unroll
  for (int i = 0; i < kVec; ++i) acc[i] = 0.f;
  if (c0 < p.C) {
    const scalar_t* u = static_cast<const scalar_t*>(p.u) + n * p.u_stride[0] + c0;
    const int64_t pixel_stride = p.u_stride[3];
    int64_t pix = row;
    // four loads issued before any is summed (the unrolled loop alone kept two in flight)
    for (; pix + 3 * kSqueezeChunkRows < HW; pix += 4 * kSqueezeChunkRows) {
      Pack<scalar_t> x[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) x[j] = load_pack(u + (pix + j * kSqueezeChunkRows) * pixel_stride);
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int i = 0; i < kVec; ++i) acc[i] += Cvt::to_float(x[j].v[i]);
    }
    for (; pix < HW; pix += kSqueezeChunkRows) {
      const Pack<scalar_t> x = load_pack(u + pix * pixel_stride);
#pragma unroll
      for (int i = 0; i < kVec; ++i) acc[i] += Cvt::to_float(x.v[i]);
    }
  }
#pragma unroll
  for (int i = 0; i < kVec; ++i) partial[row][chunk * kVec + i] = acc[i];
  __syncthreads();
  const int64_t c = tile_c0 + threadIdx.x;
  if (threadIdx.x < kTileChannels && c < p.C) {
    float total = 0.f;
#pragma unroll 8
    for (int r = 0; r < kSqueezeChunkRows; ++r) total += partial[r][threadIdx.x];
    p.pooled[n * p.C + c] = total * (1.f / static_cast<float>(HW));
  }
}

// Chunked scale: a block covers a tile of kScaleThreads chunks (all of a pixel's chunks when
// C / kVec <= kScaleThreads, else grid.y tiles them) x `rows` pixels at a time; each thread
// keeps its chunk's gates in registers and handles kScaleChunkSteps pixels of a tile of
// rows x kScaleChunkSteps pixels. Grid: (pixel tiles, channel tiles, images), so no index is
// divided (a 64-bit division is a call, whose register convention made ptxas spill).
constexpr int kScaleChunkSteps = 4;

struct ScaleChunkGeometry {
  int64_t chunks;           // C / kVec: 16-byte chunks per pixel
  int64_t tile_chunks;      // chunks per block tile: min(chunks, kScaleThreads)
  int64_t rows;             // pixels a block covers at once: kScaleThreads / tile_chunks
  int64_t pixels_per_tile;  // rows * kScaleChunkSteps
  int64_t tiles_per_image;
};

__host__ __device__ __forceinline__ ScaleChunkGeometry scale_chunk_geometry(
    const SqueezeExciteParams& p, int vec) {
  ScaleChunkGeometry g;
  g.chunks = p.C / vec;
  g.tile_chunks = g.chunks < kScaleThreads ? g.chunks : kScaleThreads;
  g.rows = kScaleThreads / g.tile_chunks;
  g.pixels_per_tile = g.rows * kScaleChunkSteps;
  g.tiles_per_image = (p.H * p.W + g.pixels_per_tile - 1) / g.pixels_per_tile;
  return g;
}

// act(x * gate + residual) on one chunk, in fp32 (as scale_element does per element).
template <typename scalar_t>
__device__ __forceinline__ Pack<scalar_t> scale_pack(const Pack<scalar_t>& x,
                                                      const Pack<scalar_t>& r, const float* gate,
                                                      bool has_residual, bool relu) {
  using Cvt = Convert<scalar_t>;
  Pack<scalar_t> y;
#pragma unroll
  for (int i = 0; i < Pack<scalar_t>::kSize; ++i) {
    float v = Cvt::to_float(x.v[i]) * gate[i];
    if (has_residual) v += Cvt::to_float(r.v[i]);
    if (relu) v = relu_keep_nan(v);
    y.v[i] = Cvt::from_float(v);
  }
  return y;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kScaleThreads) se_scale_chunked_kernel(SqueezeExciteParams p) {
  constexpr int kVec = Pack<scalar_t>::kSize;
  const ScaleChunkGeometry g = scale_chunk_geometry(p, kVec);
  const int tile_chunks = static_cast<int>(g.tile_chunks);  // <= kScaleThreads: 32-bit math
  const int row = static_cast<int>(threadIdx.x) / tile_chunks;
  const int64_t chunk = static_cast<int64_t>(blockIdx.y) * tile_chunks +
                        static_cast<int>(threadIdx.x) % tile_chunks;
  if (row >= g.rows || chunk >= g.chunks) return;  // no barrier below
  const int64_t c0 = chunk * kVec;
  const int64_t HW = p.H * p.W;
  const int64_t n = blockIdx.z;
  const int64_t pix0 = static_cast<int64_t>(blockIdx.x) * g.pixels_per_tile + row;
  const scalar_t* __restrict__ u = static_cast<const scalar_t*>(p.u) + c0 + n * p.u_stride[0];
  const scalar_t* __restrict__ res = static_cast<const scalar_t*>(p.residual);  // or nullptr
  if (res) res += c0 + n * p.residual_stride[0];
  scalar_t* __restrict__ out = static_cast<scalar_t*>(p.out) + c0 + n * p.out_stride[0];
  float gate[kVec];  // 16-byte loads: n * C + c0 is a multiple of kVec >= 4
#pragma unroll
  for (int i = 0; i < kVec; i += 4) {
    const uint4 g4 = ptx::ld_global_nc_16(p.gate + n * p.C + c0 + i);
    float g4f[4];
    memcpy(g4f, &g4, sizeof g4f);
#pragma unroll
    for (int j = 0; j < 4; ++j) gate[i + j] = g4f[j];
  }
  if (pix0 + (kScaleChunkSteps - 1) * g.rows < HW) {  // a whole tile: every load in flight
    Pack<scalar_t> x[kScaleChunkSteps], r[kScaleChunkSteps] = {};
#pragma unroll
    for (int step = 0; step < kScaleChunkSteps; ++step) {
      const int64_t pix = pix0 + step * g.rows;
      x[step] = load_pack(u + pix * p.u_stride[3]);
      if (res) r[step] = load_pack(res + pix * p.residual_stride[3]);
    }
#pragma unroll
    for (int step = 0; step < kScaleChunkSteps; ++step) {
      const int64_t pix = pix0 + step * g.rows;
      store_pack(out + pix * p.out_stride[3],
                 scale_pack(x[step], r[step], gate, res != nullptr, p.relu));
    }
  } else {  // the image's last tile
    for (int64_t pix = pix0; pix < HW; pix += g.rows) {
      const Pack<scalar_t> x = load_pack(u + pix * p.u_stride[3]);
      Pack<scalar_t> r = {};
      if (res) r = load_pack(res + pix * p.residual_stride[3]);
      store_pack(out + pix * p.out_stride[3], scale_pack(x, r, gate, res != nullptr, p.relu));
    }
  }
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

// The excite step is two launches of one batched matrix-vector kernel over row-major
// weights W [J, K]:
//   kGate false: the hidden layer's partial sums, W1 [R, C] (J = R, K = C), the reduction over
//                C split in kSqueezeExciteSplitK-channel parts (grid.z):
//                  hidden[s, n, r] = sum over c in split s of W1[r, c] pooled[n, c]
//   kGate true:  gate[n, c] = sigmoid(sum_r W2[c, r] x[n, r] + b2[c]), W2 [C, R] (J = C,
//                K = R), x[n, r] = relu(sum_s hidden[s, n, r] + b1[r]) in a fixed order
// (a bool, not an enum, so the kernels' names read se_fc_kernel<false>/<true> in profiles).
// A block owns kFcImages images and kFcRowsPerBlock output rows; each warp kFcRowsPerWarp rows,
// its lanes striding along k, so a warp reads whole 128-byte lines of each weight row (W2 too:
// its rows are the R-long rows of channel c) and every weight element once for kFcImages
// images. CUDA v1's one block per image read both matrices once per image (2 MB per image at
// seresnext50's last stage) on N blocks; here the weights cross from L2 ceil(N / kFcImages)
// times in all, and the hidden launch runs ceil(N / 8) x ceil(R / 32) x ceil(C / 512) blocks.
constexpr int kFcImages = 8;
constexpr int kFcRowsPerWarp = 4;
constexpr int kFcThreads = 256;
constexpr int kFcRowsPerBlock = kFcRowsPerWarp * kFcThreads / 32;

struct FcOperands {
  const float* weight;  // [J, K] row-major
  const float* bias;    // [J] or nullptr (the gate launch: b2)
  const float* in;      // [in_splits, N, K]: summed over the splits
  const float* in_bias; // [K] or nullptr, added to the summed input (the gate launch: b1)
  float* out;           // [splits, N, J]: one slice per split of K (grid.z)
  int64_t J, K, in_splits, k_split;
};

template <bool kGate>
__host__ __device__ __forceinline__ FcOperands fc_operands(const SqueezeExciteParams& p) {
  const int64_t splits = squeeze_excite_hidden_splits(p.C);
  if (!kGate) return {p.w1, nullptr, p.pooled, nullptr, p.hidden, p.R, p.C, 1,
                      kSqueezeExciteSplitK};
  return {p.w2, p.b2, p.hidden, p.b1, p.gate, p.C, p.R, splits, p.R};
}

template <bool kGate>
__global__ void __launch_bounds__(kFcThreads) se_fc_kernel(SqueezeExciteParams p) {
  const FcOperands f = fc_operands<kGate>(p);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kFcImages;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * kFcRowsPerBlock + warp * kFcRowsPerWarp;
  if (j0 >= f.J) return;  // whole warps only: no barrier below
  const int64_t images = p.N - n0 < kFcImages ? p.N - n0 : kFcImages;
  const int64_t k_begin = static_cast<int64_t>(blockIdx.z) * f.k_split;
  const int64_t k_end = k_begin + f.k_split < f.K ? k_begin + f.k_split : f.K;
  float acc[kFcRowsPerWarp][kFcImages];
#pragma unroll
  for (int i = 0; i < kFcRowsPerWarp; ++i)
#pragma unroll
    for (int m = 0; m < kFcImages; ++m) acc[i][m] = 0.f;
  for (int64_t k = k_begin + lane; k < k_end; k += 32) {
    float w[kFcRowsPerWarp];
#pragma unroll
    for (int i = 0; i < kFcRowsPerWarp; ++i)  // rows past J: 0 (their sums are never stored)
      w[i] = j0 + i < f.J ? f.weight[(j0 + i) * f.K + k] : 0.f;
    const float in_bias = f.in_bias ? f.in_bias[k] : 0.f;
#pragma unroll
    for (int m = 0; m < kFcImages; ++m) {
      float x = 0.f;
      if (m < images) {
        for (int64_t s = 0; s < f.in_splits; ++s) x += f.in[(s * p.N + n0 + m) * f.K + k];
        if (kGate) x = relu_keep_nan(x + in_bias);  // the hidden layer, as torch.relu
      }
#pragma unroll
      for (int i = 0; i < kFcRowsPerWarp; ++i) acc[i][m] += w[i] * x;
    }
  }
  float* out = f.out + static_cast<int64_t>(blockIdx.z) * p.N * f.J;
#pragma unroll
  for (int i = 0; i < kFcRowsPerWarp; ++i) {
#pragma unroll
    for (int m = 0; m < kFcImages; ++m) {
      const float total = warp_sum(acc[i][m]);
      if (lane != 0 || m >= images || j0 + i >= f.J) continue;
      if (kGate) {
        const float a = total + (f.bias ? f.bias[j0 + i] : 0.f);
        out[(n0 + m) * f.J + j0 + i] = 1.f / (1.f + __expf(-a));
      } else {
        out[(n0 + m) * f.J + j0 + i] = total;
      }
    }
  }
}

template <bool kGate>
cudaError_t launch_fc(const SqueezeExciteParams& p, cudaStream_t stream) {
  const FcOperands f = fc_operands<kGate>(p);
  const dim3 grid(static_cast<unsigned int>((p.N + kFcImages - 1) / kFcImages),
                  static_cast<unsigned int>((f.J + kFcRowsPerBlock - 1) / kFcRowsPerBlock),
                  static_cast<unsigned int>((f.K + f.k_split - 1) / f.k_split));
  return launch_kernel(se_fc_kernel<kGate>, grid, dim3(kFcThreads), 0, stream, p);
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
  // grid.y limits (the excite's ceil(C / 32) is the squeeze's bound again)
  if (p.C > kSqueezeExciteMaxChannels || p.R > kSqueezeExciteMaxChannels) {
    return cudaErrorInvalidValue;
  }
  if (p.N > 0x7fffffffLL) return cudaErrorInvalidValue;

  const bool chunked = chunked_path(p, sizeof(scalar_t));
  constexpr int kVec = Pack<scalar_t>::kSize;
  cudaError_t err;
  if (chunked) {
    const int64_t tile_channels = kSqueezeChunks * kVec;
    const dim3 grid(static_cast<unsigned int>(p.N),
                    static_cast<unsigned int>((p.C + tile_channels - 1) / tile_channels));
    err = launch_kernel(se_squeeze_chunked_kernel<scalar_t>, grid,
                        dim3(kSqueezeChunks * kSqueezeChunkRows), 0, stream, p);
  } else {
    const dim3 grid(static_cast<unsigned int>(p.N),
                    static_cast<unsigned int>((p.C + kSqueezeChannels - 1) / kSqueezeChannels));
    err = launch_kernel(se_squeeze_kernel<scalar_t>, grid, dim3(kSqueezeChannels, kSqueezeRows),
                        0, stream, p);
  }
  if (err != cudaSuccess) return err;

  err = launch_fc</*kGate=*/false>(p, stream);  // the hidden layer's partial sums
  if (err != cudaSuccess) return err;
  err = launch_fc</*kGate=*/true>(p, stream);
  if (err != cudaSuccess) return err;

  if (chunked) {
    const ScaleChunkGeometry g = scale_chunk_geometry(p, kVec);
    const dim3 grid(static_cast<unsigned int>(g.tiles_per_image),
                    static_cast<unsigned int>((g.chunks + g.tile_chunks - 1) / g.tile_chunks),
                    static_cast<unsigned int>(p.N));
    return launch_kernel(se_scale_chunked_kernel<scalar_t>, grid, dim3(kScaleThreads), 0, stream,
                         p);
  }
  const int64_t tiles = p.N * scale_tiles_per_image(p);
  const int64_t channel_tiles = p.channels_last ? (p.C + kScaleThreads - 1) / kScaleThreads
                                                : (p.C + kScaleChannels - 1) / kScaleChannels;
  const dim3 scale_grid(static_cast<unsigned int>(std::min<int64_t>(tiles, int64_t{1} << 20)),
                        static_cast<unsigned int>(channel_tiles));
  return launch_kernel(se_scale_kernel<scalar_t>, scale_grid, dim3(kScaleThreads), 0, stream, p);
}

}  // namespace

bool squeeze_excite_chunked(const SqueezeExciteParams& p, DType dtype) {
  return chunked_path(p, dtype == DType::kFloat32 ? 4 : 2);
}

cudaError_t launch_squeeze_excite(const SqueezeExciteParams& p, DType dtype, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return launch_typed<decltype(tag)>(p, stream); });
}

}  // namespace resnext_kernels
