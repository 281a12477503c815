// 16-byte channel chunks: a channels_last row of channels read and written 16 bytes per thread
// and access (8 fp16/bf16 or 4 fp32 channels), so a warp's request covers 512 contiguous bytes
// (16 sectors, the minimum) instead of 64. Used by the kernels that walk channels_last tensors a
// chunk at a time (squeeze_excite.cu, grouped_conv_dgrad_v3.cu).
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/ptx_sm80.cuh"

namespace resnext_kernels {

template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / static_cast<int>(sizeof(T));
  T v[kSize];
};

// ptr: 16-byte aligned, read-only for the kernel's lifetime (the non-coherent path).
template <typename T>
__device__ __forceinline__ Pack<T> load_pack(const T* ptr) {
  const uint4 raw = ptx::ld_global_nc_16(ptr);
  Pack<T> r;
  memcpy(&r, &raw, sizeof r);
  return r;
}

template <typename T>
__device__ __forceinline__ void store_pack(T* ptr, const Pack<T>& r) {
  uint32_t w[4];
  memcpy(w, &r, sizeof w);
  ptx::st_global_16(ptr, make_uint4(w[0], w[1], w[2], w[3]));  // nvcc split a uint4 assignment
}

}  // namespace resnext_kernels
