// Exact KL(pi || pi_ref) over a row's selected top-k entries (both renormalised over them).
// Inputs are the already gathered fp32 logits of the k entries: policy [rows, k] and
// reference [rows, k], row-major and contiguous. Forward writes kl[rows]; backward writes
// grad_policy[rows, k] = grad_kl[r] * p (log p - log q - kl[r]).
#pragma once

#include <cstdint>

#ifdef MEGATRON_ALIGN_CUDA_API
#include <cuda_runtime_api.h>
#endif

namespace megatron_align {
namespace kernels {

struct TopkKLArgs {
  const float* policy;   // [rows, k]
  const float* ref;      // [rows, k]
  int64_t rows, k;
  const float* kl;       // [rows] (backward input)
  const float* grad_kl;  // [rows] (backward input)
  float* out;            // forward: kl [rows]; backward: grad_policy [rows, k]
};

void topk_kl_forward_cpu(const TopkKLArgs& a);
void topk_kl_backward_cpu(const TopkKLArgs& a);

#ifdef MEGATRON_ALIGN_CUDA_API
/// One warp per row.
cudaError_t topk_kl_forward_cuda(const TopkKLArgs& a, cudaStream_t stream);
cudaError_t topk_kl_backward_cuda(const TopkKLArgs& a, cudaStream_t stream);
#endif

}  // namespace kernels
}  // namespace megatron_align
