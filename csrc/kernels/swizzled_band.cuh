// The shared-memory band the v3 kernels (grouped_conv_v3.cu, grouped_conv_wgrad_v3.cu) read
// their operands from: a 64-channel tile of channels_last pixels, one 128-byte row per pixel,
// swizzled so that the 8 row addresses of an ldmatrix fall in 8 distinct bank quads; and the
// loader that fills it with an input band and its halo by 16-byte cp.async copies, the zero
// padding being the copies' zero fill.
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

}  // namespace v3
}  // namespace resnext_kernels
