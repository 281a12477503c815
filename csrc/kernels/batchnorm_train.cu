// Train-mode BatchNorm around the conv (issue 16, CUDA v1): the batch statistics of the conv's
// output z, the normalize + ReLU + mask, the BN backward's sums and grad_z's coefficients, and
// grad_z. The formulas are resnext_kernels/backends/batchnorm_train.py's (the torch-op version
// the tests compare with); params.h (BatchNormTrainParams) says what each launch reads and
// writes.
//
// Work unit: a thread owns 8 pixels (flat (n, h, w) order, one ReLU-mask byte per channel) x 8
// channels (one 16-byte fp16/bf16 vector); a CTA of 256 threads a tile of 256 pixels x 64
// channels, its threads 8 channel chunks fastest, then 32 runs of pixels. How a thread moves its
// 64 values depends on the operand's strides (Access, chosen per operand at launch):
//   kChannelVectors  channels contiguous (channels_last): one vector per pixel; a warp's request
//                    is 4 pixels x 64 channels, 4 whole 128-byte lines at fp16
//   kPixelVectors    an image's pixels contiguous (NCHW, H * W a multiple of 8): one vector
//                    per channel plane; a warp's request is 8 planes x 32 pixels, 64 bytes each
//   kScalar          anything else (views, odd sizes): an element per access, through strides
// The mask's 8 bytes of a thread (8 channels of one 8-pixel row) are one 8-byte access where C
// is a multiple of 8.
//
// Sums (statistics: Welford's (count, mean, M2); backward: two plain sums) are fixed-order:
// each thread's 8 pixels, then the tile's 32 runs in a fixed tree (8 runs in order per group,
// then the 4 groups in order), then the tiles' partials by a fixed range per block, level after
// level (reduce_partials). No atomics: the bits are the same from run to run.
#include <cstring>

#include "kernels/dtype_traits.cuh"
#include "kernels/launch.cuh"
#include "kernels/params.h"
#include "kernels/vector_access.cuh"

