// wgrad on tensor cores, on v3's machinery (swizzled_band.cuh): the partial sums of
//   G[co, ci, tap] = sum over output pixels m of gp[m, co] * x[m's input pixel under tap, ci]
// (gp = grad_y where the forward's ReLU passed it, else 0) and of sum_m gp[m, co], per split of
// the pixels, in the direct wgrad's workspace layout, so that its finalize (grad_w = G * scale,
// grad_scale = sum(G * w), grad_shift; grouped_conv_backward.cu) adds the splits in order.
//
// Per group, G is a GEMM with the pixels as K: [cpg_out x pixels] . [pixels x cpg_in] per tap.
// Work unit: image n, a band of output rows, a 64-channel tile, as v3's forward.
//  1. Loader: the band's input rows and halo by 16-byte cp.async copies into a swizzled tile
//     (v3's loader: padding is the zero fill), or from an x with contiguous rows (NCHW) by
//     v3's plane loader (2-byte loads a lane per pixel, WgradBand::x_by_planes); and the band's
//     gradient gp: grad_y read as 16-byte chunks, or from channel planes
//     (load_gradient_by_planes), selected by the mask's bits (a blocked NaN stays out), stored
//     swizzled (an NCHW x is loaded through registers before gp, not in flight beside it);
//     each thread issues 2 items' loads (raw: the chunk, or its 8 planes' values, and its mask
//     word) before it uses
//     any (two round trips for a band of 128 pixels; 4 in flight spilled on sm_80, where the
//     accumulators already hold most of the 128 registers two CTAs per SM leave). And a table of each band pixel's input pixel at tap (0, 0) (-1 past
//     the band), so the mainloop divides nothing. x's tile is keyed by output pixel
//     (OutputKeyedPixels), so an ldmatrix of 8 pixels that wrap to the next output row has no
//     bank conflict.
//  2. Mainloop, 16 pixels (one k16 step) at a time: warp w owns 16 output channels (an m16
//     tile), 16 input channels (two n8 tiles) of their group and half of the taps (0-4 or 5-8;
//     warps w and w + 4, on the same SM sub-partition, the two halves of one tile), its fp32
//     accumulators in registers for the CTA's whole split. A = gp^T and B = the
//     tap-shifted x both come from ldmatrix.trans, one row address (a pixel) per lane: the tap
//     shift and the stride cost nothing. cpg 4 and 8 compute the 16 x 16 block around the
//     diagonal and keep its groups' blocks (4x and 2x MMA waste, none in the bytes); cpg 32 and 64
//     have 16 and 32 (m16, n16, taps/2) jobs: 2 and 4 CTAs per channel tile ("parts"), each
//     reading the band. grad_shift's sum of gp is one more MMA, A times a B of ones, on one
//     taps-5-8 warp per m16 tile.
//  3. Partial sums: each warp its elements, each split its own slice: no atomics, the same
//     from run to run. Pixels past the band in its last k16 step read a zero pixel and a zero
//     gradient (a NaN in x must not meet them: 0 * NaN is NaN).
// Non-finite values behave as aten's convolution_backward: a product of zero padding and a
// NaN gradient is NaN, a NaN in x reaches only its own channel's column, and the cross-group
// products of cpg 4 and 8 are computed but never stored.
#include <algorithm>
#include <cstdint>

#include "kernels/dtype_traits.cuh"
#include "kernels/launch.cuh"
#include "kernels/params.h"
#include "kernels/ptx_sm80.cuh"
#include "kernels/swizzled_band.cuh"
#include "kernels/vector_access.cuh"

