// CPU implementations of the megatron_align ops (always built).
#include <torch/library.h>

#include "op_impl.h"

namespace megatron_align {
namespace ops {
namespace {

struct CpuLaunch {
  static void row_stats(const kernels::RowStatsArgs& a, const at::Tensor&) { kernels::ce_row_stats_cpu(a); }
  static void softmax_grad(const kernels::SoftmaxGradArgs& a, const at::Tensor&) { kernels::softmax_grad_cpu(a); }
  static void packed_reduce(const kernels::PackedReduceArgs& a, const at::Tensor&) {
    kernels::packed_seq_reduce_cpu(a);
  }
  static void topk_forward(const kernels::TopkKLArgs& a, const at::Tensor&) { kernels::topk_kl_forward_cpu(a); }
  static void topk_backward(const kernels::TopkKLArgs& a, const at::Tensor&) { kernels::topk_kl_backward_cpu(a); }
};

}  // namespace
}  // namespace ops
}  // namespace megatron_align

TORCH_LIBRARY_IMPL(megatron_align, CPU, m) {
  MEGATRON_ALIGN_REGISTER_IMPLS(m, ::megatron_align::ops::CpuLaunch);
}
