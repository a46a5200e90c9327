"""What one micro-batch hands the model and the loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

IGNORE_INDEX = -100


@dataclass
class ModelInputs:
    tokens: torch.Tensor  # int64 [b, s]
    position_ids: torch.Tensor  # int64 [b, s], restart at 0 per packed sample
    labels: torch.Tensor  # int64 [b, s], next-token ids
    loss_mask: torch.Tensor  # float [b, s]
    doc_ids: Optional[torch.Tensor] = None  # int64 [b, s]: sample of each token (attention isolation)
    groups: Optional[torch.Tensor] = None  # int64 [b, s]: e.g. category of each token, for grouped eval loss
    cu_seqlens: Optional[torch.Tensor] = None  # int32 [n+1] over the flattened b*s tokens (THD attention)
    max_seqlen: Optional[int] = None

    def to(self, device: torch.device) -> "ModelInputs":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return ModelInputs(move(self.tokens), move(self.position_ids), move(self.labels), move(self.loss_mask),
                           move(self.doc_ids), move(self.groups), move(self.cu_seqlens), self.max_seqlen)

    @staticmethod
    def from_micro_batch(mb) -> "ModelInputs":
        """From a :class:`megatron_align.data.batch.MicroBatch` (sample_index doubles as document ids)."""
        return ModelInputs(tokens=mb.tokens, position_ids=mb.position_ids, labels=mb.labels,
                           loss_mask=mb.loss_mask, doc_ids=mb.sample_index, cu_seqlens=mb.cu_seqlens,
                           max_seqlen=mb.max_seqlen)

    @staticmethod
    def causal(tokens: torch.Tensor, labels: Optional[torch.Tensor] = None,
               loss_mask: Optional[torch.Tensor] = None) -> "ModelInputs":
        """Plain unpacked rows: positions 0..s-1, next-token labels, every position but the last scored."""
        b, s = tokens.shape
        pos = torch.arange(s, device=tokens.device).expand(b, s).contiguous()
        if labels is None:
            labels = torch.full_like(tokens, IGNORE_INDEX)
            labels[:, :-1] = tokens[:, 1:]
        if loss_mask is None:
            loss_mask = (labels != IGNORE_INDEX).float()
        return ModelInputs(tokens, pos, labels, loss_mask, None)
