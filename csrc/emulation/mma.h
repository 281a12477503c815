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

#include "access_profile.h"
#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

// In the access-profile build the wmma calls are not instrumented element by element: each one
// records the shared-memory requests the hardware issues for it (access_profile.h), keyed by
// its call site (so it must not be inlined).
#if defined(RESNEXT_KERNELS_ACCESS_PROFILE)
#define WMMA_CALL __attribute__((noinline, no_sanitize_thread))
#define WMMA_SITE() (reinterpret_cast<uint64_t>(__builtin_return_address(0)) * 16)
#else
#define WMMA_CALL inline
#define WMMA_SITE() uint64_t{0}
#endif

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
namespace detail {
// The shared-memory requests of one fragment load, this lane's share: the fragment is `lines`
// lines of `elems` elements, `ldm` elements apart in memory. 16-bit fragments load with
// ldmatrix.x4 (four 8x8 matrices, one 16-byte row per lane); 32-bit (TF32) ones as the
// m16n8k8 operand layout, one 32-bit load per lane per 8x4 block (lane l: line l/4, element l%4).
template <typename E>
void profile_fragment_load(uint64_t site, const E* ptr, unsigned ldm, int lines, int elems) {
  if (!cuda_emulator::profile::kEnabled) return;
  const unsigned l = lane();
  int instr = 0;
  if (sizeof(E) == 2) {
    const int line_blocks = lines / 8, blocks = line_blocks * (elems / 8);
    for (int first = 0; first < blocks; first += 4, ++instr) {
      const int b = first + static_cast<int>(l / 8);
      if (b >= blocks) continue;
      const E* row = ptr + ((b % line_blocks) * 8 + l % 8) * ldm + (b / line_blocks) * 8;
      cuda_emulator::profile::record(site + instr, row, 16, cuda_emulator::profile::Op::kLdmatrix);
    }
  } else {
    for (int lb = 0; lb < lines / 8; ++lb) {
      for (int eb = 0; eb < elems / 4; ++eb, ++instr) {
        const E* e = ptr + (lb * 8 + l / 4) * ldm + eb * 4 + l % 4;
        cuda_emulator::profile::record(site + instr, e, 4, cuda_emulator::profile::Op::kLoad);
      }
    }
  }
}
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout>
WMMA_CALL void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f,
                                const typename storage<T>::type* ptr, unsigned int ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  detail::check_pointer_and_ldm(ptr, ldm, "wmma::load_matrix_sync: pointer not 32-byte aligned");
  constexpr bool kRowMajor = std::is_same<Layout, row_major>::value;
  detail::profile_fragment_load(WMMA_SITE(), ptr, ldm, kRowMajor ? F::kRows : F::kCols,
                                kRowMajor ? F::kCols : F::kRows);
  for (int r = 0; r < F::kRows; ++r) {
    for (int c = 0; c < F::kCols; ++c) {
      f.x[r * F::kCols + c] =
          std::is_same<Layout, row_major>::value ? ptr[r * ldm + c] : ptr[c * ldm + r];
    }
  }
}

template <int M, int N, int K, typename TA, typename TB, typename LA, typename LB>
WMMA_CALL void mma_sync(fragment<accumulator, M, N, K, float>& d,
                        const fragment<matrix_a, M, N, K, TA, LA>& a,
                        const fragment<matrix_b, M, N, K, TB, LB>& b,
                        const fragment<accumulator, M, N, K, float>& c) {
  cuda_emulator::profile::note_mma(WMMA_SITE());
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
WMMA_CALL void store_matrix_sync(float* ptr, const fragment<accumulator, M, N, K, float>& f,
                                 unsigned int ldm, layout_t layout) {
  detail::check_pointer_and_ldm(ptr, ldm, "wmma::store_matrix_sync: pointer not 32-byte aligned");
  const unsigned int lane = detail::lane();
  if (cuda_emulator::profile::kEnabled) {
    // the m16n8 accumulator layout: lane l holds columns 2(l%4), 2(l%4)+1 of row l/4 of each
    // 8x8 block, one 64-bit store per block (two 32-bit ones in column-major memory)
    const uint64_t site = WMMA_SITE();
    int instr = 0;
    for (int rb = 0; rb < M / 8; ++rb) {
      for (int cb = 0; cb < N / 8; ++cb) {
        const int row = rb * 8 + static_cast<int>(lane / 4), col = cb * 8 + 2 * (lane % 4);
        if (layout == mem_row_major) {
          cuda_emulator::profile::record(site + instr++, ptr + row * ldm + col, 8,
                                         cuda_emulator::profile::Op::kFragStore);
        } else {
          for (int q = 0; q < 2; ++q) {
            cuda_emulator::profile::record(site + instr++, ptr + (col + q) * ldm + row, 4,
                                           cuda_emulator::profile::Op::kFragStore);
          }
        }
      }
    }
  }
  for (int e = static_cast<int>(lane); e < M * N; e += 32) {
    const int i = e / N, j = e % N;
    ptr[layout == mem_row_major ? i * ldm + j : j * ldm + i] = f.x[e];
  }
}

}  // namespace wmma
}  // namespace nvcuda
