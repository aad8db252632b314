// laaf_kernels tests: a host emulation of the little of CUDA that csrc/*.cu uses,
// so that the CUDA backend's kernels run, and are tested, on a machine without a
// GPU (tests/cuda_emulation.py translates the sources and builds them with this
// header force-included; see its docstring for what is and is not emulated).
//
// The model, kept faithful where our kernels could get it wrong:
//   * a launch runs its blocks one after another; the threads of a block run as
//     fibers (ucontext) on one OS thread, switched only at __syncthreads and warp
//     shuffles. A barrier releases once every thread of the block that has not
//     exited arrives; if every live thread waits and none can be released, the
//     launch fails with "deadlock" (a __syncthreads in divergent code);
//   * __shfl_xor_sync needs all 32 lanes of the warp (the full mask);
//   * the launch configuration is checked as the driver does: a grid of 0 blocks,
//     gridDim.y/z > 65535, more than 1024 threads, dynamic shared memory above 48 KiB
//     without cudaFuncAttributeMaxDynamicSharedMemorySize, or above the device's
//     opt-in limit, all fail the launch (a c10::Error naming the kernel);
//   * dynamic shared memory starts as 0xFF bytes (NaN in every float type) in
//     every block, so that a read of an unwritten element shows up;
//   * the device: kEmulatedSMs multiprocessors (few, so that grid-stride loops
//     wrap), the H100's 227 KiB of opt-in shared memory per block.
// Static __shared__ arrays become one static array per declaration (static_shared):
// what the threads of one block share, since blocks run one at a time (a launch
// holds a process-wide lock); it too starts every block as 0xFF bytes.
#pragma once

#include <c10/util/Exception.h>
#include <math.h>  // libstdc++'s wrapper: float overloads of fma, tanh, ... globally
#include <ucontext.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

static_assert(std::is_same_v<decltype(fma(1.0f, 1.0f, 1.0f)), float>,
              "fma(float, float, float) must be the float overload, as in CUDA");

// ---------------------------------------------------------------------------
// Qualifiers and built-in types
// ---------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// __shared__ arrays are translated (tests/cuda_emulation.py); one that is not fails here.
#define __shared__ __shared___arrays_must_be_translated_by_cuda_emulation_py

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
      : x(x_), y(y_), z(z_) {}
};
struct __attribute__((aligned(16))) float4 {
  float x, y, z, w;
};

// The running thread's coordinates (set by the scheduler at every switch).
inline uint3 threadIdx{0, 0, 0};
inline uint3 blockIdx{0, 0, 0};
inline dim3 blockDim;
inline dim3 gridDim;

// ---------------------------------------------------------------------------
// Runtime API: the calls the sources make
// ---------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
};
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
using cudaStream_t = struct CUstream_st*;

namespace laaf_emu {

constexpr int kEmulatedSMs = 3;
constexpr int kMaxThreadsPerSM = 2048;
constexpr int kSharedPerSM = 228 * 1024;
constexpr int kSharedOptin = 227 * 1024;    // per block, with the attribute set
constexpr int kSharedDefault = 48 * 1024;   // per block, without it

// Per kernel (by address): the dynamic shared memory it may use.
inline std::map<const void*, int>& dynamic_smem_limits() {
  static std::map<const void*, int> limits;
  return limits;
}

inline int dynamic_smem_limit(const void* kernel) {
  const auto& limits = dynamic_smem_limits();
  const auto it = limits.find(kernel);
  return it == limits.end() ? kSharedDefault : it->second;
}

}  // namespace laaf_emu

inline const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
  }
  return "unknown error";
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int /*device*/) {
  switch (attribute) {
    case cudaDevAttrMultiProcessorCount: *value = laaf_emu::kEmulatedSMs; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = laaf_emu::kSharedOptin; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel* kernel, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      value > laaf_emu::kSharedOptin) {
    return cudaErrorInvalidValue;
  }
  laaf_emu::dynamic_smem_limits()[reinterpret_cast<const void*>(kernel)] = value;
  return cudaSuccess;
}

// Blocks of `threads` threads and `smem` bytes of dynamic shared memory that fit
// one multiprocessor (threads and shared memory only; registers are not modelled).
template <typename Kernel>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel*, int threads,
                                                          size_t smem) {
  if (threads <= 0 || threads > 1024) return cudaErrorInvalidValue;
  const int by_threads = laaf_emu::kMaxThreadsPerSM / threads;
  const int by_smem = smem == 0 ? by_threads : int(laaf_emu::kSharedPerSM / smem);
  *blocks = std::min(by_threads, by_smem);
  return cudaSuccess;
}

