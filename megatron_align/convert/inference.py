"""Load a megatron_align checkpoint at the current TP/PP layout and run forward-only passes.

Shared by ``megatron-align logprobs`` and the converter tests; generic enough to move to
``engine/`` (it only composes models.builder, checkpoint.model_io and engine.forward_backward).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

import torch

from megatron_align.engine.inputs import ModelInputs


@dataclass
class TaggedInputs(ModelInputs):
    """A micro-batch that knows its index, so per-micro-batch outputs can be told apart in the reports."""

    batch_id: int = -1


def build_and_load(ckpt_dir: str, arch, model_cfg, parallel, seq_length: int):
    """Build this rank's chunks for ``arch`` and load ``ckpt_dir/model`` into them (eval mode)."""
    from megatron_align.checkpoint import layout
    from megatron_align.checkpoint.model_io import load_model
    from megatron_align.models.builder import build_model

    built = build_model(model_cfg, parallel, arch=arch, seq_length=seq_length)
    load_model(built.chunks, os.path.join(ckpt_dir, layout.MODEL_DIR))
    for chunk in built.chunks:
        chunk.eval()
    return built


def forward_only(chunks: List[torch.nn.Module], micro_batches: Sequence[TaggedInputs], *, seq_length: int,
                 micro_batch_size: int, fn: Callable[[TaggedInputs, torch.Tensor], torch.Tensor]
                 ) -> Dict[int, torch.Tensor]:
    """Run every micro-batch through the pipeline schedule; on the last stage ``fn(inputs, logits_local_shard)``
    computes one tensor per micro-batch, returned as {batch_id: tensor} (empty on other stages)."""
    from megatron_align.engine.forward_backward import forward_backward

    def loss_fn(inputs: TaggedInputs, logits: torch.Tensor):
        out = fn(inputs, logits).detach()
        zero = logits.sum() * 0.0
        return zero, torch.tensor(1, dtype=torch.int, device=logits.device), {f"out.{inputs.batch_id}": out}

    if not micro_batches:
        return {}
    with torch.no_grad():
        totals = forward_backward(chunks, micro_batches, seq_length=seq_length, micro_batch_size=micro_batch_size,
                                  forward_only=True, loss_fn=loss_fn)
    return {int(k.split(".", 1)[1]): v for k, v in totals.items() if k.startswith("out.")}


def tp_group_or_none():
    from megatron.core import parallel_state

    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        return parallel_state.get_tensor_model_parallel_group()
    return None


def gather_vocab(logits: torch.Tensor) -> torch.Tensor:
    """The full-vocabulary logits from this rank's shard (all-gather over TP)."""
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    return gather_from_tensor_model_parallel_region(logits)
