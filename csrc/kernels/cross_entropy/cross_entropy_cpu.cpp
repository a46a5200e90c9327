// CPU twin of the vocab-parallel softmax kernels: rows in parallel with OpenMP, one pass per row.
#include "kernels/cross_entropy/cross_entropy.h"
#include "kernels/cross_entropy/row_math.h"
#include "kernels/common/dispatch.h"

namespace megatron_align {
namespace kernels {
namespace {

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
    RowStats st;
    st.init();
    for (int64_t v = 0; v < a.V; ++v) st.push(to_float(row[v]));
    const int64_t col = owned_column(a.labels[r], a.vocab_start, a.V);
    a.out.max[r] = st.lse.m;
    a.out.sumexp[r] = st.lse.s;
    a.out.target[r] = col >= 0 ? to_float(row[col]) : 0.f;
    a.out.sumlogits[r] = st.sum;
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
