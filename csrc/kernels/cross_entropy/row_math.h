// Per-row math of the vocab-parallel softmax family, shared verbatim by the CPU kernels
// (cross_entropy_cpu.cpp, rows in parallel with OpenMP) and the CUDA kernels
// (cross_entropy_cuda.cu, one block per row). Everything here is __host__ __device__.
//
// A row's statistics over this rank's vocab shard are
//   max       m = max_v z_v
//   sumexp    s = sum_v exp(z_v - m)         (online: one pass, rescaled when m grows)
//   target    z_label if this shard owns the label, else 0
//   sumlogits sum_v z_v over finite z_v       (for label smoothing; -inf columns are masked vocab
//                                             padding: they take no probability and no smoothing)
// Shards combine with max / rescaled sum (see merge) — the Python face does that with
// all-reduces — and log Z = m + log s.
#pragma once

#include "kernels/common/dtypes.h"

namespace megatron_align {
namespace kernels {

/// Online log-sum-exp accumulator: m is the running max, s = sum exp(x - m).
struct OnlineLSE {
  float m;
  float s;

  MA_HD void init() {
    m = neg_inf();
    s = 0.f;
  }

  MA_HD void push(float x) {
    if (x > m) {  // nan falls through to the else branch and poisons s, as it should
      s = s * fast_exp(m - x) + 1.f;
      m = x;
    } else if (x != neg_inf()) {
      s += fast_exp(x - m);
    }
  }

  MA_HD void merge(const OnlineLSE& o) {
    if (o.m > m) {
      s = s * fast_exp(m - o.m) + o.s;
      m = o.m;
    } else if (o.m != neg_inf()) {
      s += o.s * fast_exp(o.m - m);
    }
  }

  MA_HD float lse() const { return m + fast_log(s); }
};

/// Statistics of one row over one vocab shard (what ce_row_stats outputs per row).
struct RowStats {
  OnlineLSE lse;
  float sum;  // sum of logits

  MA_HD void init() {
    lse.init();
    sum = 0.f;
  }
  MA_HD void push(float x) {
    lse.push(x);
    if (x != neg_inf()) sum += x;  // masked (-inf) columns are not part of the vocabulary
  }
  MA_HD void merge(const RowStats& o) {
    lse.merge(o.lse);
    sum += o.sum;
  }
};

/// Stats written for a row that is skipped (ignored label or zero weight): log Z = 0, finite.
MA_HD void write_skipped_row(float* max_out, float* sumexp_out, float* target_out, float* sum_out,
                             int64_t row) {
  max_out[row] = 0.f;
  sumexp_out[row] = 1.f;
  target_out[row] = 0.f;
  sum_out[row] = 0.f;
}

/// True when the row takes part: its label is not ignore_index and its weight (if any) is non-zero.
MA_HD bool row_active(const int64_t* labels, const float* weights, int64_t ignore_index, int64_t row) {
  return labels[row] != ignore_index && (weights == nullptr || weights[row] != 0.f);
}

/// Local column of a global label on the shard [vocab_start, vocab_start + V), or -1 if not owned.
MA_HD int64_t owned_column(int64_t label, int64_t vocab_start, int64_t V) {
  const int64_t c = label - vocab_start;
  return (c >= 0 && c < V) ? c : -1;
}

/// One element of the fused backward:
///   grad_v = scale * (softmax_v - target_coef * [v == label] - uniform_coef)
/// (cross-entropy: scale = dL, target_coef = 1 - smoothing, uniform_coef = smoothing / V;
///  log-prob: scale = -dL, target_coef = 1, uniform_coef = 0). scale == 0 gives an exact 0 even for
/// non-finite logits, so skipped rows never leak nan.
/// softmax_v = exp((z - max) - log sumexp): z - max is exact, so p keeps full relative accuracy
/// even for |z| ~ 1e4 (exp(z - lse) would inherit lse's rounding, ~ulp(1e4)).
MA_HD float softmax_grad_value(float z, float max, float logsum, bool is_target, float scale, float target_coef,
                               float uniform_coef) {
  if (scale == 0.f) return 0.f;
  const float p = fast_exp((z - max) - logsum);
  return scale * (p - (is_target ? target_coef : 0.f) - uniform_coef);
}

/// Token log-probability from reduced stats: z_label - m - log s.
MA_HD float token_logprob(float max, float sumexp, float target) {
  return target - max - fast_log(sumexp);
}

/// Index s of the packed sequence with cu[s] <= row < cu[s + 1], or -1 (padding after cu[nseq]).
MA_HD int64_t find_segment(const int64_t* cu_seqlens, int64_t num_seqs, int64_t row) {
  if (num_seqs <= 0 || row < cu_seqlens[0] || row >= cu_seqlens[num_seqs]) return -1;
  int64_t lo = 0, hi = num_seqs;  // invariant: cu[lo] <= row < cu[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (cu_seqlens[mid] <= row) lo = mid; else hi = mid;
  }
  return lo;
}

}  // namespace kernels
}  // namespace megatron_align
