"""Registry of cross-entropy implementations selectable by the ``model.loss_backend`` setting.

Each entry is ``fn(logits_shard, labels, *, tp_group, ignore_index, label_smoothing) -> loss``
with ``logits_shard`` ``[T, V_local]`` or ``[S, B, V_local]`` and a per-token fp32 loss shaped like
``labels`` (0 where ``labels == ignore_index``):

- ``"fused"``: :func:`megatron_align.ops.vocab_parallel_cross_entropy` (this package's kernels).
- ``"megatron"``: ``megatron.core.tensor_parallel.vocab_parallel_cross_entropy``; needs
  megatron's ``parallel_state`` initialised and always uses its tensor-parallel group. It has no
  ignore_index, so ignored labels are replaced by 0 and their loss (hence gradient) zeroed here.
  Under TP>1 its label smoothing averages over the *local* shard (megatron-core 0.16 behaviour).
- ``"te"``: Transformer Engine's ``parallel_cross_entropy`` when ``transformer_engine`` imports.
- ``"fused_linear"``: the model hands the loss an :class:`~megatron_align.ops.fused_linear.LMHeadInput`
  (hidden states + output weight) and ``engine/loss.py`` runs the fused LM-head ops on it; this entry
  only serves callers that still hold materialised logits (e.g. inference), with the "fused" kernels.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch

from megatron_align.ops.cross_entropy import vocab_parallel_cross_entropy

CEBackend = Callable[..., torch.Tensor]


def _fused(logits, labels, *, tp_group=None, ignore_index=-100, label_smoothing=0.0):
    return vocab_parallel_cross_entropy(
        logits, labels, ignore_index=ignore_index, label_smoothing=label_smoothing, tp_group=tp_group
    )


def _megatron(logits, labels, *, tp_group=None, ignore_index=-100, label_smoothing=0.0):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy as megatron_ce

    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError(
            "model.loss_backend='megatron' needs megatron.core.parallel_state initialised "
            "(parallel_state.initialize_model_parallel)"
        )
    mp_group = parallel_state.get_tensor_model_parallel_group()
    if tp_group is not None and tp_group is not mp_group:
        raise ValueError("model.loss_backend='megatron' always uses parallel_state's tensor-parallel group; "
                         "tp_group must be that group or None")
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    squeeze = logits.dim() == 2  # megatron expects [S, B, V]
    x = logits.unsqueeze(1) if squeeze else logits
    y = safe_labels.unsqueeze(1) if squeeze else safe_labels
    loss = megatron_ce(x, y, label_smoothing)
    loss = loss.squeeze(1) if squeeze else loss
    return torch.where(valid, loss.float(), torch.zeros_like(loss, dtype=torch.float32))


def _te(logits, labels, *, tp_group=None, ignore_index=-100, label_smoothing=0.0):
    try:
        from transformer_engine.pytorch.cross_entropy import parallel_cross_entropy
    except ImportError as e:
        raise RuntimeError(
            "model.loss_backend='te' needs transformer_engine (pip install 'megatron_align[te]' on a CUDA "
            f"machine); import failed: {e}. Use model.loss_backend='fused' or 'megatron'."
        ) from e
    squeeze = logits.dim() == 2
    x = logits.unsqueeze(1) if squeeze else logits
    y = labels.unsqueeze(1) if squeeze else labels
    loss = parallel_cross_entropy(x, y, label_smoothing, False, tp_group, ignore_index)
    return (loss.squeeze(1) if squeeze else loss).float()


CE_BACKENDS: Dict[str, CEBackend] = {"fused": _fused, "megatron": _megatron, "te": _te, "fused_linear": _fused}


def get_ce_backend(name: str) -> CEBackend:
    """The CE function for ``model.loss_backend = name``; ValueError naming the setting otherwise."""
    try:
        return CE_BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"model.loss_backend={name!r} is not a known cross-entropy backend; choose one of {sorted(CE_BACKENDS)}"
        ) from None
