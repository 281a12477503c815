// The PTX stand-ins of ptx.h. Register layouts (PTX ISA, "Matrix fragments for mma.m16n8k16 /
// m16n8k8" and "ldmatrix"), with g = lane / 4 and t = lane % 4:
//   ldmatrix, matrix i: lane l gets row l/4, elements 2(l%4) and 2(l%4)+1 (low half first);
//     with .trans, elements (2(l%4), l/4) and (2(l%4)+1, l/4) of the matrix as stored.
//   m16n8k16 A (16x16, row): a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..),
//     a[3] = (g+8, 2t+8..); B (16x8, col): b[0] = (k 2t..2t+1, n g), b[1] = (k 2t+8.., n g).
//   m16n8k8 A (16x8): a[0] = (g, 2t..), a[1] = (g+8, 2t..); B (8x8): b[0] = (k 2t.., n g).
//   C and D (16x8 fp32): c[0], c[1] = (g, 2t), (g, 2t+1); c[2], c[3] = (g+8, 2t), (g+8, 2t+1).
#include "ptx.h"

#include <cstring>
#include <deque>
#include <vector>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

namespace cuda_emulator {
namespace ptx {
namespace {

struct PendingCopy {
  unsigned char* dst;
  unsigned char data[16];
};

// This thread's copies: the open (uncommitted) group and the committed ones, oldest first.
thread_local std::vector<PendingCopy> t_open;
thread_local std::deque<std::vector<PendingCopy>> t_committed;

void check_shared(const void* p, size_t bytes, const char* what) {
  const unsigned char* base = dynamic_shared_memory();
  const auto* q = static_cast<const unsigned char*>(p);
  if (q < base || q + bytes > base + shared_memory_bytes()) fatal(what);
}

float element(uint32_t reg, int half, Operand type) {
  const uint16_t bits = static_cast<uint16_t>(half == 0 ? reg & 0xffffu : reg >> 16);
  if (type == Operand::kF16) return __half2float(__half{bits});
  return __bfloat162float(__nv_bfloat16{bits});
}

// D = A B + C for one lane, A 16 x K and B K x 8, from every lane's registers: all_a and all_b
// hold a_regs and b_regs words per lane; a(r, k) and b(k, n) say which lane, register and half.
template <typename ALoc, typename BLoc>
void mma(const void* site, float* d, const uint32_t* a, int a_regs, const uint32_t* b, int b_regs, const float* c,
         int K, Operand type, ALoc a_loc, BLoc b_loc) {
  uint32_t mine[kMaxGatherWords];
  for (int i = 0; i < a_regs; ++i) mine[i] = a[i];
  for (int i = 0; i < b_regs; ++i) mine[a_regs + i] = b[i];
  const int words = a_regs + b_regs;
  uint32_t all[32 * kMaxGatherWords];
  gather_warp(mine, words, all, site);
  const int lane = lane_id(), g = lane / 4, t = lane % 4;
  float out[4];
  for (int q = 0; q < 4; ++q) {
    const int row = g + (q >= 2 ? 8 : 0), col = 2 * t + q % 2;
    float acc = c[q];
    for (int k = 0; k < K; ++k) {
      int al, ar, ah, bl, br, bh;
      a_loc(row, k, al, ar, ah);
      b_loc(k, col, bl, br, bh);
      acc += element(all[al * words + ar], ah, type) * element(all[bl * words + a_regs + br], bh, type);
    }
    out[q] = acc;
  }
  std::memcpy(d, out, sizeof out);
}

}  // namespace

void cp_async_16(void* shared_dst, const void* global_src, bool fill) {
  if (reinterpret_cast<uintptr_t>(shared_dst) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(global_src) % 16 != 0) {
    fatal("cp.async: source and destination must be 16-byte aligned");
  }
  check_shared(shared_dst, 16, "cp.async: the destination is not inside the block's shared memory");
  PendingCopy copy;
  copy.dst = static_cast<unsigned char*>(shared_dst);
  if (fill) {
    std::memcpy(copy.data, global_src, 16);
  } else {
    std::memset(copy.data, 0, 16);
  }
  std::memset(copy.dst, 0xff, 16);  // not there yet: NaN until a wait retires the group
  t_open.push_back(copy);
}

void check_global_16(const void* p, const char* misaligned, const char* in_shared) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) fatal(misaligned);
  const unsigned char* base = dynamic_shared_memory();
  const auto* q = static_cast<const unsigned char*>(p);
  if (q + 16 > base && q < base + shared_memory_bytes()) fatal(in_shared);
}

void ld_global_16(uint32_t* words, const void* global_src) {
  check_global_16(global_src, "ld.global.v4: source not 16-byte aligned",
                  "ld.global.v4: the source is inside the block's shared memory");
  std::memcpy(words, global_src, 16);
}

