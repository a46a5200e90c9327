"""Evaluation loss per category: the LM loss summed per token group (category) of the batch."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from megatron_align.engine.inputs import ModelInputs


def grouped_lm_loss(num_groups: int, loss_backend: str, inputs: ModelInputs, logits: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """Like :func:`engine.loss.lm_loss`, plus per-group [loss_sum, tokens] from ``inputs.groups``."""
    from megatron_align.engine.loss import per_token_loss, reduce_lm_loss

    per_token, mask = per_token_loss(inputs, loss_backend, logits)
    groups = inputs.groups.reshape(-1)
    valid = (groups >= 0) & (mask > 0)
    idx = torch.where(valid, groups, torch.zeros_like(groups))
    sums = torch.zeros(num_groups, dtype=torch.float32, device=logits.device)
    counts = torch.zeros(num_groups, dtype=torch.float32, device=logits.device)
    sums.index_add_(0, idx, (per_token * mask).detach() * valid)
    counts.index_add_(0, idx, mask * valid)
    loss_sum, num_tokens, report = reduce_lm_loss(per_token, mask)
    report["groups"] = torch.stack([sums, counts], dim=1)
    return loss_sum, num_tokens, report


def category_groups(micro_batch, categories: List[str]) -> torch.Tensor:
    """[mbs, S] group id of each token from the micro-batch's per-sample categories (-1: none/padding)."""
    index = {c: i for i, c in enumerate(categories)}
    per_sample = torch.tensor([index.get(c, -1) if c is not None else -1 for c in micro_batch.categories] + [-1],
                              dtype=torch.long)
    si = micro_batch.sample_index.clone()
    si[si < 0] = len(micro_batch.categories)
    return per_sample[si]
