// Vocab-parallel softmax kernels: per-row shard statistics (forward) and the fused
// softmax-minus-onehot gradient (backward). Framework-free C++ API over raw pointers.
//
// Layout: logits is a row-major [rows, V] matrix of this rank's vocab shard with leading
// dimension ld (elements, ld >= V); the shard owns global ids [vocab_start, vocab_start + V).
// labels are global ids (int64). Element type is given by DType (fp32, bf16, fp16); all
// accumulation and every float output is fp32.
//
// Both the CPU and the CUDA versions compute the row math in row_math.h.
#pragma once

#include <cstdint>

#include "kernels/common/dtypes.h"

#ifdef MEGATRON_ALIGN_CUDA_API
#include <cuda_runtime_api.h>
#endif

namespace megatron_align {
namespace kernels {

/// Pointers of the four per-row statistics, each float[rows] (see row_math.h).
struct RowStatsPtrs {
  float* max;        // shard max of the row
  float* sumexp;     // sum exp(z - max) over the shard
  float* target;     // z[label] if this shard owns label, else 0
  float* sumlogits;  // sum of the shard's logits
};

/// Arguments of ce_row_stats. Rows whose label == ignore_index, or whose weight is 0 when
/// weights != nullptr, are skipped without reading their logits (stats: max 0, sumexp 1, 0, 0).
struct RowStatsArgs {
  const void* logits;
  DType dtype;
  int64_t rows, V, ld;
  const int64_t* labels;
  const float* weights;  // optional float[rows]
  int64_t vocab_start;
  int64_t ignore_index;
  RowStatsPtrs out;
};

/// Arguments of softmax_grad: for every row r and column v of the shard
///   grad[r, v] = scale[r] * (exp(z[r, v] - max[r] - logsum[r]) - target_coef * [v owns labels[r]] - uniform_coef)
/// grad has the logits' dtype and layout (leading dimension ld) and may alias logits
/// (in-place backward). Rows with scale 0 are written as exact zeros.
struct SoftmaxGradArgs {
  const void* logits;
  void* grad;
  DType dtype;
  int64_t rows, V, ld;
  const int64_t* labels;
  const float* max;     // float[rows], global row max (all shards)
  const float* logsum;  // float[rows], log of the global sum exp(z - max); log Z = max + logsum
  const float* scale;  // float[rows]
  float target_coef, uniform_coef;
  int64_t vocab_start;
};

void ce_row_stats_cpu(const RowStatsArgs& a);
void softmax_grad_cpu(const SoftmaxGradArgs& a);

#ifdef MEGATRON_ALIGN_CUDA_API
/// CUDA versions: one block per row, 16-byte vectorised loads/stores, enqueued on stream.
/// Return the launch error (cudaSuccess when enqueued).
cudaError_t ce_row_stats_cuda(const RowStatsArgs& a, cudaStream_t stream);
cudaError_t softmax_grad_cuda(const SoftmaxGradArgs& a, cudaStream_t stream);
#endif

}  // namespace kernels
}  // namespace megatron_align
