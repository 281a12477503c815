// Deliberately broken kernels: each must make the emulator (or AddressSanitizer) fail, which
// tests/test_cuda_emulated.py checks, so a green emulated run means something.
#include <cstdio>
#include <cstdlib>
#include <string>

#include <mma.h>

#include "access_profile.h"
#include "kernels/launch.cuh"

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

}  // namespace

int run_selftest(const std::string& name) {
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