// ---------------------------------------------------------------------------
// Fibers: the threads of one block
// ---------------------------------------------------------------------------
namespace laaf_emu {

constexpr size_t kFiberStack = 256 * 1024;

struct Barrier {
  int arrived = 0;
  unsigned generation = 0;
};

struct Fiber {
  ucontext_t context;
  uint3 index;
  bool done = false;
};

// The block being run: its fibers, the scheduler's context, its barriers (one for
// the block, one per warp) and the warp-shuffle exchange slots.
struct Block {
  std::vector<Fiber> fibers;
  std::vector<std::unique_ptr<char[]>> stacks;
  ucontext_t scheduler;
  int current = -1;
  int live = 0;
  unsigned long progress = 0;  // releases, passes and exits: what a deadlock lacks
  Barrier block_barrier;
  std::vector<Barrier> warp_barriers;
  std::vector<std::array<uint64_t, 32>> shuffle_slots;
  std::vector<unsigned char> dynamic_smem;
  const std::function<void()>* body = nullptr;
  unsigned long serial = 0;  // which block this is, counted over all launches
  std::string error;  // set by a fiber that must stop the launch
};

inline Block& block() {
  static Block the_block;
  return the_block;
}

inline Fiber& current_fiber() { return block().fibers[block().current]; }

// Back to the scheduler until the barrier's generation moves past `generation`.
inline void wait_for(const Barrier& barrier, unsigned generation) {
  Block& b = block();
  while (barrier.generation == generation) swapcontext(&current_fiber().context, &b.scheduler);
  ++b.progress;  // this thread moves on
}

inline void release(Barrier& barrier) {
  barrier.arrived = 0;
  ++barrier.generation;
  ++block().progress;
}

// __syncthreads: wait until every live thread of the block has arrived.
inline void block_sync() {
  Block& b = block();
  Barrier& barrier = b.block_barrier;
  const unsigned generation = barrier.generation;
  if (++barrier.arrived == b.live) {
    release(barrier);
    return;
  }
  wait_for(barrier, generation);
}

// The lanes of one warp meeting (a shuffle): all 32 must arrive.
inline void warp_sync(int warp) {
  Barrier& barrier = block().warp_barriers[warp];
  const unsigned generation = barrier.generation;
  if (++barrier.arrived == 32) {
    release(barrier);
    return;
  }
  wait_for(barrier, generation);
}

inline void fiber_main(int index) {
  Block& b = block();
  try {
    (*b.body)();
  } catch (const std::exception& error) {
    b.error = error.what();
  }
  Fiber& self = b.fibers[index];
  self.done = true;
  --b.live;
  ++b.progress;
  // An exit can complete a barrier that the others wait at.
  if (b.block_barrier.arrived > 0 && b.block_barrier.arrived == b.live) release(b.block_barrier);
  swapcontext(&self.context, &b.scheduler);  // never resumed
}

// Run every thread of the current block to completion (or to an error).
inline void run_block(unsigned threads, size_t smem, const std::function<void()>& body,
                      const char* kernel_name) {
  Block& b = block();
  const unsigned dx = blockDim.x, dy = blockDim.y;
  b.fibers.assign(threads, Fiber{});
  while (b.stacks.size() < threads) b.stacks.emplace_back(new char[kFiberStack]);
  b.warp_barriers.assign((threads + 31) / 32, Barrier{});
  b.shuffle_slots.assign((threads + 31) / 32, {});
  b.block_barrier = Barrier{};
  b.dynamic_smem.assign(smem, 0xFF);
  b.body = &body;
  ++b.serial;
  b.live = int(threads);
  b.error.clear();
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = b.fibers[t];
    f.index = uint3{t % dx, (t / dx) % dy, t / (dx * dy)};
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = b.stacks[t].get();
    f.context.uc_stack.ss_size = kFiberStack;
    f.context.uc_link = nullptr;
    makecontext(&f.context, reinterpret_cast<void (*)()>(&fiber_main), 1, int(t));
  }
  // Round robin. A round in which no barrier was released, no thread moved past one
  // and none exited (every live thread only waited) can never end: a deadlock.
  while (b.live > 0 && b.error.empty()) {
    const unsigned long before = b.progress;
    for (unsigned t = 0; t < threads && b.error.empty(); ++t) {
      Fiber& f = b.fibers[t];
      if (f.done) continue;
      b.current = int(t);
      threadIdx = f.index;
      swapcontext(&b.scheduler, &f.context);
    }
    if (b.error.empty() && b.progress == before && b.live > 0) {
      b.error = "deadlock: " + std::to_string(b.live) +
                " threads wait at a barrier that the others never reach";
    }
  }
  b.current = -1;
  TORCH_CHECK(b.error.empty(), "CUDA emulation: ", kernel_name, " in block (", blockIdx.x, ", ",
              blockIdx.y, ", ", blockIdx.z, "): ", b.error);
}

// ---------------------------------------------------------------------------
// Launches: kernel<<<grid, block, smem, stream>>>(args) is translated into
// ::laaf_emu::launch("kernel", key, [&](auto... p) { kernel(p...); }, grid, block,
//                    smem, stream)(args)
// ---------------------------------------------------------------------------

