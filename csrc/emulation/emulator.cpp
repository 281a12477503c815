// The CUDA emulator's runtime: runs a grid on CPU threads (one OS thread per CUDA thread, one
// block at a time), with __syncthreads, warp barriers and shuffles, per-block dynamic shared
// memory (poisoned with 0xFF bytes = NaN for fp16/bf16/fp32, allocated at its exact size so
// AddressSanitizer sees any access past it) and the launch limits of the GPUs we target. It
// stops with an error, instead of hanging, when the threads of a block diverge at a barrier.
//
// Under ThreadSanitizer (the "racecheck" build) the emulator's own bookkeeping (one mutex, its
// counters) is hidden from TSan, and the only happens-before edges between CUDA threads are the
// ones CUDA gives: a __syncthreads orders the block, a warp barrier orders the warp, the end of
// a block orders it before the next one (they own the same shared memory). So TSan reports an
// access pair that no barrier orders, as compute-sanitizer's racecheck would on a GPU.
//
// Each barrier's edges go through the sync object of its generation's parity: a thread leaving
// barrier k acquires only what was released into barrier k. With a single object, a thread that
// left late also acquired what faster threads released at barrier k+1 or at the kernel's end,
// and TSan took their writes after barrier k as ordered before its own: a race the OS's
// schedule could hide. Two objects suffice: no thread arrives at barrier k+2 before every thread
// has left barrier k (barrier k+1 waits for all of them).
//
// CUDA_EMULATOR_SCHEDULE=completer_first: the thread that completes a block barrier runs until
// it next waits (or finishes) before the others leave the barrier, the schedule that showed the
// single-object flaw; the race self-tests (plain_or, race_after_barrier) run under it.
#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "access_profile.h"
#include "cuda_runtime.h"
#include "ptx.h"

#if defined(__SANITIZE_THREAD__)
extern "C" {
void AnnotateIgnoreReadsBegin(const char* file, int line);
void AnnotateIgnoreReadsEnd(const char* file, int line);
void AnnotateIgnoreWritesBegin(const char* file, int line);
void AnnotateIgnoreWritesEnd(const char* file, int line);
void AnnotateIgnoreSyncBegin(const char* file, int line);
void AnnotateIgnoreSyncEnd(const char* file, int line);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
namespace {
// Within its scope, TSan sees neither the accesses nor the synchronisation of this thread.
struct HiddenFromTsan {
  HiddenFromTsan() {
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
    AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
  }
  ~HiddenFromTsan() {
    AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
  }
};
}  // namespace
#define EMULATOR_BOOKKEEPING HiddenFromTsan hidden_from_tsan_
#define HAPPENS_BEFORE(obj) __tsan_release(obj)
#define HAPPENS_AFTER(obj) __tsan_acquire(obj)
#else
#define EMULATOR_BOOKKEEPING
#define HAPPENS_BEFORE(obj) ((void)(obj))
#define HAPPENS_AFTER(obj) ((void)(obj))
#endif

thread_local uint3 threadIdx{0, 0, 0};
thread_local uint3 blockIdx{0, 0, 0};
thread_local dim3 blockDim;
thread_local dim3 gridDim;

unsigned int atomicAnd(unsigned int* address, unsigned int value) {
  return __atomic_fetch_and(address, value, __ATOMIC_RELAXED);
}

unsigned int atomicOr(unsigned int* address, unsigned int value) {
  return __atomic_fetch_or(address, value, __ATOMIC_RELAXED);
}

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
  }
  return "unknown error";
}

