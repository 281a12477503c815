// The shared-memory band the v3 kernels (grouped_conv_v3.cu, grouped_conv_wgrad_v3.cu) read
// their operands from: a 64-channel tile of channels_last pixels, one 128-byte row per pixel,
// swizzled so that the 8 row addresses of an ldmatrix fall in 8 distinct bank quads; and the
// loaders that fill it with an input band and its halo: by 16-byte cp.async copies, the zero
// padding being the copies' zero fill; from an input whose rows are contiguous (NCHW) by 2-byte
// loads from 8 channel planes per chunk, through registers; or, for a gated input (GatedInput:
// the backward's gradient selected by the ReLU mask, spread at stride 2), through registers.
#pragma once

#include <cstdint>

#include "kernels/params.h"
#include "kernels/ptx_sm80.cuh"

namespace resnext_kernels {
namespace v3 {

constexpr int kTileC = 64;               // channels per tile
constexpr int kPixelBytes = kTileC * 2;  // one 128-byte line per pixel (16-bit types)

// A tile of pixels, each one 128-byte row of 8 chunks of 16 bytes (8 channels); chunk c of
// pixel q sits at position c ^ ((q >> kShift) & 7). With kShift = log2(stride), the 8 rows of
// an ldmatrix (8 consecutive output pixels: input pixels `stride` apart) hit 8 different
// positions, so the 8 16-byte rows are served in one wavefront.
template <int kShift>
struct SwizzledPixels {
  static constexpr int kKeyShift = kShift;
  unsigned char* base;
  __device__ __forceinline__ unsigned char* chunk(int q, int c) const {
    return base + q * kPixelBytes + ((c ^ ((q >> kShift) & 7)) << 4);
  }
  // the loader's view: pixel q at staged row r, column col
  __device__ __forceinline__ unsigned char* staged_chunk(int q, int /*r*/, int /*col*/,
                                                         int c) const {
    return chunk(q, c);
  }
};

// The same tile keyed by output pixel instead: staged pixel (r, col) (pixel q = r * in_cols +
// col) is keyed (r >> kShift) * W_out + (col >> kShift). An ldmatrix's 8 rows are 8 consecutive
// output pixels k under one tap (kh, kw), staged at (orow * S + kh, ocol * S + kw): their keys are
// k + (kh >> kShift) * W_out + (kw >> kShift), 8 consecutive integers, whatever the row
// boundaries between them, so the 8 rows hit 8 bank quads. (SwizzledPixels keys by q: where the 8
// output pixels wrap to the next row, q jumps over the halo columns and two rows can collide,
// up to 1.8x the wavefronts at 7-pixel rows.)
template <int kShift>
struct OutputKeyedPixels {
  static constexpr int kKeyShift = kShift;
  unsigned char* base;
  int W_out;
  __device__ __forceinline__ unsigned char* keyed_chunk(int q, int key, int c) const {
    return base + q * kPixelBytes + ((c ^ (key & 7)) << 4);
  }
  __device__ __forceinline__ unsigned char* staged_chunk(int q, int r, int col, int c) const {
    return keyed_chunk(q, (r >> kShift) * W_out + (col >> kShift), c);
  }
};

inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Channel-contiguous, every 64-channel tile of every pixel on a 16-byte boundary.
inline bool channels_last_aligned16(const void* ptr, const int64_t* stride) {
  return aligned16(ptr) && stride[1] == 1 && stride[0] % 8 == 0 && stride[2] % 8 == 0 &&
         stride[3] % 8 == 0;
}

// Rows of pixels contiguous (the w stride 1: NCHW, or a view of whole rows): v3's plane loader
// and its plane store read and write such a tensor a lane per pixel, so a warp's access to one
// channel is 32 neighbouring pixels of its plane, 64 contiguous bytes within a row.
inline bool rows_contiguous(const int64_t* stride) { return stride[3] == 1; }

// The conv every v3 kernel is built for (the forward's and wgrad's *_applies; Params:
// GroupedConvParams or GroupedConvBackwardParams): fp16/bf16 on sm_80+, C_in == C_out in
// 64-channel tiles, 4, 8, 16, 32 or 64 channels per group, 3x3, stride 1 or 2, padding 1,
// dilation 1, and sizes small enough for 32-bit pixel and row arithmetic inside a band (64-bit
// offsets from the image base). The tensors' layouts and the band's fit are the caller's.
template <typename Params>
inline bool takes_conv(const Params& p, DType dtype, int device_major) {
  if (device_major < 8 || dtype == DType::kFloat32) return false;
  if (p.groups <= 0 || p.C_in != p.C_out || p.C_in % p.groups != 0 || p.C_in % kTileC != 0) {
    return false;
  }
  const int64_t cpg = p.C_in / p.groups;
  if (cpg != 4 && cpg != 8 && cpg != 16 && cpg != 32 && cpg != 64) return false;
  const bool stride_ok =
      (p.stride_h == 1 && p.stride_w == 1) || (p.stride_h == 2 && p.stride_w == 2);
  if (!(p.KH == 3 && p.KW == 3 && stride_ok && p.pad_h == 1 && p.pad_w == 1 && p.dil_h == 1 &&
        p.dil_w == 1)) {
    return false;
  }
  return p.H <= (1 << 20) && p.W <= (1 << 20);
}

// Input rows ih0 .. ih0 + in_rows - 1, columns -pad_w .. in_cols - 1 - pad_w, of one image's
// 64-channel tile (x_tile: the image's first pixel at the tile's first channel; x_stride: the
// tensor's (n, c, h, w) element strides, channels_last with 16-byte aligned pixels) into
// `tile` (SwizzledPixels or OutputKeyedPixels), pixel (r, col) at q = r * in_cols + col, by
// kThreads threads; zeros outside the image (the source is then not read, but `any_aligned`
// stands in as a valid 16-byte aligned address). The caller commits and waits.
template <int kThreads, typename T, typename Tile>
__device__ __forceinline__ void load_halo_rows_async(const T* x_tile, const int64_t* x_stride,
                                                     int64_t H, int64_t W, int ih0, int pad_w,
                                                     int in_rows, int in_cols,
                                                     const void* any_aligned, Tile tile) {
  const int in_chunks = in_rows * in_cols * 8;
  for (int i = threadIdx.x; i < in_chunks; i += kThreads) {
    const int q = i / 8, c = i % 8;
    const int r = q / in_cols, col = q - r * in_cols;
    const int ih = ih0 + r, iw = col - pad_w;
    const bool inside = ih >= 0 && ih < H && iw >= 0 && iw < W;
    const void* src = inside ? static_cast<const void*>(x_tile + ih * x_stride[2] +
                                                        iw * x_stride[3] + c * 8)
                             : any_aligned;
    ptx::cp_async_16(tile.staged_chunk(q, r, col, c), src, inside);
  }
}

// 8 channels' 16-bit values, one from each channel plane, as one 16-byte chunk (channel j in
// bits 16 j of the chunk, as channels_last holds them).
__device__ __forceinline__ uint4 pack_planes(const uint16_t (&v)[8]) {
  uint32_t words[4];
#pragma unroll
  for (int h = 0; h < 4; ++h) words[h] = uint32_t{v[2 * h]} | (uint32_t{v[2 * h + 1]} << 16);
  return make_uint4(words[0], words[1], words[2], words[3]);
}

// The same rows of an input whose rows are contiguous (rows_contiguous: NCHW; any channel
// stride; x_tile: the image's first pixel at the tile's first channel), through registers into
// `tile` (SwizzledPixels, or wgrad's OutputKeyedPixels); each thread's stores are complete when
// this returns (the caller synchronises). A work item is one staged 16-byte chunk: 8 two-byte
// loads, one per channel plane, packed into one 16-byte store. Items run chunk-major over the
// staged pixels, a lane per pixel, so a warp's load of one channel is 32 neighbouring pixels of
// its plane: 64 contiguous bytes, rows following one another. Each chunk's pixels are padded to
// a multiple of 16 items, and within each 16 the lanes take them in the order that puts a
// quarter-warp's 8 stores in 8 distinct 16-byte bank groups: in order where the swizzle key
// steps by 1 per pixel (kShift 0), at stride 2 (key q >> 1, or col >> 1 in a row) the 8 even
// pixels, then the 8 odd ones (only a quarter-warp that wraps to the next row can meet a key
// twice in OutputKeyedPixels). A warp still covers 32 consecutive pixels, so its loads touch the
// sectors they would in pixel order. Every item loads: a pixel outside the image (the padding)
// reads the nearest one inside, a line its neighbours read too, and stores zeros; a padding item
// stores nothing. So every lane issues the same loads, as the lanes a predicate turned off would
// still share the warp's instruction. Each thread issues the loads of kInFlight items (8
// kInFlight loads) before it stores any.
// (A walk without the two divisions per item, as the gated and wgrad plane loaders below have,
// cut this loop by a quarter, but ptxas then compiled the cpg-16 forward kernel's mainloop,
// whose source it does not touch, to 188 instructions instead of 169 (92 registers instead of
// 102): the mainloop runs in every layout, this loop only in NCHW.)
template <int kThreads, int kInFlight, typename T, typename Tile>
__device__ __forceinline__ void load_halo_rows_by_planes(const T* x_tile, const int64_t* x_stride,
                                                         int64_t H, int64_t W, int ih0, int pad_w,
                                                         int in_rows, int in_cols, Tile tile) {
  static_assert(kThreads % 16 == 0, "quarter-warps stay inside a group of 16 items");
  static_assert(sizeof(T) == 2, "16-bit lanes");
  constexpr int kShift = Tile::kKeyShift;
  static_assert(kShift == 0 || kShift == 1, "the lane order is derived for keys q and q >> 1");
  const uint16_t* src = reinterpret_cast<const uint16_t*>(x_tile);
  const int64_t c_stride = x_stride[1];
  const int pixels = in_rows * in_cols;
  const int slots = (pixels + 15) & ~15;  // items per chunk
  const int items = slots * 8;
  const int h_last = static_cast<int>(H) - 1, w_last = static_cast<int>(W) - 1;
  for (int i0 = threadIdx.x; i0 < items; i0 += kInFlight * kThreads) {
    uint16_t v[kInFlight][8];
    int q_of[kInFlight], row_of[kInFlight], col_of[kInFlight], c_of[kInFlight];
#pragma unroll
    for (int r = 0; r < kInFlight; ++r) {
      const int i = i0 + r * kThreads;
      const int c = i < items ? i / slots : 7, s = i - c * slots, j = s & 15;
      const int q = (s & ~15) | (kShift == 0 ? j : ((j & 7) << 1) | (j >> 3));
      const int qq = i < items && q < pixels ? q : pixels - 1;
      q_of[r] = i < items && q < pixels ? q : -1;
      c_of[r] = c;
      const int row = qq / in_cols, col = qq - row * in_cols;
      row_of[r] = row;
      col_of[r] = col;
      const int ih = ih0 + row, iw = col - pad_w;
      const bool inside = ih >= 0 && ih <= h_last && iw >= 0 && iw <= w_last;
      const int hc = ih < 0 ? 0 : (ih > h_last ? h_last : ih);
      const int wc = iw < 0 ? 0 : (iw > w_last ? w_last : iw);
      // (x_stride[3] == 1: rows contiguous)
      const uint16_t* chunk = src + hc * x_stride[2] + wc + c * 8 * c_stride;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const uint16_t loaded = chunk[e * c_stride];
        v[r][e] = inside ? loaded : uint16_t{0};
      }
    }
#pragma unroll
    for (int r = 0; r < kInFlight; ++r) {
      if (q_of[r] < 0) continue;
      ptx::st_shared_16(tile.staged_chunk(q_of[r], row_of[r], col_of[r], c_of[r]),
                        pack_planes(v[r]));
    }
  }
}

// A 16-byte chunk of 8 16-bit channels with each channel j kept where bit 8 j of `passes`
// is set, else +0: a select, not a product, so a NaN gradient the ReLU blocked stays out.
// `passes` is the mask's 8 bytes of these channels (byte j: channel j) shifted right by the
// pixel's bit. The gated loader below and wgrad v3's gradient loader share it.
__device__ __forceinline__ uint4 select_by_mask(uint4 raw, uint64_t passes) {
  uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int h = 0; h < 4; ++h) {  // word h: channels 2 h (low half), 2 h + 1 (high half)
    const uint32_t keep = (((passes >> (16 * h)) & 1) ? 0x0000ffffu : 0u) |
                          (((passes >> (16 * h + 8)) & 1) ? 0xffff0000u : 0u);
    words[h] &= keep;
  }
  return make_uint4(words[0], words[1], words[2], words[3]);
}

