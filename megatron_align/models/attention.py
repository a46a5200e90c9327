"""Core attention for packed sequences in the local (non-TE) layer spec.

Samples packed into one row must not see each other. The model passes, in place of megatron's
attention mask, a *document id* tensor ``[b, s]`` (token -> index of its sample in the row);
attention is causal within a document and blocked across documents. Two backends:

- ``sdpa``: a block-diagonal causal additive mask through ``scaled_dot_product_attention``
  (runs everywhere; memory O(s^2) per row, one mask per micro-batch shared by all layers;
  fine for CPU tests and short rows);
- ``flex``: FlexAttention with a document mask (GPU; O(s) memory, block-sparse).

With ``attention_mask=None`` both are plain causal attention. Tensor parallelism needs nothing here
(heads are already split). GQA: the kernel's ``enable_gqa`` without a mask; with SDPA's boolean mask
K/V are repeated instead, because on CUDA torch can serve ``enable_gqa`` + a mask only with its math
kernel (fp32 ``[b, h, s, s]`` intermediates), while repeated K/V take the memory-efficient kernel.

FlexAttention's block mask depends only on the document ids, so it is built once per micro-batch
(compiled on CUDA, so no dense ``[b, 1, s, s]`` mask is materialised) and reused by every layer and by
recompute: :func:`flex_block_mask` caches it by the identity of the document-id tensor, which the
model hands unchanged to every layer.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.module import MegatronModule


def document_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """doc_ids [b, s] -> bool [b, 1, s, s], True where attention is allowed."""
    s = doc_ids.shape[-1]
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    causal = torch.ones(s, s, dtype=torch.bool, device=doc_ids.device).tril()
    return (same & causal).unsqueeze(1)


_SHARED_MASKS = None  # doc_ids tensor (weak) -> {dtype: additive mask}


def shared_additive_mask(doc_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The document-causal mask as an additive [b, 1, s, s] tensor (0 / -inf), built once per ``doc_ids``
    tensor and dtype: every layer passes the same storage to SDPA, which saves it for backward, so a
    micro-batch keeps one mask instead of one per layer (a bool mask is converted to a new float mask
    inside each SDPA call). The entry dies with the micro-batch's ``doc_ids``. Without autograd (the
    no-grad forward of a recompute block, evaluation) nothing is saved and nothing is cached."""
    global _SHARED_MASKS

    def build() -> torch.Tensor:
        blocked = ~document_causal_mask(doc_ids)
        return torch.zeros(blocked.shape, dtype=dtype, device=doc_ids.device).masked_fill_(blocked, float("-inf"))

    if not torch.is_grad_enabled():
        return build()
    if _SHARED_MASKS is None:
        from torch.utils.weak import WeakTensorKeyDictionary

        _SHARED_MASKS = WeakTensorKeyDictionary()
    per_dtype = _SHARED_MASKS.setdefault(doc_ids, {})
    if dtype not in per_dtype:
        per_dtype[dtype] = build()
    return per_dtype[dtype]


def repeat_kv(k: torch.Tensor, v: torch.Tensor, num_heads: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """[b, ng, s, hn] -> [b, np, s, hn]: query head i reads group i // (np / ng) (``enable_gqa``'s layout)."""
    rep = num_heads // k.shape[1]
    if rep == 1:
        return k, v
    return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)


def _sdpa(q, k, v, doc_ids, dropout_p, scale):
    # q [b, np, s, hn], k/v [b, ng, s, hn]
    if doc_ids is None and q.shape[2] != k.shape[2]:
        # q shorter than k (new tokens against a KV cache): causal aligned bottom-right, query i is
        # position sk - sq + i. torch's is_causal aligns top-left, which would hide all but key 0.
        sq, sk = q.shape[2], k.shape[2]
        mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(diagonal=sk - sq)
        k, v = repeat_kv(k, v, q.shape[1])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    if doc_ids is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale,
                                              enable_gqa=q.shape[1] != k.shape[1])
    mask = shared_additive_mask(doc_ids, q.dtype)
    k, v = repeat_kv(k, v, q.shape[1])  # a mask with enable_gqa can only run torch's math kernel on CUDA
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


