// cudaemu.h: run the project's CUDA kernels as host code (a test tool, not part of the package).
//
// Force-included before every .cu file (`g++ -include cudaemu.h -x c++`), as nvcc includes
// cuda_runtime.h: it defines __CUDACC__ / __CUDA_ARCH__ (so hd.h takes its device branch), the
// qualifiers, dim3 and the built-in indices, the runtime calls the kernels use, warp shuffles,
// __syncthreads, fast-math intrinsics, and MA_LAUNCH (the project's launch macro).
//
// Execution model: blocks run one after another; each thread of a block is a ucontext fiber on an
// mmap'd stack with a guard page. The scheduler runs every runnable fiber until it blocks, then
// releases
//   - a warp operation once every lane named in its mask waits at a warp operation with that mask
//     (values are exchanged at that moment, so partial masks are exact), and
//   - the block barrier only when every live thread waits at the same __syncthreads call site;
// otherwise it reports a deadlock with each thread's file:line and aborts (divergent barrier, a
// mask naming an exited lane). The sweep order over threads is CUDAEMU_ORDER=forward|reverse|
// random[:seed] (run at least two: one order alone can hide a race). __shared__ arrays are
// function statics: they keep their values from the previous block (a stale-read bug can hide).
// See README.md for what this cannot show.
#pragma once

#define __CUDACC__ 1
#define __CUDA_ARCH__ 900
#define CUDAEMU 1

#include <ucontext.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <functional>
#include <random>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define CUDAEMU_ASAN 1
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
}
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
// A function-local static: one copy per kernel instantiation, shared by the fibers of the block.
#define __shared__ static

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

#include "cudaemu_types.h"

namespace cudaemu {

enum class Wait { kNone, kBarrier, kWarp, kDone };

struct Fiber {
  ucontext_t ctx;
  void* stack = nullptr;  // usable part (above the guard page)
  size_t stack_size = 0;
  uint3 tid{0, 0, 0};
  int linear = 0;
  Wait wait = Wait::kNone;
  const char* file = "";
  int line = 0;
  // warp operation in flight
  unsigned mask = 0;
  int kind = 0;       // 0 shfl_xor, 1 shfl, 2 shfl_down, 3 shfl_up, 4 ballot, 5 any, 6 all
  int arg = 0;        // lane offset / source lane
  uint64_t value = 0;  // bits of the operand
  uint64_t result = 0;
#if defined(CUDAEMU_ASAN)
  void* fake_stack = nullptr;
#endif
};

struct State {
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  ucontext_t sched_ctx;
  dim3 block_idx, block_dim, grid_dim;
  std::function<void()> body;
  cudaError_t last_error = cudaSuccess;
#if defined(CUDAEMU_ASAN)
  void* sched_fake_stack = nullptr;
  const void* main_bottom = nullptr;
  size_t main_size = 0;
#endif
};

inline State& state() {
  static State s;
  return s;
}

[[noreturn]] inline void fail(const std::string& msg) {
  std::fprintf(stderr, "cudaemu: %s\n", msg.c_str());
  std::fflush(stderr);
  std::abort();
}

constexpr size_t kStackBytes = 256 * 1024;

inline void alloc_stack(Fiber& f) {
  if (f.stack) return;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* base = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) fail("mmap of a fiber stack failed");
  mprotect(base, page, PROT_NONE);  // guard page below the stack (stacks grow down)
  f.stack = static_cast<char*>(base) + page;
  f.stack_size = kStackBytes;
}

/// Switch from the running fiber back to the scheduler.
inline void yield_to_scheduler(bool exiting = false) {
  State& s = state();
  Fiber* f = s.current;
#if defined(CUDAEMU_ASAN)
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f->fake_stack, s.main_bottom, s.main_size);
#endif
  swapcontext(&f->ctx, &s.sched_ctx);
#if defined(CUDAEMU_ASAN)
  __sanitizer_finish_switch_fiber(f->fake_stack, nullptr, nullptr);