namespace resnext_kernels {
namespace {

constexpr int kRun = 8;             // pixels per thread: one mask byte per channel
constexpr int kChunk = 8;           // channels per thread: one 16-byte fp16/bf16 vector
constexpr int kChunksPerTile = 8;
constexpr int kRunsPerTile = 32;
constexpr int kThreads = kChunksPerTile * kRunsPerTile;
constexpr int kTileChannels = kChunk * kChunksPerTile;  // 64
// Registers (ptxas, sm_90): the kernels that hold two operands' blocks (128 fp32 values: the
// backward sums, grad_z) take 168-218, one CTA per SM; capped to 128 for two they spilled. One
// CTA of grad_z still has 64 KB of loads in flight per SM, more than the bandwidth-latency
// product asks of an SM (about 3.35 TB/s x 1 us / 132 SMs = 25 KB on an H100).
constexpr int kRunsPerGroup = 8;    // the tile's runs merged in order in groups of 8, then the 4
constexpr int kGroups = kRunsPerTile / kRunsPerGroup;
static_assert(kRun * kRunsPerTile == kBatchNormTrainTilePixels, "a tile is 32 runs of 8 pixels");
// Shared rows of the tile's per-run results: column e * 8 + chunk holds channel chunk * 8 + e,
// and rows are padded by 8 floats, so that the 32 lanes of a warp (4 runs x 8 chunks) store one
// e each in 32 different banks.
constexpr int kSharedRow = kTileChannels + 8;

// The partials' reduction: a block merges up to kReduceRowsInOne rows of 32 channels, each of
// its 8 lanes per channel a chain of at most 8 dependent merges; more rows go kReduceRowsInOne
// to a block, and the blocks' results to the next level (resnext50 layer1, batch 128: 1568
// rows, 25 blocks per 32 channels, then one). (With 1024 rows in one block, a review counted
// up to 128 dependent load-merge steps per lane on 8 CTAs: latency-bound.)
constexpr int kReduceChannels = 32;
constexpr int kReduceLanes = 8;
constexpr int kReduceThreads = kReduceChannels * kReduceLanes;
constexpr int64_t kReduceRowsInOne = 64;
constexpr int kCoefficientThreads = 256;

enum class Access : int { kScalar = 0, kChannelVectors = 1, kPixelVectors = 2 };

// ------------------------------------------------------------------------------ host: access
bool strides_multiple_of_8(int64_t size, int64_t stride) { return size == 1 || stride % 8 == 0; }

Access access_of(const void* data, const int64_t* s, int64_t N, int64_t C, int64_t H,
                 int64_t W) {
  // (8-element offsets are 16 bytes at 2 bytes, 32 at fp32: two 16-byte vectors)
  if (reinterpret_cast<uintptr_t>(data) % 16 != 0) return Access::kScalar;
  const bool whole_pixels = strides_multiple_of_8(N, s[0]) && strides_multiple_of_8(H, s[2]) &&
                            strides_multiple_of_8(W, s[3]);
  if (s[1] == 1 && C % kChunk == 0 && whole_pixels) return Access::kChannelVectors;
  const bool rows_contiguous = (W == 1 || s[3] == 1) && (H == 1 || s[2] == W);
  if (rows_contiguous && (H * W) % kRun == 0 && strides_multiple_of_8(N, s[0]) &&
      strides_multiple_of_8(C, s[1])) {
    return Access::kPixelVectors;
  }
  return Access::kScalar;
}

// ------------------------------------------------------------------------------ device: blocks
template <typename T>
struct Operand {
  T* data;
  int64_t s[4];  // (n, c, h, w) element strides
  Access access;
};

template <typename T>
Operand<T> operand(const void* data, const int64_t* stride, const BatchNormTrainParams& p) {
  Operand<T> t{static_cast<T*>(const_cast<void*>(data)), {}, Access::kScalar};
  for (int i = 0; i < 4; ++i) t.s[i] = stride[i];
  t.access = access_of(data, stride, p.N, p.C, p.H, p.W);
  return t;
}

// A thread's 8 x 8 block: pixels m .. m + pixels - 1, channels c .. c + channels - 1 (pixels or
// channels 0 for a thread past the tensor's end); (n, h, w) of pixel m.
struct Block {
  int64_t m, c, n, h, w;
  int pixels, channels;
};

__device__ __forceinline__ int clamp_to_8(int64_t v) {
  return static_cast<int>(v < 0 ? 0 : (v > 8 ? 8 : v));
}

__device__ __forceinline__ Block thread_block(const BatchNormTrainParams& p) {
  const int chunk = threadIdx.x % kChunksPerTile, run = threadIdx.x / kChunksPerTile;
  const int64_t M = p.N * p.H * p.W, HW = p.H * p.W;
  Block b;
  b.m = static_cast<int64_t>(blockIdx.x) * kBatchNormTrainTilePixels + run * kRun;
  b.c = static_cast<int64_t>(blockIdx.y) * kTileChannels + chunk * kChunk;
  b.pixels = clamp_to_8(M - b.m);
  b.channels = clamp_to_8(p.C - b.c);
  b.n = b.m / HW;
  const int64_t hw = b.m - b.n * HW;
  b.h = hw / p.W;
  b.w = hw - b.h * p.W;
  return b;
}

// The element offset of pixel (n, h, w), channel 0; then the next pixel in flat order.
struct PixelWalk {
  int64_t n, h, w;
  __device__ __forceinline__ int64_t offset(const int64_t* s) const {
    return n * s[0] + h * s[2] + w * s[3];
  }
  __device__ __forceinline__ void next(int64_t H, int64_t W) {
    if (++w == W) {
      w = 0;
      if (++h == H) { h = 0; ++n; }
    }
  }
};

template <typename T>
__device__ __forceinline__ void load_8(const T* src, float out[8], int stride_out) {
  using Cvt = Convert<T>;
  constexpr int kPer = Pack<T>::kSize;  // 8 at 2 bytes, 4 at fp32
#pragma unroll
  for (int i = 0; i < 8 / kPer; ++i) {
    const Pack<T> r = load_pack(src + i * kPer);
#pragma unroll
    for (int k = 0; k < kPer; ++k) out[(i * kPer + k) * stride_out] = Cvt::to_float(r.v[k]);
  }
}

template <typename T>
__device__ __forceinline__ void store_8(T* dst, const float in[8], int stride_in) {
  using Cvt = Convert<T>;
  constexpr int kPer = Pack<T>::kSize;
#pragma unroll
  for (int i = 0; i < 8 / kPer; ++i) {
    Pack<T> r;
#pragma unroll
    for (int k = 0; k < kPer; ++k) r.v[k] = Cvt::from_float(in[(i * kPer + k) * stride_in]);
    store_pack(dst + i * kPer, r);
  }
}

// v[j][e] = t[pixel m + j, channel c + e] in fp32; 0 outside the tensor.
template <typename T>
__device__ __forceinline__ void load_block(const Operand<T>& t, const Block& b,
                                           const BatchNormTrainParams& p, float v[kRun][kChunk]) {
  using Cvt = Convert<T>;
#pragma unroll
  for (int j = 0; j < kRun; ++j) {
#pragma unroll
    for (int e = 0; e < kChunk; ++e) v[j][e] = 0.f;
  }
  if (b.pixels == 0 || b.channels == 0) return;
  if (t.access == Access::kPixelVectors) {
    // (H * W a multiple of 8: the run is whole, in one image, contiguous and aligned)
    const T* plane = t.data + b.n * t.s[0] + (b.m - b.n * p.H * p.W) + b.c * t.s[1];
#pragma unroll
    for (int e = 0; e < kChunk; ++e) {
      if (e < b.channels) load_8(plane + e * t.s[1], &v[0][e], kChunk);
    }
    return;
  }
  PixelWalk at{b.n, b.h, b.w};
#pragma unroll
  for (int j = 0; j < kRun; ++j) {
    if (j < b.pixels) {
      const T* pixel = t.data + at.offset(t.s) + b.c * t.s[1];
      if (t.access == Access::kChannelVectors) {
        load_8(pixel, v[j], 1);
      } else {
#pragma unroll
        for (int e = 0; e < kChunk; ++e) {
          if (e < b.channels) v[j][e] = Cvt::to_float(pixel[e * t.s[1]]);
        }
      }
      at.next(p.H, p.W);
    }
  }
}

// t[pixel m + j, channel c + e] = v[j][e] rounded to T, inside the tensor.
template <typename T>
__device__ __forceinline__ void store_block(const Operand<T>& t, const Block& b,
                                            const BatchNormTrainParams& p,
                                            const float v[kRun][kChunk]) {
  using Cvt = Convert<T>;
  if (b.pixels == 0 || b.channels == 0) return;
  if (t.access == Access::kPixelVectors) {
    T* plane = t.data + b.n * t.s[0] + (b.m - b.n * p.H * p.W) + b.c * t.s[1];
#pragma unroll
    for (int e = 0; e < kChunk; ++e) {
      if (e < b.channels) store_8(plane + e * t.s[1], &v[0][e], kChunk);
    }
    return;
  }
  PixelWalk at{b.n, b.h, b.w};
#pragma unroll
  for (int j = 0; j < kRun; ++j) {
    if (j < b.pixels) {
      T* pixel = t.data + at.offset(t.s) + b.c * t.s[1];
      if (t.access == Access::kChannelVectors) {
        store_8(pixel, v[j], 1);
      } else {
#pragma unroll
        for (int e = 0; e < kChunk; ++e) {
          if (e < b.channels) pixel[e * t.s[1]] = Cvt::from_float(v[j][e]);
        }
      }
      at.next(p.H, p.W);
    }
  }
}

// The block's 8 mask bytes (channels c .. c + 7 of mask row m / 8): one 8-byte access where C
// is a multiple of 8 and the mask 8-byte aligned (the row's 8 bytes are then too), else a byte
// each.
__device__ __forceinline__ bool mask_words(const BatchNormTrainParams& p, const Block& b) {
  return b.channels == kChunk && p.C % kChunk == 0 &&
         reinterpret_cast<uintptr_t>(p.relu_mask) % 8 == 0;
}

__device__ __forceinline__ void load_mask(const BatchNormTrainParams& p, const Block& b,
                                          uint8_t bytes[kChunk]) {
  const uint8_t* row = p.relu_mask + (b.m / kRun) * p.C + b.c;
  if (mask_words(p, b)) {
    const uint64_t word = *reinterpret_cast<const uint64_t*>(row);
    memcpy(bytes, &word, kChunk);
  } else {
#pragma unroll
    for (int e = 0; e < kChunk; ++e) bytes[e] = e < b.channels ? row[e] : 0;
  }
}

__device__ __forceinline__ void store_mask(const BatchNormTrainParams& p, const Block& b,
                                           const uint8_t bytes[kChunk]) {
  uint8_t* row = p.relu_mask + (b.m / kRun) * p.C + b.c;
  if (mask_words(p, b)) {
    uint64_t word;
    memcpy(&word, bytes, kChunk);
    *reinterpret_cast<uint64_t*>(row) = word;
  } else {
#pragma unroll
    for (int e = 0; e < kChunk; ++e) {
      if (e < b.channels) row[e] = bytes[e];
    }
  }
}

// v[e] = vec[c + e], a per-channel fp32 vector's values for the block's channels (those past C:
// channel c's): two 16-byte loads where the 8 are whole and aligned (C a multiple of 8, an
// allocation's vector), else one each. (32 4-byte loads of 8 sectors a request for the
// normalize's four vectors, against 8 loads of its z, before.)
__device__ __forceinline__ void load_channels(const float* vec, const Block& b,
                                              float v[kChunk]) {
  const float* at = vec + b.c;
  if (b.channels == kChunk && reinterpret_cast<uintptr_t>(at) % 16 == 0) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const Pack<float> r = load_pack(at + 4 * half);
#pragma unroll
      for (int k = 0; k < 4; ++k) v[4 * half + k] = r.v[k];
    }
  } else {
#pragma unroll
    for (int e = 0; e < kChunk; ++e) v[e] = at[e < b.channels ? e : 0];
  }
}

