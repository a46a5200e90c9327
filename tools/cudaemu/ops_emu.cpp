// Torch glue of the emulated CUDA kernels: the extension's own op bodies (csrc/torch/op_impl.h: every
// check, stride and alignment rule) with a launch policy that calls the *_cuda kernels compiled as
// host code. Built with -Dmegatron_align=megatron_align_emu, so the ops register as
// torch.ops.megatron_align_emu.* for CPU tensors, beside (not instead of) the real extension.
#define MEGATRON_ALIGN_CUDA_API
#include <torch/library.h>

#include "torch/op_impl.h"
#include "torch/ops_schema.h"

namespace megatron_align {
namespace ops {
namespace {

inline void check(cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, "megatron_align: CUDA kernel launch failed: ", cudaemu_error_string(err));
}

/// The device launch policy: same call shape as CudaLaunch in csrc/torch/ops_cuda.cpp.
struct EmuLaunch {
  static void row_stats(const kernels::RowStatsArgs& a, const at::Tensor&) { check(kernels::ce_row_stats_cuda(a, nullptr)); }
  static void softmax_grad(const kernels::SoftmaxGradArgs& a, const at::Tensor&) {
    check(kernels::softmax_grad_cuda(a, nullptr));
  }
  static void packed_reduce(const kernels::PackedReduceArgs& a, const at::Tensor&) {
    check(kernels::packed_seq_reduce_cuda(a, nullptr));
  }
  static void topk_forward(const kernels::TopkKLArgs& a, const at::Tensor&) {
    check(kernels::topk_kl_forward_cuda(a, nullptr));
  }
  static void topk_backward(const kernels::TopkKLArgs& a, const at::Tensor&) {
    check(kernels::topk_kl_backward_cuda(a, nullptr));
  }
};

}  // namespace
}  // namespace ops
}  // namespace megatron_align

TORCH_LIBRARY(megatron_align, m) {
  MEGATRON_ALIGN_DEFINE_SCHEMAS(m);
}

TORCH_LIBRARY_IMPL(megatron_align, CPU, m) {
  MEGATRON_ALIGN_REGISTER_IMPLS(m, ::megatron_align::ops::EmuLaunch);
}
