"""Vocab-parallel cross-entropy and token log-probs: one fused pass over the logits shard.

Forward: ``ce_row_stats`` reads each row once (max, sum-exp, target logit, sum of logits); with
tensor parallelism the shards combine with two all-reduces (MAX, then one SUM of three stats).
Backward: ``softmax_grad`` writes ``g * (softmax - (1-s)·onehot - s/V)`` — no collective — and
with ``inplace_backward=True`` it overwrites the logits buffer instead of allocating a gradient.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch.autograd.graph import increment_version

from megatron_align.ops._backend import kernels_for
from megatron_align.ops._reference import acc
from megatron_align.ops._tp import flatten_rows, reduce_row_stats, shard_of


class _RowSoftmaxLoss(torch.autograd.Function):
    """mode "ce": (1-s)·(lse - z_t) + s·(lse - mean z); mode "logprob": z_t - lse. 0 where ignored."""

    @staticmethod
    def forward(ctx, logits, labels, ignore_index, label_smoothing, tp_group, mode, inplace_backward, vocab_size):
        shard = shard_of(logits.shape[1], tp_group)
        n_vocab = vocab_size or shard.vocab_size  # smoothing spreads over the real (unmasked) vocabulary
        k = kernels_for(logits.device, logits.dtype)
        stats = k.ce_row_stats(logits, labels, None, shard.vocab_start, shard.vocab_size, ignore_index)
        m, s, target, sumz = reduce_row_stats(stats, tp_group).unbind(0)
        logsum = torch.log(s)  # log Z = m + logsum; differences with m first keep |z| ~ 1e4 exact
        valid = labels != ignore_index
        if mode == "ce":
            loss = (m - target) + logsum
            smoothing = _megatron_smoothing(label_smoothing, n_vocab)
            if smoothing > 0:
                loss = (1.0 - smoothing) * loss + smoothing * ((m - sumz / n_vocab) + logsum)
        else:
            smoothing = 0.0
            loss = (target - m) - logsum
        out = torch.where(valid, loss, torch.zeros_like(loss))
        ctx.save_for_backward(logits, labels, m.contiguous(), logsum, valid)
        ctx.cfg = (mode, smoothing, shard, inplace_backward, n_vocab)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits, labels, m, logsum, valid = ctx.saved_tensors
        mode, smoothing, shard, inplace, n_vocab = ctx.cfg
        g = acc(grad_out) if mode == "ce" else -acc(grad_out)
        scale = torch.where(valid, g, torch.zeros_like(g)).contiguous()
        k = kernels_for(logits.device, logits.dtype)
        args = (labels, m, logsum, scale, 1.0 - smoothing, smoothing / n_vocab, shard.vocab_start)
        if inplace and logits.stride(-1) == 1:
            k.softmax_grad_(logits, *args)
            # The compiled op's in-place write is invisible to autograd; bump the version counter so a
            # node that saved the same logits (tanh soft-capping, a z-loss) raises instead of reading
            # the gradient as if it were its saved input.
            increment_version(logits)
            grad = logits
        else:
            grad = k.softmax_grad(logits, *args)
        return grad, None, None, None, None, None, None, None


def _megatron_smoothing(label_smoothing: float, vocab_size: int) -> float:
    """megatron-core's effective weight s = ε·V/(V-1): loss = (1-s)·nll + s·mean_v(-log p_v)."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if label_smoothing == 0.0 or vocab_size <= 1:
        return 0.0
    return label_smoothing * vocab_size / (vocab_size - 1)


def _apply(logits, labels, ignore_index, label_smoothing, tp_group, mode, inplace_backward, vocab_size=None):
    flat_logits, flat_labels = flatten_rows(logits, labels)
    if vocab_size is not None and vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1 or None, got {vocab_size}")
    out = _RowSoftmaxLoss.apply(
        flat_logits, flat_labels, int(ignore_index), float(label_smoothing), tp_group, mode, bool(inplace_backward),
        vocab_size,
    )
    return out.reshape(labels.shape)


def vocab_parallel_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    tp_group: Optional[dist.ProcessGroup] = None,
    inplace_backward: bool = False,
    vocab_size: Optional[int] = None,
) -> torch.Tensor:
    """Per-token cross-entropy of vocab-sharded logits, fp32 ``[T]`` (0 where ``labels == ignore_index``).

    Args:
        logits: ``[T, V_local]`` (or ``[..., V_local]``) bf16/fp16/fp32 shard; rank r of ``tp_group``
            owns global ids ``[r·V_local, (r+1)·V_local)``.
        labels: ``[T]`` int64 global vocab ids.
        label_smoothing: ε as in megatron-core: with ``s = ε·V/(V-1)`` (V the global vocab),
            ``loss = (1-s)·nll + s·mean_v(-log p_v)``. (megatron-core itself uses the *local* shard
            size and mean under TP>1; this op uses the global vocab, which equals megatron at TP=1.)
        tp_group: tensor-parallel group, ``None`` when unsharded.
        inplace_backward: the backward writes the gradient into ``logits``' storage (saves one
            ``[T, V_local]`` buffer); the caller must not read ``logits`` after backward.
        vocab_size: the real vocabulary size when the tail of the (padded) vocabulary is masked with
            ``-inf`` logits, as megatron_align's models do; label smoothing then spreads over the real
            vocabulary only. Default: the global shard size. ``-inf`` columns never contribute.
    """
    return _apply(logits, labels, ignore_index, label_smoothing, tp_group, "ce", inplace_backward, vocab_size)


def token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    tp_group: Optional[dist.ProcessGroup] = None,
) -> torch.Tensor:
    """``log p(label)`` per token, fp32 ``[T]`` (0 where ignored); differentiable w.r.t. ``logits``."""
    return _apply(logits, labels, ignore_index, 0.0, tp_group, "logprob", False)
