// CPU twin of the packed-sequence log-prob reduction: sequences in parallel, rows in order.
#include "kernels/packed_logprobs/packed_logprobs.h"
#include "kernels/cross_entropy/row_math.h"

namespace megatron_align {
namespace kernels {

void packed_seq_reduce_cpu(const PackedReduceArgs& a) {
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t s = 0; s < a.num_seqs; ++s) {
    double acc = 0.0;  // fixed order, double: a 16K-token sequence keeps fp32 accuracy
    for (int64_t r = a.cu_seqlens[s]; r < a.cu_seqlens[s + 1]; ++r) {
      const float w = a.weights[r];
      if (w != 0.f) acc += w * token_logprob(a.max[r], a.sumexp[r], a.target[r]);
    }
    a.out[s] = static_cast<float>(acc);
  }
}

}  // namespace kernels
}  // namespace megatron_align
