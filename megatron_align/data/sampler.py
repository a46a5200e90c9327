"""Which samples make each global step, and which data-parallel rank gets which of them.

A global batch is ``global_batch_size`` SAMPLES (conversations), not tokens nor sequences: the same global
batch gives the same loss whether it is packed or padded. Epoch e visits the samples in the order
``default_rng([seed, e]).permutation(N)`` (or 0..N-1 without shuffle); batches never straddle epochs.
"""

from __future__ import annotations

import heapq
import math
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np


class GlobalBatchSampler:
    """Yields one list of sample indices per global step; ``state_dict()`` resumes exactly.

    ``epochs`` (may be fractional: ceil(epochs * steps_per_epoch) steps) and/or ``max_steps`` bound the run
    (the earlier bound wins; neither means one epoch).
    ``drop_last``: drop an epoch's final partial batch (else it is yielded, smaller)."""

    def __init__(self, num_samples: int, global_batch_size: int, seed: int = 0, shuffle: bool = True,
                 epochs: Optional[float] = None, max_steps: Optional[int] = None, drop_last: bool = True) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        self.num_samples = int(num_samples)
        self.global_batch_size = int(global_batch_size)
        self.seed, self.shuffle, self.drop_last = int(seed), bool(shuffle), bool(drop_last)
        full, rem = divmod(self.num_samples, self.global_batch_size)
        self.steps_per_epoch = full if drop_last else full + (rem > 0)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{num_samples} samples make no full global batch of {global_batch_size} "
                             f"with drop_last; lower the global batch size or set drop_last=False")
        if epochs is None and max_steps is None:
            epochs = 1
        bounds = []
        if epochs is not None:
            bounds.append(int(math.ceil(float(epochs) * self.steps_per_epoch - 1e-9)))
        if max_steps is not None:
            bounds.append(int(max_steps))
        self.total_steps = min(bounds)
        self.epoch = 0
        self.consumed_in_epoch = 0
        self.step = 0
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    def epoch_order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            else:
                self._order = np.arange(self.num_samples)
            self._order_epoch = epoch
        return self._order

    def __len__(self) -> int:
        return self.total_steps

    @property
    def remaining_steps(self) -> int:
        return self.total_steps - self.step

    def __iter__(self) -> Iterator[List[int]]:
        while self.step < self.total_steps:
            if self.consumed_in_epoch >= self.num_samples or (
                    self.drop_last and self.consumed_in_epoch + self.global_batch_size > self.num_samples):
                self.epoch += 1
                self.consumed_in_epoch = 0
                continue
            order = self.epoch_order(self.epoch)
            batch = order[self.consumed_in_epoch:self.consumed_in_epoch + self.global_batch_size]
            self.consumed_in_epoch += len(batch)
            self.step += 1
            yield batch.tolist()

    def state_dict(self) -> Dict[str, int]:
        """Position after the batches yielded so far (save it once the step that used them is done)."""
        return {"epoch": self.epoch, "consumed_in_epoch": self.consumed_in_epoch, "step": self.step,
                "num_samples": self.num_samples, "global_batch_size": self.global_batch_size,
                "seed": self.seed, "shuffle": int(self.shuffle), "drop_last": int(self.drop_last)}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        for key in ("num_samples", "global_batch_size", "seed", "shuffle", "drop_last"):
            if key in state and int(state[key]) != int(getattr(self, key)):
                raise ValueError(f"sampler state mismatch on {key}: checkpoint has {state[key]}, "
                                 f"this run has {int(getattr(self, key))}; resuming would change the data order")
        self.epoch = int(state["epoch"])
        self.consumed_in_epoch = int(state["consumed_in_epoch"])
        self.step = int(state["step"])


def shard_for_rank(sample_ids: Sequence[int], dp_rank: int, dp_size: int,
                   lengths: Optional[Sequence[int]] = None) -> List[int]:
    """This rank's share of a global batch; the shares of ranks 0..dp_size-1 partition ``sample_ids``.

    Without ``lengths``: strided (``sample_ids[dp_rank::dp_size]``). With ``lengths`` (aligned with
    ``sample_ids``): balanced by tokens, longest first to the rank with the fewest tokens (ties: fewer
    samples, then lower rank), deterministic. The share keeps the global batch's order."""
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank {dp_rank} not in [0, {dp_size})")
    ids = list(sample_ids)
    if lengths is None:
        return ids[dp_rank::dp_size]
    if len(lengths) != len(ids):
        raise ValueError(f"lengths has {len(lengths)} entries for {len(ids)} sample ids")
    heap = [(0, 0, r) for r in range(dp_size)]
    mine: List[int] = []
    for pos in sorted(range(len(ids)), key=lambda p: (-int(lengths[p]), p)):
        load, count, rank = heapq.heappop(heap)
        if rank == dp_rank:
            mine.append(pos)
        heapq.heappush(heap, (load + int(lengths[pos]), count + 1, rank))
    return [ids[p] for p in sorted(mine)]

