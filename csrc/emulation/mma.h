// Host-side stand-in for <mma.h> (CUDA emulator only): the nvcuda::wmma API for 16x16x16
// __half / __nv_bfloat16 and 16x16x8 precision::tf32 inputs, with float accumulators. As on the
// hardware, a TF32 multiply uses only the top 19 bits of each fp32 input (the low 13 mantissa
// bits are ignored), so inputs not rounded with __float_to_tf32 are truncated. Every lane holds the whole matrix
// (the hardware spreads it over the warp); loads check the documented alignment rules (256-bit
// aligned pointer, ldm a multiple of 16 bytes) and stores write only the calling lane's share, so
// a missing __syncwarp before reading another lane's share reads stale (poisoned) memory.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}

// Round to TF32 (10 mantissa bits), to nearest with ties away from zero (cvt.rna.tf32.f32).
inline float __float_to_tf32(float in) {
  uint32_t bits;
  std::memcpy(&bits, &in, sizeof bits);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & 0xffffe000u;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

template <typename T>
struct storage { using type = T; };
template <>
struct storage<precision::tf32> { using type = float; };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment;

template <int M, int N, int K, typename T, typename Layout>
struct fragment<matrix_a, M, N, K, T, Layout> {
  static constexpr int kRows = M, kCols = K;
  static constexpr int num_elements = M * K;
  typename storage<T>::type x[M * K];
};
template <int M, int N, int K, typename T, typename Layout>
struct fragment<matrix_b, M, N, K, T, Layout> {
  static constexpr int kRows = K, kCols = N;
  static constexpr int num_elements = K * N;
  typename storage<T>::type x[K * N];
};
template <int M, int N, int K, typename T>
struct fragment<accumulator, M, N, K, T, void> {
  static constexpr int kRows = M, kCols = N;
  static constexpr int num_elements = M * N;
  T x[M * N];
};

namespace detail {
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float to_float(float v) { return v; }

// The value a multiply of operand type T sees: TF32 ignores the low 13 mantissa bits.
template <typename T, typename S>
float operand(S v) {
  if constexpr (std::is_same<T, precision::tf32>::value) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits &= 0xffffe000u;
    float out;
    std::memcpy(&out, &bits, sizeof out);
    return out;
  } else {
    return to_float(v);
  }
}

inline unsigned int lane() { return (threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y) % 32; }

template <typename T>
void check_pointer_and_ldm(const T* ptr, unsigned int ldm, const char* what) {
  if (reinterpret_cast<uintptr_t>(ptr) % 32 != 0) {
    cuda_emulator::fatal(what);  // "mptr must be a 256-bit aligned pointer"
  }
  if ((ldm * sizeof(T)) % 16 != 0) {
    cuda_emulator::fatal("wmma: ldm must be a multiple of 16 bytes (8 16-bit or 4 32-bit elements)");
  }
}
}  // namespace detail

template <typename Frag>
void fill_fragment(Frag& f, float v) {
  for (auto& e : f.x) e = v;
}

// A or B, either layout: element (r, c) of the fragment's kRows x kCols matrix.
template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const typename storage<T>::type* ptr,
                      unsigned int ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  detail::check_pointer_and_ldm(ptr, ldm, "wmma::load_matrix_sync: pointer not 32-byte aligned");
  for (int r = 0; r < F::kRows; ++r) {
    for (int c = 0; c < F::kCols; ++c) {
      f.x[r * F::kCols + c] =
          std::is_same<Layout, row_major>::value ? ptr[r * ldm + c] : ptr[c * ldm + r];
    }
  }
}

template <int M, int N, int K, typename TA, typename TB, typename LA, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d,
              const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b,
              const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      float acc = c.x[i * N + j];
      for (int k = 0; k < K; ++k) {
        acc += detail::operand<TA>(a.x[i * K + k]) * detail::operand<TB>(b.x[k * N + j]);
      }
      out[i * N + j] = acc;
    }
  }
  for (int e = 0; e < M * N; ++e) d.x[e] = out[e];
}

template <int M, int N, int K>
void store_matrix_sync(float* ptr, const fragment<accumulator, M, N, K, float>& f,
                       unsigned int ldm, layout_t layout) {
  detail::check_pointer_and_ldm(ptr, ldm, "wmma::store_matrix_sync: pointer not 32-byte aligned");
  const unsigned int lane = detail::lane();
  for (int e = static_cast<int>(lane); e < M * N; e += 32) {
    const int i = e / N, j = e % N;
    ptr[layout == mem_row_major ? i * ldm + j : j * ldm + i] = f.x[e];
  }
}

}  // namespace wmma
}  // namespace nvcuda
