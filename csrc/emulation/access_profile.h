// The emulator's access profiler (the "profile" build of tests/cuda_emulator.py): every global
// and shared memory access of an emulated kernel, with its access site and CUDA thread, grouped
// into warp-level requests the way the hardware groups them, and reduced per launch to what a
// GPU profiler reports: sectors per global request, shared-memory wavefronts per request (bank
// conflicts), bytes moved against bytes used, barriers and MMAs per block.
//
// How the accesses are seen: the kernel sources are compiled with the compiler's ThreadSanitizer
// instrumentation (-fsanitize=thread at compile time only), which calls __tsan_readN/__tsan_writeN
// with the address before every load and store; access_profile.cpp defines those hooks itself
// (no TSan runtime is linked). The hook's return address is the access site. The wmma stand-ins
// (mma.h) are not instrumented: they record the shared-memory requests the hardware issues for a
// fragment (ldmatrix for 16-bit fragments, 32-bit loads for TF32, 64-bit stores for the float
// accumulator), so the profile sees what the GPU does, not the emulator's element loops.
//
// A request is the k-th dynamic execution of one site by the lanes of one warp (in one block).
// Its cost:
//   global: the distinct 32-byte sectors its lanes touch (4 per request when 32 lanes read 32
//           consecutive floats, 32 when each lane reads its own sector);
//   shared: wavefronts. 32 banks of 4 bytes; accesses of 8 bytes are served per half-warp and of
//           16 bytes per quarter-warp (ldmatrix: per 8x8 matrix, 8 lanes' rows). Per phase, the
//           wavefronts are the largest number of distinct 4-byte words any one bank must
//           deliver (lanes reading the same word share it); a request costs the sum over its
//           phases. So: 1 for 32 lanes reading consecutive floats, 2 and 8 for strides of 2
//           and 8 words, 4 for a conflict-free 16-byte or ldmatrix.x4 request.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cuda_emulator {
namespace profile {

enum class Op : uint8_t {
  kLoad = 0,      // a plain load (LDG / LDS)
  kStore = 1,     // a plain store (STG / STS)
  kLdmatrix = 2,  // one lane's row of an ldmatrix (16 bytes)
  kFragStore = 3  // one lane's share of an accumulator fragment store
};

#if defined(RESNEXT_KERNELS_ACCESS_PROFILE)
constexpr bool kEnabled = true;
// One lane's access at `site` (an opaque key: the instrumented code's address, or a modelled
// instruction of a wmma call).
void record(uint64_t site, const void* addr, unsigned bytes, Op op);
// One lane's share of an MMA instruction at `site`.
void note_mma(uint64_t site);
#else
constexpr bool kEnabled = false;
inline void record(uint64_t, const void*, unsigned, Op) {}
inline void note_mma(uint64_t) {}
#endif

// A buffer the harness allocated as global memory (everything else a kernel touches is shared
// memory when it is the block's dynamic shared memory or a `__shared__` static, else a local).
void note_global_buffer(const void* base, size_t bytes);

// Hooks for the emulator's runtime (no-ops unless the profile build).
void begin_launch(unsigned grid_x, unsigned grid_y, unsigned grid_z, unsigned block_threads,
                  size_t smem_bytes, uint64_t blocks, uint64_t sampled_blocks);
void end_launch();
// Called by each OS thread around its CUDA thread's share of a block.
void begin_block(uint64_t block, int thread_linear, const unsigned char* smem, size_t smem_bytes);
void end_block_thread();
void note_barrier();      // a __syncthreads, by one thread
// Which blocks of a grid of `blocks` the profile build runs: at most CUDA_EMULATOR_PROFILE_BLOCKS
// (environment; all when unset or 0), spread evenly, the first and last always among them.
uint64_t first_block(uint64_t blocks);
uint64_t next_block(uint64_t block, uint64_t blocks);
uint64_t sampled_blocks(uint64_t blocks);
// CUDA_EMULATOR_PLAN_ONLY=1 (profile build): launches are reported (grid, block, shared memory)
// and not run, so the launch shapes of real batch sizes cost nothing.
bool plan_only();

}  // namespace profile
}  // namespace cuda_emulator
