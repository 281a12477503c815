// Host-side stand-in for <cuda_bf16.h> (CUDA emulator only): bfloat16 storage and conversions
// with round to nearest even, NaN kept NaN (as __float2bfloat16_rn).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t u = static_cast<uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  __nv_bfloat16 b;
  if (std::isnan(v)) {
    b.bits = static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN, sign kept
  } else {
    b.bits = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
  return b;
}