// The launch not yet followed by C10_CUDA_KERNEL_LAUNCH_CHECK (null: none). A launch
// while one is pending fails: on a GPU its error would surface at a later, unrelated call.
inline const char*& unchecked_launch() {
  static const char* name = nullptr;
  return name;
}

inline void launch_checked() { unchecked_launch() = nullptr; }

inline std::mutex& launch_mutex() {
  static std::mutex mutex;
  return mutex;
}

inline void check_configuration(const void* kernel, const char* name, dim3 grid, dim3 threads,
                                 size_t smem) {
  const uint64_t per_block = uint64_t(threads.x) * threads.y * threads.z;
  const auto fail = [&](const std::string& why) {
    TORCH_CHECK(false, "CUDA emulation: launching ", name, " <<<(", grid.x, ", ", grid.y, ", ",
                grid.z, "), (", threads.x, ", ", threads.y, ", ", threads.z, "), ", smem,
                ">>> would fail: ", why);
  };
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) fail("an empty grid (invalid configuration)");
  if (grid.x > 2147483647u || grid.y > 65535u || grid.z > 65535u) fail("grid beyond 2^31-1 x 65535 x 65535");
  if (per_block == 0 || per_block > 1024 || threads.z > 64) fail("not 1 to 1024 threads per block");
  if (smem > size_t(dynamic_smem_limit(kernel))) {
    fail("dynamic shared memory above the kernel's limit of " +
         std::to_string(dynamic_smem_limit(kernel)) +
         " bytes (cudaFuncAttributeMaxDynamicSharedMemorySize)");
  }
}

// `kernel` calls the kernel with the arguments of one thread: a generic lambda
// [&](auto... p) { K(p...); }, so that K's template arguments are deduced from the
// launch's arguments as nvcc does. `key` is K's address where K is a plain function
// (pointer), else null: what cudaFuncSetAttribute keyed its shared memory limit by.
template <typename Kernel>
struct Launch {
  Kernel kernel;
  const char* name;
  const void* key;
  dim3 grid, threads;
  size_t smem;

  template <typename... Args>
  void operator()(Args&&... args) const {
    const std::lock_guard<std::mutex> lock(launch_mutex());
    if (const char* unchecked = std::exchange(unchecked_launch(), nullptr)) {
      TORCH_CHECK(false, "CUDA emulation: the launch of ", unchecked,
                  " was not followed by C10_CUDA_KERNEL_LAUNCH_CHECK()");
    }
    check_configuration(key, name, grid, threads, smem);
    // The arguments, copied once, as the launch copies them to the device.
    const std::tuple<std::decay_t<Args>...> params(std::forward<Args>(args)...);
    const std::function<void()> body = [&] { std::apply(kernel, params); };
    gridDim = grid;
    blockDim = threads;
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          blockIdx = uint3{x, y, z};
          run_block(threads.x * threads.y * threads.z, smem, body, name);
        }
    unchecked_launch() = name;  // a launch that failed has thrown its error already
  }
};

template <typename Kernel, typename Stream = int>
Launch<Kernel> launch(const char* name, const void* key, Kernel kernel, dim3 grid, dim3 threads,
                      size_t smem = 0, Stream = Stream()) {
  return Launch<Kernel>{kernel, name, key, grid, threads, smem};
}

// The dynamic shared memory of the running block (extern __shared__ arrays).
inline unsigned char* dynamic_smem() { return block().dynamic_smem.data(); }

// A __shared__ array (Array = T[n]...; Site tells declarations apart): one copy,
// filled with 0xFF bytes when the first thread of a block reaches its declaration.
template <typename Array, int Site>
Array& static_shared() {
  static Array storage;
  static unsigned long filled_for = 0;  // serials start at 1
  if (filled_for != block().serial) {
    std::memset(&storage, 0xFF, sizeof(Array));
    filled_for = block().serial;
  }
  return storage;
}

}  // namespace laaf_emu

// ---------------------------------------------------------------------------
// Device built-ins
// ---------------------------------------------------------------------------
inline void __syncthreads() { laaf_emu::block_sync(); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffles move at most 8 bytes here");
  TORCH_CHECK(mask == 0xffffffffu && width == 32,
              "CUDA emulation: only full-warp shuffles (mask 0xffffffff, width 32) are emulated");
  laaf_emu::Block& b = laaf_emu::block();
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  TORCH_CHECK(blockDim.x * blockDim.y * blockDim.z % 32 == 0,
              "CUDA emulation: a shuffle in a block that is not whole warps");
  const int warp = int(t / 32), lane = int(t % 32);
  std::memcpy(&b.shuffle_slots[warp][lane], &value, sizeof(T));
  laaf_emu::warp_sync(warp);  // every lane has written its value
  T out;
  std::memcpy(&out, &b.shuffle_slots[warp][(lane ^ lane_mask) & 31], sizeof(T));
  laaf_emu::warp_sync(warp);  // every lane has read before the slots are reused
  return out;
}
