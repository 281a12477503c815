// Index helpers shared by the elementwise-style kernels.
#pragma once

#include <cstdint>

namespace resnext_kernels {

// Splits a flat index over an [N, C, H, W] tensor walked in its memory order: channel-fastest
// (channels_last) or width-fastest (NCHW), so neighbouring threads touch neighbouring elements.
__device__ __forceinline__ void decode_index(int64_t idx, int64_t C, int64_t H, int64_t W,
                                             bool channels_last, int64_t& n, int64_t& c,
                                             int64_t& h, int64_t& w) {
  if (channels_last) {
    c = idx % C; idx /= C;
    w = idx % W; idx /= W;
    h = idx % H; n = idx / H;
  } else {
    w = idx % W; idx /= W;
    h = idx % H; idx /= H;
    c = idx % C; n = idx / C;
  }
}

// Element offset of (n, c, h, w) from 4 element strides.
__device__ __forceinline__ int64_t offset4(const int64_t* stride, int64_t n, int64_t c, int64_t h,
                                           int64_t w) {
  return n * stride[0] + c * stride[1] + h * stride[2] + w * stride[3];
}

}  // namespace resnext_kernels
