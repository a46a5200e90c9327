"""Per-sequence log-probs of a packed micro-batch (DPO, reward models, reference precompute).

One pass over the logits (``ce_row_stats``, skipping rows with weight 0 such as prompt tokens),
the TP reductions on ``[4, T]`` stats, then ``packed_seq_reduce`` sums ``w·log p`` per
``cu_seqlens`` segment in a fixed order. Backward: ``softmax_grad`` with per-row scale
``-g[seq(r)]·w[r]``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from megatron_align.ops._backend import kernels_for
from megatron_align.ops._reference import acc, check_cu_seqlens, segment_ids
from megatron_align.ops._tp import flatten_rows, reduce_row_stats, shard_of

IGNORE_INDEX = -100


class _PackedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, cu_seqlens, weights, seg, tp_group):
        shard = shard_of(logits.shape[1], tp_group)
        k = kernels_for(logits.device, logits.dtype)
        stats = k.ce_row_stats(logits, labels, weights, shard.vocab_start, shard.vocab_size, IGNORE_INDEX)
        stats = reduce_row_stats(stats, tp_group)
        out = k.packed_seq_reduce(stats, weights, cu_seqlens)
        ctx.save_for_backward(logits, labels, stats[0].contiguous(), torch.log(stats[1]), weights, seg)
        ctx.vocab_start = shard.vocab_start
        return out

    @staticmethod
    def backward(ctx, grad_seq):
        logits, labels, row_max, logsum, weights, seg = ctx.saved_tensors
        g = acc(grad_seq)
        g_row = torch.where(seg >= 0, g[seg.clamp(min=0)] if g.numel() else torch.zeros_like(weights), 0.0)
        scale = (-(g_row * weights)).to(g.dtype).contiguous()
        grad = kernels_for(logits.device, logits.dtype).softmax_grad(
            logits, labels, row_max, logsum, scale, 1.0, 0.0, ctx.vocab_start
        )
        return grad, None, None, None, None, None


def packed_sequence_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    loss_mask: Optional[torch.Tensor] = None,
    average: bool = False,
    tp_group: Optional[dist.ProcessGroup] = None,
) -> torch.Tensor:
    """Sum (or, with ``average``, mean) of token log-probs per packed sequence, fp32 ``[num_seqs]``.

    Sequence i is rows ``cu_seqlens[i]:cu_seqlens[i+1]`` of ``logits [T, V_local]`` / ``labels [T]``.
    Tokens count when ``loss_mask`` selects them (bool, or float weights) and ``labels != -100``.
    ``average`` divides by the sequence's mask total; a sequence with none gives 0.
    """
    logits, labels = flatten_rows(logits, labels)
    T = logits.shape[0]
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"cu_seqlens must be 1-D with num_seqs + 1 entries, got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
    check_cu_seqlens(cu_seqlens.to(torch.int64), T)  # on the host, before any device kernel indexes with it
    cu = cu_seqlens.to(device=logits.device, dtype=torch.int64).contiguous()
    wdtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if loss_mask is None:
        w = torch.ones(T, device=logits.device, dtype=wdtype)
    else:
        if loss_mask.numel() != T:
            raise ValueError(f"loss_mask must have {T} entries (one per token), got shape {tuple(loss_mask.shape)}")
        w = loss_mask.reshape(T).to(device=logits.device, dtype=wdtype)
    w = torch.where(labels == IGNORE_INDEX, torch.zeros_like(w), w)
    seg = segment_ids(cu, T)
    w = torch.where(seg >= 0, w, torch.zeros_like(w))
    if average:
        S = cu.numel() - 1
        inside = seg >= 0
        denom = w.new_zeros(S).index_add_(0, seg[inside], w[inside])
        d_row = denom[seg.clamp(min=0)] if S > 0 else torch.zeros_like(w)
        w = torch.where(d_row != 0, w / torch.where(d_row != 0, d_row, torch.ones_like(d_row)), torch.zeros_like(w))
    return _PackedLogprobs.apply(logits, labels, cu, w.contiguous(), seg, tp_group)
