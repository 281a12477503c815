// The sm_80+ PTX instructions the v3 conv kernel is built from, as small device functions:
// cp.async (16-byte global -> shared copies with zero fill, in commit/wait groups), ldmatrix
// (8x8 16-bit matrices from shared memory into mma operand registers, one row address per
// lane) and mma.sync (m16n8k16 and m16n8k8, fp16 or bf16 operands, fp32 accumulators); and
// four that run anywhere: 16-byte global loads and stores, and 16-byte shared stores and
// loads, that no compiler splits.
//
// Fragments are plain uint32_t registers holding two 16-bit elements each (low half = the lower
// column), in the layouts of the PTX ISA; csrc/emulation/ptx.cpp spells them out. Under the CUDA
// emulator (RESNEXT_KERNELS_EMULATION) each call goes to the stand-ins of csrc/emulation/ptx.h,
// which compute with those layouts and check the instruction's rules; in the access-profile
// build each call also records the requests the instruction issues, keyed by its call site.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#if defined(RESNEXT_KERNELS_EMULATION)
#include "access_profile.h"
#include "ptx.h"
#endif

namespace resnext_kernels {
namespace ptx {

#if defined(RESNEXT_KERNELS_EMULATION)
#if defined(RESNEXT_KERNELS_ACCESS_PROFILE)
// Not inlined, so that the return address names the call site; not instrumented element by
// element: the call records what the instruction issues.
#define PTX_CALL __attribute__((noinline, no_sanitize_thread)) inline
#define PTX_SITE() (reinterpret_cast<uint64_t>(__builtin_return_address(0)) * 16)
#else
#define PTX_CALL inline
#define PTX_SITE() uint64_t{0}
#endif
namespace profile = cuda_emulator::profile;
#else
#define PTX_CALL __device__ __forceinline__
__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

// ------------------------------------------------------------------------------ cp.async
// 16 bytes from global to shared memory, asynchronously; zeros instead when !fill (the source
// is then not read, but must still be a 16-byte aligned address).
PTX_CALL void cp_async_16(void* shared_dst, const void* global_src, bool fill) {
#if defined(RESNEXT_KERNELS_EMULATION)
  const uint64_t site = PTX_SITE();
  if (fill) profile::record(site, global_src, 16, profile::Op::kLoad);
  profile::record(site + 1, shared_dst, 16, profile::Op::kStore);
  cuda_emulator::ptx::cp_async_16(shared_dst, global_src, fill);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(shared_dst)),
               "l"(global_src), "r"(fill ? 16 : 0));
#endif
}

// Closes the group of copies issued since the previous commit.
PTX_CALL void cp_async_commit() {
#if defined(RESNEXT_KERNELS_EMULATION)
  cuda_emulator::ptx::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most kPending of this thread's committed groups are in flight. Other threads
// see the data only after a barrier that follows their writers' waits.
template <int kPending>
PTX_CALL void cp_async_wait() {
#if defined(RESNEXT_KERNELS_EMULATION)
  cuda_emulator::ptx::cp_async_wait(kPending);
#else
  // "memory": no shared-memory value read before the wait may be reused after it
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

// ------------------------------------------------------------------------------ ldmatrix
// kMatrices (1, 2 or 4) 8x8 matrices of 16-bit elements; lanes 8i..8i+7 give the 16-byte row
// addresses of matrix i (any rows: a row address per lane is what lets a conv tap shift the
// pixels for free). kTrans loads each matrix transposed.
template <int kMatrices, bool kTrans = false>
PTX_CALL void ldmatrix(uint32_t (&regs)[kMatrices], const void* row) {
  static_assert(kMatrices == 1 || kMatrices == 2 || kMatrices == 4, "ldmatrix .x1, .x2 or .x4");
#if defined(RESNEXT_KERNELS_EMULATION)
  if (profile::kEnabled) {
    const unsigned lane = (threadIdx.x + threadIdx.y * blockDim.x) % 32;
    if (lane < 8u * kMatrices) profile::record(PTX_SITE(), row, 16, profile::Op::kLdmatrix);
  }
  cuda_emulator::ptx::ldmatrix(regs, kMatrices, kTrans, row);
#else
  const uint32_t a = shared_address(row);
  if constexpr (kMatrices == 1) {
    if constexpr (kTrans) {
      asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(regs[0]) : "r"(a));
    } else {
      asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(regs[0]) : "r"(a));
    }
  } else if constexpr (kMatrices == 2) {
    if constexpr (kTrans) {
      asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                   : "=r"(regs[0]), "=r"(regs[1]) : "r"(a));
    } else {
      asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                   : "=r"(regs[0]), "=r"(regs[1]) : "r"(a));
    }
  } else {
    if constexpr (kTrans) {
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(regs[0]), "=r"(regs[1]), "=r"(regs[2]), "=r"(regs[3]) : "r"(a));
    } else {
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(regs[0]), "=r"(regs[1]), "=r"(regs[2]), "=r"(regs[3]) : "r"(a));
    }
  }
#endif
}

