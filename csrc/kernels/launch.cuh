// Launch helpers shared by every launcher in csrc/kernels/: one place that turns (grid, block,
// shared memory, stream, arguments) into a launch, and one way for a kernel to reach its
// dynamic shared memory. Kernels and launchers never use <<<...>>> or `extern __shared__`
// directly, so the same sources also build for the host-side CUDA emulator in csrc/emulation/
// (which provides its own cudaLaunchKernelEx and shared memory), where tests run them on a CPU.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <utility>

namespace resnext_kernels {

// Launches kernel<<<grid, block, smem_bytes, stream>>>(args...) and returns the launch status
// (a bad configuration is reported here, not left for a later cudaGetLastError).
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                          cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  config.attrs = nullptr;
  config.numAttrs = 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

// The grid of a grid-stride loop over `total` elements: one element per thread, capped at
// `max_blocks` blocks (every thread then walks as many elements as needed). total > 0.
inline dim3 grid_stride_grid(int64_t total, int threads, int64_t max_blocks = int64_t{1} << 20) {
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, max_blocks);
  return dim3(static_cast<unsigned int>(blocks));
}

// The block's dynamic shared memory (the launch's smem_bytes), 128-byte aligned.
__device__ __forceinline__ unsigned char* dynamic_shared_memory() {
#if defined(RESNEXT_KERNELS_EMULATION)
  return cuda_emulator::dynamic_shared_memory();
#else
  extern __shared__ __align__(128) unsigned char buffer[];
  return buffer;
#endif
}

}  // namespace resnext_kernels