// The rows and columns of a gated input's source grid that a band stages (GatedInput: x's pixel
// (hs, ws) sits at staged row ih_first + (xr << spread) - ih0, column (xc << spread) + pad_w,
// hs = (ih_first >> spread) + xr, ws = xc): rows ih_first, + 1 << spread, ... below
// min(H, ih0 + in_rows); columns 0, 1 << spread, ... below min(W, in_cols - pad_w).
struct GatedPixels {
  int spread, ih_first, x_rows, x_cols;
  __device__ __forceinline__ GatedPixels(const GatedInput& gate, int64_t H, int64_t W, int ih0,
                                         int pad_w, int in_rows, int in_cols) {
    spread = gate.spread_shift;
    const int between = (1 << spread) - 1, step = 1 << spread;
    ih_first = ((ih0 > 0 ? ih0 : 0) + between) & ~between;
    const int ih_end = H < ih0 + in_rows ? static_cast<int>(H) : ih0 + in_rows;
    const int iw_end = W < in_cols - pad_w ? static_cast<int>(W) : in_cols - pad_w;
    x_rows = ih_first < ih_end ? (ih_end - 1 - ih_first) / step + 1 : 0;
    x_cols = iw_end > 0 ? (iw_end - 1) / step + 1 : 0;
  }
};

