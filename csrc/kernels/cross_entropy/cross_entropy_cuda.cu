// CUDA twin of the vocab-parallel softmax kernels (no torch headers; see cross_entropy.h).
// Forward: one block per row, a single pass over the logits with 16-byte loads, online
// max/sum-exp per thread merged across the block. Backward: one block per row writes
// scale * (softmax - target_coef * onehot - uniform_coef), in place when grad == logits.
#define MEGATRON_ALIGN_CUDA_API
#include "kernels/cross_entropy/cross_entropy.h"

#include "kernels/common/cuda_utils.cuh"
#include "kernels/common/dispatch.h"
#include "kernels/cross_entropy/row_math.h"

namespace megatron_align {
namespace kernels {

__device__ __forceinline__ RowStats shfl_xor(const RowStats& v, int off) {
  RowStats o;
  o.lse.m = __shfl_xor_sync(0xffffffffu, v.lse.m, off);
  o.lse.s = __shfl_xor_sync(0xffffffffu, v.lse.s, off);
  o.sum = __shfl_xor_sync(0xffffffffu, v.sum, off);
  return o;
}

namespace {

struct MergeStats {
  __device__ RowStats operator()(RowStats a, const RowStats& b) const {
    a.merge(b);
    return a;
  }
};

int threads_for(int64_t V, int vec) {
  int t = 128;
  while (t < 1024 && static_cast<int64_t>(t) * vec * 4 < V) t *= 2;
  return t;
}

unsigned grid_for(int64_t rows) {
  const int64_t cap = 65535LL * 32;
  return static_cast<unsigned>(rows < cap ? (rows > 0 ? rows : 1) : cap);
}

template <typename T, int VEC>
__global__ void row_stats_kernel(RowStatsArgs a) {
  __shared__ RowStats smem[32];
  const T* logits = static_cast<const T*>(a.logits);
  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    if (!row_active(a.labels, a.weights, a.ignore_index, r)) {
      if (threadIdx.x == 0) write_skipped_row(a.out.max, a.out.sumexp, a.out.target, a.out.sumlogits, r);
      continue;
    }
    const T* row = logits + r * a.ld;
    RowStats st;
    st.init();
    const RowSplit<T, VEC> sp(row, a.V);
    for (int64_t v = threadIdx.x; v < sp.head; v += blockDim.x) st.push(to_float(row[v]));
    const Pack<T, VEC>* body = reinterpret_cast<const Pack<T, VEC>*>(row + sp.head);
    for (int64_t i = threadIdx.x; i < sp.nvec; i += blockDim.x) {
      const Pack<T, VEC> p = body[i];
#pragma unroll
      for (int j = 0; j < VEC; ++j) st.push(to_float(p.v[j]));
    }
    for (int64_t v = sp.body_end + threadIdx.x; v < a.V; v += blockDim.x) st.push(to_float(row[v]));
    RowStats id;
    id.init();
    st = block_reduce(st, id, smem, MergeStats());
    if (threadIdx.x == 0) {
      const int64_t col = owned_column(a.labels[r], a.vocab_start, a.V);
      a.out.max[r] = st.lse.m;
      a.out.sumexp[r] = st.lse.s;
      a.out.target[r] = col >= 0 ? to_float(row[col]) : 0.f;
      a.out.sumlogits[r] = st.sum;
    }
  }
}

template <typename T, int VEC>
__global__ void softmax_grad_kernel(SoftmaxGradArgs a) {
  const T* logits = static_cast<const T*>(a.logits);
  T* grad = static_cast<T*>(a.grad);
  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    const T* row = logits + r * a.ld;
    T* out = grad + r * a.ld;
    const int64_t col = owned_column(a.labels[r], a.vocab_start, a.V);
    const float scale = a.scale[r], mx = a.max[r], ls = a.logsum[r];
    const float tc = a.target_coef, uc = a.uniform_coef;
    const RowSplit<T, VEC> sp(row, a.V);  // caller guarantees row and out share alignment
    for (int64_t v = threadIdx.x; v < sp.head; v += blockDim.x)
      out[v] = from_float<T>(softmax_grad_value(to_float(row[v]), mx, ls, v == col, scale, tc, uc));
    const Pack<T, VEC>* body = reinterpret_cast<const Pack<T, VEC>*>(row + sp.head);
    Pack<T, VEC>* obody = reinterpret_cast<Pack<T, VEC>*>(out + sp.head);
    for (int64_t i = threadIdx.x; i < sp.nvec; i += blockDim.x) {
      const Pack<T, VEC> p = body[i];
      Pack<T, VEC> q;
      const int64_t base = sp.head + i * VEC;
#pragma unroll
      for (int j = 0; j < VEC; ++j)
        q.v[j] = from_float<T>(softmax_grad_value(to_float(p.v[j]), mx, ls, base + j == col, scale, tc, uc));
      obody[i] = q;
    }
    for (int64_t v = sp.body_end + threadIdx.x; v < a.V; v += blockDim.x)
      out[v] = from_float<T>(softmax_grad_value(to_float(row[v]), mx, ls, v == col, scale, tc, uc));
  }
}

template <typename T>
void launch_row_stats(const RowStatsArgs& a, cudaStream_t stream) {
  constexpr int VEC = 16 / sizeof(T);
  MA_LAUNCH(grid_for(a.rows), threads_for(a.V, VEC), 0, stream, row_stats_kernel<T, VEC>)(a);
}

template <typename T>
void launch_softmax_grad(const SoftmaxGradArgs& a, cudaStream_t stream) {
  constexpr int VEC = 16 / sizeof(T);
  const bool same_alignment =
      reinterpret_cast<uintptr_t>(a.logits) % 16 == reinterpret_cast<uintptr_t>(a.grad) % 16;
  if (same_alignment) {
    MA_LAUNCH(grid_for(a.rows), threads_for(a.V, VEC), 0, stream, softmax_grad_kernel<T, VEC>)(a);
  } else {
    MA_LAUNCH(grid_for(a.rows), threads_for(a.V, 1), 0, stream, softmax_grad_kernel<T, 1>)(a);
  }
}

}  // namespace

cudaError_t ce_row_stats_cuda(const RowStatsArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  MA_DISPATCH_DTYPE(a.dtype, T, launch_row_stats<T>(a, stream));
  return cudaGetLastError();
}

cudaError_t softmax_grad_cuda(const SoftmaxGradArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  MA_DISPATCH_DTYPE(a.dtype, T, launch_softmax_grad<T>(a, stream));
  return cudaGetLastError();
}

}  // namespace kernels
}  // namespace megatron_align
