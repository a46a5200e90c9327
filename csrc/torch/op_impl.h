// Device-independent bodies of the megatron_align ops: TORCH_CHECK validation (messages name
// the argument), output allocation and translation to the framework-free kernel structs.
// Each body takes a Launch policy (CpuLaunch in ops_cpu.cpp, CudaLaunch in ops_cuda.cpp) that
// calls the matching kernel; so CPU and CUDA share every check and every shape rule.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <optional>

#include "kernels/cross_entropy/cross_entropy.h"
#include "kernels/packed_logprobs/packed_logprobs.h"
#include "kernels/topk_kl/topk_kl.h"

namespace megatron_align {
namespace ops {

using kernels::DType;

inline DType logits_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default:
      TORCH_CHECK(false, "megatron_align: ", name, " must be float32, bfloat16 or float16, got ",
                  t.scalar_type());
  }
  return DType::kFloat32;
}

inline void check_device(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), "megatron_align: ", name, " is on ", t.device(), " but ", ref_name,
              " is on ", ref.device());
}

inline void check_vector(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t n,
                         const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.dim() == 1, "megatron_align: ", name, " must be 1-D, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, "megatron_align: ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(n < 0 || t.size(0) == n, "megatron_align: ", name, " has ", t.size(0), " entries but ", ref_name,
              " has ", n, " rows");
  check_device(t, ref, name, ref_name);
}

inline void check_logits(const at::Tensor& logits, const char* name = "logits") {
  TORCH_CHECK(logits.dim() == 2, "megatron_align: ", name, " must be 2-D [tokens, vocab_shard], got shape ",
              logits.sizes());
  logits_dtype(logits, name);
}

/// A CPU tensor to validate on the host: t itself, or a synchronous copy of a device tensor (a few
/// KB of labels / cu_seqlens; the sync is the price of raising the same error on every device).
inline at::Tensor host_copy(const at::Tensor& t) { return t.device().is_cpu() ? t.contiguous() : t.to(at::kCPU); }

/// Labels must be a global id in [0, vocab_size) or ignore_index, on every device (a label the
/// kernels do not own is "not here", so an out-of-range one would silently make the loss logsumexp).
inline void check_label_range(const at::Tensor& labels, int64_t vocab_size, int64_t ignore_index) {
  const at::Tensor l = host_copy(labels);
  const int64_t* p = l.data_ptr<int64_t>();
  for (int64_t i = 0; i < l.numel(); ++i) {
    TORCH_CHECK(p[i] == ignore_index || (p[i] >= 0 && p[i] < vocab_size), "megatron_align: labels[", i,
                "] = ", p[i], " is outside the vocabulary [0, ", vocab_size, ") and is not ignore_index (",
                ignore_index, ")");
  }
}

/// cu_seqlens must start >= 0, never decrease and end <= T: checked on the host before any kernel
/// indexes rows with it (on CUDA a bad one made packed_seq_reduce read past its buffers).
inline void check_cu_seqlens(const at::Tensor& cu_seqlens, int64_t T) {
  const at::Tensor cu = host_copy(cu_seqlens);
  const int64_t* c = cu.data_ptr<int64_t>();
  const int64_t S = cu.numel() - 1;
  TORCH_CHECK(c[0] >= 0, "megatron_align: cu_seqlens[0] must be >= 0, got ", c[0]);
  for (int64_t i = 0; i < S; ++i)
    TORCH_CHECK(c[i + 1] >= c[i], "megatron_align: cu_seqlens must be non-decreasing, but cu_seqlens[", i + 1,
                "] = ", c[i + 1], " < cu_seqlens[", i, "] = ", c[i]);
  TORCH_CHECK(c[S] <= T, "megatron_align: cu_seqlens[-1] = ", c[S], " exceeds the number of tokens ", T);
}

inline void check_shard(const at::Tensor& logits, int64_t vocab_start, int64_t vocab_size) {
  TORCH_CHECK(vocab_start >= 0 && vocab_start + logits.size(1) <= vocab_size, "megatron_align: the shard [",
              vocab_start, ", ", vocab_start + logits.size(1), ") given by vocab_start and logits.size(1) ",
              "is not inside the vocabulary [0, vocab_size=", vocab_size, ")");
}

/// Logits with unit column stride (rows may be strided).
inline at::Tensor row_major(const at::Tensor& t) { return t.stride(1) == 1 ? t : t.contiguous(); }

