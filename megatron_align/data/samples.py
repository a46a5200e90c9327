"""Tokenized samples, the over-long policy, and the stats every dataset and packer reports."""

from __future__ import annotations

import abc

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np


@dataclass
class Sample:
    """One tokenized document (a conversation, or prompt + one response). ``target_mask[i] == 1`` iff token i
    is a loss (assistant / response) token. ``role`` tells the documents of a :class:`Unit` apart (0 for SFT;
    0 = chosen, 1 = rejected in a preference pair; the index of the response in a GRPO group) and ``values``
    carries per-document numbers an objective reads (e.g. an absolute ``score``)."""

    sample_id: int
    input_ids: np.ndarray  # int64 [L]
    target_mask: np.ndarray  # uint8 [L]
    category: Optional[str] = None
    role: int = 0
    values: Dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class Unit:
    """What the sampler, the DP sharding and the packer move as one piece: documents that must share a micro-batch
    (an SFT sample: one; a preference pair: chosen and rejected; a GRPO group: the n responses of a prompt).
    A unit is never split across data-parallel ranks, micro-batches or (when packed) rows; the objective finds a
    document's partners by ``unit_id`` and ``role``, never by position."""

    unit_id: int
    docs: List[Sample]
    category: Optional[str] = None
    dataset: Optional[str] = None

    def __len__(self) -> int:
        return sum(len(d) for d in self.docs)


def as_unit(item) -> Unit:
    """A :class:`Sample` becomes a one-document unit (SFT); a unit stays as it is."""
    if isinstance(item, Unit):
        return item
    return Unit(item.sample_id, [item], item.category)


@dataclass
class DataStats:
    """Counts of a dataset build (and, once packed, the packer's token utilisation).

    n_samples: samples kept; n_truncated: kept after cutting to seq_length; n_dropped: over-long samples
    dropped (``overlong="drop"``, or truncated to no loss token at all); n_skipped_bad: malformed records
    skipped (``on_bad_line="skip"``); n_nothing_to_train: records with no trained token (every assistant turn
    flagged off by ``weight: 0`` / ``loss: false`` / ``training: false``, or empty), skipped; n_identical: preference pairs whose responses are identical (skipped); token_utilization: real tokens / (bins * seq_length), None before packing.
    """

    n_samples: int = 0
    n_truncated: int = 0
    n_dropped: int = 0
    n_skipped_bad: int = 0
    n_nothing_to_train: int = 0  # records with no loss token at all (skipped, never trained on an empty answer)
    n_identical: int = 0  # preference pairs whose two responses tokenize identically (skipped)
    token_utilization: Optional[float] = None
    n_bins: Optional[int] = None

    def as_dict(self) -> dict:
        return asdict(self)


def overlong_action(length: int, seq_length: Optional[int], overlong: str) -> str:
    """'keep', 'truncate' or 'drop' for a sample of ``length`` tokens."""
    if seq_length is None or length <= seq_length:
        return "keep"
    if overlong == "drop":
        return "drop"
    if overlong == "truncate":
        return "truncate"
    raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")


def has_target_after_first(target_mask: np.ndarray, length: int) -> bool:
    """True when some token at position 1..length-1 is a loss token (position 0 is never a label)."""
    return bool(np.any(target_mask[1:length]))


class ChatDataset(abc.ABC):
    """What the trainer sees, whatever the storage: ``len``, ``ds[i] -> Sample``, ``lengths``, ``stats``."""

    lengths: np.ndarray  # int64 [N], tokens per sample after the over-long policy
    stats: DataStats

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    @abc.abstractmethod
    def __getitem__(self, idx: int) -> Sample:
        """Sample ``idx`` (tokens, loss mask, category)."""

    def category_names(self) -> List[str]:
        """The sorted category names of the samples (for the per-category eval loss). This default reads every
        sample; datasets that store categories per document answer from that (no token data read)."""
        return sorted({s.category for s in self.get_samples(range(len(self))) if s.category is not None})

    def get_samples(self, ids: Sequence[int]) -> List[Sample]:
        return [self[int(i)] for i in ids]

    def get_units(self, ids: Sequence[int]) -> List[Unit]:
        """Items ``ids`` as units (what the packer takes); ``lengths`` are the units' total tokens."""
        return [as_unit(self[int(i)]) for i in ids]