// ------------------------------------------------------------------------------ mma.sync
// d = a * b + c for a 16 x K tile of A (row-major), a K x 8 tile of B (column-major) and a
// 16 x 8 fp32 accumulator; T is the operand type (__half or __nv_bfloat16).
template <typename T>
PTX_CALL void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value,
                "mma operands are fp16 or bf16");
#if defined(RESNEXT_KERNELS_EMULATION)
  profile::note_mma(PTX_SITE());
  cuda_emulator::ptx::mma_m16n8k16(d, a, b, d, std::is_same<T, __half>::value
                                                   ? cuda_emulator::ptx::Operand::kF16
                                                   : cuda_emulator::ptx::Operand::kBF16);
#else
  if constexpr (std::is_same<T, __half>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#endif
}

template <typename T>
PTX_CALL void mma_m16n8k8(float (&d)[4], const uint32_t (&a)[2], const uint32_t (&b)[1]) {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value,
                "mma operands are fp16 or bf16");
#if defined(RESNEXT_KERNELS_EMULATION)
  profile::note_mma(PTX_SITE());
  cuda_emulator::ptx::mma_m16n8k8(d, a, b, d, std::is_same<T, __half>::value
                                                  ? cuda_emulator::ptx::Operand::kF16
                                                  : cuda_emulator::ptx::Operand::kBF16);
#else
  if constexpr (std::is_same<T, __half>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(b[0]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(b[0]));
  }
#endif
}

// ------------------------------------------------------------------------------ ld.global.nc.v4
// One 16-byte load from global memory through the read-only path (16-byte aligned, not written
// by the kernel). On the GPU a plain uint4 load would do; the wrapper exists for the emulator,
// where the host compiler split such a load into one 2-byte load per element when the
// elements were used one by one, and the access profile then saw eight requests for one.
PTX_CALL uint4 ld_global_nc_16(const void* global_src) {
#if defined(RESNEXT_KERNELS_EMULATION)
  profile::record(PTX_SITE(), global_src, 16, profile::Op::kLoad);
  uint32_t words[4];
  cuda_emulator::ptx::ld_global_16(words, global_src);
  return make_uint4(words[0], words[1], words[2], words[3]);
#else
  return __ldg(static_cast<const uint4*>(global_src));
#endif
}

// ------------------------------------------------------------------------------ st.global.v4
// One 16-byte store to global memory (16-byte aligned). A uint4 assignment of values computed
// in registers compiled to four 4-byte (or eight 2-byte-pair) stores in the SE scale kernel, as
// in CUDA v2's epilogue; this asm cannot be split.
PTX_CALL void st_global_16(void* global_dst, uint4 value) {
#if defined(RESNEXT_KERNELS_EMULATION)
  profile::record(PTX_SITE(), global_dst, 16, profile::Op::kStore);
  const uint32_t words[4] = {value.x, value.y, value.z, value.w};
  cuda_emulator::ptx::st_global_16(global_dst, words);
#else
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(global_dst), "r"(value.x),
               "r"(value.y), "r"(value.z), "r"(value.w)
               : "memory");
#endif
}

// ------------------------------------------------------------------------------ st.shared.v4
// One 16-byte store to shared memory (16-byte aligned). nvcc makes one STS.128 of a uint4
// assignment; the emulator's host compiler split one built from four selected words into
// smaller stores, which the access profile counted as that many requests (wgrad v3's gradient
// tile, v3's gated loader). This call records the one store the GPU issues.
PTX_CALL void st_shared_16(void* shared_dst, uint4 value) {
#if defined(RESNEXT_KERNELS_EMULATION)
  profile::record(PTX_SITE(), shared_dst, 16, profile::Op::kStore);
  const uint32_t words[4] = {value.x, value.y, value.z, value.w};
  cuda_emulator::ptx::st_shared_16(shared_dst, words);
#else
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(shared_address(shared_dst)),
               "r"(value.x), "r"(value.y), "r"(value.z), "r"(value.w)
               : "memory");
#endif
}

// ------------------------------------------------------------------------------ ld.shared.v4
// One 16-byte load from shared memory (16-byte aligned), for a chunk whose words are then used
// one by one (v3's store into an NCHW y: 8 two-byte global stores per chunk); the host
// compiler would split a plain uint4 load into smaller ones that the access profile counts as
// that many requests. On the GPU a plain uint4 load is one LDS.128, which nvcc schedules
// freely (an asm with a memory clobber kept each one behind the previous chunk's stores).
PTX_CALL uint4 ld_shared_16(const void* shared_src) {
#if defined(RESNEXT_KERNELS_EMULATION)
  profile::record(PTX_SITE(), shared_src, 16, profile::Op::kLoad);
  uint32_t words[4];
  cuda_emulator::ptx::ld_shared_16(words, shared_src);
  return make_uint4(words[0], words[1], words[2], words[3]);
#else
  return *static_cast<const uint4*>(shared_src);
#endif
}

#undef PTX_CALL
#undef PTX_SITE

}  // namespace ptx
}  // namespace resnext_kernels
