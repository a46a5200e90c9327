"""Our GPTModel: megatron-core's, plus what the three families need.

- RoPE from ``position_ids`` (positions restart per packed sample; see rope.py) with HF-exact
  inverse frequencies (Llama-3.1 scaling included);
- an output layer that masks the vocabulary padding out of the softmax (-inf logits for ids
  >= the real vocab size) and, for Baichuan2, applies NormHead (rows L2-normalised);
- document ids as the attention mask for packed rows (see attention.py).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel.layers import ColumnParallelLinear
from megatron.core.utils import get_pg_rank

from megatron_align.models.arch import ArchSpec
from megatron_align.models.rope import rope_freqs_from_positions, rope_inv_freq, share_inv_freq


class _MaskVocabPadding(torch.autograd.Function):
    """logits[..., n_valid:] = -inf in place (``masked_fill`` made a second [tokens, V/TP] buffer at the end
    of the forward); the backward zeroes those columns of the incoming gradient in place when it is a
    dense buffer of its own (every CE backend's gradient is), else on a copy (``masked_fill``'s backward
    always copied: a second buffer in backward)."""

    @staticmethod
    def forward(ctx, logits, n_valid):
        ctx.n_valid = n_valid
        logits[..., n_valid:] = float("-inf")
        ctx.mark_dirty(logits)
        return logits

    @staticmethod
    def backward(ctx, grad):
        dense = grad.is_contiguous() and grad.untyped_storage().nbytes() == grad.numel() * grad.element_size()
        if not dense:
            grad = grad.clone(memory_format=torch.contiguous_format)
        grad[..., ctx.n_valid:] = 0
        return grad, None


class AlignOutputLayer(ColumnParallelLinear):
    """Vocab-parallel output projection with optional NormHead and vocab-padding mask."""

    norm_head: bool = False
    vocab_start: int = 0
    true_vocab_size: Optional[int] = None
    lm_head_input: bool = False  # model.loss_backend == fused_linear: hand the loss hidden + weight, no logits
    loss_chunk_size: int = 4096

    def forward(self, input_, weight=None, runtime_gather_output=None):
        w = self.weight if weight is None else weight
        if self.norm_head:
            w = F.normalize(w, dim=-1)
        if self.lm_head_input and not runtime_gather_output:  # inference still gets logits
            return self._lm_head_input(input_, w), None
        logits, bias = super().forward(input_, weight=w, runtime_gather_output=False)
        n_local = logits.shape[-1]
        n_valid = max(0, min(n_local, (self.true_vocab_size or 10**12) - self.vocab_start))
        if n_valid < n_local:
            logits = _MaskVocabPadding.apply(logits, n_valid)
        if runtime_gather_output:
            from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

            logits = gather_from_tensor_model_parallel_region(logits, group=self.tp_group)
        return logits, bias

    def _lm_head_input(self, input_, w):
        from megatron_align.ops.fused_linear import LMHeadInput

        group = self.tp_group  # the layer's own TP group (a refit replica is not described by parallel_state)
        tp = torch.distributed.get_world_size(group) if group is not None and torch.distributed.is_initialized() else 1
        hidden, reduce_hidden_grad = input_, True  # without SP the op all-reduces its partial hidden grad
        if self.sequence_parallel and tp > 1:
            from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

            hidden = gather_from_sequence_parallel_region(input_, tensor_parallel_output_grad=True, group=group)
            reduce_hidden_grad = False  # the gather's backward reduce-scatters it
        padded = w.shape[0] * tp
        return LMHeadInput(hidden, w, min(self.true_vocab_size or padded, padded), self.loss_chunk_size,
                           group if tp > 1 else None, reduce_hidden_grad)


class AlignGPTModel(GPTModel):
    def __init__(self, *args, arch: ArchSpec, head: str = "lm", head_seed: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.arch = arch
        self.head = head
        self.register_buffer("rope_inv_freq", rope_inv_freq(arch.kv_channels, arch.rope_theta, arch.rope_scaling),
                             persistent=False)
        share_inv_freq(getattr(self, "rotary_pos_emb", None), self.rope_inv_freq)  # THD path: same freqs
        if self.post_process and head != "lm":  # a scalar head instead of the vocabulary projection
            from megatron_align.models.heads import ScalarHead

            del self.output_layer
            self.reward_head = ScalarHead(self.config.hidden_size, init_std=self.config.init_method_std,
                                          seed=head_seed, sequence_parallel=self.config.sequence_parallel,
                                          tp_group=parallel_state.get_tensor_model_parallel_group(),
                                          device=self.embedding.word_embeddings.weight.device
                                          if self.pre_process else None)
        elif self.post_process:
            out = self.output_layer
            out.__class__ = AlignOutputLayer
            out.norm_head = arch.norm_head
            out.true_vocab_size = arch.vocab_size
            # From the layer's own TP group: a replica built with its own process groups (a refit target)
            # is not described by parallel_state.
            out.vocab_start = get_pg_rank(out.tp_group) * out.output_size_per_partition

    def _preprocess(self, input_ids, position_ids, decoder_input=None, inference_context=None,
                    packed_seq_params=None, padding_mask=None):
        out = list(super()._preprocess(input_ids, position_ids, decoder_input=decoder_input,
                                       inference_context=inference_context, packed_seq_params=packed_seq_params,
                                       padding_mask=padding_mask))
        if inference_context is not None and out[1] is not None:
            # Inference engines index the table by absolute position: one row per position, [s, 1, 1, d].
            positions = torch.arange(out[1].shape[0], device=self.rope_inv_freq.device)[None]
            out[1] = rope_freqs_from_positions(self.rope_inv_freq, positions)
        elif packed_seq_params is None and position_ids is not None and out[1] is not None:
            out[1] = rope_freqs_from_positions(self.rope_inv_freq, position_ids)
            if self.config.apply_rope_fusion:  # TE's fused kernel takes one [s, 1, 1, d] table for all rows
                if not bool((position_ids == position_ids[:1]).all()):
                    raise ValueError("fused RoPE (transformer_impl=te) needs the same positions in every row; "
                                     "pass packed rows with cu_seqlens (THD)")
                out[1] = out[1][:, :1]
        return tuple(out)

    def _postprocess(self, hidden_states, *args, **kwargs):
        if self.head == "lm" or not self.post_process:
            return super()._postprocess(hidden_states, *args, **kwargs)
        return self.reward_head(hidden_states)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None):
        if self.head == "lm" or not self.post_process:
            return super().sharded_state_dict(prefix, sharded_offsets, metadata)
        # megatron's language module expects an output layer on the last stage; a scalar head has none (its
        # replicated reward_head.weight is stored by the default rule for plain modules)
        self.post_process = False
        try:
            return super().sharded_state_dict(prefix, sharded_offsets, metadata)
        finally:
            self.post_process = True
