// Grouped 3x3 conv + folded BN + ReLU, v3: mma.sync on a swizzled band of the input staged
// channels_last (fp16/bf16, stride 1 or 2, padding 1, C_in == C_out, 4, 8, 16, 32 or 64
// channels per group; x and y channels_last, or NCHW).
//
// Work unit (one CTA): image n, a band of output rows, a 64-channel tile (128 bytes per pixel:
// every pixel is one whole cache line). Channel tile fastest in the grid, so neighbouring CTAs
// read neighbouring lines of the same pixels.
//  1. Loader: the band's input rows with their halo go to shared memory with 16-byte cp.async
//     copies; padding is the copies' zero fill. Pixel q's 8 chunks of 16 bytes are stored
//     swizzled (SwizzledPixels), so the 8 rows of an ldmatrix, pixels `stride` apart, fall in 8
//     distinct bank quads. An NCHW x (rows contiguous, no 16-byte channel chunks) is read by
//     2-byte loads from 8 channel planes per chunk, a lane per pixel, through registers
//     (v3::load_halo_rows_by_planes), into the same tile. A gated input (GatedInput, kGated:
//     dgrad's gradient, selected by the ReLU mask and at stride 2 spread on the input's grid)
//     is formed on the way, through registers (v3::load_gated_halo_rows, or
//     load_gated_halo_rows_by_planes from an NCHW gradient), into the same tile.
//  2. Mainloop: warp w owns one MMA channel group ("super-group", SG channels: a group at cpg 8
//     and 16, two groups of 4 at cpg 4) and walks the band's pixels 16 at a time. A comes
//     from ldmatrix with one row address per lane: the tap shift and the stride cost nothing.
//     B (the weights) stays in registers for the CTA's lifetime, packed once per call by
//     pack_b_fragments_kernel into each lane's fragment order. cpg 8: two taps per m16n8k16
//     (K = 2 taps x 8 channels) and an m16n8k8 for the ninth; cpg 16: per tap an m16n8k16 per 8
//     output channels. cpg 4 pairs two groups in one MMA with block-diagonal weights, and runs
//     each group's MMA with the other group's A elements zeroed, so a non-finite input stays in
//     its own group (NaN * 0 would otherwise reach the neighbour).
//     cpg 32 and 64 (grouped_conv_bn_relu_v3_wide_kernel): B is too big for registers (144
//     words per lane per 32 output channels); the CTA stages its tile's weights in shared
//     memory once (rows of 9*cpg input taps, padded by 16 bytes so 8 rows' ldmatrix is
//     conflict-free) and each warp computes 32 output channels for one or two m16 tiles,
//     loading each B fragment once per pair of tiles.
//  3. Epilogue: fp32 scale, shift and NaN-keeping ReLU in registers, packed to 16 bits into a
//     swizzled shared staging tile (conflict-free), then written out as whole 128-byte lines
//     with 16-byte stores; into an NCHW y, a lane per pixel, 16 bytes from the staging tile
//     and 8 two-byte stores, one per channel plane (store_band_by_planes).
#include <algorithm>
#include <cstring>

#include "kernels/dtype_traits.cuh"
#include "kernels/launch.cuh"
#include "kernels/params.h"
#include "kernels/ptx_sm80.cuh"
#include "kernels/swizzled_band.cuh"

