// Host-side stand-in for <cuda_runtime.h>, used only by the CUDA emulator (see README.md here):
// the kernels in csrc/kernels/ compile as plain C++ against it and run on CPU threads, one OS
// thread per CUDA thread, so tests can execute them on a machine without a GPU.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // one block runs at a time, so a static is that block's shared array
#define __align__(n) alignas(n)

struct uint3 { unsigned int x, y, z; };
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct alignas(8) float2 { float x, y; };
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) {
  return uint4{x, y, z, w};
}

extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
};
const char* cudaGetErrorString(cudaError_t err);

struct CUstream_st;
using cudaStream_t = CUstream_st*;

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct cudaLaunchAttribute;
struct cudaLaunchConfig_t {
  dim3 gridDim;
  dim3 blockDim;
  size_t dynamicSmemBytes;
  cudaStream_t stream;
  cudaLaunchAttribute* attrs;
  unsigned int numAttrs;
};

namespace cuda_emulator {

// Limits of the GPUs we target (H100: 227 KB of opt-in shared memory per block).
constexpr size_t kDefaultMaxDynamicSmem = 48 * 1024;
constexpr size_t kOptInMaxDynamicSmem = 227 * 1024;

[[noreturn]] void fatal(const char* what);
unsigned char* dynamic_shared_memory();
size_t shared_memory_bytes();  // the launch's dynamic shared memory size
void set_max_dynamic_smem(const void* kernel, int bytes);
size_t max_dynamic_smem(const void* kernel);
// Runs body() on every thread of every block of the grid; returns a launch error, if any.
template <typename Body>
cudaError_t run_grid(dim3 grid, dim3 block, size_t smem_bytes, Body&& body);
cudaError_t run_grid_erased(dim3 grid, dim3 block, size_t smem_bytes, void (*body)(void*),
                            void* ctx);
void sync_block();
void sync_warp();
uint32_t exchange_down(uint32_t value, unsigned int delta);  // warp shuffle down, full warp
// The calling thread's lane in its warp.
int lane_id();
// Warp all-gather, for the warp-collective matrix instructions (ptx.h): every lane of a full
// warp contributes `words` (<= kMaxGatherWords) 32-bit words and receives every lane's, in
// all[lane * words + i]. A barrier for the warp, so a lane that does not arrive is an error,
// and so is a lane that arrives from another `site` (the instruction's call site). Unlike
// __syncwarp it gives ThreadSanitizer no ordering: ldmatrix and mma.sync do not order memory,
// so an ldmatrix of rows other lanes wrote needs a __syncwarp or __syncthreads before it.
constexpr int kMaxGatherWords = 8;
void gather_warp(const uint32_t* mine, int words, uint32_t* all, const void* site);

template <typename Body>
cudaError_t run_grid(dim3 grid, dim3 block, size_t smem_bytes, Body&& body) {
  using B = std::remove_reference_t<Body>;
  return run_grid_erased(grid, block, smem_bytes, [](void* ctx) { (*static_cast<B*>(ctx))(); },
                         static_cast<void*>(&body));
}

}  // namespace cuda_emulator

template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0) return cudaErrorInvalidValue;
  if (static_cast<size_t>(value) > cuda_emulator::kOptInMaxDynamicSmem) return cudaErrorInvalidValue;
  cuda_emulator::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), value);
  return cudaSuccess;
}

// Kernel parameters are copied by value as on a GPU (converted to the parameter types first).
template <typename... ExpTypes, typename... ActTypes>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* config, void (*kernel)(ExpTypes...),
                               ActTypes&&... args) {
  static_assert(sizeof...(ExpTypes) == sizeof...(ActTypes), "kernel argument count");
  if (config->dynamicSmemBytes > cuda_emulator::max_dynamic_smem(reinterpret_cast<const void*>(kernel))) {
    return cudaErrorInvalidValue;  // what the runtime says without cudaFuncSetAttribute
  }
  std::tuple<std::decay_t<ExpTypes>...> params(std::forward<ActTypes>(args)...);
  return cuda_emulator::run_grid(config->gridDim, config->blockDim, config->dynamicSmemBytes,
                                 [&] { std::apply(kernel, params); });
}

inline void __syncthreads() { cuda_emulator::sync_block(); }
inline void __syncwarp(unsigned int mask = 0xffffffffu) {
  if (mask != 0xffffffffu) cuda_emulator::fatal("__syncwarp: the emulator supports full-warp masks only");
  cuda_emulator::sync_warp();
}
inline float __shfl_down_sync(unsigned int mask, float value, unsigned int delta) {
  if (mask != 0xffffffffu) cuda_emulator::fatal("__shfl_down_sync: the emulator supports full-warp masks only");
  uint32_t bits;
  static_assert(sizeof bits == sizeof value, "");
  __builtin_memcpy(&bits, &value, sizeof bits);
  bits = cuda_emulator::exchange_down(bits, delta);
  __builtin_memcpy(&value, &bits, sizeof bits);
  return value;
}
// 32-bit atomics on global or shared memory; they return the old value, as CUDA's do. Defined
// in emulator.cpp, outside the kernels' translation units: there the racecheck build's
// ThreadSanitizer sees them as atomics, and the profile build (ThreadSanitizer's
// instrumentation without its runtime) does not meet them (the access profile leaves them out).
unsigned int atomicAnd(unsigned int* address, unsigned int value);
unsigned int atomicOr(unsigned int* address, unsigned int value);
inline float __expf(float v) { return std::exp(v); }
[[noreturn]] inline void __trap() { cuda_emulator::fatal("__trap() called"); }
