"""Micro-batches: samples of one DP rank's share of a global batch, packed (or padded) into [mbs, S] tensors.

``MicroBatch.cu_seqlens`` (int32) indexes the micro-batch flattened to ``mbs*S`` tokens and its segments tile
that buffer: each sample is a segment, and each row's padding tail (if any) is one extra segment (an all-padding
row is one segment of S). Padding segments hold only loss-masked tokens, so flash-attention varlen over these
``cu_seqlens`` isolates samples exactly; ``position_ids`` restart at 0 at every segment, so
:func:`segment_ids` and :func:`attention_mask` can be rebuilt from them. Unpacked mode has the same structure
with one sample per row. Labels/loss-mask convention: see :mod:`megatron_align.data.packing`.

With packing, DP ranks may build different numbers of micro-batches for one step: all-reduce (MAX) the local
count and call :func:`pad_micro_batches` so every rank runs the same number; the added micro-batches are
all padding (loss_mask 0, no samples), so they change neither the loss sum nor the token counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from megatron_align.data.packing import PackedRow, build_row, pack_lengths
from megatron_align.data.samples import Sample, Unit, as_unit


@dataclass
class MicroBatch:
    tokens: torch.Tensor  # int64 [mbs, S]
    labels: torch.Tensor  # int64 [mbs, S]; IGNORE_INDEX where there is no next token of the same sample
    loss_mask: torch.Tensor  # float32 [mbs, S]
    position_ids: torch.Tensor  # int64 [mbs, S]; restart at 0 per segment
    cu_seqlens: torch.Tensor  # int32 [n_segments+1] over the flattened mbs*S tokens, last == mbs*S
    max_seqlen: int  # longest segment
    sample_index: torch.Tensor  # int64 [mbs, S]: index into sample_ids, -1 on padding
    sample_ids: List[int] = field(default_factory=list)  # per document (sample_index indexes these)
    categories: List[Optional[str]] = field(default_factory=list)  # per document
    num_loss_tokens: int = 0
    num_real_tokens: int = 0
    packed: bool = True
    # documents -> units (see data.samples.Unit): per document its unit's position in ``unit_ids``, its role,
    # its per-document values, and where it lies in the flattened mbs*S tokens (start, length)
    doc_units: List[int] = field(default_factory=list)
    doc_roles: List[int] = field(default_factory=list)
    doc_values: List[Dict[str, float]] = field(default_factory=list)
    doc_spans: List[Tuple[int, int]] = field(default_factory=list)
    unit_ids: List[int] = field(default_factory=list)
    unit_categories: List[Optional[str]] = field(default_factory=list)
    unit_datasets: List[Optional[str]] = field(default_factory=list)

    @property
    def is_padding(self) -> bool:
        return not self.sample_ids


def _assemble(rows: List[PackedRow], row_units: List[List[Unit]], seq_length: int,
              micro_batch_size: int, pad_id: int, packed: bool) -> MicroBatch:
    row_samples = [[d for u in units for d in u.docs] for units in row_units]
    while len(rows) < micro_batch_size:
        rows.append(build_row([], seq_length, pad_id))
        row_samples.append([])
    cu: List[int] = [0]
    sample_index = np.stack([r.sample_index for r in rows])
    offset_samples = 0
    for r_i, (row, samples) in enumerate(zip(rows, row_samples)):
        base = r_i * seq_length
        cu.extend((base + row.cu_seqlens[1:]).tolist())
        if row.cu_seqlens[-1] < seq_length:
            cu.append(base + seq_length)
        sample_index[r_i][sample_index[r_i] >= 0] += offset_samples
        offset_samples += len(samples)
    cu_arr = np.asarray(cu, dtype=np.int32)
    flat = [s for samples in row_samples for s in samples]
    units = [u for us in row_units for u in us]
    doc_units = [k for k, u in enumerate(units) for _ in u.docs]
    doc_spans = []
    for r_i, row in enumerate(rows):
        base = r_i * seq_length
        doc_spans.extend((base + int(a), int(b - a)) for a, b in zip(row.cu_seqlens[:-1], row.cu_seqlens[1:]))
    loss_mask = torch.from_numpy(np.stack([r.loss_mask for r in rows]))
    return MicroBatch(
        tokens=torch.from_numpy(np.stack([r.tokens for r in rows])),
        labels=torch.from_numpy(np.stack([r.labels for r in rows])),
        loss_mask=loss_mask,
        position_ids=torch.from_numpy(np.stack([r.position_ids for r in rows])),
        cu_seqlens=torch.from_numpy(cu_arr),
        max_seqlen=int(np.diff(cu_arr).max()),
        sample_index=torch.from_numpy(sample_index),
        sample_ids=[s.sample_id for s in flat],
        categories=[s.category for s in flat],
        num_loss_tokens=int(loss_mask.sum().item()),
        num_real_tokens=sum(len(s) for s in flat),
        packed=packed,
        doc_units=doc_units,
        doc_roles=[s.role for s in flat],
        doc_values=[s.values for s in flat],
        doc_spans=doc_spans,
        unit_ids=[u.unit_id for u in units],
        unit_categories=[u.category for u in units],
        unit_datasets=[u.dataset for u in units],
    )


def make_micro_batches(items: Sequence[Union[Sample, Unit]], seq_length: int, micro_batch_size: int,
                       packing: bool = True, pad_id: int = 0) -> List[MicroBatch]:
    """Pack (best-fit decreasing, by unit) or pad (one unit per row, in the given order) ``items`` into rows of
    ``seq_length`` tokens, then group rows into micro-batches of ``micro_batch_size`` rows (the last one
    filled with padding rows). A :class:`Sample` is a one-document unit; the documents of a unit go into one
    row, one after another, each an isolated document. Deterministic for a given input order. Units must fit
    in ``seq_length``."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    units = [as_unit(x) for x in items]
    too_long = [u.unit_id for u in units if len(u) > seq_length]
    if too_long:
        raise ValueError(f"samples {too_long[:5]} exceed seq_length {seq_length}; apply data.overlong first")
    if packing:
        groups = pack_lengths([len(u) for u in units], seq_length)
    else:
        groups = [[i] for i in range(len(units))]
    out: List[MicroBatch] = []
    for start in range(0, len(groups), micro_batch_size):
        row_units = [[units[i] for i in g] for g in groups[start:start + micro_batch_size]]
        rows = [build_row([d for u in us for d in u.docs], seq_length, pad_id) for us in row_units]
        out.append(_assemble(rows, row_units, seq_length, micro_batch_size, pad_id, packing))
    return out


