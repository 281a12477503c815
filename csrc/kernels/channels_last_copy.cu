// Copies a 4-D tensor of any strides into a dense channels_last copy of it (a pack), for 16-bit
// types with C a multiple of 8: the v3 kernels whose loaders read 16-byte chunks of 8 channels
// get an operand without them from the workspace (dgrad's and wgrad's grad_y, wgrad's x, and
// the forward's x where its rows are not contiguous either: v3's forward reads and writes NCHW
// itself, by channel planes).
//
// A block moves a tile of 32 pixels (flat h * W + w of one image) x 64 channels through shared
// memory, 32 rows (pixels) of 33 words, a word holding 2 neighbouring channels:
//   strided side: lane = pixel, each warp 4 channel pairs; the 32 lanes' elements of one channel
//     are 32 consecutive pixels, so where the tensor is NCHW (w contiguous) a warp's load of one
//     channel is 64 contiguous bytes. Its word (lane, pair) is bank (lane + pair) mod 32: no
//     conflicts.
//   dense side: a thread per 16-byte chunk (pixel t / 8, chunk t % 8), 8 threads per pixel's 128
//     bytes; its 4 words are banks (pixel + 4 chunk + k) mod 32 over a warp's 4 pixels and 8
//     chunks: 32 distinct banks per word, no conflicts.
// The values move unchanged (bit copies: NaN payloads, -0, subnormals kept).
#include <algorithm>
#include <cstdint>

#include "kernels/launch.cuh"
#include "kernels/params.h"
#include "kernels/ptx_sm80.cuh"

namespace resnext_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kTilePixels = 32;
constexpr int kTilePairs = 32;  // 64 channels
constexpr int kChunksPerPixel = kTilePairs * 2 / 8;
// the two thread mappings each cover the tile once: a thread per dense chunk, and per warp 4
// channel pairs of 32 pixels
static_assert(kThreads == kTilePixels * kChunksPerPixel && kThreads / 32 * 4 == kTilePairs &&
                  kTilePixels == 32,
              "the tile's mappings assume 256 threads, 32 pixels x 64 channels");

// 16-bit elements as raw bits: the copy never does arithmetic on them.
__global__ void __launch_bounds__(kThreads) channels_last_copy_kernel(ChannelsLastCopyParams p) {
  __shared__ uint32_t tile[kTilePixels][kTilePairs + 1];
  const uint16_t* __restrict__ src = static_cast<const uint16_t*>(p.src);
  uint16_t* __restrict__ dst = static_cast<uint16_t*>(p.dst);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t HW = p.H * p.W;
  const int64_t pixel_tiles = (HW + kTilePixels - 1) / kTilePixels;
  const int64_t channel_tiles = (p.C + 2 * kTilePairs - 1) / (2 * kTilePairs);
  const int64_t tiles = p.N * pixel_tiles * channel_tiles;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    // channel tiles fastest: neighbouring blocks read and write the same pixels' lines
    const int64_t ct = t % channel_tiles, pt = (t / channel_tiles) % pixel_tiles;
    const int64_t n = t / (channel_tiles * pixel_tiles);
    const int64_t c0 = ct * 2 * kTilePairs, pixel0 = pt * kTilePixels;
    // the strided side: this lane's pixel
    const int64_t ps = pixel0 + lane;
    const bool strided_pixel = ps < HW;
    const int64_t h = strided_pixel ? ps / p.W : 0, w = strided_pixel ? ps - h * p.W : 0;
    const int64_t strided_base = n * p.strided[0] + h * p.strided[2] + w * p.strided[3];
    // the dense side: this thread's chunk
    const int pd_local = threadIdx.x / kChunksPerPixel, chunk = threadIdx.x % kChunksPerPixel;
    const int64_t pd = pixel0 + pd_local, cd = c0 + chunk * 8;
    const bool dense_chunk = pd < HW && cd < p.C;  // (C % 8 == 0: a chunk is whole or out)
    const int64_t dense_offset = (n * HW + pd) * p.C + cd;

    // every load of the thread's 4 pairs first, then the stores: 8 loads in flight (a store
    // after each pair's loads left 2)
    uint16_t lo[kTilePairs / 8], hi[kTilePairs / 8];
#pragma unroll
    for (int k = 0; k < kTilePairs / 8; ++k) {
      const int64_t c = c0 + 2 * (warp + 8 * k);
      lo[k] = hi[k] = 0;
      if (strided_pixel && c < p.C) {
        lo[k] = src[strided_base + c * p.strided[1]];
        hi[k] = src[strided_base + (c + 1) * p.strided[1]];
      }
    }
#pragma unroll
    for (int k = 0; k < kTilePairs / 8; ++k) {
      tile[lane][warp + 8 * k] = static_cast<uint32_t>(lo[k]) | (static_cast<uint32_t>(hi[k]) << 16);
    }
    __syncthreads();
    if (dense_chunk) {
      const uint32_t* row = tile[pd_local] + chunk * 4;
      ptx::st_global_16(dst + dense_offset, make_uint4(row[0], row[1], row[2], row[3]));
    }
    __syncthreads();  // the tile is rewritten by the next iteration
  }
}

}  // namespace

bool channels_last_copy_applies(const ChannelsLastCopyParams& p) {
  return p.C % 8 == 0 && reinterpret_cast<uintptr_t>(p.dst) % 16 == 0;
}

cudaError_t launch_channels_last_copy(const ChannelsLastCopyParams& p, cudaStream_t stream) {
  if (p.N * p.C * p.H * p.W == 0) return cudaSuccess;
  if (!channels_last_copy_applies(p)) return cudaErrorInvalidValue;
  const int64_t tiles = p.N * ((p.H * p.W + kTilePixels - 1) / kTilePixels) *
                        ((p.C + 2 * kTilePairs - 1) / (2 * kTilePairs));
  const int64_t cap = p.max_blocks > 0 ? p.max_blocks : int64_t{1} << 20;
  const dim3 grid(static_cast<unsigned int>(std::min<int64_t>(tiles, cap)));
  return launch_kernel(channels_last_copy_kernel, grid, dim3(kThreads), 0, stream, p);
}

}  // namespace resnext_kernels
