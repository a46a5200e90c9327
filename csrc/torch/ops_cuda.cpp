// CUDA implementations of the megatron_align ops; compiled into the extension only when setup.py
// builds with CUDA (it then defines MEGATRON_ALIGN_WITH_CUDA and compiles csrc/**/*.cu).
#ifdef MEGATRON_ALIGN_WITH_CUDA

#define MEGATRON_ALIGN_CUDA_API
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "op_impl.h"

namespace megatron_align {
namespace ops {
namespace {

template <class F>
void launch_on(const at::Tensor& ref, F&& f) {
  const c10::cuda::CUDAGuard guard(ref.device());
  const cudaError_t err = f(c10::cuda::getCurrentCUDAStream(ref.device().index()).stream());
  TORCH_CHECK(err == cudaSuccess, "megatron_align: CUDA kernel launch failed: ", cudaGetErrorString(err));
}

struct CudaLaunch {
  static void row_stats(const kernels::RowStatsArgs& a, const at::Tensor& t) {
    launch_on(t, [&](cudaStream_t s) { return kernels::ce_row_stats_cuda(a, s); });
  }
  static void softmax_grad(const kernels::SoftmaxGradArgs& a, const at::Tensor& t) {
    launch_on(t, [&](cudaStream_t s) { return kernels::softmax_grad_cuda(a, s); });
  }
  static void packed_reduce(const kernels::PackedReduceArgs& a, const at::Tensor& t) {
    launch_on(t, [&](cudaStream_t s) { return kernels::packed_seq_reduce_cuda(a, s); });
  }
  static void topk_forward(const kernels::TopkKLArgs& a, const at::Tensor& t) {
    launch_on(t, [&](cudaStream_t s) { return kernels::topk_kl_forward_cuda(a, s); });
  }
  static void topk_backward(const kernels::TopkKLArgs& a, const at::Tensor& t) {
    launch_on(t, [&](cudaStream_t s) { return kernels::topk_kl_backward_cuda(a, s); });
  }
};

}  // namespace
}  // namespace ops
}  // namespace megatron_align

TORCH_LIBRARY_IMPL(megatron_align, CUDA, m) {
  MEGATRON_ALIGN_REGISTER_IMPLS(m, ::megatron_align::ops::CudaLaunch);
}

#endif  // MEGATRON_ALIGN_WITH_CUDA