// gp[j][e]: grad_y where the ReLU passed it (a select: a NaN gradient where it did not stays
// out), all of it without a mask.
template <typename T>
__device__ __forceinline__ void load_gradient_before_relu(const Operand<T>& grad_y,
                                                          const Block& b,
                                                          const BatchNormTrainParams& p,
                                                          float gp[kRun][kChunk]) {
  load_block(grad_y, b, p, gp);
  if (p.relu_mask == nullptr || b.pixels == 0 || b.channels == 0) return;
  uint8_t bytes[kChunk];
  load_mask(p, b, bytes);
#pragma unroll
  for (int j = 0; j < kRun; ++j) {
#pragma unroll
    for (int e = 0; e < kChunk; ++e) {
      if (!((bytes[e] >> j) & 1u)) gp[j][e] = 0.f;
    }
  }
}

// ------------------------------------------------------------------------------ device: sums
// Chan et al.'s merge of (n_b, mean_b, m2_b) into (n_a, mean_a, m2_a); the mean as a weighted
// average (an inf mean stays inf, as torch.var_mean's; its M2 is then NaN, as the variance).
__device__ __forceinline__ void welford_merge(float& n_a, float& mean_a, float& m2_a, float n_b,
                                              float mean_b, float m2_b) {
  if (n_b == 0.f) return;
  if (n_a == 0.f) {
    n_a = n_b; mean_a = mean_b; m2_a = m2_b;
    return;
  }
  const float n = n_a + n_b;
  const float mean = (n_a * mean_a + n_b * mean_b) / n;
  const float da = mean_a - mean, db = mean_b - mean;
  m2_a = m2_a + m2_b + n_a * da * da + n_b * db * db;
  mean_a = mean;
  n_a = n;
}

