// Packed-sequence log-prob reduction: from per-row softmax statistics (ce_row_stats, already
// combined across tensor-parallel shards) to one weighted sum per packed sequence:
//   out[s] = sum_{r in [cu[s], cu[s+1])} weight[r] * (target[r] - max[r] - log sumexp[r])
// Rows with weight 0 are not read (their stats may be the skipped-row placeholders). The
// logits themselves are read once, by ce_row_stats; this pass touches only O(T) floats.
// Summation order is fixed (deterministic on both CPU and CUDA).
#pragma once

#include <cstdint>

#ifdef MEGATRON_ALIGN_CUDA_API
#include <cuda_runtime_api.h>
#endif

namespace megatron_align {
namespace kernels {

struct PackedReduceArgs {
  const float* max;
  const float* sumexp;
  const float* target;
  const float* weights;     // float[rows]
  const int64_t* cu_seqlens;  // int64[num_seqs + 1], non-decreasing, cu[num_seqs] <= rows
  int64_t num_seqs;
  float* out;  // float[num_seqs]
};

void packed_seq_reduce_cpu(const PackedReduceArgs& a);

#ifdef MEGATRON_ALIGN_CUDA_API
/// One block per sequence, fixed-order block reduction.
cudaError_t packed_seq_reduce_cuda(const PackedReduceArgs& a, cudaStream_t stream);
#endif

}  // namespace kernels
}  // namespace megatron_align