#endif
  (void)exiting;
}

inline void fiber_entry() {
  State& s = state();
#if defined(CUDAEMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &s.main_bottom, &s.main_size);
#endif
  s.body();
  s.current->wait = Wait::kDone;
  yield_to_scheduler(true);
  fail("a finished fiber was resumed");
}

inline void run_fiber(Fiber& f) {
  State& s = state();
  s.current = &f;
#if defined(CUDAEMU_ASAN)
  __sanitizer_start_switch_fiber(&s.sched_fake_stack, f.stack, f.stack_size);
#endif
  swapcontext(&s.sched_ctx, &f.ctx);
#if defined(CUDAEMU_ASAN)
  __sanitizer_finish_switch_fiber(s.sched_fake_stack, nullptr, nullptr);
#endif
  s.current = nullptr;
}

inline std::vector<int> sweep_order(int n) {
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  const char* env = std::getenv("CUDAEMU_ORDER");
  const std::string mode = env ? env : "forward";
  if (mode == "reverse") {
    for (int i = 0; i < n; ++i) order[i] = n - 1 - i;
  } else if (mode.rfind("random", 0) == 0) {
    static std::mt19937 rng(mode.size() > 7 ? static_cast<unsigned>(std::atoi(mode.c_str() + 7)) : 12345u);
    std::shuffle(order.begin(), order.end(), rng);
  } else if (mode != "forward") {
    fail("CUDAEMU_ORDER must be forward, reverse or random[:seed], got " + mode);
  }
  return order;
}

inline std::string where(const Fiber& f) {
  const char* k = f.wait == Wait::kBarrier ? "__syncthreads" : f.wait == Wait::kWarp ? "warp op" :
                  f.wait == Wait::kDone ? "exited" : "running";
  return "thread " + std::to_string(f.linear) + " " + k + (f.wait == Wait::kDone ? "" :
         std::string(" at ") + f.file + ":" + std::to_string(f.line));
}

inline uint64_t warp_result(const Fiber* lanes[32], int lane) {
  const Fiber& me = *lanes[lane];
  auto src_value = [&](int src) -> uint64_t {
    if (src < 0 || src > 31 || !lanes[src] || !((me.mask >> src) & 1u)) return me.value;  // CUDA: own value
    return lanes[src]->value;
  };
  switch (me.kind) {
    case 0: return src_value(lane ^ me.arg);
    case 1: return src_value(me.arg & 31);
    case 2: return lane + me.arg < 32 ? src_value(lane + me.arg) : me.value;
    case 3: return lane - me.arg >= 0 ? src_value(lane - me.arg) : me.value;
    default: {
      uint32_t ballot = 0;
      for (int l = 0; l < 32; ++l)
        if (((me.mask >> l) & 1u) && lanes[l] && lanes[l]->value) ballot |= 1u << l;
      if (me.kind == 4) return ballot;
      if (me.kind == 5) return ballot != 0;
      return ballot == me.mask;
    }
  }
}

/// Release the complete warp groups; true when one was released.
inline bool release_warps(State& s) {
  bool released = false;
  const int n = static_cast<int>(s.fibers.size());
  for (int w = 0; w * 32 < n; ++w) {
    const Fiber* lanes[32] = {};
    for (int l = 0; l < 32 && w * 32 + l < n; ++l) {
      const Fiber& f = s.fibers[w * 32 + l];
      if (f.wait == Wait::kWarp) lanes[l] = &f;
    }
    for (int l = 0; l < 32; ++l) {
      if (!lanes[l]) continue;
      const unsigned m = lanes[l]->mask;
      if (!((m >> l) & 1u)) fail(where(*lanes[l]) + ": the mask does not name the calling lane");
      bool complete = true;
      for (int o = 0; o < 32 && complete; ++o) {
        if (!((m >> o) & 1u)) continue;
        if (w * 32 + o >= n) fail(where(*lanes[l]) + ": the mask names lane " + std::to_string(o) +
                                  " beyond blockDim");
        const Fiber& other = s.fibers[w * 32 + o];
        if (other.wait == Wait::kDone)
          fail(where(*lanes[l]) + ": the mask names lane " + std::to_string(o) + ", which has exited");
        complete = other.wait == Wait::kWarp && other.mask == m;
      }
      if (!complete) continue;
      uint64_t results[32];
      for (int o = 0; o < 32; ++o)
        if ((m >> o) & 1u) results[o] = warp_result(lanes, o);
      for (int o = 0; o < 32; ++o) {
        if (!((m >> o) & 1u)) continue;
        Fiber& f = s.fibers[w * 32 + o];
        f.result = results[o];
        f.wait = Wait::kNone;
        lanes[o] = nullptr;
      }
      released = true;
    }
  }
  return released;
}

