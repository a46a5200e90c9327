"""k-block recompute for any k: blocks of k layers, the last block of a stage shorter when k does not divide.

megatron-core's ``recompute_method="uniform"`` checkpoints layers ``[i, i + k)`` for i = 0, k, 2k, …
and indexes past the stage's last layer when k does not divide the layers of a pipeline stage
(``IndexError`` from ``_get_layer``). The Baichuan report's multi-layer checkpointing only asks for
blocks of k consecutive layers; a shorter last block (``n mod k`` layers) keeps the same checkpoint
count ⌈n/k⌉ and a smaller recompute working set, so every k in 1..n runs. When k divides n the
blocks are exactly megatron's and its own code path is used.
"""

from __future__ import annotations

from typing import List, Tuple

from megatron.core import tensor_parallel
from megatron.core.transformer.transformer_block import TransformerBlock


def block_bounds(num_layers: int, k: int) -> List[Tuple[int, int]]:
    """[start, end) of each checkpointed block: k layers each, the last one the remainder."""
    if k < 1:
        raise ValueError(f"recompute block size must be >= 1, got {k}")
    return [(s, min(s + k, num_layers)) for s in range(0, num_layers, k)]


class KBlockTransformerBlock(TransformerBlock):
    """TransformerBlock whose uniform full recompute accepts a k that does not divide the stage's layers."""

    def _checkpointed_forward(self, hidden_states, attention_mask, context, context_mask, rotary_pos_emb,
                              attention_bias, packed_seq_params, use_inner_quantization_context,
                              padding_mask=None):
        n, k = self.num_layers_per_pipeline_rank, self.config.recompute_num_layers
        uneven = self.config.recompute_method == "uniform" and n % k != 0
        if not uneven or self.config.fp8 or self.config.fp4:
            return super()._checkpointed_forward(
                hidden_states, attention_mask, context, context_mask, rotary_pos_emb, attention_bias,
                packed_seq_params, use_inner_quantization_context, padding_mask=padding_mask)

        def run_layers(start: int, end: int):
            def forward(hidden_states, attention_mask, context, context_mask, rotary_pos_emb, padding_mask=None):
                for index in range(start, end):
                    hidden_states, context = self._get_layer(index)(
                        hidden_states=hidden_states, attention_mask=attention_mask, context=context,
                        context_mask=context_mask, rotary_pos_emb=rotary_pos_emb, attention_bias=attention_bias,
                        inference_context=None, packed_seq_params=packed_seq_params, padding_mask=padding_mask)
                return hidden_states, context

            return forward

        for start, end in block_bounds(n, k):
            hidden_states, context = tensor_parallel.checkpoint(
                run_layers(start, end), self.config.distribute_saved_activations, hidden_states, attention_mask,
                context, context_mask, rotary_pos_emb, padding_mask)
        return hidden_states


def use_uneven_kblocks(decoder: TransformerBlock) -> None:
    """Give a built decoder the uneven-block recompute (no new parameters or state: a class swap)."""
    if type(decoder) is TransformerBlock:
        decoder.__class__ = KBlockTransformerBlock
