"""Fused loss kernels: ``megatron_align.ops``.

- :func:`vocab_parallel_cross_entropy` — per-token CE of a vocab-sharded logits tensor
- :func:`token_logprobs` — per-token ``log p(label)``
- :func:`packed_sequence_logprobs` — per-sequence sums / means over ``cu_seqlens`` (DPO, RM)
- :func:`topk_kl` — exact KL over the reference's top-k ids (GRPO, Baichuan Alignment)
- ``fused_linear_*`` — the same losses from hidden states and the output weight, chunked, without
  ever materialising the ``[T, V]`` logits (``model.loss_backend: fused_linear``)

All take the local vocab shard ``[T, V_local]`` and a ``tp_group`` (``None`` = unsharded), run the
compiled kernels of ``megatron_align._C`` when it is built (imported lazily on first use) and the
PyTorch twins in ``_reference`` otherwise. :func:`available_backends` lists what can run here.
"""

from megatron_align.ops._backend import active_backend, available_backends, describe_backends, use_backend
from megatron_align.ops.cross_entropy import token_logprobs, vocab_parallel_cross_entropy
from megatron_align.ops.packed_logprobs import packed_sequence_logprobs
from megatron_align.ops.topk_kl import reference_topk, topk_kl
from megatron_align.ops.fused_linear import (
    fused_linear_cross_entropy,
    fused_linear_logprobs,
    fused_linear_packed_logprobs,
    fused_linear_topk_kl,
)

__all__ = [
    "vocab_parallel_cross_entropy",
    "token_logprobs",
    "packed_sequence_logprobs",
    "topk_kl",
    "reference_topk",
    "fused_linear_cross_entropy",
    "fused_linear_logprobs",
    "fused_linear_packed_logprobs",
    "fused_linear_topk_kl",
    "available_backends",
    "active_backend",
    "use_backend",
    "describe_backends",
]