// Pixels of the M that rows first .. first + rows - 1 of `pixels_per_row` each cover.
__device__ __forceinline__ float pixels_in(int64_t M, int64_t first, int64_t rows,
                                           int64_t pixels_per_row) {
  const int64_t left = M - first * pixels_per_row;
  const int64_t span = rows * pixels_per_row;
  return static_cast<float>(left <= 0 ? 0 : (left < span ? left : span));
}

// The tile's 32 runs merged per channel (kWelford: a[] means, b[] M2s of each run's pixels;
// else two plain sums), in the fixed order of the file comment, into row blockIdx.x of
// `partials` ([2, rows, C]). Every thread of the CTA calls it (it has barriers).
template <bool kWelford>
__device__ __forceinline__ void merge_tile_and_store(float (&a)[kRunsPerTile][kSharedRow],
                                                     float (&b)[kRunsPerTile][kSharedRow],
                                                     const BatchNormTrainParams& p,
                                                     float* partials, int64_t rows) {
  const int64_t M = p.N * p.H * p.W;
  const int64_t first_run = static_cast<int64_t>(blockIdx.x) * kRunsPerTile;
  const int channel = threadIdx.x % kTileChannels, group = threadIdx.x / kTileChannels;
  const int column = (channel % kChunk) * kChunksPerTile + channel / kChunk;
  __syncthreads();
  {
    const int r0 = group * kRunsPerGroup;
    float n = 0.f, acc_a = 0.f, acc_b = 0.f;
    for (int r = r0; r < r0 + kRunsPerGroup; ++r) {
      if (kWelford) {
        welford_merge(n, acc_a, acc_b, pixels_in(M, first_run + r, 1, kRun), a[r][column],
                      b[r][column]);
      } else {
        acc_a += a[r][column];
        acc_b += b[r][column];
      }
    }
    a[r0][column] = acc_a;  // (the group's first run: read by this thread only, above)
    b[r0][column] = acc_b;
  }
  __syncthreads();
  if (group != 0) return;
  float n = 0.f, acc_a = 0.f, acc_b = 0.f;
  for (int g = 0; g < kGroups; ++g) {
    const int r0 = g * kRunsPerGroup;
    if (kWelford) {
      welford_merge(n, acc_a, acc_b, pixels_in(M, first_run + r0, kRunsPerGroup, kRun),
                    a[r0][column], b[r0][column]);
    } else {
      acc_a += a[r0][column];
      acc_b += b[r0][column];
    }
  }
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kTileChannels + channel;
  if (c < p.C) {
    partials[static_cast<int64_t>(blockIdx.x) * p.C + c] = acc_a;
    partials[(rows + blockIdx.x) * p.C + c] = acc_b;
  }
}

