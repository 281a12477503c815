// Launch helpers shared by every launcher in csrc/kernels/: one place that turns (grid, block,
// shared memory, stream, arguments) into a launch, and one way for a kernel to reach its
// dynamic shared memory. Kernels and launchers never use <<<...>>> or `extern __shared__`
// directly, so the same sources also build for the host-side CUDA emulator in csrc/emulation/
// (which provides its own cudaLaunchKernelEx and shared memory), where tests run them on a CPU.
#pragma once

#include <cuda_runtime.h>

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