template <class Launch>
at::Tensor ce_row_stats(const at::Tensor& logits_in, const at::Tensor& labels,
                        const std::optional<at::Tensor>& weights, int64_t vocab_start, int64_t vocab_size,
                        int64_t ignore_index) {
  check_logits(logits_in);
  const int64_t T = logits_in.size(0);
  check_vector(labels, "labels", at::kLong, T, logits_in, "logits");
  check_shard(logits_in, vocab_start, vocab_size);
  check_label_range(labels, vocab_size, ignore_index);
  at::Tensor w;
  if (weights.has_value()) {
    check_vector(*weights, "weights", at::kFloat, T, logits_in, "logits");
    w = weights->contiguous();
  }
  const at::Tensor logits = row_major(logits_in);
  const at::Tensor lab = labels.contiguous();
  at::Tensor out = at::empty({4, T}, logits.options().dtype(at::kFloat));
  kernels::RowStatsArgs a;
  a.logits = logits.data_ptr();
  a.dtype = logits_dtype(logits, "logits");
  a.rows = T;
  a.V = logits.size(1);
  a.ld = T > 1 ? logits.stride(0) : a.V;
  a.labels = lab.data_ptr<int64_t>();
  a.weights = w.defined() ? w.data_ptr<float>() : nullptr;
  a.vocab_start = vocab_start;
  a.ignore_index = ignore_index;
  float* o = out.data_ptr<float>();
  a.out = {o, o + T, o + 2 * T, o + 3 * T};
  TORCH_CHECK(T == 0 || a.V > 0, "megatron_align: logits has an empty vocab shard (size(1) == 0)");
  if (T > 0) Launch::row_stats(a, logits);
  return out;
}

template <class Launch>
void softmax_grad_into(const at::Tensor& logits, at::Tensor& grad, const at::Tensor& labels, const at::Tensor& row_max,
                       const at::Tensor& row_logsum, const at::Tensor& scale, double target_coef, double uniform_coef, int64_t vocab_start) {
  check_logits(logits);
  const int64_t T = logits.size(0);
  check_vector(labels, "labels", at::kLong, T, logits, "logits");
  check_vector(row_max, "row_max", at::kFloat, T, logits, "logits");
  check_vector(row_logsum, "row_logsum", at::kFloat, T, logits, "logits");
  check_vector(scale, "scale", at::kFloat, T, logits, "logits");
  TORCH_CHECK(vocab_start >= 0, "megatron_align: vocab_start must be >= 0, got ", vocab_start);
  const at::Tensor lab = labels.contiguous(), mx = row_max.contiguous(), ls = row_logsum.contiguous();
  const at::Tensor s = scale.contiguous();
  kernels::SoftmaxGradArgs a;
  a.logits = logits.data_ptr();
  a.grad = grad.data_ptr();
  a.dtype = logits_dtype(logits, "logits");
  a.rows = T;
  a.V = logits.size(1);
  a.ld = T > 1 ? logits.stride(0) : a.V;
  TORCH_CHECK(T <= 1 || grad.stride(0) == a.ld, "megatron_align: internal: grad and logits row strides differ");
  a.labels = lab.data_ptr<int64_t>();
  a.max = mx.data_ptr<float>();
  a.logsum = ls.data_ptr<float>();
  a.scale = s.data_ptr<float>();
  a.target_coef = static_cast<float>(target_coef);
  a.uniform_coef = static_cast<float>(uniform_coef);
  a.vocab_start = vocab_start;
  if (T > 0 && a.V > 0) Launch::softmax_grad(a, logits);
}

template <class Launch>
at::Tensor softmax_grad(const at::Tensor& logits_in, const at::Tensor& labels, const at::Tensor& row_max,
                        const at::Tensor& row_logsum, const at::Tensor& scale, double target_coef, double uniform_coef, int64_t vocab_start) {
  check_logits(logits_in);
  const at::Tensor logits = logits_in.contiguous();
  at::Tensor grad = at::empty_like(logits);
  softmax_grad_into<Launch>(logits, grad, labels, row_max, row_logsum, scale, target_coef, uniform_coef, vocab_start);
  return grad;
}

template <class Launch>
void softmax_grad_(at::Tensor logits, const at::Tensor& labels, const at::Tensor& row_max,
                   const at::Tensor& row_logsum, const at::Tensor& scale,
                   double target_coef, double uniform_coef, int64_t vocab_start) {
  check_logits(logits);
  TORCH_CHECK(logits.size(0) <= 1 || logits.size(1) <= 1 || logits.stride(1) == 1,
              "megatron_align: softmax_grad_ writes in place and needs logits with unit column stride, got strides ",
              logits.strides());
  softmax_grad_into<Launch>(logits, logits, labels, row_max, row_logsum, scale, target_coef, uniform_coef, vocab_start);
}