namespace resnext_kernels {
namespace {

using v3::kTileC;       // channels per CTA
using v3::kPixelBytes;  // one 128-byte line per pixel (16-bit types)
using v3::SwizzledPixels;
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kPackThreads = 256;
constexpr int kMaxBandPixels = 256;                 // output pixels per CTA (16 m16 tiles)
constexpr int kGatedLoadsInFlight = 4;              // chunks a thread loads before storing any
constexpr int kPlaneLoadsInFlight = 2;              // likewise, NCHW x: 8 two-byte loads each
// Within every sm_80+ part's per-block limit (99 KB on sm_86/89). Not an occupancy promise: a
// band near the cap leaves one CTA per SM on sm_86/89 (100 KB per SM) and on sm_80 above ~81 KB.
constexpr size_t kMaxSmemBytes = 99 * 1024;

// Per channels-per-group class: the MMA channel group and the B fragment words per lane.
template <int kCpg>
struct V3Class {
  static_assert(kCpg == 4 || kCpg == 8 || kCpg == 16, "B in registers: cpg 4, 8 and 16");
  static constexpr int kSG = kCpg < 8 ? 8 : kCpg;          // channels per MMA group
  static constexpr int kSuperGroups = kTileC / kSG;        // per CTA: 8 or 4
  static constexpr int kWarpsPerSG = kWarps / kSuperGroups;
  static constexpr bool kSplitPairs = kCpg == 4;           // two groups per MMA group
  // B words per lane: SG 8: 4 k16 steps (2 words) + 1 k8 step (1), padded to 12 for uint4
  // loads; SG 16: 9 taps x 2 n-tiles x 2 words.
  static constexpr int kWordsUsed = kSG == 8 ? 9 : 36;
  static constexpr int kWords = kSG == 8 ? 12 : 36;
};

// The band geometry of one call, the same for every CTA.
// cpg 32/64: a weight row (one output channel: 9 taps x cpg inputs) padded by 8 elements, so
// that 8 rows' 16-byte pieces at the same column fall in 8 different bank quads.
constexpr int wide_weight_pitch(int cpg) { return 9 * cpg + 8; }

struct Band {
  int rows = 0;     // output rows per band (the last band of an image may have fewer)
  int in_rows = 0;  // input rows staged: (rows - 1) * stride + 3
  int in_cols = 0;  // input columns staged: (W_out - 1) * stride + 3
  size_t out_offset = 0;  // shared memory: input band, then output staging, then weights
  size_t w_offset = 0;
  size_t smem_bytes = 0;
  // x and y without 16-byte channel chunks but with contiguous rows (NCHW): read and written
  // by channel planes (v3::load_halo_rows_by_planes, or load_gated_halo_rows_by_planes for a
  // gated x; store_band_by_planes)
  bool x_by_planes = false, y_by_planes = false;
};

Band plan_band(const GroupedConvParams& p) {
  const int64_t s = p.stride_h, cpg = p.C_in / p.groups;
  const size_t w_bytes =
      cpg >= 32 ? size_t{kTileC} * wide_weight_pitch(static_cast<int>(cpg)) * 2 : 0;
  Band b;
  b.in_cols = static_cast<int>((p.W_out - 1) * s + 3);
  const int64_t band_pixels = p.v3_band_pixels > 0
                                  ? std::min<int64_t>(p.v3_band_pixels, kMaxBandPixels)
                                  : kMaxBandPixels;
  int64_t rows_max = std::max<int64_t>(1, std::min<int64_t>(p.H_out, band_pixels / p.W_out));
  auto smem = [&](int64_t rows) {
    return static_cast<size_t>(((rows - 1) * s + 3) * b.in_cols + rows * p.W_out) * kPixelBytes +
           w_bytes;
  };
  while (rows_max > 0 && smem(rows_max) > kMaxSmemBytes) --rows_max;
  if (rows_max == 0) return Band{};
  const int64_t bands = (p.H_out + rows_max - 1) / rows_max;
  b.rows = static_cast<int>((p.H_out + bands - 1) / bands);  // even bands: no short tail
  b.in_rows = static_cast<int>((b.rows - 1) * s + 3);
  b.out_offset = static_cast<size_t>(b.in_rows) * b.in_cols * kPixelBytes;
  b.w_offset = b.out_offset + static_cast<size_t>(b.rows) * p.W_out * kPixelBytes;
  b.smem_bytes = smem(b.rows);
  b.x_by_planes = !v3::channels_last_aligned16(p.x, p.x_stride);
  b.y_by_planes = !v3::channels_last_aligned16(p.y, p.y_stride);
  return b;
}

__device__ __forceinline__ int min_int(int a, int b) { return a < b ? a : b; }

template <typename T>
__device__ __forceinline__ uint16_t bits_of(T v) {
  uint16_t bits;
  memcpy(&bits, &v, sizeof bits);
  return bits;
}

// packed[sg][v][lane][4]: the B fragment registers of MMA channel group sg (of C / SG), words
// 4v..4v+3 of each lane together, so that the warp loads them with coalesced 16-byte loads
// (512 contiguous bytes per load). Element (k, n) of a step's B is weight[co = sg*SG + n,
// ci, tap] with (tap, ci) from k; zero where ci and co are in different groups (cpg 4).
template <typename T, int kCpg>
__global__ void __launch_bounds__(kPackThreads)
    pack_b_fragments_kernel(GroupedConvParams p, uint32_t* __restrict__ packed) {
  using Class = V3Class<kCpg>;
  constexpr int kSG = Class::kSG;
  const T* __restrict__ w = static_cast<const T*>(p.w);
  const int64_t total = p.C_out / kSG * 32 * Class::kWords;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    constexpr int kVectors = Class::kWords / 4;
    const int lane = static_cast<int>((i / 4) % 32);
    const int word = static_cast<int>((i / 128) % kVectors) * 4 + static_cast<int>(i % 4);
    const int64_t sg = i / (128 * kVectors);
    const int g = lane / 4, t = lane % 4;
    uint32_t value = 0;
    for (int h = 0; h < 2; ++h) {
      int tap, ci, n;
      if (kSG == 8) {
        if (word >= Class::kWordsUsed) continue;  // padding
        tap = word;                               // words 2s, 2s+1: taps 2s, 2s+1; word 8: tap 8
        ci = 2 * t + h;
        n = g;
      } else {
        tap = word / 4;
        const int j = (word / 2) % 2, r = word % 2;
        ci = 2 * t + 8 * r + h;
        n = j * 8 + g;
      }
      const int64_t co = sg * kSG + n, c_in = sg * kSG + ci;
      if (c_in / kCpg != co / kCpg) continue;  // another group: zero
      const T v = w[co * p.w_stride[0] + (c_in % kCpg) * p.w_stride[1] + (tap / 3) * p.w_stride[2] +
                    (tap % 3) * p.w_stride[3]];
      value |= uint32_t{bits_of(v)} << (16 * h);
    }
    packed[i] = value;
  }
}

__device__ __forceinline__ uint32_t pack_pair(float lo, float hi, __half) {
  return uint32_t{bits_of(__float2half_rn(lo))} | (uint32_t{bits_of(__float2half_rn(hi))} << 16);
}
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi, __nv_bfloat16) {
  return uint32_t{bits_of(__float2bfloat16_rn(lo))} |
         (uint32_t{bits_of(__float2bfloat16_rn(hi))} << 16);
}