inline bool release_barrier(State& s) {
  const Fiber* first = nullptr;
  for (const Fiber& f : s.fibers) {
    if (f.wait == Wait::kDone) continue;
    if (f.wait != Wait::kBarrier) return false;
    if (!first) {
      first = &f;
    } else if (f.line != first->line || std::strcmp(f.file, first->file) != 0) {
      fail("divergent __syncthreads: " + where(*first) + " but " + where(f));
    }
  }
  if (!first) return false;
  for (Fiber& f : s.fibers)
    if (f.wait == Wait::kBarrier) f.wait = Wait::kNone;
  return true;
}

inline void run_block(State& s, int nthreads) {
  for (int t = 0; t < nthreads; ++t) {
    Fiber& f = s.fibers[t];
    alloc_stack(f);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = f.stack_size;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_entry, 0);
    f.linear = t;
    f.tid = uint3{t % s.block_dim.x, (t / s.block_dim.x) % s.block_dim.y, t / (s.block_dim.x * s.block_dim.y)};
    f.wait = Wait::kNone;
  }
  const std::vector<int> order = sweep_order(nthreads);
  for (;;) {
    for (int t : order)
      if (s.fibers[t].wait == Wait::kNone) run_fiber(s.fibers[t]);
    bool all_done = true;
    for (int t = 0; t < nthreads; ++t) all_done = all_done && s.fibers[t].wait == Wait::kDone;
    if (all_done) return;
    if (release_warps(s) || release_barrier(s)) continue;
    std::string msg = "deadlock in block (" + std::to_string(s.block_idx.x) + "):";
    for (int t = 0; t < nthreads; ++t) msg += "\n  " + where(s.fibers[t]);
    fail(msg);
  }
}

inline cudaError_t launch(dim3 grid, dim3 block, size_t smem, std::function<void()> body) {
  State& s = state();
  const uint64_t nthreads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535 || smem > 48 * 1024) {
    s.last_error = cudaErrorInvalidConfiguration;
    return s.last_error;
  }
#if defined(__x86_64__)
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(csr | 0x8040);  // FTZ | DAZ, as --use_fast_math flushes fp32 denormals
#endif
  s.fibers.resize(nthreads);
  s.grid_dim = grid;
  s.block_dim = block;
  s.body = std::move(body);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        s.block_idx = dim3(x, y, z);
        run_block(s, static_cast<int>(nthreads));
      }
#if defined(__x86_64__)
  _mm_setcsr(csr);
#endif
  return cudaSuccess;
}

/// MA_LAUNCH(grid, block, smem, stream, kernel)(args...): copies the arguments (as a launch does)
/// and runs the kernel on every thread of every block before returning (a synchronous stream).
template <class... P>
struct Launch {
  dim3 grid, block;
  size_t smem;
  void (*kernel)(P...);
  template <class... A>
  void operator()(A&&... args) const {
    auto k = kernel;
    std::function<void()> body = [k, args...]() { k(args...); };
    launch(grid, block, smem, std::move(body));
  }
};

