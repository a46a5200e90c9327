// Schemas of the megatron_align ops, as one macro so that the extension (ops_schema.cpp) and the host
// emulation of the CUDA kernels (tools/cudaemu, which renames the library) declare the same ops.
//
// ce_row_stats: per-row statistics of a vocab shard, float32 [4, T]: max, sum exp(z - max), z[label] if
//   owned else 0, sum of logits. Rows with label == ignore_index or weight 0 are skipped.
// softmax_grad: scale[r] * (exp(z - row_max[r] - row_logsum[r]) - target_coef * onehot(label) - uniform_coef),
//   logits' dtype; softmax_grad_: the same written in place into logits.
// packed_seq_reduce: out[s] = sum over packed sequence s of weights[r] * log p(label_r) from (reduced) row stats.
// topk_kl_forward / _backward: exact KL(p || q) of two [T, k] float32 logit sets, each renormalised over its
//   k entries, and its gradient w.r.t. the policy logits.
#pragma once

#define MEGATRON_ALIGN_DEFINE_SCHEMAS(m) \
  m.def("ce_row_stats(Tensor logits, Tensor labels, Tensor? weights, int vocab_start, int vocab_size, " \
        "int ignore_index) -> Tensor"); \
  m.def("softmax_grad(Tensor logits, Tensor labels, Tensor row_max, Tensor row_logsum, Tensor scale, float target_coef, " \
        "float uniform_coef, int vocab_start) -> Tensor"); \
  m.def("softmax_grad_(Tensor(a!) logits, Tensor labels, Tensor row_max, Tensor row_logsum, Tensor scale, float target_coef, " \
        "float uniform_coef, int vocab_start) -> ()"); \
  m.def("packed_seq_reduce(Tensor stats, Tensor weights, Tensor cu_seqlens) -> Tensor"); \
  m.def("topk_kl_forward(Tensor policy_topk, Tensor ref_topk) -> Tensor"); \
  m.def("topk_kl_backward(Tensor grad_kl, Tensor policy_topk, Tensor ref_topk, Tensor kl) -> Tensor");