namespace cuda_emulator {
namespace {

std::mutex g_attr_mutex;
std::map<const void*, size_t> g_max_smem;

// TSan's sync objects of one barrier, one per generation parity. A thread that leaves
// generation k late must not acquire what faster threads already released at generation k + 1;
// no thread can reach k + 2 before every thread has left k, so two objects keep them apart.
struct BarrierOrdering {
  char object[2] = {};
  char* of(uint64_t generation) { return &object[generation & 1]; }
};

struct Warp {
  BarrierOrdering ordering;  // of this warp's barriers
  int lanes = 32;    // threads in this warp
  int arrived = 0;   // lanes waiting at the current warp barrier
  int exited = 0;    // lanes that finished the kernel for the current block
  uint64_t generation = 0;
  uint32_t exchange[32] = {};
  uint32_t gathered[32 * kMaxGatherWords] = {};  // gather_warp's lanes x words
  const void* gather_site = nullptr;  // the instruction the lanes of the current gather are at
  int gather_writers = 0;
};

// Everything about the grid being run; one mutex guards it all (the emulator is about
// correctness, not speed).
struct GridState {
  BarrierOrdering ordering;  // of the block barriers
  std::mutex mutex;
  std::condition_variable cv;
  int threads = 0;
  uint64_t blocks = 0;
  dim3 grid, block;
  size_t smem_bytes = 0;
  unsigned char* smem = nullptr;  // the current block's; every block gets its own
  std::vector<void*> smem_allocations;  // freed after the grid (threads joined)
  uint64_t current_block = 0;
  // block barrier
  int arrived = 0, arrived_sync = 0, arrived_end = 0;
  uint64_t generation = 0;
  // threads waiting in any barrier, to tell a deadlock from a wait
  int blocked = 0;
  // CUDA_EMULATOR_SCHEDULE=completer_first: the others wait while the completer runs
  bool completer_first = false;
  bool completer_running = false;
  std::vector<Warp> warps;
};

thread_local GridState* t_grid = nullptr;
thread_local int t_linear = 0;

void allocate_smem(GridState& g) {
  void* mem = nullptr;
  if (posix_memalign(&mem, 128, g.smem_bytes > 0 ? g.smem_bytes : 1) != 0) fatal("out of memory");
  std::memset(mem, 0xff, g.smem_bytes > 0 ? g.smem_bytes : 1);
  g.smem = static_cast<unsigned char*>(mem);
  g.smem_allocations.push_back(mem);
}

void start_block(GridState& g) {
  allocate_smem(g);
  for (Warp& w : g.warps) {
    w.arrived = 0;
    w.exited = 0;
  }
}

// Called with the mutex held by a thread that stops running: at a wait, or when it finishes.
void stop_running(GridState& g) {
  if (g.completer_running) {
    g.completer_running = false;
    g.cv.notify_all();
  }
}

// Called with the mutex held by a thread that is about to wait.
void wait_or_deadlock(GridState& g, std::unique_lock<std::mutex>& lock, uint64_t& generation,
                      const char* where) {
  stop_running(g);
  if (g.blocked + 1 == g.threads) {
    char msg[256];
    std::snprintf(msg, sizeof msg,
                  "deadlock at %s: every thread of the block waits, at barriers that cannot all "
                  "complete (a barrier reached by only some threads)", where);
    fatal(msg);
  }
  ++g.blocked;
  const uint64_t seen = generation;
  g.cv.wait(lock, [&] { return generation != seen && !g.completer_running; });
}

enum class Arrival { kSync, kEnd };

void arrive_block_hidden(Arrival kind);

// Everything before a block barrier, in every thread of the block, happens before everything
// after it.
void arrive_block(Arrival kind) {
  char* ordering;
  {
    EMULATOR_BOOKKEEPING;  // the generation cannot change before this thread arrives
    ordering = t_grid->ordering.of(t_grid->generation);
  }
  HAPPENS_BEFORE(ordering);
  arrive_block_hidden(kind);
  HAPPENS_AFTER(ordering);
}

void arrive_block_hidden(Arrival kind) {
  EMULATOR_BOOKKEEPING;
  GridState& g = *t_grid;
  std::unique_lock<std::mutex> lock(g.mutex);
  ++g.arrived;
  (kind == Arrival::kSync ? g.arrived_sync : g.arrived_end) += 1;
  if (kind == Arrival::kEnd) {
    Warp& w = g.warps[t_linear / 32];
    ++w.exited;
    if (w.arrived > 0 && w.arrived + w.exited == w.lanes) {
      fatal("a warp-synchronous operation (__syncwarp, __shfl_*_sync, wmma) is waiting for lanes "
            "that have exited the kernel");
    }
  }
  if (g.arrived == g.threads) {
    if (g.arrived_sync > 0 && g.arrived_end > 0) {
      fatal("__syncthreads reached by only some threads of the block: the others exited the "
            "kernel (divergent barrier)");
    }
    if (g.arrived_end > 0) {
      g.current_block = profile::next_block(g.current_block, g.blocks);
      if (g.current_block < g.blocks) start_block(g);
    }
    g.blocked -= g.threads - 1;
    g.arrived = g.arrived_sync = g.arrived_end = 0;
    ++g.generation;
    g.completer_running = g.completer_first;
    g.cv.notify_all();
    return;
  }
  wait_or_deadlock(g, lock, g.generation, kind == Arrival::kSync ? "__syncthreads" : "kernel exit");
}

void run_thread(GridState& g, int linear, void (*body)(void*), void* ctx) {
  t_grid = &g;
  t_linear = linear;
  blockDim = g.block;
  gridDim = g.grid;
  threadIdx = uint3{linear % g.block.x, (linear / g.block.x) % g.block.y,
                    linear / (g.block.x * g.block.y)};
  for (;;) {
    uint64_t b;
    const unsigned char* smem;
    {
      EMULATOR_BOOKKEEPING;
      std::lock_guard<std::mutex> lock(g.mutex);
      b = g.current_block;
      smem = g.smem;
    }
    if (b >= g.blocks) break;
    blockIdx = uint3{static_cast<unsigned int>(b % g.grid.x),
                     static_cast<unsigned int>((b / g.grid.x) % g.grid.y),
                     static_cast<unsigned int>(b / (uint64_t{g.grid.x} * g.grid.y))};
    profile::begin_block(b, linear, smem, g.smem_bytes);
    body(ctx);
    ptx::end_block_thread();
    profile::end_block_thread();
    arrive_block(Arrival::kEnd);
  }
  {
    EMULATOR_BOOKKEEPING;
    std::lock_guard<std::mutex> lock(g.mutex);
    stop_running(g);
  }
  t_grid = nullptr;
}

}  // namespace

void fatal(const char* what) {
  std::fprintf(stderr,
               "cuda_emulator: error: %s [block (%u, %u, %u), thread (%u, %u, %u)]\n", what,
               blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
  std::fflush(stderr);
  std::_Exit(3);
}

unsigned char* dynamic_shared_memory() {
  if (t_grid == nullptr) fatal("dynamic_shared_memory() called outside a kernel");
  EMULATOR_BOOKKEEPING;
  return t_grid->smem;
}

size_t shared_memory_bytes() {
  if (t_grid == nullptr) fatal("shared_memory_bytes() called outside a kernel");
  return t_grid->smem_bytes;
}

void set_max_dynamic_smem(const void* kernel, int bytes) {
  std::lock_guard<std::mutex> lock(g_attr_mutex);
  g_max_smem[kernel] = static_cast<size_t>(bytes);
}

size_t max_dynamic_smem(const void* kernel) {
  std::lock_guard<std::mutex> lock(g_attr_mutex);
  const auto it = g_max_smem.find(kernel);
  return it == g_max_smem.end() ? kDefaultMaxDynamicSmem : it->second;
}

cudaError_t run_grid_erased(dim3 grid, dim3 block, size_t smem_bytes, void (*body)(void*),
                            void* ctx) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64) return cudaErrorInvalidConfiguration;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
      grid.z > 65535) {
    return cudaErrorInvalidConfiguration;
  }
  if (smem_bytes > kOptInMaxDynamicSmem) return cudaErrorInvalidValue;
  if (t_grid != nullptr) fatal("kernel launch from inside a kernel");

  GridState g;
  g.threads = static_cast<int>(threads);
  g.blocks = uint64_t{grid.x} * grid.y * grid.z;
  g.grid = grid;
  g.block = block;
  g.smem_bytes = smem_bytes;
  g.warps.resize((threads + 31) / 32);
  for (size_t w = 0; w < g.warps.size(); ++w) {
    g.warps[w].lanes = static_cast<int>(std::min<uint64_t>(32, threads - w * 32));
  }
  const char* schedule = std::getenv("CUDA_EMULATOR_SCHEDULE");
  if (schedule != nullptr && *schedule != '\0') {
    if (std::strcmp(schedule, "completer_first") != 0) {
      fatal("CUDA_EMULATOR_SCHEDULE: expected completer_first or nothing");
    }
    g.completer_first = true;
  }
  g.current_block = profile::first_block(g.blocks);
  profile::begin_launch(grid.x, grid.y, grid.z, static_cast<unsigned>(threads), smem_bytes,
                        g.blocks, profile::sampled_blocks(g.blocks));
  if (profile::plan_only()) {  // the launch's shape is all that was asked for
    profile::end_launch();
    return cudaSuccess;
  }
  start_block(g);
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int t = 0; t < g.threads; ++t) pool.emplace_back(run_thread, std::ref(g), t, body, ctx);
  for (std::thread& t : pool) t.join();
  profile::end_launch();
  for (void* mem : g.smem_allocations) std::free(mem);
  return cudaSuccess;
}