template <class... P>
Launch<P...> make_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t, void (*kernel)(P...)) {
  return Launch<P...>{grid, block, smem, kernel};
}

template <class T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "warp operand larger than 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}

template <class T>
T from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

inline uint64_t warp_op(unsigned mask, int kind, int arg, uint64_t value, const char* file, int line) {
  State& s = state();
  Fiber* f = s.current;
  if (!f) fail(std::string("warp operation outside a kernel at ") + file + ":" + std::to_string(line));
  f->mask = mask;
  f->kind = kind;
  f->arg = arg;
  f->value = value;
  f->file = file;
  f->line = line;
  f->wait = Wait::kWarp;
  yield_to_scheduler();
  return f->result;
}

template <class T>
T shfl(unsigned mask, T v, int arg, int kind, const char* file, int line) {
  return from_bits<T>(warp_op(mask, kind, arg, to_bits(v), file, line));
}

inline void syncthreads(const char* file, int line) {
  State& s = state();
  Fiber* f = s.current;
  if (!f) fail(std::string("__syncthreads outside a kernel at ") + file + ":" + std::to_string(line));
  f->file = file;
  f->line = line;
  f->wait = Wait::kBarrier;
  yield_to_scheduler();
}

/// ex2.approx / lg2.approx as --use_fast_math uses them: fp32 in and out, denormals flushed.
inline float ftz(float x) { return std::fpclassify(x) == FP_SUBNORMAL ? std::copysign(0.f, x) : x; }
inline float fast_expf(float x) { return ftz(std::exp2f(ftz(x) * 1.44269504088896340736f)); }
inline float fast_logf(float x) { return ftz(std::log2f(ftz(x)) * 0.693147180559945309417f); }

}  // namespace cudaemu

#define threadIdx (::cudaemu::state().current->tid)
#define blockIdx (::cudaemu::state().block_idx)
#define blockDim (::cudaemu::state().block_dim)
#define gridDim (::cudaemu::state().grid_dim)
#define warpSize 32

#define __syncthreads() ::cudaemu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ((void)0)
#define __shfl_xor_sync(mask, v, off, ...) ::cudaemu::shfl(mask, v, off, 0, __FILE__, __LINE__)
#define __shfl_sync(mask, v, src, ...) ::cudaemu::shfl(mask, v, src, 1, __FILE__, __LINE__)
#define __shfl_down_sync(mask, v, d, ...) ::cudaemu::shfl(mask, v, d, 2, __FILE__, __LINE__)
#define __shfl_up_sync(mask, v, d, ...) ::cudaemu::shfl(mask, v, d, 3, __FILE__, __LINE__)
#define __ballot_sync(mask, p) \
  static_cast<unsigned>(::cudaemu::warp_op(mask, 4, 0, (p) ? 1u : 0u, __FILE__, __LINE__))
#define __any_sync(mask, p) static_cast<int>(::cudaemu::warp_op(mask, 5, 0, (p) ? 1u : 0u, __FILE__, __LINE__))
#define __all_sync(mask, p) static_cast<int>(::cudaemu::warp_op(mask, 6, 0, (p) ? 1u : 0u, __FILE__, __LINE__))

inline float __expf(float x) { return ::cudaemu::fast_expf(x); }
inline float __logf(float x) { return ::cudaemu::fast_logf(x); }
inline unsigned __float_as_uint(float f) { return ::cudaemu::from_bits<unsigned>(::cudaemu::to_bits(f)); }
inline float __uint_as_float(unsigned u) { return ::cudaemu::from_bits<float>(::cudaemu::to_bits(u)); }

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = ::cudaemu::state().last_error;
  ::cudaemu::state().last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return ::cudaemu::state().last_error; }
inline const char* cudaGetErrorString(cudaError_t e) { return cudaemu_error_string(e); }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

#define MA_LAUNCH(grid, block, smem, stream, ...) ::cudaemu::make_launch(grid, block, smem, stream, __VA_ARGS__)
