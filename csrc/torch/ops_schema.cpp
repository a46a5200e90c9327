// Schemas of the megatron_align ops (TORCH_LIBRARY) and the Python module init of
// megatron_align._C. Importing the module loads this library, which registers the ops;
// implementations are registered per device in ops_cpu.cpp and ops_cuda.cpp.
// Python faces (autograd, tensor-parallel collectives, fake kernels): megatron_align/ops/.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(megatron_align, m) {
  // Per-row statistics of a vocab shard, float32 [4, T]: max, sum exp(z - max), z[label] if
  // owned else 0, sum of logits. Rows with label == ignore_index or weight 0 are skipped.
  m.def("ce_row_stats(Tensor logits, Tensor labels, Tensor? weights, int vocab_start, int vocab_size, "
        "int ignore_index) -> Tensor");
  // grad = scale[r] * (exp(z - row_max[r] - row_logsum[r]) - target_coef * onehot(label) - uniform_coef), logits' dtype.
  m.def("softmax_grad(Tensor logits, Tensor labels, Tensor row_max, Tensor row_logsum, Tensor scale, float target_coef, "
        "float uniform_coef, int vocab_start) -> Tensor");
  // Same, written in place into logits.
  m.def("softmax_grad_(Tensor(a!) logits, Tensor labels, Tensor row_max, Tensor row_logsum, Tensor scale, float target_coef, "
        "float uniform_coef, int vocab_start) -> ()");
  // out[s] = sum over packed sequence s of weights[r] * log p(label_r) from (reduced) row stats.
  m.def("packed_seq_reduce(Tensor stats, Tensor weights, Tensor cu_seqlens) -> Tensor");
  // Exact KL(p || q) of two [T, k] float32 logit sets, each renormalised over its k entries.
  m.def("topk_kl_forward(Tensor policy_topk, Tensor ref_topk) -> Tensor");
  m.def("topk_kl_backward(Tensor grad_kl, Tensor policy_topk, Tensor ref_topk, Tensor kl) -> Tensor");
}

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                   "megatron_align kernels; the ops live in torch.ops.megatron_align", -1,
                                   nullptr};
  return PyModule_Create(&module_def);
}