_FLEX_COMPILED: Dict[str, Callable] = {}
# Block masks of the micro-batches in flight (1F1B / interleaved schedules hold several; recompute
# revisits them in backward). Keyed by id of the document-id tensor, which the entry keeps alive, so an
# id cannot be reused while cached; bounded, so finished micro-batches fall out.
_BLOCK_MASKS: "OrderedDict[Any, Tuple[Optional[torch.Tensor], int, Any]]" = OrderedDict()
BLOCK_MASK_CACHE_SIZE = 64


def _create_block_mask(doc_ids: Optional[torch.Tensor], b: int, s: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    if doc_ids is None:
        def mask_mod(bi, h, qi, ki):
            return qi >= ki
    else:
        def mask_mod(bi, h, qi, ki):
            return (doc_ids[bi, qi] == doc_ids[bi, ki]) & (qi >= ki)
    # Compiled on CUDA: without it create_block_mask evaluates mask_mod densely ([b, 1, s, s]).
    return create_block_mask(mask_mod, b, None, s, s, device=device, _compile=device.type == "cuda")


def flex_block_mask(doc_ids: Optional[torch.Tensor], b: int, s: int, device: torch.device):
    """The block mask for one micro-batch: built at its first layer, reused by the rest and by recompute."""
    key = ("causal", b, s, str(device)) if doc_ids is None else id(doc_ids)
    hit = _BLOCK_MASKS.get(key)
    version = -1 if doc_ids is None else doc_ids._version
    if hit is not None and hit[0] is doc_ids and hit[1] == version:
        _BLOCK_MASKS.move_to_end(key)
        return hit[2]
    mask = _create_block_mask(doc_ids, b, s, device)
    _BLOCK_MASKS[key] = (doc_ids, version, mask)
    while len(_BLOCK_MASKS) > BLOCK_MASK_CACHE_SIZE:
        _BLOCK_MASKS.popitem(last=False)
    return mask


def _flex(q, k, v, doc_ids, dropout_p, scale):
    from torch.nn.attention.flex_attention import flex_attention

    if dropout_p:
        raise ValueError("model.attention_backend=flex does not support attention dropout")
    if doc_ids is None and q.shape[2] != k.shape[2]:  # new tokens against a KV cache: bottom-right causal
        return _sdpa(q, k, v, None, 0.0, scale)
    b, _, s, _ = q.shape
    block_mask = flex_block_mask(doc_ids, b, s, q.device)
    fn = flex_attention
    if q.is_cuda:
        fn = _FLEX_COMPILED.setdefault("flex", torch.compile(flex_attention, dynamic=False))
    return fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


ATTENTION_KERNELS: Dict[str, Callable] = {"sdpa": _sdpa, "flex": _flex}


class PackedCoreAttention(MegatronModule):
    """Drop-in for megatron's DotProductAttention that understands document ids."""

    backend = "sdpa"

    def __init__(self, config, layer_number: int, attn_mask_type, attention_type: str,
                 attention_dropout: Optional[float] = None, softmax_scale: Optional[float] = None,
                 cp_comm_type: Optional[str] = None, pg_collection=None) -> None:
        super().__init__(config=config)
        if config.context_parallel_size > 1:
            raise ValueError("parallel.cp > 1 needs the Transformer Engine spec (model.transformer_impl=te)")
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        kv = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(kv)
        self.kernel = ATTENTION_KERNELS[self.backend]

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None:
            raise ValueError("PackedCoreAttention takes document ids as the attention mask, not PackedSeqParams")
        if attention_bias is not None:
            raise ValueError("attention_bias is not supported by PackedCoreAttention")
        sq, b, np_, hn = query.shape
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, hn]
        dropout_p = self.dropout_p if self.training else 0.0
        if dropout_p:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = self.kernel(q, k, v, attention_mask, dropout_p, self.softmax_scale)
        else:
            out = self.kernel(q, k, v, attention_mask, 0.0, self.softmax_scale)
        return out.permute(2, 0, 1, 3).reshape(sq, b, np_ * hn)


class SdpaCoreAttention(PackedCoreAttention):
    backend = "sdpa"


class FlexCoreAttention(PackedCoreAttention):
    backend = "flex"


ATTENTION_CLASSES: Dict[str, type] = {"sdpa": SdpaCoreAttention, "flex": FlexCoreAttention}


def attention_class(backend: str) -> type:
    """The core-attention class for ``backend`` (the spec chooses it, not branches in forward)."""
    try:
        return ATTENTION_CLASSES[backend]
    except KeyError:
        raise ValueError(f"model.attention_backend: unknown {backend!r}; known: {', '.join(ATTENTION_CLASSES)}") from None