def empty_micro_batch(seq_length: int, micro_batch_size: int, pad_id: int = 0, packed: bool = True) -> MicroBatch:
    """A micro-batch of padding only: no samples, loss_mask all 0."""
    return _assemble([], [], seq_length, micro_batch_size, pad_id, packed)


def pad_micro_batches(micro_batches: List[MicroBatch], num: int, seq_length: int, micro_batch_size: int,
                      pad_id: int = 0) -> List[MicroBatch]:
    """Append empty micro-batches until there are ``num`` (the MAX of the local counts over DP ranks)."""
    if num < len(micro_batches):
        raise ValueError(f"cannot pad {len(micro_batches)} micro-batches down to {num}")
    packed = micro_batches[0].packed if micro_batches else True
    return list(micro_batches) + [empty_micro_batch(seq_length, micro_batch_size, pad_id, packed)
                                  for _ in range(num - len(micro_batches))]


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """[mbs, S] segment number per token within its row (a new segment wherever position_ids == 0)."""
    return torch.cumsum((position_ids == 0).to(torch.int64), dim=-1) - 1


def attention_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """Causal, per-segment mask [mbs, 1, S, S], megatron convention: True = attention NOT allowed."""
    seg = segment_ids(position_ids)
    s = position_ids.shape[-1]
    causal = torch.ones(s, s, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (seg.unsqueeze(-1) == seg.unsqueeze(-2)) & causal
    return ~allowed.unsqueeze(1)
