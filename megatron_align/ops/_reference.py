"""Pure-PyTorch twins of the ``megatron_align._C`` primitive ops.

Same names, arguments and results as ``torch.ops.megatron_align.*`` (see csrc/torch/ops_schema.cpp):
used when the extension is absent, when a device has no compiled kernel, or when
``use_backend("torch")`` forces it. They are also the readable spec of what the kernels compute.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = [
    "ce_row_stats",
    "softmax_grad",
    "softmax_grad_",
    "packed_seq_reduce",
    "topk_kl_forward",
    "topk_kl_backward",
    "check_labels",
]


def check_labels(labels: torch.Tensor, vocab_size: int, ignore_index: int) -> None:
    """Raise if a label is neither ignore_index nor in [0, vocab_size), on every device (one host sync)."""
    if labels.numel() == 0:
        return
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab_size))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise RuntimeError(
            f"megatron_align: labels[{i}] = {int(labels[i])} is outside the vocabulary [0, {vocab_size}) "
            f"and is not ignore_index ({ignore_index})"
        )


def acc(t: torch.Tensor) -> torch.Tensor:
    """Accumulation copy: fp32, or fp64 for fp64 inputs (lets gradcheck run on this path)."""
    return t if t.dtype == torch.float64 else t.float()


def _owned(labels: torch.Tensor, vocab_start: int, V: int):
    col = labels - vocab_start
    owned = (col >= 0) & (col < V)
    return col.clamp(0, max(V - 1, 0)), owned


def ce_row_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: Optional[torch.Tensor],
    vocab_start: int,
    vocab_size: int,
    ignore_index: int,
) -> torch.Tensor:
    """float32 (fp64 for fp64 logits) [4, T]: shard max, sum exp(z - max), z[label] if owned else 0, sum z; skipped rows 0, 1, 0, 0."""
    check_labels(labels, vocab_size, ignore_index)
    x = acc(logits)
    T, V = x.shape
    active = labels != ignore_index
    if weights is not None:
        active = active & (weights != 0)
    m = x.amax(dim=1) if T > 0 else x.new_zeros(0)
    m_safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    s = torch.exp(x - m_safe[:, None]).sum(dim=1)
    col, owned = _owned(labels, vocab_start, V)
    tgt = torch.where(owned, x.gather(1, col[:, None]).squeeze(1), torch.zeros_like(m))
    sumz = torch.where(torch.isneginf(x), torch.zeros_like(x), x).sum(dim=1)  # -inf: masked vocab padding
    stats = torch.stack([m, s, tgt, sumz])
    skipped = torch.tensor([0.0, 1.0, 0.0, 0.0], device=x.device, dtype=x.dtype)[:, None]
    return torch.where(active[None, :], stats, skipped)


def softmax_grad(logits, labels, row_max, row_logsum, scale, target_coef: float, uniform_coef: float, vocab_start: int):
    """scale[r] * (exp(z - max[r] - logsum[r]) - target_coef * onehot(label) - uniform_coef), logits' dtype."""
    x = acc(logits)
    T, V = x.shape
    g = torch.exp((x - row_max[:, None]) - row_logsum[:, None]) - uniform_coef
    col, owned = _owned(labels, vocab_start, V)
    g.scatter_add_(1, col[:, None], torch.where(owned, -target_coef, 0.0)[:, None].to(g.dtype))
    g = torch.where(scale[:, None] == 0, torch.zeros_like(g), g * scale[:, None])
    return g.to(logits.dtype)


def softmax_grad_(logits, labels, row_max, row_logsum, scale, target_coef: float, uniform_coef: float, vocab_start: int):
    logits.copy_(softmax_grad(logits, labels, row_max, row_logsum, scale, target_coef, uniform_coef, vocab_start))


def segment_ids(cu_seqlens: torch.Tensor, T: int) -> torch.Tensor:
    """Index of the packed sequence each row belongs to, -1 for rows outside [cu[0], cu[-1])."""
    rows = torch.arange(T, device=cu_seqlens.device)
    seg = torch.searchsorted(cu_seqlens, rows, right=True) - 1
    inside = (rows >= cu_seqlens[0]) & (rows < cu_seqlens[-1])
    return torch.where(inside, seg, torch.full_like(seg, -1))


def check_cu_seqlens(cu: torch.Tensor, T: int) -> None:
    """The C++ op's cu_seqlens checks, on a host copy (a device tensor costs one sync)."""
    cu = cu.cpu()
    if int(cu[0]) < 0:
        raise RuntimeError(f"megatron_align: cu_seqlens[0] must be >= 0, got {int(cu[0])}")
    dec = (cu[1:] < cu[:-1]).nonzero()
    if dec.numel():
        i = int(dec[0, 0])
        raise RuntimeError(
            f"megatron_align: cu_seqlens must be non-decreasing, but cu_seqlens[{i + 1}] = {int(cu[i + 1])} "
            f"< cu_seqlens[{i}] = {int(cu[i])}"
        )
    if int(cu[-1]) > T:
        raise RuntimeError(f"megatron_align: cu_seqlens[-1] = {int(cu[-1])} exceeds the number of tokens {T}")


def packed_seq_reduce(stats: torch.Tensor, weights: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """out[s] = sum over rows of sequence s of weights * (target - max - log sumexp)."""
    T = stats.shape[1]
    check_cu_seqlens(cu_seqlens, T)
    S = cu_seqlens.numel() - 1
    logp = stats[2] - stats[0] - torch.log(stats[1])
    vals = torch.where(weights != 0, weights * logp, torch.zeros_like(logp))
    seg = segment_ids(cu_seqlens, T)
    inside = seg >= 0
    out = torch.zeros(S, dtype=torch.float64, device=stats.device)  # fixed order, double: as the kernels
    return out.index_add_(0, seg[inside], vals[inside].double()).to(stats.dtype)


def _kl_parts(policy: torch.Tensor, ref: torch.Tensor):
    lp = torch.log_softmax(policy, dim=1)
    lq = torch.log_softmax(ref, dim=1)
    p = lp.exp()
    return lp, lq, p


def topk_kl_forward(policy_topk: torch.Tensor, ref_topk: torch.Tensor) -> torch.Tensor:
    lp, lq, p = _kl_parts(policy_topk, ref_topk)
    return torch.where(p == 0, torch.zeros_like(p), p * (lp - lq)).sum(dim=1)


def topk_kl_backward(grad_kl, policy_topk, ref_topk, kl) -> torch.Tensor:
    lp, lq, p = _kl_parts(policy_topk, ref_topk)
    g = grad_kl[:, None] * p * (lp - lq - kl[:, None])
    return torch.where(p == 0, torch.zeros_like(g), g)
