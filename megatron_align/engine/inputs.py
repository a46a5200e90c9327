"""What one micro-batch hands the model and the objective."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

import torch

IGNORE_INDEX = -100


@dataclass
class DocInfo:
    """The documents of a micro-batch (flattened ``b*s`` token coordinates) and the units they belong to."""

    start: torch.Tensor  # int64 [n]: first token of each document
    length: torch.Tensor  # int64 [n]
    unit: torch.Tensor  # int64 [n]: position of the document's unit in ``unit_ids``
    role: torch.Tensor  # int64 [n]
    values: Dict[str, torch.Tensor] = field(default_factory=dict)  # float64 [n] each (NaN where absent)
    unit_ids: List[int] = field(default_factory=list)
    sample_ids: List[int] = field(default_factory=list)  # per document
    unit_groups: Dict[str, torch.Tensor] = field(default_factory=dict)  # name -> int64 [n_units] group index

    @property
    def last(self) -> torch.Tensor:
        return self.start + self.length - 1

    @property
    def num_units(self) -> int:
        return len(self.unit_ids)

    def to(self, device) -> "DocInfo":
        mv = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return DocInfo(mv(self.start), mv(self.length), mv(self.unit), mv(self.role),
                       {k: mv(v) for k, v in self.values.items()}, self.unit_ids, self.sample_ids,
                       {k: mv(v) for k, v in self.unit_groups.items()})

    @staticmethod
    def from_micro_batch(mb, value_keys=(), group_index: Optional[Dict[str, Dict[Optional[str], int]]] = None
                         ) -> "DocInfo":
        spans = mb.doc_spans
        start = torch.tensor([a for a, _ in spans], dtype=torch.long)
        length = torch.tensor([n for _, n in spans], dtype=torch.long)
        values = {k: torch.tensor([float(v.get(k, float("nan"))) for v in mb.doc_values], dtype=torch.float64)
                  for k in value_keys}
        groups = {}
        for name, index in (group_index or {}).items():
            labels = mb.unit_categories if name == "category" else mb.unit_datasets
            groups[name] = torch.tensor([index.get(x, -1) for x in labels], dtype=torch.long)
        return DocInfo(start, length, torch.tensor(mb.doc_units, dtype=torch.long),
                       torch.tensor(mb.doc_roles, dtype=torch.long), values, list(mb.unit_ids),
                       list(mb.sample_ids), groups)


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
    docs: Optional[DocInfo] = None  # documents and units (pairs, groups) of the micro-batch
    extra: Dict[str, torch.Tensor] = field(default_factory=dict)  # stage data, e.g. reference log-probs

    def to(self, device: torch.device) -> "ModelInputs":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return replace(self, tokens=move(self.tokens), position_ids=move(self.position_ids),
                       labels=move(self.labels), loss_mask=move(self.loss_mask), doc_ids=move(self.doc_ids),
                       groups=move(self.groups), cu_seqlens=move(self.cu_seqlens),
                       docs=None if self.docs is None else self.docs.to(device),
                       extra={k: move(v) for k, v in self.extra.items()})

    @staticmethod
    def from_micro_batch(mb, value_keys=(), group_index=None) -> "ModelInputs":
        """From a :class:`megatron_align.data.batch.MicroBatch` (sample_index doubles as document ids)."""
        return ModelInputs(tokens=mb.tokens, position_ids=mb.position_ids, labels=mb.labels,
                           loss_mask=mb.loss_mask, doc_ids=mb.sample_index, cu_seqlens=mb.cu_seqlens,
                           max_seqlen=mb.max_seqlen, docs=DocInfo.from_micro_batch(mb, value_keys, group_index))

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