// The CTA's work unit: a 64-channel tile (fastest in the grid), an image, a band of rows.
struct WorkUnit {
  int ct;           // channel tile
  int64_t n;        // image
  int oh0;          // first output row
  int band_pixels;  // rows * W_out (the last band of an image may be short)
  int in_rows;      // input rows staged
};

__device__ __forceinline__ WorkUnit work_unit(const GroupedConvParams& p, const Band& band,
                                              int tiles_c, int bands_per_image, int stride) {
  WorkUnit u;
  u.ct = static_cast<int>(blockIdx.x % static_cast<unsigned>(tiles_c));
  const unsigned rest = blockIdx.x / static_cast<unsigned>(tiles_c);
  const int band_index = static_cast<int>(rest % static_cast<unsigned>(bands_per_image));
  u.n = rest / static_cast<unsigned>(bands_per_image);
  u.oh0 = band_index * band.rows;
  const int rows = min_int(band.rows, static_cast<int>(p.H_out) - u.oh0);
  u.band_pixels = rows * static_cast<int>(p.W_out);
  u.in_rows = (rows - 1) * stride + 3;
  return u;
}

// How a kernel stages its input band: 16-byte cp.async copies (x channels_last, chunked), 2-byte
// loads from channel planes (x NCHW: Band::x_by_planes), or gated (kGated: dgrad's gradient,
// by chunks or, NCHW, by planes).
enum class InputLoad { kCopies, kPlanes, kGated };

// Loader: the unit's input rows oh0*S - 1 ... with their halo columns into the swizzled tile
// (zeros outside the image). kCopies: 16-byte cp.async copies, the caller commits and waits;
// kPlanes and kGated: through registers (kGated: p.gated_x's input), stored when this returns
// (the caller still waits for its other copies and synchronises).
template <typename T, InputLoad kLoad, int kShift>
__device__ __forceinline__ void load_band(const GroupedConvParams& p, const Band& band,
                                          const WorkUnit& u, int stride,
                                          SwizzledPixels<kShift> in_tile) {
  const int64_t c0 = static_cast<int64_t>(u.ct) * kTileC;
  const T* x_n = static_cast<const T*>(p.x) + u.n * p.x_stride[0] + c0 * p.x_stride[1];
  const int ih0 = u.oh0 * stride - static_cast<int>(p.pad_h);
  if constexpr (kLoad == InputLoad::kPlanes) {
    v3::load_halo_rows_by_planes<kThreads, kPlaneLoadsInFlight>(
        x_n, p.x_stride, p.H, p.W, ih0, static_cast<int>(p.pad_w), u.in_rows, band.in_cols,
        in_tile);
  } else if constexpr (kLoad == InputLoad::kGated) {
    const uint8_t* mask_tile = p.gated_x.mask != nullptr ? p.gated_x.mask + c0 : nullptr;
    if (band.x_by_planes) {
      v3::load_gated_halo_rows_by_planes<kThreads, kPlaneLoadsInFlight>(
          p.gated_x, x_n, p.x_stride, mask_tile, p.C_in, u.n, p.H, p.W, ih0,
          static_cast<int>(p.pad_w), u.in_rows, band.in_cols, in_tile);
    } else {
      v3::load_gated_halo_rows<kThreads, kGatedLoadsInFlight>(
          p.gated_x, x_n, p.x_stride, mask_tile, p.C_in, u.n, p.H, p.W, ih0,
          static_cast<int>(p.pad_w), u.in_rows, band.in_cols, in_tile);
    }
  } else {
    v3::load_halo_rows_async<kThreads>(x_n, p.x_stride, p.H, p.W, ih0, static_cast<int>(p.pad_w),
                                       u.in_rows, band.in_cols, p.x, in_tile);
  }
}

// The unit's output into a y with contiguous rows (NCHW: Band::y_by_planes) from the staging
// tile: a lane per pixel, chunk-major, so a warp's store of one channel is neighbouring pixels
// of its plane (64 contiguous bytes: a band's pixels are contiguous in each plane). Each item
// reads its pixel's 16-byte chunk (8 consecutive pixels: 8 distinct bank groups of the
// SwizzledPixels<0> tile; a quarter-warp that crosses into the next chunk, where the band's
// pixels are not a multiple of 8, may conflict once) and stores its 8 channels, 2 bytes each.
template <typename T>
__device__ __forceinline__ void store_band_by_planes(const GroupedConvParams& p,
                                                     const WorkUnit& u,
                                                     SwizzledPixels<0> out_tile) {
  uint16_t* y_n = static_cast<uint16_t*>(p.y) + u.n * p.y_stride[0] +
                  static_cast<int64_t>(u.ct) * kTileC * p.y_stride[1];
  const int64_t c_stride = p.y_stride[1];
  const int W_out = static_cast<int>(p.W_out), pixels = u.band_pixels;
  for (int i = threadIdx.x; i < pixels * 8; i += kThreads) {
    const int c = i / pixels, q = i - c * pixels;
    const int orow = q / W_out, ocol = q - orow * W_out;
    const uint4 v = ptx::ld_shared_16(out_tile.chunk(q, c));
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
    uint16_t* dst = y_n + (u.oh0 + orow) * p.y_stride[2] + ocol * p.y_stride[3] + c * 8 * c_stride;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      dst[e * c_stride] = static_cast<uint16_t>(w[e / 2] >> (16 * (e % 2)));
    }
  }
}