// The shared column of this thread's channel e (kSharedRow's comment).
__device__ __forceinline__ int shared_column(int e) {
  return e * kChunksPerTile + static_cast<int>(threadIdx.x % kChunksPerTile);
}
__device__ __forceinline__ int shared_run() {
  return static_cast<int>(threadIdx.x / kChunksPerTile);
}

// ------------------------------------------------------------------------------ kernels
// Per tile and channel: the mean and M2 of z's values (as stored, then fp32: what
// F.batch_norm reads), each run two-pass from its registers.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    statistics_partials_kernel(BatchNormTrainParams p, Operand<T> z, float* partials,
                               int64_t rows) {
  __shared__ float mean_of_run[kRunsPerTile][kSharedRow];
  __shared__ float m2_of_run[kRunsPerTile][kSharedRow];
  const Block b = thread_block(p);
  float v[kRun][kChunk];
  load_block(z, b, p, v);
  const float count = static_cast<float>(b.pixels);
#pragma unroll
  for (int e = 0; e < kChunk; ++e) {
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < kRun; ++j) sum += v[j][e];  // (0 past the last pixel)
    const float mean = b.pixels > 0 ? sum / count : 0.f;
    float m2 = 0.f;
#pragma unroll
    for (int j = 0; j < kRun; ++j) {
      const float d = v[j][e] - mean;
      if (j < b.pixels) m2 += d * d;
    }
    mean_of_run[shared_run()][shared_column(e)] = mean;
    m2_of_run[shared_run()][shared_column(e)] = m2;
  }
  merge_tile_and_store<true>(mean_of_run, m2_of_run, p, partials, rows);
}

// y = relu?(z * scale + shift) rounded to T, and the mask of the rounded y.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    normalize_kernel(BatchNormTrainParams p, Operand<T> z, Operand<T> y) {
  using Cvt = Convert<T>;
  const Block b = thread_block(p);
  if (b.pixels == 0 || b.channels == 0) return;
  float scale[kChunk], shift[kChunk], mean[kChunk], var[kChunk];
  load_channels(p.gamma, b, scale);
  load_channels(p.beta, b, shift);
  load_channels(p.mean, b, mean);
  load_channels(p.var, b, var);
#pragma unroll
  for (int e = 0; e < kChunk; ++e) {
    scale[e] *= 1.f / sqrtf(var[e] + p.eps);  // gamma * invstd
    shift[e] -= mean[e] * scale[e];           // beta - mean * scale
  }
  float v[kRun][kChunk];
  load_block(z, b, p, v);
  uint8_t bytes[kChunk] = {};
#pragma unroll
  for (int j = 0; j < kRun; ++j) {
#pragma unroll
    for (int e = 0; e < kChunk; ++e) {
      float out = fmaf(v[j][e], scale[e], shift[e]);
      if (p.relu) out = relu_keep_nan(out);
      out = Cvt::to_float(Cvt::from_float(out));  // the mask is of y as stored
      v[j][e] = out;
      if (j < b.pixels && !(out <= 0.f)) bytes[e] |= 1u << j;  // NaN passes, as torch's ReLU
    }
  }
  store_block(y, b, p, v);
  if (p.relu_mask != nullptr) store_mask(p, b, bytes);
}

