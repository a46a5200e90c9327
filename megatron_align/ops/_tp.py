"""Tensor-parallel plumbing shared by the loss ops: shard geometry and the row-stat reductions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    """This rank's vocab shard: global ids [vocab_start, vocab_start + local) of vocab_size."""

    rank: int
    world: int
    local: int

    @property
    def vocab_start(self) -> int:
        return self.rank * self.local

    @property
    def vocab_size(self) -> int:
        return self.world * self.local


def shard_of(v_local: int, tp_group: Optional[dist.ProcessGroup]) -> Shard:
    if tp_group is None:
        return Shard(0, 1, v_local)
    return Shard(dist.get_rank(tp_group), dist.get_world_size(tp_group), v_local)


def reduce_row_stats(stats: torch.Tensor, tp_group: Optional[dist.ProcessGroup]) -> torch.Tensor:
    """Combine per-shard [4, T] row stats into global ones: all-reduce MAX of the max, then ONE
    all-reduce SUM of [rescaled sumexp, target, sumlogits]."""
    if tp_group is None or dist.get_world_size(tp_group) == 1:
        return stats
    local_max = stats[0]
    gmax = local_max.clone()
    dist.all_reduce(gmax, op=dist.ReduceOp.MAX, group=tp_group)
    rest = stats[1:].clone()
    factor = torch.exp(local_max - gmax)
    rest[0] = torch.where(torch.isneginf(local_max), torch.zeros_like(factor), rest[0] * factor)
    dist.all_reduce(rest, op=dist.ReduceOp.SUM, group=tp_group)
    return torch.cat([gmax[None], rest])


def flatten_rows(logits: torch.Tensor, labels: torch.Tensor, name: str = "logits"):
    """[..., V] logits and [...] labels -> [T, V], [T] (views when contiguous)."""
    if logits.dim() < 2:
        raise ValueError(f"{name} must have shape [T, V_local] (or [..., V_local]); got {tuple(logits.shape)}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape {tuple(logits.shape[:-1])} to match {name} {tuple(logits.shape)}; "
            f"got {tuple(labels.shape)}"
        )
    if labels.dtype != torch.int64:
        raise TypeError(f"labels must be int64 (global vocab ids), got {labels.dtype}")
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