// Epilogue, one lane's pair of channels (c, c + 1 of the tile) of one output pixel: scale,
// shift, NaN-keeping ReLU, two 16-bit values into the staging tile.
template <typename T>
__device__ __forceinline__ void stage_pair(const GroupedConvParams& p, SwizzledPixels<0> out_tile,
                                           int out_pix, int c, float a0, float a1, float2 scale,
                                           float2 shift) {
  float v0 = a0 * scale.x + shift.x, v1 = a1 * scale.y + shift.y;
  if (p.relu) {
    v0 = relu_keep_nan(v0);
    v1 = relu_keep_nan(v1);
  }
  *reinterpret_cast<uint32_t*>(out_tile.chunk(out_pix, c / 8) + 2 * (c % 8)) =
      pack_pair(v0, v1, T{});
}

// The unit's output from the staging tile: one 128-byte line per pixel, 16 bytes per thread.
template <typename T>
__device__ __forceinline__ void store_band(const GroupedConvParams& p, const WorkUnit& u,
                                           SwizzledPixels<0> out_tile) {
  T* __restrict__ y = static_cast<T*>(p.y);
  T* y_n = y + u.n * p.y_stride[0] + static_cast<int64_t>(u.ct) * kTileC;
  const int W_out = static_cast<int>(p.W_out);
  for (int i = threadIdx.x; i < u.band_pixels * 8; i += kThreads) {
    const int q = i / 8, c = i % 8;
    const int orow = q / W_out, ocol = q - orow * W_out;
    *reinterpret_cast<uint4*>(y_n + (u.oh0 + orow) * p.y_stride[2] + ocol * p.y_stride[3] + c * 8) =
        *reinterpret_cast<const uint4*>(out_tile.chunk(q, c));
  }
}

// Whether the ReLU passes the gradient of a staged 16-bit output: not <= 0 (NaN passes, as in
// torch's ReLU backward). kInfBits: the type's +inf, the largest magnitude that is not a NaN.
template <typename T> struct HalfBits;
template <> struct HalfBits<__half> { static constexpr uint32_t kInfBits = 0x7c00u; };
template <> struct HalfBits<__nv_bfloat16> { static constexpr uint32_t kInfBits = 0x7f80u; };
template <typename T>
__device__ __forceinline__ bool relu_passes(uint32_t bits) {
  const uint32_t magnitude = bits & 0x7fffu;
  return magnitude > HalfBits<T>::kInfBits || (!(bits & 0x8000u) && magnitude != 0);
}

// The unit's ReLU mask bits (GroupedConvParams::relu_mask) from the staged outputs. A thread
// per (mask byte row, 4 channels of the tile): one 32-bit word, bit j of byte k for pixel
// 8 r + j, channel 4 i + k. Words whose 8 pixels all belong to the unit are stored; the at most
// two byte rows it shares with the neighbouring units (bands or images whose pixel counts are
// not multiples of 8) are merged with an atomicAnd and an atomicOr that touch this unit's bits
// only, so neither the order of the units nor the mask's old contents matter. The unit holding
// the last pixel also owns the bits past it (0).
template <typename T>
__device__ __forceinline__ void store_band_mask(const GroupedConvParams& p, const WorkUnit& u,
                                                SwizzledPixels<0> out_tile) {
  if (p.relu_mask == nullptr) return;
  const int64_t M = p.N * p.H_out * p.W_out;
  const int64_t m0 = (u.n * p.H_out + u.oh0) * p.W_out, m1 = m0 + u.band_pixels;
  const int64_t row0 = m0 >> 3;
  const int rows = static_cast<int>(((m1 + 7) >> 3) - row0);
  for (int i = threadIdx.x; i < rows * (kTileC / 4); i += kThreads) {
    const int64_t r = row0 + i / (kTileC / 4);
    const int c4 = (i % (kTileC / 4)) * 4;  // the word's first channel in the tile
    uint32_t word = 0, owned = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t m = r * 8 + j;
      if (m >= M && m1 == M) owned |= 0x01010101u << j;  // past the last pixel: 0
      if (m < m0 || m >= m1) continue;
      owned |= 0x01010101u << j;
      // channels c4 .. c4 + 3: 8 bytes of the pixel's chunk c4 / 8
      const uint32_t* four = reinterpret_cast<const uint32_t*>(
          out_tile.chunk(static_cast<int>(m - m0), c4 / 8) + 2 * (c4 % 8));
      const uint32_t lo = four[0], hi = four[1];
      const uint32_t halves[4] = {lo & 0xffffu, lo >> 16, hi & 0xffffu, hi >> 16};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (relu_passes<T>(halves[k])) word |= 1u << (8 * k + j);
      }
    }
    unsigned int* dst = reinterpret_cast<unsigned int*>(
        p.relu_mask + r * p.C_out + static_cast<int64_t>(u.ct) * kTileC + c4);
    if (owned == 0xffffffffu) {
      *dst = word;
    } else {
      atomicAnd(dst, word | ~owned);  // this unit's 0 bits
      atomicOr(dst, word);            // and its 1 bits
    }
  }
}

// Scale and shift of channels c, c + 1 (scalar loads: they may be views at any float offset).
__device__ __forceinline__ void load_scale_shift(const GroupedConvParams& p, int64_t c,
                                                 float2& scale, float2& shift) {
  scale = float2{p.scale[c], p.scale[c + 1]};
  shift = float2{p.shift[c], p.shift[c + 1]};
}

