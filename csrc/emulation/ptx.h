// Host-side stand-ins (CUDA emulator only) for the sm_80 PTX instructions that kernels reach
// through csrc/kernels/ptx_sm80.cuh: cp.async (16 bytes, zero fill, commit and wait groups),
// ldmatrix (.x1/.x2/.x4, .trans) and mma.sync (m16n8k16 and m16n8k8, fp16 or bf16 operands,
// fp32 accumulators), with the register layouts of the PTX ISA, so that a kernel that puts the
// wrong element in a register computes a wrong answer here as it would on a GPU.
//
// What each one checks, beyond computing the result:
//   cp.async: 16-byte aligned source and destination, the destination inside the block's
//     dynamic shared memory. The destination is poisoned (0xFF bytes: NaN) when the copy is
//     issued and written only when a cp.async.wait_group retires its group, so reading it
//     before the wait (or, in another thread, before wait + barrier) reads NaN, and under
//     ThreadSanitizer an issue that overwrites data other threads may still read is a race.
//     Copies still in flight when a thread ends its block are an error.
//   ldmatrix / mma.sync: warp-collective (.sync.aligned): every lane of a full warp must reach
//     them (a lane that does not is a deadlock error, as for __syncwarp); each row address is
//     16-byte aligned and inside the dynamic shared memory.
//   ld.global.nc.v4 / st.global.v4: a 16-byte aligned address outside the block's shared
//     memory; st.shared.v4 / ld.shared.v4: a 16-byte aligned address inside it.
#pragma once

#include <cstdint>

namespace cuda_emulator {
namespace ptx {

enum class Operand { kF16, kBF16 };

// cp.async.cg.shared.global [dst], [src], 16, fill ? 16 : 0 (zero fill when !fill).
void cp_async_16(void* shared_dst, const void* global_src, bool fill);
void cp_async_commit();                // cp.async.commit_group
void cp_async_wait(int pending);       // cp.async.wait_group pending
void end_block_thread();               // the emulator's check at the end of a thread's block

// ld.global.nc.v4.b32 {words[0..3]}, [src] and st.global.v4.b32 [dst], {words[0..3]}
void ld_global_16(uint32_t* words, const void* global_src);
void st_global_16(void* global_dst, const uint32_t* words);
// st.shared.v4.b32 [dst], {words[0..3]} and ld.shared.v4.b32 {words[0..3]}, [src]
void st_shared_16(void* shared_dst, const uint32_t* words);
void ld_shared_16(uint32_t* words, const void* shared_src);

// ldmatrix.sync.aligned.m8n8.x{matrices}[.trans].shared.b16: `row` is this lane's row address
// (lanes 8i..8i+7 give the rows of matrix i); regs[i] receives this lane's share of matrix i.
void ldmatrix(uint32_t* regs, int matrices, bool trans, const void* row);

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: a[4], b[2], c[4], d[4] per lane.
void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b, const float* c, Operand type);
// mma.sync.aligned.m16n8k8.row.col.f32.{f16,bf16}: a[2], b[1], c[4], d[4] per lane.
void mma_m16n8k8(float* d, const uint32_t* a, const uint32_t* b, const float* c, Operand type);

}  // namespace ptx
}  // namespace cuda_emulator
