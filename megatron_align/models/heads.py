"""Scalar heads: ``model.head = reward | value``.

A linear map ``h -> 1`` applied to the final (normed) hidden state of every token, in fp32, replicated across
tensor-parallel ranks (every rank holds the same ``[1, h]`` weight and computes the same values; with sequence
parallelism the hidden states are first gathered along the sequence). It lives on the last pipeline stage as
``reward_head.weight``, the name the converters map to Hugging Face ``*ForSequenceClassification``'s
``score.weight``. The reward model reads it at each document's last token; a PPO critic (``value``) at every
response token.
"""

from __future__ import annotations

import torch

HEADS = ("lm", "reward", "value")


class ScalarHead(torch.nn.Module):
    def __init__(self, hidden_size: int, *, init_std: float, seed: int, sequence_parallel: bool, tp_group=None,
                 dtype: torch.dtype = torch.float32, device=None) -> None:
        super().__init__()
        # the same draw on every rank (TP ranks hold replicas), independent of the megatron RNG state
        gen = torch.Generator().manual_seed(int(seed))
        weight = torch.randn(1, hidden_size, generator=gen, dtype=torch.float32) * init_std
        self.weight = torch.nn.Parameter(weight.to(dtype=dtype, device=device))
        self.sequence_parallel = sequence_parallel
        self.tp_group = tp_group

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[s(/tp), b, h] hidden states -> [b, s] fp32 scalars."""
        if self.sequence_parallel:
            from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

            # every TP rank computes the same scalars from the whole sequence, so the gradient of the gathered
            # input is already complete on each rank: the backward keeps this rank's slice (no reduce-scatter,
            # which would count it TP times)
            hidden_states = gather_from_sequence_parallel_region(hidden_states, tensor_parallel_output_grad=False,
                                                                 group=self.tp_group)
        values = hidden_states.float() @ self.weight.float().t()
        return values.squeeze(-1).transpose(0, 1).contiguous()