// Per tile and channel: sum gp * (z - mean) * invstd and sum gp.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_sums_partials_kernel(BatchNormTrainParams p, Operand<T> grad_y, Operand<T> z,
                                  float* partials, int64_t rows) {
  __shared__ float gp_x_hat_of_run[kRunsPerTile][kSharedRow];
  __shared__ float gp_of_run[kRunsPerTile][kSharedRow];
  const Block b = thread_block(p);
  float gp[kRun][kChunk], v[kRun][kChunk], mean[kChunk] = {}, var[kChunk] = {};
  load_gradient_before_relu(grad_y, b, p, gp);
  load_block(z, b, p, v);
  const bool inside = b.channels > 0 && b.pixels > 0;
  if (inside) {
    load_channels(p.mean, b, mean);
    load_channels(p.var, b, var);
  }
#pragma unroll
  for (int e = 0; e < kChunk; ++e) {
    const float invstd = inside ? 1.f / sqrtf(var[e] + p.eps) : 0.f;
    float sum_gp = 0.f, sum_gp_dev = 0.f;
#pragma unroll
    for (int j = 0; j < kRun; ++j) {
      if (j < b.pixels) {  // (gp is 0 outside; z - mean is not)
        sum_gp += gp[j][e];
        sum_gp_dev += gp[j][e] * (v[j][e] - mean[e]);
      }
    }
    gp_x_hat_of_run[shared_run()][shared_column(e)] = sum_gp_dev * invstd;
    gp_of_run[shared_run()][shared_column(e)] = sum_gp;
  }
  merge_tile_and_store<false>(gp_x_hat_of_run, gp_of_run, p, partials, rows);
}

// out = k_gp * gp + k_x * (z - mean) + k_0.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    grad_z_kernel(BatchNormTrainParams p, Operand<T> grad_y, Operand<T> z, Operand<T> grad_z) {
  const Block b = thread_block(p);
  if (b.pixels == 0 || b.channels == 0) return;
  float mean[kChunk], k_gp[kChunk], k_x[kChunk], k_0[kChunk];
  load_channels(p.coef, b, mean);
  load_channels(p.coef + p.C, b, k_gp);
  load_channels(p.coef + 2 * p.C, b, k_x);
  load_channels(p.coef + 3 * p.C, b, k_0);
  float gp[kRun][kChunk], v[kRun][kChunk];
  load_gradient_before_relu(grad_y, b, p, gp);
  load_block(z, b, p, v);
#pragma unroll
  for (int j = 0; j < kRun; ++j) {
#pragma unroll
    for (int e = 0; e < kChunk; ++e) {
      v[j][e] = k_gp[e] * gp[j][e] + k_x[e] * (v[j][e] - mean[e]) + k_0[e];
    }
  }
  store_block(grad_z, b, p, v);
}

// One level of the partials' reduction: block (x, y) merges rows x * rows_per_block .. of
// channels y * 32 .. (a warp's 32 lanes 32 channels; 8 lanes per channel take every 8th row,
// then lane 0's thread merges the 8 in order) into out0/out1[x * C + c]. welford: rows of
// (mean, M2) of pixels_per_row pixels each (the last row's: what is left of M); finish: the
// last level, out1 = M2 / M (the biased variance). Else two plain sums.
__global__ void __launch_bounds__(kReduceThreads)
    reduce_partials_kernel(const float* partials, int64_t rows, int64_t C, int64_t M,
                           int64_t pixels_per_row, int64_t rows_per_block, bool welford,
                           bool finish, float* out0, float* out1) {
  __shared__ float n_of_lane[kReduceLanes][kReduceChannels];
  __shared__ float a_of_lane[kReduceLanes][kReduceChannels];
  __shared__ float b_of_lane[kReduceLanes][kReduceChannels];
  const int channel = threadIdx.x % kReduceChannels, lane = threadIdx.x / kReduceChannels;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kReduceChannels + channel;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int64_t last = first + rows_per_block < rows ? first + rows_per_block : rows;
  float n = 0.f, acc_a = 0.f, acc_b = 0.f;
  if (c < C) {
    for (int64_t r = first + lane; r < last; r += kReduceLanes) {
      const float a = partials[r * C + c], b = partials[(rows + r) * C + c];
      if (welford) {
        welford_merge(n, acc_a, acc_b, pixels_in(M, r, 1, pixels_per_row), a, b);
      } else {
        acc_a += a;
        acc_b += b;
      }
    }
  }
  n_of_lane[lane][channel] = n;
  a_of_lane[lane][channel] = acc_a;
  b_of_lane[lane][channel] = acc_b;
  __syncthreads();
  if (lane != 0 || c >= C) return;
  n = 0.f; acc_a = 0.f; acc_b = 0.f;
  for (int l = 0; l < kReduceLanes; ++l) {
    if (welford) {
      welford_merge(n, acc_a, acc_b, n_of_lane[l][channel], a_of_lane[l][channel],
                    b_of_lane[l][channel]);
    } else {
      acc_a += a_of_lane[l][channel];
      acc_b += b_of_lane[l][channel];
    }
  }
  if (welford && finish) acc_b /= static_cast<float>(M);
  out0[static_cast<int64_t>(blockIdx.x) * C + c] = acc_a;
  out1[static_cast<int64_t>(blockIdx.x) * C + c] = acc_b;
}