void sync_block() {
  if (t_grid == nullptr) fatal("__syncthreads() called outside a kernel");
  profile::note_barrier();
  arrive_block(Arrival::kSync);
}

void sync_warp_hidden();

// Everything before a warp barrier, in every lane of the warp, happens before everything after.
void sync_warp() {
  if (t_grid == nullptr) fatal("__syncwarp() called outside a kernel");
  char* ordering;
  {
    EMULATOR_BOOKKEEPING;  // the generation cannot change before this lane arrives
    Warp& w = t_grid->warps[t_linear / 32];
    ordering = w.ordering.of(w.generation);
  }
  HAPPENS_BEFORE(ordering);
  sync_warp_hidden();
  HAPPENS_AFTER(ordering);
}

void sync_warp_hidden() {
  EMULATOR_BOOKKEEPING;
  GridState& g = *t_grid;
  std::unique_lock<std::mutex> lock(g.mutex);
  Warp& w = g.warps[t_linear / 32];
  ++w.arrived;
  if (w.arrived + w.exited == w.lanes) {
    if (w.exited > 0) {
      fatal("a warp-synchronous operation (__syncwarp, __shfl_*_sync, wmma) reached by only "
            "some lanes: the others exited the kernel");
    }
    g.blocked -= w.lanes - 1;
    w.arrived = 0;
    ++w.generation;
    g.cv.notify_all();
    return;
  }
  wait_or_deadlock(g, lock, w.generation, "a warp barrier");
}

