// Per-element math of the exact top-k KL, shared by the CPU and CUDA kernels (__host__ __device__).
//
// Over the k selected vocabulary entries of a row, with policy logits x and reference logits y,
// both renormalised over those entries:
//   log p_i = x_i - LSE(x),  log q_i = y_i - LSE(y)
//   KL(p || q) = sum_i p_i (log p_i - log q_i)
//   dKL/dx_j   = p_j (log p_j - log q_j - KL)
// LSE is computed with OnlineLSE (row_math.h) in a first pass, the sums in a second pass; log p is
// formed as (x - max) - log sumexp so that large logits (|x| ~ 1e4) keep full relative accuracy.
#pragma once

#include "kernels/cross_entropy/row_math.h"

namespace megatron_align {
namespace kernels {

/// log-softmax of x over the k entries given their OnlineLSE (max m, sum exp(x - m) s).
MA_HD float log_softmax_at(float x, const OnlineLSE& l) { return (x - l.m) - fast_log(l.s); }

/// p_i (log p_i - log q_i); exactly 0 where p_i underflows (also for x_i = -inf).
MA_HD float kl_term(float x, float y, const OnlineLSE& lp_stats, const OnlineLSE& lq_stats) {
  const float lp = log_softmax_at(x, lp_stats);
  const float p = fast_exp(lp);
  return p == 0.f ? 0.f : p * (lp - log_softmax_at(y, lq_stats));
}

/// g * dKL/dx_j for the policy logit x_j.
MA_HD float kl_grad_term(float x, float y, const OnlineLSE& lp_stats, const OnlineLSE& lq_stats, float kl, float g) {
  const float lp = log_softmax_at(x, lp_stats);
  const float p = fast_exp(lp);
  return p == 0.f ? 0.f : g * p * (lp - log_softmax_at(y, lq_stats) - kl);
}

}  // namespace kernels
}  // namespace megatron_align
