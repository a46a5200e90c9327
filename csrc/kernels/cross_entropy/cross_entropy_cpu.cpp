// CPU twin of the vocab-parallel softmax kernels: rows in parallel with OpenMP, one pass per row.
#include "kernels/cross_entropy/cross_entropy.h"
#include "kernels/cross_entropy/row_math.h"
#include "kernels/common/dispatch.h"

namespace megatron_align {
namespace kernels {
namespace {

/// One row's shard statistics with double accumulators: pass 1 takes the max (exact) and the sum
/// of finite logits, pass 2 sums exp(z - max). A sequential fp32 sum over a 152K-column row loses
/// up to ~3e-5 relative; in double the only error left is each exp's fp32 rounding.
template <typename T>
void row_stats_double(const T* row, int64_t V, float* max_out, float* sumexp_out, float* sum_out) {
  float m = neg_inf();
  double sum = 0.0;
  bool nan = false;
  for (int64_t v = 0; v < V; ++v) {
    const float x = to_float(row[v]);
    if (x != x) nan = true;
    if (x > m) m = x;
    if (x != neg_inf()) sum += x;
  }
  double se = 0.0;
  if (nan) {
    se = std::nan("");
  } else if (m == -neg_inf()) {  // +inf: as the online kernel, 1 for a single +inf, nan for several
    int64_t n = 0;
    for (int64_t v = 0; v < V; ++v) n += to_float(row[v]) == m;
    se = n == 1 ? 1.0 : std::nan("");
  } else if (m != neg_inf()) {
    for (int64_t v = 0; v < V; ++v) {
      const float x = to_float(row[v]);
      if (x != neg_inf()) se += static_cast<double>(std::exp(x - m));
    }
  }
  *max_out = m;
  *sumexp_out = static_cast<float>(se);
  *sum_out = static_cast<float>(sum);
}

template <typename T>
void row_stats_impl(const RowStatsArgs& a) {
  const T* logits = static_cast<const T*>(a.logits);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < a.rows; ++r) {
    if (!row_active(a.labels, a.weights, a.ignore_index, r)) {
      write_skipped_row(a.out.max, a.out.sumexp, a.out.target, a.out.sumlogits, r);
      continue;
    }
    const T* row = logits + r * a.ld;
    row_stats_double(row, a.V, a.out.max + r, a.out.sumexp + r, a.out.sumlogits + r);
    const int64_t col = owned_column(a.labels[r], a.vocab_start, a.V);
    a.out.target[r] = col >= 0 ? to_float(row[col]) : 0.f;
  }
}

template <typename T>
void softmax_grad_impl(const SoftmaxGradArgs& a) {
  const T* logits = static_cast<const T*>(a.logits);
  T* grad = static_cast<T*>(a.grad);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < a.rows; ++r) {
    const T* row = logits + r * a.ld;
    T* out = grad + r * a.ld;
    const int64_t col = owned_column(a.labels[r], a.vocab_start, a.V);
    const float scale = a.scale[r], mx = a.max[r], ls = a.logsum[r];
    for (int64_t v = 0; v < a.V; ++v) {
      out[v] = from_float<T>(
          softmax_grad_value(to_float(row[v]), mx, ls, v == col, scale, a.target_coef, a.uniform_coef));
    }
  }
}

}  // namespace

void ce_row_stats_cpu(const RowStatsArgs& a) {
  MA_DISPATCH_DTYPE(a.dtype, T, row_stats_impl<T>(a));
}

void softmax_grad_cpu(const SoftmaxGradArgs& a) {
  MA_DISPATCH_DTYPE(a.dtype, T, softmax_grad_impl<T>(a));
}

}  // namespace kernels
}  // namespace megatron_align
