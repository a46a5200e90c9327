"""Tensor transforms between Hugging Face and megatron-core layouts; each one with its inverse.

A transform maps the HF tensors of one rule (a tuple, in the rule's order) to one megatron tensor
(``to_mcore``) and back (``to_hf``). They are pure reshapes, concatenations and paddings, so a
round trip is bitwise exact, and they run unchanged on ``meta`` tensors (the writer plans the
checkpoint from shapes alone, before reading any data).

Megatron's fused QKV layout groups the heads by key/value group: for each of the ``ng`` query groups,
its ``nh/ng`` query heads, then its key head, then its value head (``hn`` rows each).
"""

from __future__ import annotations

import abc

from dataclasses import dataclass
from typing import List, Sequence

import torch
import torch.nn.functional as F

from megatron_align.convert.errors import ConvertError


@dataclass(frozen=True)
class Dims:
    """The sizes the transforms need (from the ArchSpec and the stored vocabulary padding)."""

    num_query_groups: int
    heads_per_group: int
    head_dim: int
    vocab_size: int
    padded_vocab_size: int


class Transform(abc.ABC):
    name = ""

    @abc.abstractmethod
    def to_mcore(self, hf: Sequence[torch.Tensor], d: Dims) -> torch.Tensor:
        """HF tensors -> the megatron tensor."""

    @abc.abstractmethod
    def to_hf(self, t: torch.Tensor, d: Dims) -> List[torch.Tensor]:
        """The megatron tensor -> HF tensors (inverse of to_mcore)."""

    def __repr__(self) -> str:
        return self.name


class Identity(Transform):
    name = "identity"

    def to_mcore(self, hf, d):
        (t,) = hf
        return t

    def to_hf(self, t, d):
        return [t]


def _group_rows(t: torch.Tensor, d: Dims, rows_per_group: int, what: str) -> torch.Tensor:
    if t.shape[0] != d.num_query_groups * rows_per_group:
        raise ConvertError(f"{what} has {t.shape[0]} rows; expected {d.num_query_groups} query groups x "
                           f"{rows_per_group} = {d.num_query_groups * rows_per_group}")
    return t.reshape(d.num_query_groups, rows_per_group, *t.shape[1:])


class QKVFuse(Transform):
    """HF (q, k, v) -> megatron's per-group [q heads of the group, k, v]. Weights and biases alike."""

    name = "qkv_fuse"

    def to_mcore(self, hf, d):
        q, k, v = hf
        hn = d.head_dim
        parts = [_group_rows(q, d, d.heads_per_group * hn, "q"), _group_rows(k, d, hn, "k"),
                 _group_rows(v, d, hn, "v")]
        fused = torch.cat(parts, dim=1)
        return fused.reshape(-1, *q.shape[1:])

    def to_hf(self, t, d):
        hn = d.head_dim
        per_group = (d.heads_per_group + 2) * hn
        g = _group_rows(t, d, per_group, "linear_qkv")
        q, k, v = torch.split(g, [d.heads_per_group * hn, hn, hn], dim=1)
        rest = t.shape[1:]
        return [q.reshape(-1, *rest).contiguous(), k.reshape(-1, *rest).contiguous(),
                v.reshape(-1, *rest).contiguous()]


class PackedQKV(Transform):
    """Baichuan2's ``W_pack`` = cat(q, k, v) along rows -> the grouped layout (via :class:`QKVFuse`)."""

    name = "packed_qkv"

    def to_mcore(self, hf, d):
        (w,) = hf
        hn = d.head_dim
        q_rows, kv_rows = d.num_query_groups * d.heads_per_group * hn, d.num_query_groups * hn
        if w.shape[0] != q_rows + 2 * kv_rows:
            raise ConvertError(f"W_pack has {w.shape[0]} rows; expected q+k+v = {q_rows + 2 * kv_rows}")
        return QKVFuse().to_mcore(torch.split(w, [q_rows, kv_rows, kv_rows], dim=0), d)

    def to_hf(self, t, d):
        return [torch.cat(QKVFuse().to_hf(t, d), dim=0)]


class GateUpFuse(Transform):
    """HF (gate_proj, up_proj) -> megatron's swiglu ``linear_fc1`` = cat(gate, up)."""

    name = "gate_up_fuse"

    def to_mcore(self, hf, d):
        gate, up = hf
        return torch.cat([gate, up], dim=0)

    def to_hf(self, t, d):
        if t.shape[0] % 2:
            raise ConvertError(f"linear_fc1 has an odd number of rows ({t.shape[0]}); expected cat(gate, up)")
        gate, up = torch.chunk(t, 2, dim=0)
        return [gate.contiguous(), up.contiguous()]


class PadVocab(Transform):
    """Embedding / output rows: zero rows appended up to megatron's padded vocabulary; removed on the way
    back (a checkpoint saved at any TP keeps its own padding, and only the first ``vocab_size`` rows are real)."""

    name = "pad_vocab"

    def to_mcore(self, hf, d):
        (t,) = hf
        return F.pad(t, (0, 0, 0, d.padded_vocab_size - t.shape[0]))

    def to_hf(self, t, d):
        if t.shape[0] < d.vocab_size:
            raise ConvertError(f"vocabulary rows: the checkpoint stores {t.shape[0]}, fewer than "
                               f"vocab_size={d.vocab_size}")
        return [t[: d.vocab_size].contiguous()]


IDENTITY = Identity()
QKV = QKVFuse()
PACKED_QKV = PackedQKV()
GATE_UP = GateUpFuse()
PAD_VOCAB = PadVocab()
