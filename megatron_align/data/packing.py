"""Sample packing: best-fit decreasing into ``seq_length`` bins, and the per-bin tensors.

Labels convention (IGNORE_INDEX): inside a sample ``labels[i] = tokens[i+1]`` and
``loss_mask[i] = target_mask[i+1]`` (1 iff the next token is an assistant-loss token). The last position
of each sample and every padding position get ``labels = IGNORE_INDEX (-100)`` and ``loss_mask = 0``, so
no position ever predicts a token of another sample. Position ids restart at 0 at each sample start.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from megatron_align.data.samples import Sample

IGNORE_INDEX = -100


def pack_lengths(lengths: Sequence[int], capacity: int) -> List[List[int]]:
    """Best-fit decreasing: returns bins as lists of positions into ``lengths``; O(n log n) search.

    Items are placed longest first (ties by position, so the result is deterministic); each goes to the
    fullest bin that still fits it, found by bisecting a sorted list of (free space, bin) pairs.
    Raises ValueError if an item exceeds ``capacity``."""
    lens = np.asarray(lengths, dtype=np.int64)
    if lens.size and int(lens.max()) > capacity:
        raise ValueError(f"a sample of {int(lens.max())} tokens exceeds the bin capacity {capacity}; "
                         f"apply the over-long policy (truncate/drop) first")
    order = np.argsort(-lens, kind="stable")
    bins: List[List[int]] = []
    free: List[tuple] = []  # sorted (free_space, bin_index); full bins are removed
    for pos, length in zip(order.tolist(), lens[order].tolist()):
        k = bisect_left(free, (length, -1))
        if k == len(free):
            bins.append([pos])
            b, rem = len(bins) - 1, capacity - length
        else:
            space, b = free.pop(k)
            bins[b].append(pos)
            rem = space - length
        if rem > 0:
            insort(free, (rem, b))
    return bins


def token_utilization(lengths: Sequence[int], n_bins: int, capacity: int) -> float:
    """Real tokens / (bins * capacity)."""
    return float(np.sum(np.asarray(lengths, dtype=np.int64))) / float(max(n_bins, 1) * capacity)


@dataclass
class PackedRow:
    """One bin as tensors-to-be (numpy). ``cu_seqlens`` int32 [n_samples+1] excludes the padding tail."""

    tokens: np.ndarray  # int64 [S]
    labels: np.ndarray  # int64 [S]
    loss_mask: np.ndarray  # float32 [S]
    position_ids: np.ndarray  # int64 [S]
    sample_index: np.ndarray  # int64 [S]: index into the row's samples, -1 on padding
    cu_seqlens: np.ndarray  # int32 [n_samples+1]


def build_row(samples: Sequence[Sample], seq_length: int, pad_id: int = 0) -> PackedRow:
    """Lay ``samples`` out one after another in a row of ``seq_length`` tokens, right-padded."""
    tokens = np.full(seq_length, pad_id, dtype=np.int64)
    labels = np.full(seq_length, IGNORE_INDEX, dtype=np.int64)
    loss_mask = np.zeros(seq_length, dtype=np.float32)
    position_ids = np.zeros(seq_length, dtype=np.int64)
    sample_index = np.full(seq_length, -1, dtype=np.int64)
    cu = [0]
    start = 0
    for k, s in enumerate(samples):
        n = len(s)
        end = start + n
        if end > seq_length:
            raise ValueError(f"samples of {sum(len(x) for x in samples)} tokens do not fit in {seq_length}")
        tokens[start:end] = s.input_ids
        labels[start:end - 1] = s.input_ids[1:]
        loss_mask[start:end - 1] = s.target_mask[1:]
        position_ids[start:end] = np.arange(n)
        sample_index[start:end] = k
        cu.append(end)
        start = end
    if start < seq_length:  # padding tail: its own position run, so segment ids derive from positions
        position_ids[start:] = np.arange(seq_length - start)
    return PackedRow(tokens, labels, loss_mask, position_ids, sample_index, np.asarray(cu, dtype=np.int32))
