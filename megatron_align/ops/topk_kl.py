"""Exact KL(π‖π_ref) over the reference's top-k vocabulary entries (Baichuan Alignment, GRPO).

Per token: select the k largest reference logits (globally across TP shards: each rank's local
top-k values + global ids are all-gathered and the global top-k picked), gather the policy
logits there (each rank contributes the ids it owns; one all-reduce), renormalise both over the k
entries and compute ``sum p (log p - log q)`` with the ``topk_kl_forward`` kernel. The gradient
w.r.t. the policy logits, ``p (log p - log q - KL)``, is scattered back into each rank's shard
without any collective.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from megatron_align.ops._backend import kernels_for
from megatron_align.ops._reference import acc
from megatron_align.ops._tp import shard_of


def _select_topk(vals: torch.Tensor, ids: torch.Tensor, k: int):
    """Top-k of each row under the total order (value descending, then global id ascending).

    ``ids`` must be ascending along each row (the selection keeps that order). ``torch.topk`` breaks
    ties differently on CPU, CUDA and across TP layouts (bf16 reference logits tie often); this rule
    gives the same set everywhere: the k-th largest value is a threshold, every larger entry is in,
    and the entries equal to it fill the remaining places lowest id first."""
    T, n = vals.shape
    if k >= n:
        return vals, ids
    kth = torch.topk(vals, k, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
    above = vals > kth
    tied = vals == kth
    room = k - above.sum(dim=1, keepdim=True)
    take = above | (tied & (torch.cumsum(tied.to(torch.int32), dim=1) <= room))
    cols = take.nonzero()[:, 1].reshape(T, k)  # row-major: ascending columns, hence ascending ids
    return vals.gather(1, cols), ids.gather(1, cols)


def _global_topk(ref: torch.Tensor, k: int, shard, tp_group):
    """Values (fp32) and global ids [T, k] of the reference's top-k across all shards, ties broken
    by the lower global id (see _select_topk), so every TP size selects the same entries."""
    T = ref.shape[0]
    local_ids = torch.arange(shard.vocab_start, shard.vocab_start + ref.shape[1], device=ref.device)
    vals, ids = _select_topk(acc(ref), local_ids.expand(T, -1), min(k, ref.shape[1]))
    if shard.world == 1:
        return vals, ids
    all_vals = [torch.empty_like(vals) for _ in range(shard.world)]
    all_ids = [torch.empty_like(ids) for _ in range(shard.world)]
    dist.all_gather(all_vals, vals.contiguous(), group=tp_group)
    dist.all_gather(all_ids, ids.contiguous(), group=tp_group)
    # rank order = vocab order, and each rank's ids ascend: the concatenation ascends too
    return _select_topk(torch.cat(all_vals, dim=1), torch.cat(all_ids, dim=1), k)


def reference_topk(ref_logits: torch.Tensor, k: int, *, tp_group: Optional[dist.ProcessGroup] = None):
    """The reference's top-k over the (sharded) vocabulary, ties to the lower id: fp32 values and int64
    global ids, both ``[T, k]``, identical on every TP rank. Store them at rollout time and pass them to
    :func:`megatron_align.ops.fused_linear_topk_kl` instead of keeping the reference's full logits."""
    V = ref_logits.shape[-1]
    ref = ref_logits.detach().reshape(-1, V)
    shard = shard_of(V, tp_group)
    vals, ids = _global_topk(ref, max(1, min(int(k), shard.vocab_size)), shard, tp_group)
    return vals.reshape(*ref_logits.shape[:-1], -1), ids.reshape(*ref_logits.shape[:-1], -1)


class _TopkKLMath:
    """KL of gathered [T, k] policy/reference logits and its policy gradient (the kernels, any device)."""

    @staticmethod
    def forward(pol_vals: torch.Tensor, ref_vals: torch.Tensor):
        pol_vals, ref_vals = pol_vals.contiguous(), ref_vals.contiguous()
        kl = kernels_for(pol_vals.device, pol_vals.dtype).topk_kl_forward(pol_vals, ref_vals)
        return kl, (pol_vals, ref_vals, kl)

    @staticmethod
    def backward(grad_kl: torch.Tensor, saved) -> torch.Tensor:
        pol_vals, ref_vals, kl = saved
        kern = kernels_for(pol_vals.device, pol_vals.dtype)
        return kern.topk_kl_backward(grad_kl.to(kl.dtype).contiguous(), pol_vals, ref_vals, kl)


class _TopkKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, policy, ref, k, tp_group):
        shard = shard_of(policy.shape[1], tp_group)
        k = max(1, min(int(k), shard.vocab_size))
        ref_vals, ids = _global_topk(ref.detach(), k, shard, tp_group)
        local = ids - shard.vocab_start
        owned = (local >= 0) & (local < shard.local)
        col = local.clamp(0, shard.local - 1)
        pol_vals = torch.where(owned, acc(policy.gather(1, col)), 0.0)
        if shard.world > 1:
            dist.all_reduce(pol_vals, op=dist.ReduceOp.SUM, group=tp_group)
        kl, saved = _TopkKLMath.forward(pol_vals, ref_vals)
        ctx.save_for_backward(*saved, col, owned)
        ctx.meta = (policy.shape, policy.dtype)
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        *saved, col, owned = ctx.saved_tensors
        shape, dtype = ctx.meta
        g = _TopkKLMath.backward(grad_kl, saved)
        g = torch.where(owned, g, 0.0).to(dtype)
        grad = torch.zeros(shape, dtype=dtype, device=g.device).scatter_add_(1, col, g)
        return grad, None, None, None


def topk_kl(
    policy_logits: torch.Tensor,
    ref_logits: torch.Tensor,
    *,
    k: int = 500,
    tp_group: Optional[dist.ProcessGroup] = None,
) -> torch.Tensor:
    """Per-token KL(π‖π_ref) over the reference's top-k ids, fp32 ``[T]``; differentiable w.r.t.
    ``policy_logits`` ``[T, V_local]`` (``ref_logits`` is treated as a constant). ``k`` is clamped
    to the global vocab size. Ties among the reference logits are broken deterministically: the
    lower global vocab id wins (the same selection on CPU, CUDA and every TP size)."""
    if policy_logits.dim() < 2 or policy_logits.shape != ref_logits.shape:
        raise ValueError(
            f"policy_logits and ref_logits must both be [T, V_local] with equal shapes, got "
            f"{tuple(policy_logits.shape)} and {tuple(ref_logits.shape)}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    V = policy_logits.shape[-1]
    out = _TopkKL.apply(policy_logits.reshape(-1, V), ref_logits.reshape(-1, V), k, tp_group)
    return out.reshape(policy_logits.shape[:-1])
