// CPU twin of the exact top-k KL: rows in parallel, two passes over the k entries of a row.
#include "kernels/topk_kl/topk_kl.h"
#include "kernels/topk_kl/kl_math.h"

namespace megatron_align {
namespace kernels {
namespace {

void row_lse(const float* x, const float* y, int64_t k, OnlineLSE* p, OnlineLSE* q) {
  p->init();
  q->init();
  for (int64_t i = 0; i < k; ++i) {
    p->push(x[i]);
    q->push(y[i]);
  }
}

}  // namespace

void topk_kl_forward_cpu(const TopkKLArgs& a) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < a.rows; ++r) {
    const float* x = a.policy + r * a.k;
    const float* y = a.ref + r * a.k;
    OnlineLSE lp, lq;
    row_lse(x, y, a.k, &lp, &lq);
    float kl = 0.f;
    for (int64_t i = 0; i < a.k; ++i) kl += kl_term(x[i], y[i], lp, lq);
    a.out[r] = kl;
  }
}

void topk_kl_backward_cpu(const TopkKLArgs& a) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < a.rows; ++r) {
    const float* x = a.policy + r * a.k;
    const float* y = a.ref + r * a.k;
    float* g = a.out + r * a.k;
    OnlineLSE lp, lq;
    row_lse(x, y, a.k, &lp, &lq);
    for (int64_t i = 0; i < a.k; ++i) g[i] = kl_grad_term(x[i], y[i], lp, lq, a.kl[r], a.grad_kl[r]);
  }
}

}  // namespace kernels
}  // namespace megatron_align