template <typename T, int kCpg, int kStride, bool kGated>
__global__ void __launch_bounds__(kThreads)
    grouped_conv_bn_relu_v3_kernel(GroupedConvParams p,
                                   const uint32_t* __restrict__ packed,  // pack_b_fragments
                                   Band band,
                                   int tiles_c,            // C / 64
                                   int bands_per_image) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using Class = V3Class<kCpg>;
  constexpr int kSG = Class::kSG;
  constexpr int kShift = kStride == 2 ? 1 : 0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;

  const WorkUnit u = work_unit(p, band, tiles_c, bands_per_image, kStride);
  const int ct = u.ct, band_pixels = u.band_pixels, W_out = static_cast<int>(p.W_out);
  unsigned char* smem = dynamic_shared_memory();
  const SwizzledPixels<kShift> in_tile{smem};
  const SwizzledPixels<0> out_tile{smem + band.out_offset};

  // 1. The input band and its halo: copies in flight while the B fragments load; an NCHW or a
  // gated input after them (its loads are the thread's own: B's go first).
  if constexpr (!kGated) {
    if (!band.x_by_planes) load_band<T, InputLoad::kCopies>(p, band, u, kStride, in_tile);
    ptx::cp_async_commit();
  }

  // B fragments of this warp's MMA group, for the whole CTA (overlaps the copies in flight).
  const int sg = warp % Class::kSuperGroups;
  uint32_t b[Class::kWords];
  {
    const uint4* src = reinterpret_cast<const uint4*>(packed) +
                       (static_cast<int64_t>(ct) * Class::kSuperGroups + sg) * (Class::kWords / 4) * 32 + lane;
#pragma unroll
    for (int v = 0; v < Class::kWords / 4; ++v) {
      const uint4 q = src[v * 32];
      b[4 * v] = q.x; b[4 * v + 1] = q.y; b[4 * v + 2] = q.z; b[4 * v + 3] = q.w;
    }
  }
  // Scale and shift of this lane's output channels: 2t, 2t+1 of each n-tile of the group.
  constexpr int kNTiles = kSG / 8;
  float2 scale[kNTiles], shift[kNTiles];
#pragma unroll
  for (int j = 0; j < kNTiles; ++j) {
    load_scale_shift(p, static_cast<int64_t>(ct) * kTileC + sg * kSG + j * 8 + 2 * t, scale[j],
                     shift[j]);
  }

  if constexpr (kGated) {
    load_band<T, InputLoad::kGated>(p, band, u, kStride, in_tile);
  } else if (band.x_by_planes) {
    load_band<T, InputLoad::kPlanes>(p, band, u, kStride, in_tile);
  }
  ptx::cp_async_wait<0>();
  __syncthreads();

  // 2. + 3. Per 16 output pixels: MMAs over the 9 taps, then the epilogue into out_tile.
  const int m_tiles = (band_pixels + 15) / 16;
  const int in_cols = band.in_cols;
  // the chunk of this lane's ldmatrix rows: SG 16 lanes 16-31 load the group's second 8 channels
  const int a_chunk = kSG == 8 ? sg : 2 * sg + lane / 16;
  for (int m = warp / Class::kSuperGroups; m < m_tiles; m += Class::kWarpsPerSG) {
    // This lane's A row: output pixel m*16 + lane%16 (clamped into the band; its results are
    // not stored), as input pixel q0 of the tile at tap (0, 0).
    const int pix = min_int(m * 16 + lane % 16, band_pixels - 1);
    const int orow = pix / W_out, ocol = pix - orow * W_out;
    const int q0 = orow * kStride * in_cols + ocol * kStride;
    float acc[kNTiles][4] = {};
    float acc_hi[4] = {0.f, 0.f, 0.f, 0.f};  // cpg 4: the second group of the pair
    if constexpr (kSG == 8) {
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        const int tap = 2 * s + lane / 16;  // lanes 16-31: the pair's second tap (k 8-15)
        uint32_t a[4];
        ptx::ldmatrix<4>(a, in_tile.chunk(q0 + (tap / 3) * in_cols + tap % 3, a_chunk));
        const uint32_t bs[2] = {b[2 * s], b[2 * s + 1]};
        if constexpr (Class::kSplitPairs) {
          // channels 2t, 2t+1 of the 8: group 0 for t < 2, group 1 otherwise
          const bool first = t < 2;
          const uint32_t a0[4] = {first ? a[0] : 0u, first ? a[1] : 0u, first ? a[2] : 0u, first ? a[3] : 0u};
          const uint32_t a1[4] = {first ? 0u : a[0], first ? 0u : a[1], first ? 0u : a[2], first ? 0u : a[3]};
          ptx::mma_m16n8k16<T>(acc[0], a0, bs);
          ptx::mma_m16n8k16<T>(acc_hi, a1, bs);
        } else {
          ptx::mma_m16n8k16<T>(acc[0], a, bs);
        }
      }
      uint32_t a[2];
      ptx::ldmatrix<2>(a, in_tile.chunk(q0 + 2 * in_cols + 2, a_chunk));  // tap 8
      const uint32_t bs[1] = {b[8]};
      if constexpr (Class::kSplitPairs) {
        const bool first = t < 2;
        const uint32_t a0[2] = {first ? a[0] : 0u, first ? a[1] : 0u};
        const uint32_t a1[2] = {first ? 0u : a[0], first ? 0u : a[1]};
        ptx::mma_m16n8k8<T>(acc[0], a0, bs);
        ptx::mma_m16n8k8<T>(acc_hi, a1, bs);
      } else {
        ptx::mma_m16n8k8<T>(acc[0], a, bs);
      }
    } else {
#pragma unroll
      for (int tap = 0; tap < 9; ++tap) {
        uint32_t a[4];
        ptx::ldmatrix<4>(a, in_tile.chunk(q0 + (tap / 3) * in_cols + tap % 3, a_chunk));
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
          const uint32_t bs[2] = {b[(tap * 2 + j) * 2], b[(tap * 2 + j) * 2 + 1]};
          ptx::mma_m16n8k16<T>(acc[j], a, bs);
        }
      }
    }
    if constexpr (Class::kSplitPairs) {
      if (t >= 2) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[0][e] = acc_hi[e];
      }
    }
    // Epilogue: lane holds pixels m*16 + g and + 8, channels j*8 + 2t, + 1 of the group.
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int out_pix = m * 16 + g + 8 * half;
      if (out_pix >= band_pixels) continue;
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) {
        stage_pair<T>(p, out_tile, out_pix, sg * kSG + j * 8 + 2 * t, acc[j][2 * half],
                      acc[j][2 * half + 1], scale[j], shift[j]);
      }
    }
  }
  __syncthreads();

  // 4. The band's output, and its ReLU mask when asked for.
  if (band.y_by_planes) {
    store_band_by_planes<T>(p, u, out_tile);
  } else {
    store_band<T>(p, u, out_tile);
  }
  store_band_mask<T>(p, u, out_tile);
