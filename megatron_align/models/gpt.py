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

from megatron_align.models.arch import ArchSpec
from megatron_align.models.rope import rope_freqs_from_positions, rope_inv_freq


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
            pad = torch.zeros(n_local, dtype=torch.bool, device=logits.device)
            pad[n_valid:] = True
            logits = logits.masked_fill(pad, float("-inf"))
        if runtime_gather_output:
            from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

            logits = gather_from_tensor_model_parallel_region(logits)
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
    def __init__(self, *args, arch: ArchSpec, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.arch = arch
        self.register_buffer("rope_inv_freq", rope_inv_freq(arch.kv_channels, arch.rope_theta, arch.rope_scaling),
                             persistent=False)
        if self.post_process:
            out = self.output_layer
            out.__class__ = AlignOutputLayer
            out.norm_head = arch.norm_head
            out.true_vocab_size = arch.vocab_size
            out.vocab_start = parallel_state.get_tensor_model_parallel_rank() * out.output_size_per_partition

    def _preprocess(self, input_ids, position_ids, decoder_input=None, inference_context=None,
                    packed_seq_params=None, padding_mask=None):
        out = list(super()._preprocess(input_ids, position_ids, decoder_input=decoder_input,
                                       inference_context=inference_context, packed_seq_params=packed_seq_params,
                                       padding_mask=padding_mask))
        if packed_seq_params is None and position_ids is not None and out[1] is not None:
            out[1] = rope_freqs_from_positions(self.rope_inv_freq, position_ids)
        return tuple(out)