void st_global_16(void* global_dst, const uint32_t* words) {
  check_global_16(global_dst, "st.global.v4: destination not 16-byte aligned",
                  "st.global.v4: the destination is inside the block's shared memory");
  std::memcpy(global_dst, words, 16);
}

void st_shared_16(void* shared_dst, const uint32_t* words) {
  if (reinterpret_cast<uintptr_t>(shared_dst) % 16 != 0) {
    fatal("st.shared.v4: destination not 16-byte aligned");
  }
  check_shared(shared_dst, 16, "st.shared.v4: the destination is not inside the block's shared memory");
  std::memcpy(shared_dst, words, 16);
}

void ld_shared_16(uint32_t* words, const void* shared_src) {
  if (reinterpret_cast<uintptr_t>(shared_src) % 16 != 0) {
    fatal("ld.shared.v4: source not 16-byte aligned");
  }
  check_shared(shared_src, 16, "ld.shared.v4: the source is not inside the block's shared memory");
  std::memcpy(words, shared_src, 16);
}

void cp_async_commit() {
  t_committed.push_back(std::move(t_open));
  t_open.clear();
}

void cp_async_wait(int pending) {
  if (pending < 0) fatal("cp.async.wait_group: a negative group count");
  while (static_cast<int>(t_committed.size()) > pending) {
    for (const PendingCopy& copy : t_committed.front()) std::memcpy(copy.dst, copy.data, 16);
    t_committed.pop_front();
  }
}

void end_block_thread() {
  size_t in_flight = t_open.size();
  for (const auto& group : t_committed) in_flight += group.size();
  t_open.clear();
  t_committed.clear();
  if (in_flight > 0) {
    fatal("cp.async copies still in flight when the thread finished its block (a "
          "cp.async.wait_group is missing)");
  }
}

__attribute__((noinline)) void ldmatrix(uint32_t* regs, int matrices, bool trans, const void* row) {
  if (matrices != 1 && matrices != 2 && matrices != 4) fatal("ldmatrix: .x1, .x2 or .x4 only");
  const int lane = lane_id();
  if (lane < 8 * matrices) {
    if (reinterpret_cast<uintptr_t>(row) % 16 != 0) fatal("ldmatrix: row address not 16-byte aligned");
    check_shared(row, 16, "ldmatrix: a row is not inside the block's shared memory");
  }
  const uint64_t address = reinterpret_cast<uintptr_t>(row);
  const uint32_t mine[2] = {static_cast<uint32_t>(address), static_cast<uint32_t>(address >> 32)};
  uint32_t all[32 * 2];
  gather_warp(mine, 2, all, __builtin_return_address(0));
  auto row_of = [&](int i, int r) {
    const int l = 8 * i + r;
    return reinterpret_cast<const unsigned char*>(
        static_cast<uintptr_t>(all[2 * l] | (uint64_t{all[2 * l + 1]} << 32)));
  };
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < matrices; ++i) {
    uint32_t value = 0;
    if (!trans) {
      std::memcpy(&value, row_of(i, g) + 4 * t, 4);
    } else {
      uint16_t lo, hi;
      std::memcpy(&lo, row_of(i, 2 * t) + 2 * g, 2);
      std::memcpy(&hi, row_of(i, 2 * t + 1) + 2 * g, 2);
      value = lo | (uint32_t{hi} << 16);
    }
    regs[i] = value;
  }
}

__attribute__((noinline)) void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b, const float* c, Operand type) {
  mma(__builtin_return_address(0), d, a, 4, b, 2, c, 16, type,
      [](int r, int k, int& lane, int& reg, int& half) {
        lane = (r % 8) * 4 + (k % 8) / 2;
        reg = (r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
        half = k % 2;
      },
      [](int k, int n, int& lane, int& reg, int& half) {
        lane = n * 4 + (k % 8) / 2;
        reg = k >= 8 ? 1 : 0;
        half = k % 2;
      });
}

__attribute__((noinline)) void mma_m16n8k8(float* d, const uint32_t* a, const uint32_t* b, const float* c, Operand type) {
  mma(__builtin_return_address(0), d, a, 2, b, 1, c, 8, type,
      [](int r, int k, int& lane, int& reg, int& half) {
        lane = (r % 8) * 4 + k / 2;
        reg = r >= 8 ? 1 : 0;
        half = k % 2;
      },
      [](int k, int n, int& lane, int& reg, int& half) {
        lane = n * 4 + k / 2;
        reg = 0;
        half = k % 2;
      });
}

}  // namespace ptx
}  // namespace cuda_emulator