// grad_z's coefficients from the sums (resnext_kernels/backends/batchnorm_train.coefficients);
// with no pixels, the sums are 0 (written here).
__global__ void __launch_bounds__(kCoefficientThreads)
    coefficients_kernel(BatchNormTrainParams p, bool no_pixels, float per_pixel) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kCoefficientThreads + threadIdx.x;
  if (c >= p.C) return;
  if (no_pixels) {
    p.grad_gamma[c] = 0.f;
    p.grad_beta[c] = 0.f;
  }
  const float invstd = 1.f / sqrtf(p.var[c] + p.eps);
  const float k_gp = p.gamma[c] * invstd;
  p.coef_out[c] = p.mean[c];
  p.coef_out[p.C + c] = k_gp;
  p.coef_out[2 * p.C + c] = -k_gp * invstd * p.grad_gamma[c] * per_pixel;
  p.coef_out[3 * p.C + c] = -k_gp * p.grad_beta[c] * per_pixel;
}

// ------------------------------------------------------------------------------ launchers
int64_t pixels_of(const BatchNormTrainParams& p) { return p.N * p.H * p.W; }

int64_t tiles_of(const BatchNormTrainParams& p) {
  return (pixels_of(p) + kBatchNormTrainTilePixels - 1) / kBatchNormTrainTilePixels;
}

dim3 tile_grid(const BatchNormTrainParams& p) {
  return dim3(static_cast<unsigned int>(tiles_of(p)),
              static_cast<unsigned int>((p.C + kTileChannels - 1) / kTileChannels));
}

// The reduction's levels: rows in, rows per block (the blocks are the next level's rows).
struct ReduceLevel {
  int64_t rows, rows_per_block, blocks;
};

ReduceLevel reduce_level(const BatchNormTrainParams& p, int64_t rows) {
  const int64_t in_one = p.reduce_rows_in_one > 0 ? p.reduce_rows_in_one : kReduceRowsInOne;
  const int64_t per_block = rows <= in_one ? rows : std::max<int64_t>(2, in_one);
  return {rows, per_block, (rows + per_block - 1) / per_block};
}

// Merges `partials` ([2, rows, C], rows of kBatchNormTrainTilePixels pixels) into out0/out1
// ([C] each), level by level through the workspace past the partials.
cudaError_t reduce_partials(const BatchNormTrainParams& p, const float* partials, int64_t rows,
                            bool welford, float* out0, float* out1, cudaStream_t stream) {
  float* next = const_cast<float*>(partials) + 2 * rows * p.C;
  int64_t pixels_per_row = kBatchNormTrainTilePixels;
  while (true) {
    const ReduceLevel level = reduce_level(p, rows);
    const bool last = level.blocks == 1;
    float* a = last ? out0 : next;
    float* b = last ? out1 : next + level.blocks * p.C;
    const dim3 grid(static_cast<unsigned int>(level.blocks),
                    static_cast<unsigned int>((p.C + kReduceChannels - 1) / kReduceChannels));
    const cudaError_t err = launch_kernel(reduce_partials_kernel, grid, dim3(kReduceThreads), 0,
                                          stream, partials, rows, p.C, pixels_of(p),
                                          pixels_per_row, level.rows_per_block, welford, last,
                                          a, b);
    if (err != cudaSuccess || last) return err;
    partials = next;
    next += 2 * level.blocks * p.C;
    rows = level.blocks;
    pixels_per_row *= level.rows_per_block;
  }
}

