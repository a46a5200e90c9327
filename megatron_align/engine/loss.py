"""Language-model loss of one micro-batch: a *sum* over loss tokens plus the token count.

Megatron's schedules run with ``calculate_per_token_loss=True``: the sums of all micro-batches
are back-propagated as they are, and ``finalize_model_grads`` divides the gradients by the
global count of loss tokens (all-reduced over data-parallel ranks). The reported loss is
sum / count over the global batch. So the objective is the token-level mean over the whole
global batch, independent of how samples were packed or split into micro-batches.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from megatron_align.engine.inputs import IGNORE_INDEX, ModelInputs


def per_token_loss(inputs: ModelInputs, loss_backend: str, logits: torch.Tensor):
    """Per-token CE over the TP-sharded vocab ([b*s], fp32) and the float loss mask ([b*s])."""
    from megatron.core import parallel_state

    from megatron_align.ops.fused_linear import LMHeadInput
    from megatron_align.ops.loss_backends import get_ce_backend

    mask = inputs.loss_mask.to(torch.float32)
    labels = inputs.labels.masked_fill(mask == 0, IGNORE_INDEX)
    tp_group = parallel_state.get_tensor_model_parallel_group() \
        if parallel_state.get_tensor_model_parallel_world_size() > 1 else None
    if isinstance(logits, LMHeadInput):  # model.loss_backend == fused_linear: no logits were made
        return logits.cross_entropy(labels, ignore_index=IGNORE_INDEX), mask.reshape(-1)
    ce = get_ce_backend(loss_backend)
    per_token = ce(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), tp_group=tp_group,
                   ignore_index=IGNORE_INDEX)
    return per_token, mask.reshape(-1)


def lm_loss(inputs: ModelInputs, loss_backend: str, logits: torch.Tensor
            ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """logits [b, s, V_local] (this TP rank's vocab shard) -> (loss_sum, num_tokens, report)."""
    return reduce_lm_loss(*per_token_loss(inputs, loss_backend, logits))


def reduce_lm_loss(per_token: torch.Tensor, mask: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """Masked per-token losses -> (loss_sum, num_tokens, {"lm_loss": [sum, tokens]}) for the schedule."""
    loss_sum = (per_token * mask).sum()
    report = torch.stack([loss_sum.detach().float(), mask.sum().detach()])
    return loss_sum, mask.sum().to(torch.int), {"lm_loss": report}