#else
  __trap();  // built only for sm_80+; the planner never selects v3 below sm_80
#endif
}

// cpg 32/64: w_rows[co][tap * cpg + ci] (each row padded to wide_weight_pitch(cpg) elements,
// zeros) for every output channel, the layout the wide kernel copies into shared memory.
template <typename T, int kCpg>
__global__ void __launch_bounds__(kPackThreads)
    pack_weight_rows_kernel(GroupedConvParams p, T* __restrict__ w_rows) {
  constexpr int kPitch = wide_weight_pitch(kCpg);
  const T* __restrict__ w = static_cast<const T*>(p.w);
  const int64_t total = p.C_out * kPitch;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t co = i / kPitch;
    const int e = static_cast<int>(i % kPitch), tap = e / kCpg, ci = e % kCpg;
    w_rows[i] = e < 9 * kCpg ? w[co * p.w_stride[0] + ci * p.w_stride[1] +
                                 (tap / 3) * p.w_stride[2] + (tap % 3) * p.w_stride[3]]
                             : Convert<T>::from_float(0.f);
  }
}

// One warp's 32 output channels (4 n-tiles) for kM m16 tiles of pixels (rows at input pixels
// q0[i] for tap (0, 0)): every B fragment from shared memory once for the kM tiles.
template <int kM, typename T, int kCpg, int kShift>
__device__ __forceinline__ void wide_mainloop(float (&acc)[kM][4][4], const int (&q0)[kM],
                                              SwizzledPixels<kShift> in_tile, int in_cols,
                                              int a_chunk0, const unsigned char* b_row) {
  constexpr int kPitchBytes = wide_weight_pitch(kCpg) * 2;
#pragma unroll 1
  for (int tap = 0; tap < 9; ++tap) {
    const int tap_offset = (tap / 3) * in_cols + tap % 3;
#pragma unroll
    for (int k = 0; k < kCpg / 16; ++k) {
      // n-tiles (0, 1) and (2, 3), k 16 at a time: matrices (n-tile, k lo / k hi)
      uint32_t bq[2][4];
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        ptx::ldmatrix<4>(bq[jj], b_row + jj * 16 * kPitchBytes + (tap * kCpg + k * 16) * 2);
      }
#pragma unroll
      for (int i = 0; i < kM; ++i) {
        uint32_t a[4];
        ptx::ldmatrix<4>(a, in_tile.chunk(q0[i] + tap_offset, a_chunk0 + 2 * k));
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const uint32_t b[2] = {bq[j / 2][(j % 2) * 2], bq[j / 2][(j % 2) * 2 + 1]};
          ptx::mma_m16n8k16<T>(acc[i][j], a, b);
        }
      }
    }
  }
}