uint32_t exchange_down(uint32_t value, unsigned int delta) {
  GridState& g = *t_grid;
  const int lane = t_linear % 32;
  Warp& w = g.warps[t_linear / 32];
  {
    EMULATOR_BOOKKEEPING;
    std::lock_guard<std::mutex> lock(g.mutex);
    w.exchange[lane] = value;
  }
  sync_warp();
  uint32_t result = value;
  {
    EMULATOR_BOOKKEEPING;
    std::lock_guard<std::mutex> lock(g.mutex);
    if (lane + delta < static_cast<unsigned int>(w.lanes)) result = w.exchange[lane + delta];
  }
  sync_warp();
  return result;
}

int lane_id() {
  if (t_grid == nullptr) fatal("a warp operation called outside a kernel");
  return t_linear % 32;
}

void gather_warp(const uint32_t* mine, int words, uint32_t* all, const void* site) {
  if (words < 1 || words > kMaxGatherWords) fatal("gather_warp: 1 to kMaxGatherWords words");
  GridState& g = *t_grid;
  const int lane = lane_id();
  Warp& w = g.warps[t_linear / 32];
  if (w.lanes != 32) fatal("a warp-collective matrix instruction in a partial warp (blockDim not a multiple of 32)");
  {
    EMULATOR_BOOKKEEPING;
    std::lock_guard<std::mutex> lock(g.mutex);
    if (w.gather_writers == 0) {
      w.gather_site = site;
    } else if (w.gather_site != site) {
      fatal("the lanes of a warp reached different warp-collective matrix instructions "
            "(ldmatrix / mma.sync are .aligned: every lane must execute the same one)");
    }
    if (++w.gather_writers == 32) w.gather_writers = 0;
    for (int i = 0; i < words; ++i) w.gathered[lane * kMaxGatherWords + i] = mine[i];
  }
  sync_warp_hidden();  // the exchange itself orders no memory accesses (see cuda_runtime.h)
  {
    EMULATOR_BOOKKEEPING;
    std::lock_guard<std::mutex> lock(g.mutex);
    for (int l = 0; l < 32; ++l) {
      for (int i = 0; i < words; ++i) all[l * words + i] = w.gathered[l * kMaxGatherWords + i];
    }
  }
  sync_warp_hidden();  // the exchange itself orders no memory accesses (see cuda_runtime.h)
}

}  // namespace cuda_emulator
