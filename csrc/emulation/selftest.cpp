// Deliberately broken kernels: each must make the emulator (or AddressSanitizer) fail, which
// tests/test_cuda_emulated.py checks, so a green emulated run means something.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include <mma.h>

#include "access_profile.h"
#include "kernels/launch.cuh"
#include "kernels/ptx_sm80.cuh"

namespace {

// Half of the block leaves before the barrier the other half waits at.
__global__ void divergent_syncthreads_kernel(float* out) {
  if (threadIdx.x < 32) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

// Reads one element past the end of a global buffer.
__global__ void out_of_bounds_read_kernel(const float* in, float* out, int n) {
  out[threadIdx.x] = in[threadIdx.x + (threadIdx.x == n - 1 ? 1 : 0)];
}

// Writes one float past the dynamic shared memory it asked for.
__global__ void shared_overflow_kernel(float* out, int n) {
  float* buf = reinterpret_cast<float*>(resnext_kernels::dynamic_shared_memory());
  buf[threadIdx.x + 1] = 1.f;  // thread n-1 writes buf[n]
  __syncthreads();
  out[threadIdx.x] = buf[threadIdx.x];
  (void)n;
}

// Thread i reads what thread i+1 wrote to shared memory, with no barrier in between.
__global__ void shared_race_kernel(float* out) {
  float* buf = reinterpret_cast<float*>(resnext_kernels::dynamic_shared_memory());
  buf[threadIdx.x] = static_cast<float>(threadIdx.x);
  out[threadIdx.x] = buf[(threadIdx.x + 1) % blockDim.x];  // needs a __syncthreads() before it
}

// A correct kernel: shuffles and barriers, to show the emulator passes what it should.
__global__ void warp_sum_kernel(const float* in, float* out) {
  float v = in[threadIdx.x];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  __syncthreads();
  if (threadIdx.x % 32 == 0) out[threadIdx.x / 32] = v;
}

// Word 1 (0xdeadbeef) loses its high half to an atomicAnd; then threads 0-31 set the 32 bits of
// word 0 and threads 32-47 the low 16 of word 1 with atomicOr: 0xffffffff and 0x0000ffff, a
// known answer (the correct twin of plain_or).
__global__ void atomic_or_kernel(unsigned int* words) {
  if (threadIdx.x == 0) atomicAnd(&words[1], 0x0000ffffu);
  __syncthreads();
  if (threadIdx.x < 48) atomicOr(&words[threadIdx.x / 32], 1u << (threadIdx.x % 32));
}

// The same bits set with a plain read-modify-write: the lanes of a word race (the racecheck
// build must report it).
__global__ void plain_or_kernel(unsigned int* words) {
  if (threadIdx.x == 0) words[1] &= 0x0000ffffu;
  __syncthreads();
  if (threadIdx.x < 48) words[threadIdx.x / 32] |= 1u << (threadIdx.x % 32);
}

// Two threads set their bits of one word after a barrier: a race, whichever thread leaves the
// barrier first. Run with CUDA_EMULATOR_SCHEDULE=completer_first (one thread writes and reaches
// the kernel's end before the other leaves the barrier), the schedule in which TSan missed it
// while every barrier generation shared one sync object.
__global__ void race_after_barrier_kernel(unsigned int* words) {
  __syncthreads();
  words[0] |= 1u << threadIdx.x;
}

// Kernels with a known access profile (tests/test_access_profile.py), one block of 64 threads:
// each warp makes one request per access below.
// 32 consecutive floats per warp: 4 sectors per load and per store request.
__global__ void profile_coalesced_copy_kernel(const float* in, float* out) {
  out[threadIdx.x] = in[threadIdx.x];
}

// Each lane reads its own 32-byte sector: 32 sectors per request, 4 of every 32 bytes used.
__global__ void profile_strided_load_kernel(const float* in, float* out) {
  out[threadIdx.x] = in[threadIdx.x * 8];
}

// Shared memory at a stride of `stride` words: 32 / stride banks, `stride` wavefronts per request
// (stride 2 and 8: 2- and 8-way bank conflicts); then all lanes read one word (a broadcast: 1).
__global__ void profile_bank_conflict_kernel(float* out, int stride) {
  float* buf = reinterpret_cast<float*>(resnext_kernels::dynamic_shared_memory());
  buf[threadIdx.x * stride] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = buf[threadIdx.x * stride] + buf[0];
}

// 16 consecutive bytes per lane, as the conv kernel stages its input: global -> shared ->
// global. 512 bytes per warp: 16 sectors per global request and 4 wavefronts per shared one,
// the conflict-free minimum.
__global__ void profile_vector16_kernel(const uint4* in, uint4* out) {
  uint4* buf = reinterpret_cast<uint4*>(resnext_kernels::dynamic_shared_memory());
  buf[threadIdx.x] = in[threadIdx.x];
  __syncthreads();
  out[threadIdx.x] = buf[threadIdx.x ^ 1];
}

// The same shared store through st.shared.v4 of four words, each selected on its own (the
// pattern the host compiler split into smaller stores from a plain uint4 assignment), read
// back through ld.shared.v4 and stored word by word: one request of 16 bytes per lane each
// way, as on the GPU.
__global__ void profile_shared_store16_kernel(const uint4* in, uint4* out, unsigned keep) {
  unsigned char* buf = resnext_kernels::dynamic_shared_memory();
  const uint4 v = in[threadIdx.x];
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
  uint32_t kept[4];
  for (int h = 0; h < 4; ++h) kept[h] = ((keep >> h) & 1) ? w[h] : 0u;
  resnext_kernels::ptx::st_shared_16(buf + 16 * threadIdx.x,
                                     make_uint4(kept[0], kept[1], kept[2], kept[3]));
  __syncthreads();
  const uint4 back = resnext_kernels::ptx::ld_shared_16(buf + 16 * (threadIdx.x ^ 1));
  uint32_t* o = reinterpret_cast<uint32_t*>(out + threadIdx.x);
  o[0] = back.x;
  o[1] = back.y;
  o[2] = back.z;
  o[3] = back.w;
}

// A 16-byte store, or load, 8 bytes off its alignment (st/ld.global.v4 need 16).
__global__ void misaligned_vector_store_kernel(float* out) {
  resnext_kernels::ptx::st_global_16(out + 2 + 4 * threadIdx.x, make_uint4(1, 2, 3, 4));
}
// A 16-byte shared store 8 bytes off its alignment, and one to global memory (st.shared.v4).
__global__ void misaligned_shared_store_kernel(float* out) {
  unsigned char* tile = resnext_kernels::dynamic_shared_memory();
  resnext_kernels::ptx::st_shared_16(tile + 8 + 16 * threadIdx.x, make_uint4(1, 2, 3, 4));
  __syncthreads();
  out[threadIdx.x] = static_cast<float>(tile[16 * threadIdx.x + 8]);
}
__global__ void global_shared_store_kernel(float* out) {
  resnext_kernels::ptx::st_shared_16(out + 4 * threadIdx.x, make_uint4(1, 2, 3, 4));
}
// The same for the 16-byte shared load (ld.shared.v4): 8 bytes off, and from global memory.
__global__ void misaligned_shared_load_kernel(float* out) {
  unsigned char* tile = resnext_kernels::dynamic_shared_memory();
  resnext_kernels::ptx::st_shared_16(tile + 16 * threadIdx.x, make_uint4(1, 2, 3, 4));
  __syncthreads();
  out[threadIdx.x] =
      static_cast<float>(resnext_kernels::ptx::ld_shared_16(tile + 8 + 16 * threadIdx.x).x);
}
__global__ void global_shared_load_kernel(float* out) {
  out[threadIdx.x] = static_cast<float>(resnext_kernels::ptx::ld_shared_16(out + 4 * threadIdx.x).x);
}
__global__ void misaligned_vector_load_kernel(const float* in, float* out) {
  out[threadIdx.x] = static_cast<float>(
      resnext_kernels::ptx::ld_global_nc_16(in + 2 + 4 * threadIdx.x).x);
}

// One 16x16 fp16 wmma fragment from shared memory with `ldm` halves per row: ldmatrix.x4. Rows
// 32 bytes apart (ldm 16) put rows r and r + 4 of each 8x8 matrix in the same banks: 8
// wavefronts; padded to 48 bytes (ldm 24) the 8 rows of a matrix hit 8 distinct bank quads: 4.
__global__ void profile_ldmatrix_kernel(float* out, int ldm) {
  __half* tile = reinterpret_cast<__half*>(resnext_kernels::dynamic_shared_memory());
  for (int i = threadIdx.x; i < 16 * ldm; i += blockDim.x) tile[i] = __float2half_rn(1.f);
  __syncthreads();
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half, nvcuda::wmma::row_major> a;
  nvcuda::wmma::load_matrix_sync(a, tile, ldm);
  out[threadIdx.x] = __half2float(a.x[0]);
}

// ---- the sm_80 PTX stand-ins (ptx.h), one warp: D = A B for A 16x16 and B 16x8 (fp16 or bf16)
// from global memory through cp.async, ldmatrix and mma.sync; D is written in the documented
// accumulator layout, so the host's exact reference (small integers) checks every layout.
enum class GemmFault {
  kNone,
  kNoWait,            // reads the cp.async destinations without cp.async.wait_group
  kNoBarrier,         // waits for its own copies only, then reads other lanes' (a race)
  kSwappedFragment,   // passes A's registers 1 and 2 swapped to the mma: a wrong answer
  kMisalignedRow,     // an ldmatrix row address 8 bytes off
  kHalfWarpMma,       // only lanes 0-15 reach the mma
  kGlobalDestination  // a cp.async whose destination is not shared memory
};

// a: [16][16] row-major; b: [8][16] (column n's 16 k values contiguous) or, with kBTrans,
// [16][8] row-major, read with ldmatrix .trans; d: [16][8] fp32 (k16) and d8: A[:, :8] B[:8, :].
template <typename T, bool kBTrans, GemmFault kFault>
__global__ void ptx_gemm_kernel(const T* a, const T* b, float* d, float* d8) {
  namespace ptx = resnext_kernels::ptx;
  unsigned char* smem = resnext_kernels::dynamic_shared_memory();
  T* a_s = reinterpret_cast<T*>(smem);             // 512 bytes
  T* b_s = reinterpret_cast<T*>(smem + 512);       // 256 bytes
  const int lane = threadIdx.x;
  void* a_dst = kFault == GemmFault::kGlobalDestination ? static_cast<void*>(d) : a_s + lane * 8;
  ptx::cp_async_16(a_dst, a + lane * 8, true);     // 32 lanes x 16 bytes
  if (lane < 16) ptx::cp_async_16(b_s + lane * 8, b + lane * 8, true);
  ptx::cp_async_commit();
  if (kFault != GemmFault::kNoWait) ptx::cp_async_wait<0>();
  if (kFault != GemmFault::kNoBarrier && kFault != GemmFault::kNoWait) __syncthreads();

  uint32_t af[4], bf[2];
  // A: matrix i = rows 8(i%2).., columns 8(i/2)..: lane l gives row l%16 of column block l/16
  const T* a_row = a_s + (lane % 16) * 16 + (lane / 16) * 8;
  if (kFault == GemmFault::kMisalignedRow && lane == 5) a_row += 4;
  ptx::ldmatrix<4>(af, a_row);
  if (kBTrans) {
    ptx::ldmatrix<2, true>(bf, b_s + (lane % 16) * 8);  // rows k = 0..15 of [16][8]
  } else {
    ptx::ldmatrix<2>(bf, b_s + (lane % 8) * 16 + ((lane / 8) % 2) * 8);  // n = l%8, k block l/8
  }
  if (kFault == GemmFault::kSwappedFragment) {
    const uint32_t t = af[1];
    af[1] = af[2];
    af[2] = t;
  }
  float acc[4] = {0.f, 0.f, 0.f, 0.f}, acc8[4] = {0.f, 0.f, 0.f, 0.f};
  if (kFault != GemmFault::kHalfWarpMma || lane < 16) ptx::mma_m16n8k16<T>(acc, af, bf);
  const uint32_t a8[2] = {af[0], af[1]}, b8[1] = {bf[0]};
  ptx::mma_m16n8k8<T>(acc8, a8, b8);
  const int g = lane / 4, t = lane % 4;
  for (int q = 0; q < 4; ++q) {
    const int row = g + (q >= 2 ? 8 : 0), col = 2 * t + q % 2;
    d[row * 8 + col] = acc[q];
    d8[row * 8 + col] = acc8[q];
  }
}

template <typename T, T (*FromFloat)(float)>
int run_ptx_gemm(const std::string& fault_name, bool b_trans) {
  static const std::pair<const char*, GemmFault> kFaults[] = {
      {"", GemmFault::kNone}, {"no_wait", GemmFault::kNoWait},
      {"no_barrier", GemmFault::kNoBarrier}, {"swapped_fragment", GemmFault::kSwappedFragment},
      {"misaligned_row", GemmFault::kMisalignedRow}, {"half_warp_mma", GemmFault::kHalfWarpMma},
      {"global_destination", GemmFault::kGlobalDestination}};
  GemmFault fault = GemmFault::kNone;
  bool known = false;
  for (const auto& f : kFaults) {
    if (fault_name == f.first) fault = f.second, known = true;
  }
  if (!known) return 2;
  T* a = static_cast<T*>(std::aligned_alloc(256, 512));
  T* b = static_cast<T*>(std::aligned_alloc(256, 256));
  float* d = static_cast<float*>(std::aligned_alloc(256, 512));
  float* d8 = static_cast<float*>(std::aligned_alloc(256, 512));
  float av[16][16], bv[16][8];  // small integers: every product and sum is exact in fp32
  for (int r = 0; r < 16; ++r) {
    for (int k = 0; k < 16; ++k) av[r][k] = static_cast<float>((r * 7 + k * 3) % 11 - 5);
  }
  for (int k = 0; k < 16; ++k) {
    for (int n = 0; n < 8; ++n) bv[k][n] = static_cast<float>((k * 5 + n * 9) % 7 - 3);
  }
  for (int r = 0; r < 16; ++r) {
    for (int k = 0; k < 16; ++k) a[r * 16 + k] = FromFloat(av[r][k]);
  }
  for (int k = 0; k < 16; ++k) {
    for (int n = 0; n < 8; ++n) b[b_trans ? k * 8 + n : n * 16 + k] = FromFloat(bv[k][n]);
  }
  for (float* p : {d, d8}) cuda_emulator::profile::note_global_buffer(p, 512);
  cuda_emulator::profile::note_global_buffer(a, 512);
  cuda_emulator::profile::note_global_buffer(b, 256);
  cudaError_t err = cudaSuccess;
  auto launch = [&](auto kernel) {
    err = resnext_kernels::launch_kernel(kernel, dim3(1), dim3(32), 768, nullptr, a, b, d, d8);
  };
  switch (fault) {
#define PTX_GEMM_CASE(F)                                                  \
  case F:                                                                 \
    b_trans ? launch(ptx_gemm_kernel<T, true, F>) : launch(ptx_gemm_kernel<T, false, F>); \
    break;
    PTX_GEMM_CASE(GemmFault::kNone)
    PTX_GEMM_CASE(GemmFault::kNoWait)
    PTX_GEMM_CASE(GemmFault::kNoBarrier)
    PTX_GEMM_CASE(GemmFault::kSwappedFragment)
    PTX_GEMM_CASE(GemmFault::kMisalignedRow)
    PTX_GEMM_CASE(GemmFault::kHalfWarpMma)
    PTX_GEMM_CASE(GemmFault::kGlobalDestination)
#undef PTX_GEMM_CASE
  }
  if (err != cudaSuccess) {
    std::fprintf(stderr, "launch failed: %s\n", cudaGetErrorString(err));
    return 4;
  }
  int wrong = 0;
  for (int r = 0; r < 16; ++r) {
    for (int n = 0; n < 8; ++n) {
      float ref = 0.f, ref8 = 0.f;
      for (int k = 0; k < 16; ++k) ref += av[r][k] * bv[k][n];
      for (int k = 0; k < 8; ++k) ref8 += av[r][k] * bv[k][n];
      wrong += d[r * 8 + n] != ref;  // NaN (a read of a copy not yet landed) counts too
      wrong += d8[r * 8 + n] != ref8;
    }
  }
  std::printf("wrong %d of 256\n", wrong);
  std::free(a);
  std::free(b);
  std::free(d);
  std::free(d8);
  return wrong == 0 ? 0 : 5;
}

__half half_from_float(float v) { return __float2half_rn(v); }
__nv_bfloat16 bf16_from_float(float v) { return __float2bfloat16_rn(v); }

}  // namespace

int run_selftest(const std::string& name) {
  // ptx_gemm_{f16,bf16}[_btrans][_<fault>]
  if (name.rfind("ptx_gemm_", 0) == 0) {
    std::string rest = name.substr(9);
    const bool bf16 = rest.rfind("bf16", 0) == 0;
    if (!bf16 && rest.rfind("f16", 0) != 0) return 2;
    rest = rest.substr(bf16 ? 4 : 3);
    const bool b_trans = rest.rfind("_btrans", 0) == 0;
    if (b_trans) rest = rest.substr(7);
    if (!rest.empty()) {
      if (rest[0] != '_') return 2;
      rest = rest.substr(1);
    }
    return bf16 ? run_ptx_gemm<__nv_bfloat16, bf16_from_float>(rest, b_trans)
                : run_ptx_gemm<__half, half_from_float>(rest, b_trans);
  }
  constexpr int n = 64;
  // 256-byte aligned, as cudaMalloc's are: the sector counts of the profile tests assume it
  float* in = static_cast<float*>(std::aligned_alloc(256, n * sizeof(float)));
  float* out = static_cast<float*>(std::aligned_alloc(256, n * sizeof(float)));
  for (int i = 0; i < n; ++i) in[i] = static_cast<float>(i);
  float* wide = static_cast<float*>(std::aligned_alloc(256, 8 * n * sizeof(float)));
  for (int i = 0; i < 8 * n; ++i) wide[i] = static_cast<float>(i);
  cuda_emulator::profile::note_global_buffer(in, n * sizeof(float));
  cuda_emulator::profile::note_global_buffer(out, n * sizeof(float));
  cuda_emulator::profile::note_global_buffer(wide, 8 * n * sizeof(float));
  cudaError_t err = cudaSuccess;
  if (name == "divergent_syncthreads") {
    err = resnext_kernels::launch_kernel(divergent_syncthreads_kernel, dim3(1), dim3(n), 0, nullptr, out);
  } else if (name == "out_of_bounds_read") {
    err = resnext_kernels::launch_kernel(out_of_bounds_read_kernel, dim3(1), dim3(n), 0, nullptr, in, out, n);
  } else if (name == "shared_overflow") {
    err = resnext_kernels::launch_kernel(shared_overflow_kernel, dim3(1), dim3(n), n * sizeof(float),
                                         nullptr, out, n);
  } else if (name == "shared_race") {
    err = resnext_kernels::launch_kernel(shared_race_kernel, dim3(1), dim3(n), n * sizeof(float),
                                         nullptr, out);
  } else if (name == "too_much_shared_memory") {
    // 64 KB without cudaFuncSetAttribute: a real launch fails, so must this one.
    err = resnext_kernels::launch_kernel(warp_sum_kernel, dim3(1), dim3(n), 64 * 1024, nullptr, in, out);
  } else if (name == "misaligned_vector_store") {
    err = resnext_kernels::launch_kernel(misaligned_vector_store_kernel, dim3(1), dim3(4), 0,
                                         nullptr, out);
  } else if (name == "misaligned_shared_store") {
    err = resnext_kernels::launch_kernel(misaligned_shared_store_kernel, dim3(1), dim3(4), 128,
                                         nullptr, out);
  } else if (name == "global_shared_store") {
    err = resnext_kernels::launch_kernel(global_shared_store_kernel, dim3(1), dim3(4), 0,
                                         nullptr, out);
  } else if (name == "misaligned_shared_load") {
    err = resnext_kernels::launch_kernel(misaligned_shared_load_kernel, dim3(1), dim3(4), 128,
                                         nullptr, out);
  } else if (name == "global_shared_load") {
    err = resnext_kernels::launch_kernel(global_shared_load_kernel, dim3(1), dim3(4), 0,
                                         nullptr, out);
  } else if (name == "misaligned_vector_load") {
    err = resnext_kernels::launch_kernel(misaligned_vector_load_kernel, dim3(1), dim3(4), 0,
                                         nullptr, in, out);
  } else if (name == "atomic_or" || name == "plain_or") {
    // 2 words, word 1 starting as 0xdeadbeef: atomic_or prints "4294967295 65535"
    unsigned int* words = reinterpret_cast<unsigned int*>(out);
    words[0] = 0;
    words[1] = 0xdeadbeefu;
    err = resnext_kernels::launch_kernel(name == "atomic_or" ? atomic_or_kernel : plain_or_kernel,
                                         dim3(1), dim3(n), 0, nullptr, words);
    if (err == cudaSuccess) std::printf("%u %u\n", words[0], words[1]);
  } else if (name == "race_after_barrier") {
    unsigned int* words = reinterpret_cast<unsigned int*>(out);
    words[0] = 0;
    err = resnext_kernels::launch_kernel(race_after_barrier_kernel, dim3(1), dim3(2), 0, nullptr,
                                         words);
    if (err == cudaSuccess) std::printf("%u\n", words[0]);
  } else if (name == "warp_sum") {
    err = resnext_kernels::launch_kernel(warp_sum_kernel, dim3(1), dim3(n), 0, nullptr, in, out);
    if (err == cudaSuccess) std::printf("%g %g\n", out[0], out[1]);
  } else if (name == "profile_coalesced_copy") {
    err = resnext_kernels::launch_kernel(profile_coalesced_copy_kernel, dim3(1), dim3(n), 0, nullptr, in, out);
  } else if (name == "profile_strided_load") {
    err = resnext_kernels::launch_kernel(profile_strided_load_kernel, dim3(1), dim3(n), 0, nullptr, wide, out);
  } else if (name == "profile_bank_conflict_2way" || name == "profile_bank_conflict_8way") {
    const int stride = name == "profile_bank_conflict_2way" ? 2 : 8;
    err = resnext_kernels::launch_kernel(profile_bank_conflict_kernel, dim3(1), dim3(n),
                                         n * stride * sizeof(float), nullptr, out, stride);
  } else if (name == "profile_vector16") {
    // in and out hold 16 uint4 each: 16 threads (half a warp, so a request is 256 bytes)
    err = resnext_kernels::launch_kernel(profile_vector16_kernel, dim3(1), dim3(16), 16 * 16, nullptr,
                                         reinterpret_cast<const uint4*>(wide), reinterpret_cast<uint4*>(out));
  } else if (name == "profile_shared_store16") {
    err = resnext_kernels::launch_kernel(profile_shared_store16_kernel, dim3(1), dim3(16), 16 * 16,
                                         nullptr, reinterpret_cast<const uint4*>(wide),
                                         reinterpret_cast<uint4*>(out), 0x5u);
    // words 0 and 2 kept: out[i] holds lane i ^ 1's words 0, 2 (wide[4 (i ^ 1) + 0, 2])
    for (int i = 0; i < 16 && err == cudaSuccess; ++i) {
      const uint32_t* o = reinterpret_cast<const uint32_t*>(out) + 4 * i;
      const float* src = wide + 4 * (i ^ 1);
      uint32_t want[4];
      std::memcpy(want, src, sizeof want);
      if (o[0] != want[0] || o[1] != 0u || o[2] != want[2] || o[3] != 0u) {
        std::fprintf(stderr, "profile_shared_store16: wrong words at lane %d\n", i);
        return 1;
      }
    }
  } else if (name == "profile_ldmatrix_ldm16" || name == "profile_ldmatrix_ldm24") {
    const int ldm = name == "profile_ldmatrix_ldm16" ? 16 : 24;
    err = resnext_kernels::launch_kernel(profile_ldmatrix_kernel, dim3(1), dim3(32),
                                         16 * ldm * sizeof(__half), nullptr, out, ldm);
  } else {
    std::fprintf(stderr, "unknown selftest %s\n", name.c_str());
    return 2;
  }
  if (err != cudaSuccess) {
    std::fprintf(stderr, "launch failed: %s\n", cudaGetErrorString(err));
    return 4;
  }
  std::free(in);
  std::free(out);
  std::free(wide);
  return 0;
}