template <class Launch>
at::Tensor packed_seq_reduce(const at::Tensor& stats_in, const at::Tensor& weights, const at::Tensor& cu_seqlens) {
  TORCH_CHECK(stats_in.dim() == 2 && stats_in.size(0) >= 3 && stats_in.scalar_type() == at::kFloat,
              "megatron_align: stats must be float32 [4, tokens] from ce_row_stats, got ", stats_in.scalar_type(),
              " of shape ", stats_in.sizes());
  const int64_t T = stats_in.size(1);
  check_vector(weights, "weights", at::kFloat, T, stats_in, "stats");
  check_vector(cu_seqlens, "cu_seqlens", at::kLong, -1, stats_in, "stats");
  TORCH_CHECK(cu_seqlens.size(0) >= 1, "megatron_align: cu_seqlens needs at least one entry (0)");
  check_cu_seqlens(cu_seqlens, T);
  const at::Tensor cu = cu_seqlens.contiguous();
  const int64_t S = cu.size(0) - 1;
  const at::Tensor stats = stats_in.contiguous(), w = weights.contiguous();
  at::Tensor out = at::empty({S}, stats.options());
  const float* st = stats.data_ptr<float>();
  kernels::PackedReduceArgs a{st, st + T, st + 2 * T, w.data_ptr<float>(), cu.data_ptr<int64_t>(), S,
                              out.data_ptr<float>()};
  if (S > 0) Launch::packed_reduce(a, stats);
  return out;
}

inline void check_topk_pair(const at::Tensor& policy, const at::Tensor& ref) {
  TORCH_CHECK(policy.dim() == 2 && policy.scalar_type() == at::kFloat,
              "megatron_align: policy_topk must be float32 [tokens, k], got ", policy.scalar_type(), " of shape ",
              policy.sizes());
  TORCH_CHECK(ref.sizes() == policy.sizes() && ref.scalar_type() == at::kFloat,
              "megatron_align: ref_topk must be float32 of policy_topk's shape ", policy.sizes(), ", got ",
              ref.scalar_type(), " of shape ", ref.sizes());
  check_device(ref, policy, "ref_topk", "policy_topk");
}

template <class Launch>
at::Tensor topk_kl_forward(const at::Tensor& policy_in, const at::Tensor& ref_in) {
  check_topk_pair(policy_in, ref_in);
  const at::Tensor policy = policy_in.contiguous(), ref = ref_in.contiguous();
  at::Tensor out = at::empty({policy.size(0)}, policy.options());
  kernels::TopkKLArgs a{policy.data_ptr<float>(), ref.data_ptr<float>(), policy.size(0), policy.size(1),
                        nullptr, nullptr, out.data_ptr<float>()};
  if (a.rows > 0) Launch::topk_forward(a, policy);
  return out;
}

template <class Launch>
at::Tensor topk_kl_backward(const at::Tensor& grad_kl, const at::Tensor& policy_in, const at::Tensor& ref_in,
                            const at::Tensor& kl) {
  check_topk_pair(policy_in, ref_in);
  const int64_t T = policy_in.size(0);
  check_vector(grad_kl, "grad_kl", at::kFloat, T, policy_in, "policy_topk");
  check_vector(kl, "kl", at::kFloat, T, policy_in, "policy_topk");
  const at::Tensor policy = policy_in.contiguous(), ref = ref_in.contiguous();
  const at::Tensor g = grad_kl.contiguous(), k = kl.contiguous();
  at::Tensor out = at::empty_like(policy);
  kernels::TopkKLArgs a{policy.data_ptr<float>(), ref.data_ptr<float>(), T, policy.size(1),
                        k.data_ptr<float>(), g.data_ptr<float>(), out.data_ptr<float>()};
  if (a.rows > 0) Launch::topk_backward(a, policy);
  return out;
}

/// Registers every op of the library for one dispatch key with the given Launch policy.
#define MEGATRON_ALIGN_REGISTER_IMPLS(m, Launch)                                      \
  m.impl("ce_row_stats", &::megatron_align::ops::ce_row_stats<Launch>);              \
  m.impl("softmax_grad", &::megatron_align::ops::softmax_grad<Launch>);              \
  m.impl("softmax_grad_", &::megatron_align::ops::softmax_grad_<Launch>);            \
  m.impl("packed_seq_reduce", &::megatron_align::ops::packed_seq_reduce<Launch>);    \
  m.impl("topk_kl_forward", &::megatron_align::ops::topk_kl_forward<Launch>);        \
  m.impl("topk_kl_backward", &::megatron_align::ops::topk_kl_backward<Launch>)

}  // namespace ops
}  // namespace megatron_align