template <typename T, int kCpg, int kStride, bool kGated>
__global__ void __launch_bounds__(kThreads)
    grouped_conv_bn_relu_v3_wide_kernel(GroupedConvParams p,
                                        const T* __restrict__ w_rows,  // pack_weight_rows
                                        Band band,
                                        int tiles_c,            // C / 64
                                        int bands_per_image) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  static_assert(kCpg == 32 || kCpg == 64, "the wide kernel covers cpg 32 and 64");
  constexpr int kShift = kStride == 2 ? 1 : 0;
  constexpr int kPitch = wide_weight_pitch(kCpg);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const WorkUnit u = work_unit(p, band, tiles_c, bands_per_image, kStride);
  unsigned char* smem = dynamic_shared_memory();
  const SwizzledPixels<kShift> in_tile{smem};
  const SwizzledPixels<0> out_tile{smem + band.out_offset};
  unsigned char* w_s = smem + band.w_offset;  // [64 output channels][kPitch]

  // 1. The input band and the tile's weights (one contiguous block), in one group of copies;
  // an NCHW or a gated input through registers while the weights' copies are in flight.
  if constexpr (!kGated) {
    if (!band.x_by_planes) load_band<T, InputLoad::kCopies>(p, band, u, kStride, in_tile);
  }
  {
    const unsigned char* src =
        reinterpret_cast<const unsigned char*>(w_rows + static_cast<int64_t>(u.ct) * kTileC * kPitch);
    for (int i = threadIdx.x; i < kTileC * kPitch * 2 / 16; i += kThreads) {
      ptx::cp_async_16(w_s + i * 16, src + i * 16, true);
    }
  }
  ptx::cp_async_commit();
  if constexpr (kGated) {
    load_band<T, InputLoad::kGated>(p, band, u, kStride, in_tile);
  } else if (band.x_by_planes) {
    load_band<T, InputLoad::kPlanes>(p, band, u, kStride, in_tile);
  }

  // Warp w: output channels nb*32 .. nb*32 + 31 of the tile (nb = w % 2), m16 tiles w/2, +4, ...
  const int nb = warp % 2;
  const int ci0 = (nb * 32 / kCpg) * kCpg;  // the first input channel of their group
  const int a_chunk0 = ci0 / 8 + lane / 16;  // lanes 16-31: the k step's second 8 channels
  // this lane's ldmatrix row of B: matrix lane/8 = (n-tile lane/16, k half (lane/8) % 2)
  const unsigned char* b_row =
      w_s + (nb * 32 + (lane / 16) * 8 + lane % 8) * kPitch * 2 + ((lane / 8) % 2) * 16;
  float2 scale[4], shift[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    load_scale_shift(p, static_cast<int64_t>(u.ct) * kTileC + nb * 32 + j * 8 + 2 * t, scale[j],
                     shift[j]);
  }
  ptx::cp_async_wait<0>();
  __syncthreads();

  // 2. + 3. Per one or two m16 tiles: the MMAs, then the epilogue into out_tile.
  const int W_out = static_cast<int>(p.W_out), in_cols = band.in_cols;
  const int m_tiles = (u.band_pixels + 15) / 16;
  auto row_of = [&](int m) {  // input pixel of this lane's A row at tap (0, 0), clamped
    const int pix = min_int(m * 16 + lane % 16, u.band_pixels - 1);
    const int orow = pix / W_out, ocol = pix - orow * W_out;
    return orow * kStride * in_cols + ocol * kStride;
  };
  auto epilogue = [&](int m, const float (&acc)[4][4]) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int out_pix = m * 16 + g + 8 * half;
      if (out_pix >= u.band_pixels) continue;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        stage_pair<T>(p, out_tile, out_pix, nb * 32 + j * 8 + 2 * t, acc[j][2 * half],
                      acc[j][2 * half + 1], scale[j], shift[j]);
      }
    }
  };
  for (int m = warp / 2; m < m_tiles; m += 8) {
    if (m + 4 < m_tiles) {  // two tiles share every B fragment
      float acc[2][4][4] = {};
      const int q0[2] = {row_of(m), row_of(m + 4)};
      wide_mainloop<2, T, kCpg>(acc, q0, in_tile, in_cols, a_chunk0, b_row);
      epilogue(m, acc[0]);
      epilogue(m + 4, acc[1]);
    } else {
      float acc[1][4][4] = {};
      const int q0[1] = {row_of(m)};
      wide_mainloop<1, T, kCpg>(acc, q0, in_tile, in_cols, a_chunk0, b_row);
      epilogue(m, acc[0]);
    }
  }
  __syncthreads();

  // 4. The band's output, and its ReLU mask when asked for.
  if (band.y_by_planes) {
    store_band_by_planes<T>(p, u, out_tile);
  } else {
    store_band<T>(p, u, out_tile);
  }
  store_band_mask<T>(p, u, out_tile);
#else
  __trap();  // built only for sm_80+; the planner never selects v3 below sm_80
#endif
}

using v3::aligned16;
using v3::channels_last_aligned16;

// One v3 kernel over the grid of (channel tile, band, image) work units, after its weights
// were packed into `weights`. The shared-memory attribute is always the cap, never this call's
// size: it is per function, shared by every host thread, and a smaller value set by one call
// must not fail another's larger launch.
template <typename W>
cudaError_t launch_bands(void (*kernel)(GroupedConvParams, const W*, Band, int, int),
                         const GroupedConvParams& p, const Band& band, const W* weights,
                         cudaStream_t stream) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(kMaxSmemBytes));
  if (err != cudaSuccess) return err;
  const int64_t tiles_c = p.C_out / kTileC;
  const int64_t bands = (p.H_out + band.rows - 1) / band.rows;
  const int64_t blocks = tiles_c * bands * p.N;
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  return launch_kernel(kernel, dim3(static_cast<unsigned>(blocks)), dim3(kThreads),
                       band.smem_bytes, stream, p, weights, band, static_cast<int>(tiles_c),
                       static_cast<int>(bands));
}

template <typename T, int kCpg, int kStride, bool kGated>
cudaError_t launch_class(const GroupedConvParams& p, const Band& band, void* workspace,
                         cudaStream_t stream) {
  using Class = V3Class<kCpg>;
  uint32_t* packed = static_cast<uint32_t*>(workspace);
  const int64_t words = p.C_out / Class::kSG * 32 * Class::kWords;
  const cudaError_t err = launch_kernel(pack_b_fragments_kernel<T, kCpg>,
                                        grid_stride_grid(words, kPackThreads, 4096),
                                        dim3(kPackThreads), 0, stream, p, packed);
  if (err != cudaSuccess) return err;
  return launch_bands(grouped_conv_bn_relu_v3_kernel<T, kCpg, kStride, kGated>, p, band,
                      static_cast<const uint32_t*>(packed), stream);
}

