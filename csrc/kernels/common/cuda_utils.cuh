// CUDA-only helpers: vector types for 16-byte loads, row splitting, block reductions.
#pragma once

#include <cuda_runtime.h>

#include "kernels/common/dtypes.h"

/// MA_LAUNCH(grid, block, smem, stream, kernel)(args...) is kernel<<<grid, block, smem, stream>>>(args...);
/// the one launch form in csrc, so the host emulation (tools/cudaemu) can supply its own.
#ifndef MA_LAUNCH
#define MA_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif

namespace megatron_align {
namespace kernels {

/// VEC elements of T packed into one aligned load/store (16 bytes when VEC = 16 / sizeof(T)).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

/// Split [0, n) of a row starting at ptr into a scalar head (until a VEC*sizeof(T) boundary),
/// a vector body and a scalar tail. Works for every n and every element-aligned ptr.
template <typename T, int VEC>
struct RowSplit {
  int64_t head, nvec, body_end;
  __device__ RowSplit(const void* ptr, int64_t n) {
    constexpr int64_t kBytes = sizeof(T) * VEC;
    const int64_t mis = static_cast<int64_t>(reinterpret_cast<uintptr_t>(ptr) % kBytes);
    head = mis == 0 ? 0 : (kBytes - mis) / static_cast<int64_t>(sizeof(T));
    if (head > n) head = n;
    nvec = (n - head) / VEC;
    body_end = head + nvec * VEC;
  }
};

__device__ __forceinline__ float shfl_xor(float v, int off) {
  return __shfl_xor_sync(0xffffffffu, v, off);
}

/// Reduce over the block with merge(S, S) and shfl_xor(S, int) (found by ADL for structs);
/// identity is merge's neutral element. blockDim.x must be a multiple of 32 (at most 1024);
/// smem holds >= 32 elements. Every thread gets the result.
template <typename S, typename Merge>
__device__ S block_reduce(S v, S identity, S* smem, Merge merge) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  for (int off = 16; off > 0; off >>= 1) v = merge(v, shfl_xor(v, off));
  __syncthreads();  // smem may still be read by a previous reduction
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nwarps ? smem[lane] : identity;
    for (int off = 16; off > 0; off >>= 1) v = merge(v, shfl_xor(v, off));
    if (lane == 0) smem[0] = v;
  }
  __syncthreads();
  return smem[0];
}

}  // namespace kernels
}  // namespace megatron_align