template <typename T>
cudaError_t launch_statistics_typed(const BatchNormTrainParams& p, cudaStream_t stream) {
  const int64_t rows = tiles_of(p);
  cudaError_t err = launch_kernel(statistics_partials_kernel<T>, tile_grid(p), dim3(kThreads), 0,
                                  stream, p, operand<T>(p.z, p.z_stride, p), p.workspace, rows);
  if (err != cudaSuccess) return err;
  return reduce_partials(p, p.workspace, rows, true, p.mean_out, p.var_out, stream);
}

template <typename T>
cudaError_t launch_backward_sums_typed(const BatchNormTrainParams& p, cudaStream_t stream) {
  const int64_t M = pixels_of(p);
  if (M > 0) {
    const int64_t rows = tiles_of(p);
    cudaError_t err = launch_kernel(backward_sums_partials_kernel<T>, tile_grid(p),
                                    dim3(kThreads), 0, stream, p,
                                    operand<T>(p.grad_y, p.grad_y_stride, p),
                                    operand<T>(p.z, p.z_stride, p), p.workspace, rows);
    if (err == cudaSuccess) {
      err = reduce_partials(p, p.workspace, rows, false, p.grad_gamma, p.grad_beta, stream);
    }
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(static_cast<unsigned int>((p.C + kCoefficientThreads - 1) /
                                            kCoefficientThreads));
  return launch_kernel(coefficients_kernel, grid, dim3(kCoefficientThreads), 0, stream, p,
                       M == 0, 1.f / static_cast<float>(M > 0 ? M : 1));
}

// grid.x: pixel tiles (and the reduction's row blocks, fewer), grid.y: channel blocks
bool valid_grid(const BatchNormTrainParams& p) {
  return tiles_of(p) <= 0x7fffffffLL && (p.C + kReduceChannels - 1) / kReduceChannels <= 65535;
}

}  // namespace

int64_t batchnorm_train_workspace_floats(const BatchNormTrainParams& p) {
  if (pixels_of(p) == 0 || p.C == 0) return 0;
  int64_t rows = tiles_of(p);
  int64_t floats = 2 * rows * p.C;
  while (true) {
    const ReduceLevel level = reduce_level(p, rows);
    if (level.blocks == 1) return floats;
    floats += 2 * level.blocks * p.C;
    rows = level.blocks;
  }
}

cudaError_t launch_batchnorm_train_statistics(const BatchNormTrainParams& p, DType dtype,
                                              cudaStream_t stream) {
  if (pixels_of(p) == 0 || p.C == 0 || !valid_grid(p)) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    return launch_statistics_typed<decltype(tag)>(p, stream);
  });
}

cudaError_t launch_batchnorm_train_normalize(const BatchNormTrainParams& p, DType dtype,
                                             cudaStream_t stream) {
  if (pixels_of(p) == 0 || p.C == 0) return cudaSuccess;
  if (!valid_grid(p)) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_kernel(normalize_kernel<T>, tile_grid(p), dim3(kThreads), 0, stream, p,
                         operand<T>(p.z, p.z_stride, p), operand<T>(p.out, p.out_stride, p));
  });
}

cudaError_t launch_batchnorm_train_backward_sums(const BatchNormTrainParams& p, DType dtype,
                                                 cudaStream_t stream) {
  if (p.C == 0) return cudaSuccess;
  if (!valid_grid(p)) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    return launch_backward_sums_typed<decltype(tag)>(p, stream);
  });
}

cudaError_t launch_batchnorm_train_grad_z(const BatchNormTrainParams& p, DType dtype,
                                          cudaStream_t stream) {
  if (pixels_of(p) == 0 || p.C == 0) return cudaSuccess;
  if (!valid_grid(p)) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_kernel(grad_z_kernel<T>, tile_grid(p), dim3(kThreads), 0, stream, p,
                         operand<T>(p.grad_y, p.grad_y_stride, p), operand<T>(p.z, p.z_stride, p),
                         operand<T>(p.out, p.out_stride, p));
  });
}

const char* batchnorm_train_access_name(const void* data, const int64_t* stride, int64_t N,
                                        int64_t C, int64_t H, int64_t W) {
  switch (access_of(data, stride, N, C, H, W)) {
    case Access::kChannelVectors: return "channels";
    case Access::kPixelVectors: return "pixels";
    case Access::kScalar: break;
  }
  return "scalar";
}

}  // namespace resnext_kernels