template <typename T, int kCpg, int kStride, bool kGated>
cudaError_t launch_wide(const GroupedConvParams& p, const Band& band, void* workspace,
                        cudaStream_t stream) {
  T* w_rows = static_cast<T*>(workspace);
  const cudaError_t err = launch_kernel(
      pack_weight_rows_kernel<T, kCpg>,
      grid_stride_grid(p.C_out * wide_weight_pitch(kCpg), kPackThreads, 4096),
      dim3(kPackThreads), 0, stream, p, w_rows);
  if (err != cudaSuccess) return err;
  return launch_bands(grouped_conv_bn_relu_v3_wide_kernel<T, kCpg, kStride, kGated>, p, band,
                      static_cast<const T*>(w_rows), stream);
}

template <typename T>
cudaError_t launch_typed(const GroupedConvParams& p, const Band& band, void* workspace,
                         cudaStream_t stream) {
  const int64_t cpg = p.C_in / p.groups;
  if (p.gated_x.on) {  // dgrad's conv: stride 1 only (gated_input_ok)
    switch (cpg) {
      case 4: return launch_class<T, 4, 1, true>(p, band, workspace, stream);
      case 8: return launch_class<T, 8, 1, true>(p, band, workspace, stream);
      case 16: return launch_class<T, 16, 1, true>(p, band, workspace, stream);
      case 32: return launch_wide<T, 32, 1, true>(p, band, workspace, stream);
      case 64: return launch_wide<T, 64, 1, true>(p, band, workspace, stream);
    }
    return cudaErrorInvalidValue;
  }
  const bool s2 = p.stride_h == 2;
  switch (cpg) {
    case 4: return s2 ? launch_class<T, 4, 2, false>(p, band, workspace, stream)
                      : launch_class<T, 4, 1, false>(p, band, workspace, stream);
    case 8: return s2 ? launch_class<T, 8, 2, false>(p, band, workspace, stream)
                      : launch_class<T, 8, 1, false>(p, band, workspace, stream);
    case 16: return s2 ? launch_class<T, 16, 2, false>(p, band, workspace, stream)
                       : launch_class<T, 16, 1, false>(p, band, workspace, stream);
    case 32: return s2 ? launch_wide<T, 32, 2, false>(p, band, workspace, stream)
                       : launch_wide<T, 32, 1, false>(p, band, workspace, stream);
    case 64: return s2 ? launch_wide<T, 64, 2, false>(p, band, workspace, stream)
                       : launch_wide<T, 64, 1, false>(p, band, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

// A gated input (GatedInput) as the loader reads it: stride 1 (the kernels are built for no
// other), a spread of 1 or 2 whose source grid covers the conv's (every staged pixel's source
// pixel exists), the mask's 8-byte words aligned.
static bool gated_input_ok(const GroupedConvParams& p) {
  const GatedInput& g = p.gated_x;
  if (!g.on) return true;
  if (p.stride_h != 1 || p.stride_w != 1 || g.spread_shift < 0 || g.spread_shift > 1) return false;
  const int64_t s = int64_t{1} << g.spread_shift;
  if (g.src_H != (p.H + s - 1) / s || g.src_W != (p.W + s - 1) / s) return false;
  return reinterpret_cast<uintptr_t>(g.mask) % 8 == 0;
}

// The band v3 runs p with; Band{} (rows 0) where v3 does not take p.
static Band band_if_applies(const GroupedConvParams& p, DType dtype, int device_major) {
  if (!v3::takes_conv(p, dtype, device_major) || !gated_input_ok(p)) return Band{};
  // x and y: 16-byte channel chunks, or rows contiguous (read and written by channel planes;
  // a gated x too)
  if (!channels_last_aligned16(p.x, p.x_stride) && !v3::rows_contiguous(p.x_stride)) return Band{};
  if (!channels_last_aligned16(p.y, p.y_stride) && !v3::rows_contiguous(p.y_stride)) return Band{};
  return plan_band(p);
}

bool grouped_conv_v3_applies(const GroupedConvParams& p, DType dtype, int device_major) {
  return band_if_applies(p, dtype, device_major).rows > 0;
}

int grouped_conv_v3_band_rows(const GroupedConvParams& p) { return plan_band(p).rows; }

int64_t grouped_conv_v3_workspace_bytes(const GroupedConvParams& p) {
  const int64_t cpg = p.C_in / p.groups;
  if (cpg >= 32) return p.C_out * wide_weight_pitch(static_cast<int>(cpg)) * 2;  // weight rows
  const int64_t sg = cpg < 8 ? 8 : cpg, words = sg == 8 ? 12 : 36;  // B fragments
  return p.C_out / sg * 32 * words * static_cast<int64_t>(sizeof(uint32_t));
}

cudaError_t launch_grouped_conv_bn_relu_v3(const GroupedConvParams& p, DType dtype,
                                           void* workspace, cudaStream_t stream) {
  if (p.N * p.C_out * p.H_out * p.W_out == 0) return cudaSuccess;
  const Band band = band_if_applies(p, dtype, 8);
  if (!aligned16(workspace) || band.rows == 0) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::kFloat16: return launch_typed<__half>(p, band, workspace, stream);
    case DType::kBFloat16: return launch_typed<__nv_bfloat16>(p, band, workspace, stream);
    case DType::kFloat32: break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace resnext_kernels
