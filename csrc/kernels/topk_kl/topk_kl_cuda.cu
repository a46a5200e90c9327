// CUDA twin of the exact top-k KL (no torch headers): one warp per row.
#define MEGATRON_ALIGN_CUDA_API
#include "kernels/topk_kl/topk_kl.h"

#include "kernels/common/cuda_utils.cuh"
#include "kernels/topk_kl/kl_math.h"

namespace megatron_align {
namespace kernels {
namespace {

constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ OnlineLSE warp_lse(OnlineLSE v) {
  for (int off = 16; off > 0; off >>= 1) {
    OnlineLSE o;
    o.m = __shfl_xor_sync(0xffffffffu, v.m, off);
    o.s = __shfl_xor_sync(0xffffffffu, v.s, off);
    v.merge(o);
  }
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__device__ __forceinline__ void row_lse(const float* x, const float* y, int64_t k, OnlineLSE* lp, OnlineLSE* lq) {
  const int lane = threadIdx.x & 31;
  OnlineLSE p, q;
  p.init();
  q.init();
  for (int64_t i = lane; i < k; i += 32) {
    p.push(x[i]);
    q.push(y[i]);
  }
  *lp = warp_lse(p);
  *lq = warp_lse(q);
}

/// Forward (kl[r]) or backward (grad_policy[r, :]) of the rows owned by this warp.
template <bool kBackward>
__global__ void topk_kl_kernel(TopkKLArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5); r < a.rows; r += warps) {
    const float* x = a.policy + r * a.k;
    const float* y = a.ref + r * a.k;
    OnlineLSE lp, lq;
    row_lse(x, y, a.k, &lp, &lq);
    if (kBackward) {
      const float kl = a.kl[r], g = a.grad_kl[r];
      for (int64_t i = lane; i < a.k; i += 32) a.out[r * a.k + i] = kl_grad_term(x[i], y[i], lp, lq, kl, g);
    } else {
      float kl = 0.f;
      for (int64_t i = lane; i < a.k; i += 32) kl += kl_term(x[i], y[i], lp, lq);
      kl = warp_sum(kl);
      if (lane == 0) a.out[r] = kl;
    }
  }
}

unsigned grid_for(int64_t rows) {
  const int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int64_t cap = 65535LL * 32;
  return static_cast<unsigned>(blocks < cap ? blocks : cap);
}

}  // namespace

cudaError_t topk_kl_forward_cuda(const TopkKLArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  MA_LAUNCH(grid_for(a.rows), 32 * kWarpsPerBlock, 0, stream, topk_kl_kernel<false>)(a);
  return cudaGetLastError();
}

cudaError_t topk_kl_backward_cuda(const TopkKLArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  MA_LAUNCH(grid_for(a.rows), 32 * kWarpsPerBlock, 0, stream, topk_kl_kernel<true>)(a);
  return cudaGetLastError();
}

}  // namespace kernels
}  // namespace megatron_align