// Zeros into every staged chunk of a gated input's band that holds no pixel of x: outside the
// image, and between the spread pixels (3 of 4 at spread 1). Stores only; chunk
// threadIdx.x % 8 of each pixel per thread (kThreads a multiple of 8).
template <int kThreads, typename Tile>
__device__ __forceinline__ void zero_chunks_without_a_pixel(const GatedInput& gate, int64_t H,
                                                            int64_t W, int ih0, int pad_w,
                                                            int in_rows, int in_cols, Tile tile) {
  static_assert(kThreads % 8 == 0, "a thread's chunks share one channel offset");
  const int c = threadIdx.x % 8;
  const int between = (1 << gate.spread_shift) - 1;
  const int in_chunks = in_rows * in_cols * 8;
  for (int i = threadIdx.x; i < in_chunks; i += kThreads) {
    const int q = i / 8, row = q / in_cols, col = q - row * in_cols;
    const int ih = ih0 + row, iw = col - pad_w;
    if (!(ih >= 0 && ih < H && iw >= 0 && iw < W && ((ih | iw) & between) == 0)) {
      ptx::st_shared_16(tile.staged_chunk(q, row, col, c), make_uint4(0u, 0u, 0u, 0u));
    }
  }
}

// The same rows of a gated input (GatedInput): the conv's grid is H x W, x (x_image: image n's
// first pixel at the tile's first channel) and the mask (mask_tile: the tile's first channel of
// the mask, mask_pitch bytes per byte row; nullptr with gate.mask) are on the source grid.
// Two passes, each thread's stores complete when this returns (the caller synchronises):
//  1. zero_chunks_without_a_pixel.
//  2. x's pixels (channels_last, 16-byte chunks), through registers, kInFlight chunks at a time:
//     each thread issues the loads of up to kInFlight chunks (16 bytes of x, and the mask's
//     8-byte word of those 8 channels), raw, before it touches any of them, so they are in
//     flight together (a band of up to kThreads * kInFlight of x's chunks is one round trip: a
//     128-pixel stride-2 band's are). Then each chunk's 16-bit lanes are kept where the mask's
//     bit is set, else +0: a select, not a product, so a NaN the mask blocked stays out.
// Every chunk a thread moves is chunk threadIdx.x % 8 of its pixel (kThreads is a multiple of
// 8): one channel offset per thread.
template <int kThreads, int kInFlight, typename T, typename Tile>
__device__ __forceinline__ void load_gated_halo_rows(const GatedInput& gate, const T* x_image,
                                                     const int64_t* x_stride,
                                                     const uint8_t* mask_tile, int64_t mask_pitch,
                                                     int64_t n, int64_t H, int64_t W, int ih0,
                                                     int pad_w, int in_rows, int in_cols,
                                                     Tile tile) {
  static_assert(kThreads % 8 == 0, "a thread's chunks share one channel offset");
  static_assert(sizeof(T) == 2, "16-bit lanes");
  const int c = threadIdx.x % 8;
  zero_chunks_without_a_pixel<kThreads>(gate, H, W, ih0, pad_w, in_rows, in_cols, tile);
  const GatedPixels px(gate, H, W, ih0, pad_w, in_rows, in_cols);
  const int spread = px.spread, ih_first = px.ih_first, x_cols = px.x_cols;
  const int x_chunks = px.x_rows * x_cols * 8;
  for (int i0 = threadIdx.x; i0 < x_chunks; i0 += kInFlight * kThreads) {
    uint4 raw[kInFlight];
    uint64_t mask_word[kInFlight];  // byte j: channel c * 8 + j; bit m % 8 of it: pixel m's
    int bit[kInFlight];
#pragma unroll
    for (int r = 0; r < kInFlight; ++r) {
      raw[r] = make_uint4(0u, 0u, 0u, 0u);
      mask_word[r] = 0;
      bit[r] = 0;
      const int i = i0 + r * kThreads;
      if (i < x_chunks) {
        const int k = i / 8, xr = k / x_cols, xc = k - xr * x_cols;
        const int64_t hs = (ih_first >> spread) + xr, ws = xc;  // x's pixel
        raw[r] = ptx::ld_global_nc_16(x_image + hs * x_stride[2] + ws * x_stride[3] + c * 8);
        mask_word[r] = ~uint64_t{0};
        if (mask_tile != nullptr) {
          const int64_t m = (n * gate.src_H + hs) * gate.src_W + ws;  // x's flat pixel
          mask_word[r] =
              *reinterpret_cast<const uint64_t*>(mask_tile + (m >> 3) * mask_pitch + c * 8);
          bit[r] = static_cast<int>(m & 7);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kInFlight; ++r) {
      const int i = i0 + r * kThreads;
      if (i >= x_chunks) break;
      const int k = i / 8, xr = k / x_cols, xc = k - xr * x_cols;
      const int row = ih_first + (xr << spread) - ih0, col = (xc << spread) + pad_w;
      // (one 16-byte store: st_shared_16, so the emulator's profile counts what the GPU issues)
      ptx::st_shared_16(tile.staged_chunk(row * in_cols + col, row, col, c),
                        select_by_mask(raw[r], mask_word[r] >> bit[r]));
    }
  }
}

// The same for a gated input whose rows are contiguous (rows_contiguous: NCHW; any channel
// stride): pass 1 as above; pass 2 walks x's staged pixels as load_halo_rows_by_planes does
// (chunk-major, padded to 16 per chunk, a lane per pixel, 8 two-byte loads from channel planes),
// without its divisions: a thread's item i = c * slots + s advances by kThreads, c and s step by
// subtraction, and the pixel's row comes from a float reciprocal (exact: k + 0.5 is at least
// 0.5 / x_cols from a row boundary, and k < 2^16 keeps the product's error far below that).
// With the loads, the mask's 8-byte word of the chunk's channels (one word for 8 neighbouring
// pixels), and the select above. In order: at spread 0 a
// quarter-warp's 8 pixels are 8 consecutive staged pixels of a row, 8 distinct bank groups (one
// that wraps to the next row skips the 2 halo columns and can meet a group twice); at spread 1
// they are 2 apart, 4 bank groups, two 16-byte stores per wavefront (a band's staged pixels are
// all 2 staged rows and 2 columns apart: their keys have one parity, which no lane order
// changes).
template <int kThreads, int kInFlight, typename T, typename Tile>
__device__ __forceinline__ void load_gated_halo_rows_by_planes(
    const GatedInput& gate, const T* x_image, const int64_t* x_stride, const uint8_t* mask_tile,
    int64_t mask_pitch, int64_t n, int64_t H, int64_t W, int ih0, int pad_w, int in_rows,
    int in_cols, Tile tile) {
  static_assert(sizeof(T) == 2, "16-bit lanes");
  zero_chunks_without_a_pixel<kThreads>(gate, H, W, ih0, pad_w, in_rows, in_cols, tile);
  const GatedPixels px(gate, H, W, ih0, pad_w, in_rows, in_cols);
  const int pixels = px.x_rows * px.x_cols;
  if (pixels == 0) return;
  const uint16_t* src = reinterpret_cast<const uint16_t*>(x_image);
  const int64_t c_stride = x_stride[1];
  const int spread = px.spread, x_cols = px.x_cols, hs0 = px.ih_first >> spread;
  const int slots = (pixels + 15) & ~15;  // items per chunk
  const float inv_cols = 1.0f / static_cast<float>(x_cols);  // (see above)
  int c = static_cast<int>(threadIdx.x) / slots;
  int s = static_cast<int>(threadIdx.x) - c * slots;
  while (c < 8) {
    // first every load of the kInFlight items, raw; then the packs, selects and stores
    uint16_t v[kInFlight][8];
    uint64_t mask_word[kInFlight];  // byte j: channel 8 cc + j; bit m % 8: pixel m's
    int k_of[kInFlight], c_of[kInFlight], bit_of[kInFlight];
#pragma unroll
    for (int r = 0; r < kInFlight; ++r) {
      const bool real = c < 8 && s < pixels;
      const int k = real ? s : pixels - 1;
      const int cc = c < 8 ? c : 7;
      const int xr = static_cast<int>((static_cast<float>(k) + 0.5f) * inv_cols);
      const int xc = k - xr * x_cols;
      const int hs = hs0 + xr;  // x's pixel (hs, xc)
      // (x_stride[3] == 1: rows contiguous)
      const uint16_t* plane = src + hs * x_stride[2] + xc + cc * 8 * c_stride;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        v[r][e] = *plane;
        plane += c_stride;
      }
      mask_word[r] = ~uint64_t{0};
      bit_of[r] = 0;
      if (mask_tile != nullptr) {
        const int64_t m = (n * gate.src_H + hs) * gate.src_W + xc;  // x's flat pixel
        mask_word[r] =
            *reinterpret_cast<const uint64_t*>(mask_tile + (m >> 3) * mask_pitch + cc * 8);
        bit_of[r] = static_cast<int>(m & 7);
      }
      k_of[r] = real ? k : -1;
      c_of[r] = cc;
      s += kThreads;
      while (s >= slots) {
        s -= slots;
        ++c;
      }
    }
#pragma unroll
    for (int r = 0; r < kInFlight; ++r) {
      if (k_of[r] < 0) continue;
      const int xr = static_cast<int>((static_cast<float>(k_of[r]) + 0.5f) * inv_cols);
      const int xc = k_of[r] - xr * x_cols;
      const int row = px.ih_first + (xr << spread) - ih0, col = (xc << spread) + pad_w;
      ptx::st_shared_16(tile.staged_chunk(row * in_cols + col, row, col, c_of[r]),
                        select_by_mask(pack_planes(v[r]), mask_word[r] >> bit_of[r]));
    }
  }
}

}  // namespace v3
}  // namespace resnext_kernels
