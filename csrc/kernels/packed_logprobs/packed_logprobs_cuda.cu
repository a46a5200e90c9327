// CUDA twin of the packed-sequence log-prob reduction (no torch headers).
#define MEGATRON_ALIGN_CUDA_API
#include "kernels/packed_logprobs/packed_logprobs.h"

#include "kernels/common/cuda_utils.cuh"
#include "kernels/cross_entropy/row_math.h"

namespace megatron_align {
namespace kernels {
namespace {

struct SumF {
  __device__ float operator()(float a, float b) const { return a + b; }
};

__global__ void packed_seq_reduce_kernel(PackedReduceArgs a) {
  __shared__ float smem[32];
  for (int64_t s = blockIdx.x; s < a.num_seqs; s += gridDim.x) {
    float acc = 0.f;
    for (int64_t r = a.cu_seqlens[s] + threadIdx.x; r < a.cu_seqlens[s + 1]; r += blockDim.x) {
      const float w = a.weights[r];
      if (w != 0.f) acc += w * token_logprob(a.max[r], a.sumexp[r], a.target[r]);
    }
    acc = block_reduce(acc, 0.f, smem, SumF());
    if (threadIdx.x == 0) a.out[s] = acc;
  }
}

}  // namespace

cudaError_t packed_seq_reduce_cuda(const PackedReduceArgs& a, cudaStream_t stream) {
  if (a.num_seqs == 0) return cudaSuccess;
  const int64_t cap = 65535LL * 32;
  const unsigned grid = static_cast<unsigned>(a.num_seqs < cap ? a.num_seqs : cap);
  MA_LAUNCH(grid, 256, 0, stream, packed_seq_reduce_kernel)(a);
  return cudaGetLastError();
}

}  // namespace kernels
}  // namespace megatron_align