namespace resnext_kernels {
namespace {

using v3::kPixelBytes;
using v3::kTileC;
using v3::OutputKeyedPixels;
using v3::SwizzledPixels;
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kChunks = kTileC / 8;                // 16-byte chunks per pixel
constexpr int kMaxBandPixels = 128;                // output pixels per work unit
constexpr size_t kMaxSmemBytes = 99 * 1024;        // as v3's: every sm_80+ part's block limit
constexpr int64_t kTargetCtas = 2 * 132;           // one wave of two CTAs per SM on an H100
constexpr int kLoadsInFlight = 2;                  // gp chunks a thread loads before using any
constexpr int kTapsPerHalf = 5;                    // taps 0-4, then 5-8

// Per channels-per-group class: the 16-channel input blocks of a group, and CTAs per tile.
template <int kCpg>
struct WgradClass {
  static_assert(kCpg == 4 || kCpg == 8 || kCpg == 16 || kCpg == 32 || kCpg == 64, "cpg");
  static constexpr int kCiBlocks = kCpg > 16 ? kCpg / 16 : 1;  // n16 blocks per m16 tile
  static constexpr int kParts = kCiBlocks;  // (4 m16 tiles x kCiBlocks x 2 tap halves) / 8 warps
};

int parts_of(int64_t cpg) { return cpg > 16 ? static_cast<int>(cpg / 16) : 1; }

// The band geometry of one call; shared memory: the input band with its halo, the gradient
// tile (whole k16 steps), a zero pixel, the pixels' tap (0, 0) table (an int per gp pixel).
struct WgradBand {
  int rows = 0;       // output rows per band (the last band of an image may have fewer)
  int in_cols = 0;    // input columns staged: (W_out - 1) * stride + 3
  // per tap (kh, kw), bits 3 tap .. 3 tap + 2: ((kh >> s) * W_out + (kw >> s)) % 8, what the tap
  // adds to an output pixel's key in the x tile (OutputKeyedPixels; s = log2(stride))
  uint32_t tap_keys = 0;
  size_t gp_offset = 0, zero_offset = 0, table_offset = 0, smem_bytes = 0;
  // x and grad_y without 16-byte channel chunks but with contiguous rows (NCHW): read by channel
  // planes (v3::load_halo_rows_by_planes, load_gradient_by_planes)
  bool x_by_planes = false, gp_by_planes = false;
};

WgradBand plan_band(const GroupedConvBackwardParams& p) {
  const int64_t s = p.stride_h;
  WgradBand b;
  b.in_cols = static_cast<int>((p.W_out - 1) * s + 3);
  auto in_rows = [&](int64_t rows) { return (rows - 1) * s + 3; };
  auto gp_pixels = [&](int64_t rows) { return (rows * p.W_out + 15) / 16 * 16; };
  auto smem = [&](int64_t rows) {
    return static_cast<size_t>(in_rows(rows) * b.in_cols + gp_pixels(rows) + 1) * kPixelBytes +
           static_cast<size_t>(gp_pixels(rows)) * sizeof(int);
  };
  int64_t rows_max = std::max<int64_t>(1, std::min<int64_t>(p.H_out, kMaxBandPixels / p.W_out));
  while (rows_max > 0 && smem(rows_max) > kMaxSmemBytes) --rows_max;
  if (rows_max == 0) return WgradBand{};
  const int64_t bands = (p.H_out + rows_max - 1) / rows_max;
  b.rows = static_cast<int>((p.H_out + bands - 1) / bands);  // even bands: no short tail
  const int shift = s == 2 ? 1 : 0;
  for (int tap = 0; tap < 9; ++tap) {
    const int64_t key = ((tap / 3) >> shift) * p.W_out + ((tap % 3) >> shift);
    b.tap_keys |= static_cast<uint32_t>(key % 8) << (3 * tap);
  }
  b.gp_offset = static_cast<size_t>(in_rows(b.rows) * b.in_cols) * kPixelBytes;
  b.zero_offset = b.gp_offset + static_cast<size_t>(gp_pixels(b.rows)) * kPixelBytes;
  b.table_offset = b.zero_offset + kPixelBytes;
  b.smem_bytes = b.table_offset + gp_pixels(b.rows) * sizeof(int);
  b.x_by_planes = !v3::channels_last_aligned16(p.x, p.x_stride);
  b.gp_by_planes = !v3::channels_last_aligned16(p.grad_y, p.grad_y_stride);
  return b;
}

int64_t bands_per_image(const GroupedConvBackwardParams& p, const WgradBand& band) {
  return (p.H_out + band.rows - 1) / band.rows;
}

// Splits of the work units (image, band): as many CTAs as fit one wave (kTargetCtas: rounding
// up put 288 CTAs, 1.09 waves, on cpg 32 layers), no more splits than units, and the partial
// sums (which the finalize reads) at most half the bytes of x and grad_y.
int64_t plan_splits(const GroupedConvBackwardParams& p, const WgradBand& band) {
  const int64_t cpg = p.C_in / p.groups;
  const int64_t units = p.N * bands_per_image(p, band);
  const int64_t tile_ctas = p.C_out / kTileC * parts_of(cpg);
  const int64_t wanted = kTargetCtas / tile_ctas;
  const int64_t split_bytes = p.C_out * (9 * cpg + 1) * static_cast<int64_t>(sizeof(float));
  const int64_t input_bytes = p.N * (p.H * p.W + p.H_out * p.W_out) * p.C_in * 2;
  const int64_t cap = input_bytes / (2 * split_bytes);
  return std::max<int64_t>(1, std::min<int64_t>({wanted, units, cap}));
}

__device__ __forceinline__ int min_int(int a, int b) { return a < b ? a : b; }

// Two 16-bit ones, an mma operand register.
__device__ __forceinline__ uint32_t one_pair(__half) { return 0x3c003c00u; }
__device__ __forceinline__ uint32_t one_pair(__nv_bfloat16) { return 0x3f803f80u; }

// The band's gradient gp (output rows oh0 .. oh0 + rows - 1 of image n, channel tile ct) from a
// grad_y with contiguous rows (NCHW), through registers into gp_tile; each thread's stores are
// complete when this returns. A work item is one 16-byte chunk (8 channels of one band pixel),
// a lane per pixel, chunk-major, so a warp's load of one channel is 32 neighbouring pixels of
// its plane (64 contiguous bytes within a row); with the 8 loads, the mask's 8-byte word of those
// channels (one word for 8 neighbouring pixels). The chunk is then selected by the pixel's mask
// bits, as the chunked loader's. The last k16 step's pixels past the band store zeros (their
// mask word is 0; their loads read the band's last pixel, so every lane issues the same loads).
// The walk divides nothing per item: a thread's item i = c * slots + s advances by kThreads (a
// multiple of 16); c and s step by subtraction, and the pixel's row comes from a float
// reciprocal, exact here (q + 0.5 is at least 0.5 / W_out from a row boundary, and q < 2^16
// keeps the product's error far below that).
template <typename T>
__device__ __forceinline__ void load_gradient_by_planes(const GroupedConvBackwardParams& p,
                                                        int64_t n, int oh0, int band_pixels,
                                                        int k_steps, int ct,
                                                        SwizzledPixels<0> gp_tile) {
  static_assert(sizeof(T) == 2, "16-bit lanes");
  const int64_t c_stride = p.grad_y_stride[1];
  const uint16_t* grad_y = reinterpret_cast<const uint16_t*>(p.grad_y) + n * p.grad_y_stride[0] +
                           oh0 * p.grad_y_stride[2] + static_cast<int64_t>(ct) * kTileC * c_stride;
  const int64_t m_unit = (n * p.H_out + oh0) * p.W_out;  // the band's first flat pixel
  const uint8_t* mask = p.relu_mask != nullptr
                            ? p.relu_mask + static_cast<int64_t>(ct) * kTileC : nullptr;
  const int W_out = static_cast<int>(p.W_out);
  const float inv_w = 1.0f / static_cast<float>(W_out);  // exact: band pixels < 2^16
  const int slots = k_steps * 16;  // items per chunk: the band's pixels in whole k16 steps
  int c = static_cast<int>(threadIdx.x) / slots;
  int s = static_cast<int>(threadIdx.x) - c * slots;
  while (c < kChunks) {
    // first every load of the items, raw (as the chunked loader: a shift or a pack of a loaded
    // value here would put its first use before the next item's loads), then the stores
    uint16_t v[kLoadsInFlight][8];
    uint64_t mask_word[kLoadsInFlight];  // byte j: channel 8 c + j; bit m % 8: pixel m's
    int q_of[kLoadsInFlight], c_of[kLoadsInFlight];
#pragma unroll
    for (int r = 0; r < kLoadsInFlight; ++r) {
      const bool real = c < kChunks && s < band_pixels;
      const int qq = real ? s : band_pixels - 1;
      const int cc = c < kChunks ? c : kChunks - 1;
      const int orow = static_cast<int>((static_cast<float>(qq) + 0.5f) * inv_w);
      const int ocol = qq - orow * W_out;
      q_of[r] = c < kChunks ? s : -1;
      c_of[r] = cc;
      // (grad_y_stride[3] == 1: rows contiguous)
      const uint16_t* plane = grad_y + orow * p.grad_y_stride[2] + ocol + cc * 8 * c_stride;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        v[r][e] = *plane;
        plane += c_stride;
      }
      uint64_t word = ~uint64_t{0};  // no ReLU: every gradient passes
      if (mask != nullptr) {
        word = *reinterpret_cast<const uint64_t*>(mask + ((m_unit + qq) >> 3) * p.C_out + cc * 8);
      }
      mask_word[r] = real ? word : 0;
      s += kThreads;
      while (s >= slots) {
        s -= slots;
        ++c;
      }
    }
#pragma unroll
    for (int r = 0; r < kLoadsInFlight; ++r) {
      if (q_of[r] < 0) continue;
      ptx::st_shared_16(gp_tile.chunk(q_of[r], c_of[r]),
                        v3::select_by_mask(v3::pack_planes(v[r]),
                                           mask_word[r] >> ((m_unit + q_of[r]) & 7)));
    }
  }
}

template <typename T, int kCpg, int kStride>
__global__ void __launch_bounds__(kThreads, 2)
    grouped_conv_wgrad_v3_kernel(GroupedConvBackwardParams p, WgradBand band,
                                 int tiles_c,             // C / 64
                                 int bands_per_image,
                                 int64_t units,           // N * bands_per_image
                                 int64_t splits,
                                 float* __restrict__ partials) {  // [splits][C][9 cpg + 1]
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using Class = WgradClass<kCpg>;
  constexpr int kShift = kStride == 2 ? 1 : 0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;

  // Grid: channel tile fastest, then the part, then the split.
  const int ct = static_cast<int>(blockIdx.x % static_cast<unsigned>(tiles_c));
  const unsigned rest = blockIdx.x / static_cast<unsigned>(tiles_c);
  const int part = static_cast<int>(rest % Class::kParts);
  const int64_t split = rest / Class::kParts;
  const int64_t unit_begin = split * units / splits, unit_end = (split + 1) * units / splits;

  // This warp's job: m16 tile mt (output channels 16 mt ..), n16 block cb (input channels
  // 16 cb .. of the same group), taps 5 th .. 5 th + 4 (th 1: 5-8). Warps w and w + 4 share
  // an SM sub-partition (w % 4) and take the two halves of one (mt, cb): each sub-partition
  // issues 9 taps' work.
  const int th = warp / 4;
  const int job = part * 4 + warp % 4;  // (mt, cb) pairs: 4 m16 tiles x kCiBlocks
  const int mt = job / Class::kCiBlocks;
  const int cb = (kCpg > 16 ? (mt * 16 / kCpg) * (kCpg / 16) : mt) + job % Class::kCiBlocks;
  const int tap0 = th * kTapsPerHalf;
  const int taps = th == 0 ? kTapsPerHalf : 9 - kTapsPerHalf;

  unsigned char* smem = dynamic_shared_memory();
  const int W_out = static_cast<int>(p.W_out), in_cols = band.in_cols;
  const OutputKeyedPixels<kShift> in_tile{smem, W_out};  // (W_out: the loader's keys)
  const SwizzledPixels<0> gp_tile{smem + band.gp_offset};
  unsigned char* zero_pixel = smem + band.zero_offset;
  int* q0_table = reinterpret_cast<int*>(smem + band.table_offset);
  if (threadIdx.x < kChunks) {
    *reinterpret_cast<uint4*>(zero_pixel + 16 * threadIdx.x) = make_uint4(0u, 0u, 0u, 0u);
  }

  const T* __restrict__ grad_y = static_cast<const T*>(p.grad_y);
  const int my_chunk = threadIdx.x % kChunks;  // the gp chunk this thread always loads
  // grad_shift's sum of gp: one warp per m16 tile (a taps-5-8 warp, one MMA fewer per step
  // than its partner) multiplies A by a B of ones: every column of its accumulator is the sum
  // over the pixels of its 16 channels' gp
  const bool sums_gp = th == 1 && job % Class::kCiBlocks == 0;
  const uint32_t ones = one_pair(T{});
  float gp_sum[4] = {0.f, 0.f, 0.f, 0.f};
  float acc[kTapsPerHalf][2][4] = {};

  for (int64_t unit = unit_begin; unit < unit_end; ++unit) {
    const int64_t n = unit / bands_per_image;
    const int oh0 = static_cast<int>(unit - n * bands_per_image) * band.rows;
    const int rows = min_int(band.rows, static_cast<int>(p.H_out) - oh0);
    const int band_pixels = rows * W_out;
    const int k_steps = (band_pixels + 15) / 16;

    // 1. x's band (asynchronous, or from channel planes through registers), then gp through
    // registers.
    const T* x_tile = static_cast<const T*>(p.x) + n * p.x_stride[0] +
                      static_cast<int64_t>(ct) * kTileC * p.x_stride[1];
    const int ih0 = oh0 * kStride - static_cast<int>(p.pad_h), in_rows = (rows - 1) * kStride + 3;
    if (band.x_by_planes) {
      v3::load_halo_rows_by_planes<kThreads, kLoadsInFlight>(
          x_tile, p.x_stride, p.H, p.W, ih0, static_cast<int>(p.pad_w), in_rows, in_cols, in_tile);
    } else {
      v3::load_halo_rows_async<kThreads>(x_tile, p.x_stride, p.H, p.W, ih0,
                                         static_cast<int>(p.pad_w), in_rows, in_cols, p.x,
                                         in_tile);
      ptx::cp_async_commit();
    }
    const int64_t m_unit = (n * p.H_out + oh0) * p.W_out;  // the unit's first flat pixel
    const int64_t co = static_cast<int64_t>(ct) * kTileC + my_chunk * 8;
    const int gp_chunks = band.gp_by_planes ? 0 : k_steps * 16 * kChunks;
    if (band.gp_by_planes) {
      load_gradient_by_planes<T>(p, n, oh0, band_pixels, k_steps, ct, gp_tile);
    }
    for (int i0 = threadIdx.x; i0 < gp_chunks; i0 += kLoadsInFlight * kThreads) {
      // first every load of up to kLoadsInFlight chunks, raw (so none waits for another: a
      // shift or an unpack of a loaded value inside this loop made each load's first use
      // follow it, one load in flight), then the selects and stores
      uint4 raw[kLoadsInFlight];
      uint64_t mask_word[kLoadsInFlight];  // byte j: channel co + j; bit m % 8: pixel m's
#pragma unroll
      for (int r = 0; r < kLoadsInFlight; ++r) {
        const int q = (i0 + r * kThreads) / kChunks;  // (i0 + r * kThreads) % kChunks == my_chunk
        raw[r] = make_uint4(0u, 0u, 0u, 0u);
        mask_word[r] = ~uint64_t{0};  // no ReLU: every gradient passes
        if (q < band_pixels) {
          const int orow = q / W_out, ocol = q - orow * W_out;
          raw[r] = ptx::ld_global_nc_16(grad_y + n * p.grad_y_stride[0] +
                                        (oh0 + orow) * p.grad_y_stride[2] +
                                        ocol * p.grad_y_stride[3] + co);
          const int64_t m = m_unit + q;
          if (p.relu_mask != nullptr) {
            mask_word[r] = *reinterpret_cast<const uint64_t*>(p.relu_mask + (m >> 3) * p.C_out + co);
          }
        } else {
          mask_word[r] = 0;  // the last k16 step's pixels past the band: 0
        }
      }
#pragma unroll
      for (int r = 0; r < kLoadsInFlight; ++r) {
        const int i = i0 + r * kThreads;
        if (i >= gp_chunks) break;
        const int q = i / kChunks;
        // (the pixel's bit recomputed here: a register fewer per load)
        ptx::st_shared_16(gp_tile.chunk(q, my_chunk),
                          v3::select_by_mask(raw[r], mask_word[r] >> ((m_unit + q) & 7)));
      }
    }
    // each band pixel's input pixel at tap (0, 0); -1 for the last step's pixels past the band
    for (int q = threadIdx.x; q < k_steps * 16; q += kThreads) {
      const int orow = q / W_out, ocol = q - orow * W_out;
      q0_table[q] = q < band_pixels ? orow * kStride * in_cols + ocol * kStride : -1;
    }
    ptx::cp_async_wait<0>();
    __syncthreads();

    // 2. Per k16 step: A = gp^T (16 output channels x 16 pixels), B = x under each tap.
    for (int ks = 0; ks < k_steps; ++ks) {
      // A's matrices (ldmatrix order = a0..a3): (co lo, k lo), (co hi, k lo), (co lo, k hi),
      // (co hi, k hi); lane 8i + r gives pixel row r of matrix i.
      uint32_t a[4];
      const int a_pix = ks * 16 + (lane / 16) * 8 + lane % 8;
      ptx::ldmatrix<4, true>(a, gp_tile.chunk(a_pix, 2 * mt + (lane / 8) % 2));
      // B's matrices: (k lo, n-tile 0), (k hi, n-tile 0), (k lo, n-tile 1), (k hi, n-tile 1).
      const int b_pix = ks * 16 + ((lane / 8) % 2) * 8 + lane % 8;
      const int b_chunk = 2 * cb + lane / 16;
      const int q0 = q0_table[b_pix];  // tap (0, 0)
      const bool in_band = q0 >= 0;
      // the tile is keyed by output pixel: this lane's row under tap (kh, kw) has key b_pix +
      // (kh >> kShift) * W_out + (kw >> kShift) (OutputKeyedPixels), mod 8 from band.tap_keys
#pragma unroll
      for (int i = 0; i < kTapsPerHalf; ++i) {
        if (i < taps) {
          const int tap = tap0 + i;
          const int kh = tap / 3, kw = tap % 3;
          const unsigned char* row =
              in_band ? in_tile.keyed_chunk(q0 + kh * in_cols + kw,
                                            b_pix + static_cast<int>(band.tap_keys >> (3 * tap)),
                                            b_chunk)
                      : zero_pixel + 16 * b_chunk;
          uint32_t bq[4];
          ptx::ldmatrix<4, true>(bq, row);
          const uint32_t b0[2] = {bq[0], bq[1]}, b1[2] = {bq[2], bq[3]};
          ptx::mma_m16n8k16<T>(acc[i][0], a, b0);
          ptx::mma_m16n8k16<T>(acc[i][1], a, b1);
        }
      }
      if (sums_gp) {
        const uint32_t b_ones[2] = {ones, ones};
        ptx::mma_m16n8k16<T>(gp_sum, a, b_ones);
      }
    }
    __syncthreads();  // before the next unit's loads overwrite the tiles
  }

  // 3. This split's partial sums: lane holds D[co = 16 mt + g (+ 8)][ci = 16 cb + 8 nt + 2 t
  // (+ 1)] per tap; stored where co and ci share a group.
  const int64_t elements = 9 * kCpg;
#pragma unroll
  for (int i = 0; i < kTapsPerHalf; ++i) {
    if (i >= taps) continue;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int co_t = 16 * mt + g + 8 * (e / 2), ci_t = 16 * cb + 8 * nt + 2 * t + e % 2;
        if (co_t / kCpg != ci_t / kCpg) continue;  // cpg 4, 8: another group's block
        const int64_t co = static_cast<int64_t>(ct) * kTileC + co_t;
        partials[(split * p.C_out + co) * (elements + 1) + (ci_t % kCpg) * 9 + tap0 + i] =
            acc[i][nt][e];
      }
    }
  }
  // The split's sum of gp per channel: lanes t == 0 hold column 0 for channels g and g + 8.
  if (sums_gp && t == 0) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t co = static_cast<int64_t>(ct) * kTileC + 16 * mt + g + 8 * half;
      partials[(split * p.C_out + co) * (elements + 1) + elements] = gp_sum[2 * half];
    }
  }
