// Deliberately broken kernels: each must make the emulator (or AddressSanitizer) fail, which
// tests/test_cuda_emulated.py checks, so a green emulated run means something.
#include <cstdio>
#include <cstdlib>
#include <string>

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

}  // namespace

int run_selftest(const std::string& name) {
  constexpr int n = 64;
  float* in = static_cast<float*>(std::malloc(n * sizeof(float)));
  float* out = static_cast<float*>(std::malloc(n * sizeof(float)));
  for (int i = 0; i < n; ++i) in[i] = static_cast<float>(i);
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
  return 0;
}