#else
  __trap();  // built only for sm_80+; the planner never selects v3 below sm_80
#endif
}

template <typename T, int kCpg, int kStride>
cudaError_t launch_class(const GroupedConvBackwardParams& p, const WgradBand& band,
                         int64_t splits, float* partials, cudaStream_t stream) {
  auto* kernel = grouped_conv_wgrad_v3_kernel<T, kCpg, kStride>;
  // always the cap, never this call's size (per function, shared by every host thread)
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(kMaxSmemBytes));
  if (err != cudaSuccess) return err;
  const int64_t tiles_c = p.C_out / kTileC;
  const int64_t bands = bands_per_image(p, band);
  const int64_t blocks = tiles_c * WgradClass<kCpg>::kParts * splits;
  if (blocks > 0x7fffffffLL || bands > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  return launch_kernel(kernel, dim3(static_cast<unsigned>(blocks)), dim3(kThreads),
                       band.smem_bytes, stream, p, band, static_cast<int>(tiles_c),
                       static_cast<int>(bands), p.N * bands, splits, partials);
}

template <typename T>
cudaError_t launch_typed(const GroupedConvBackwardParams& p, const WgradBand& band,
                         int64_t splits, float* partials, cudaStream_t stream) {
  const bool s2 = p.stride_h == 2;
  switch (p.C_in / p.groups) {
    case 4: return s2 ? launch_class<T, 4, 2>(p, band, splits, partials, stream)
                      : launch_class<T, 4, 1>(p, band, splits, partials, stream);
    case 8: return s2 ? launch_class<T, 8, 2>(p, band, splits, partials, stream)
                      : launch_class<T, 8, 1>(p, band, splits, partials, stream);
    case 16: return s2 ? launch_class<T, 16, 2>(p, band, splits, partials, stream)
                       : launch_class<T, 16, 1>(p, band, splits, partials, stream);
    case 32: return s2 ? launch_class<T, 32, 2>(p, band, splits, partials, stream)
                       : launch_class<T, 32, 1>(p, band, splits, partials, stream);
    case 64: return s2 ? launch_class<T, 64, 2>(p, band, splits, partials, stream)
                       : launch_class<T, 64, 1>(p, band, splits, partials, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

bool grouped_conv_wgrad_v3_applies(const GroupedConvBackwardParams& p, DType dtype,
                                   int device_major) {
  if (!v3::takes_conv(p, dtype, device_major)) return false;
  // x and grad_y: 16-byte channel chunks, or rows contiguous (read by channel planes)
  if (!v3::channels_last_aligned16(p.x, p.x_stride) && !v3::rows_contiguous(p.x_stride)) {
    return false;
  }
  if (!v3::channels_last_aligned16(p.grad_y, p.grad_y_stride) &&
      !v3::rows_contiguous(p.grad_y_stride)) {
    return false;
  }
  // the mask's 8 bytes of a chunk are one 8-byte load
  if (reinterpret_cast<uintptr_t>(p.relu_mask) % 8 != 0) return false;
  return plan_band(p).rows > 0;
}

int64_t grouped_conv_wgrad_v3_splits(const GroupedConvBackwardParams& p) {
  return plan_splits(p, plan_band(p));
}

cudaError_t launch_grouped_conv_wgrad_v3_partials(const GroupedConvBackwardParams& p,
                                                  DType dtype, int64_t splits, float* partials,
                                                  cudaStream_t stream) {
  if (p.C_out == 0) return cudaSuccess;
  // (the planes paths assume rows contiguous: refuse what a caller's plan did not check)
  if (!grouped_conv_wgrad_v3_applies(p, dtype, 8) || splits < 1) return cudaErrorInvalidValue;
  const WgradBand band = plan_band(p);
  switch (dtype) {
    case DType::kFloat16: return launch_typed<__half>(p, band, splits, partials, stream);
    case DType::kBFloat16: return launch_typed<__nv_bfloat16>(p, band, splits, partials, stream);
    case DType::kFloat32: break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace resnext_kernels
