"""Greedy duplicate removal from confirmed pairs: keep the best, drop what is confirmed similar to a kept one.

Items are visited in priority order (file order for ``keep=first``; quality descending, then file order, for
``keep=quality``). An item not yet removed is kept and removes every not-yet-visited neighbour. So each removed
item is a confirmed duplicate of its own representative (no chaining A~B~C dropping C for A), and the outcome
depends only on the pairs and the order: deterministic.
"""

from __future__ import annotations

import numpy as np


def priority_order(quality: np.ndarray, keep: str) -> np.ndarray:
    n = len(quality)
    if keep == "first":
        return np.arange(n)
    return np.lexsort((np.arange(n), -quality.astype(np.float64)))


def greedy_dedup(n: int, pairs: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``rep`` int64 [n]: -1 for a kept item, else the kept item it duplicates."""
    rep = np.full(n, -1, dtype=np.int64)
    if len(pairs) == 0:
        return rep
    both = np.concatenate([pairs, pairs[:, ::-1]])
    both = both[np.lexsort((both[:, 1], both[:, 0]))]
    starts = np.searchsorted(both[:, 0], np.arange(n + 1))
    nbrs = both[:, 1]
    visited = np.zeros(n, dtype=bool)
    for i in order.tolist():
        if visited[i]:
            continue
        visited[i] = True
        a, b = starts[i], starts[i + 1]
        if a == b:
            continue
        js = nbrs[a:b]
        js = js[~visited[js]]
        visited[js] = True
        rep[js] = i
    return rep


def fold_counts(dup_count: np.ndarray, rep: np.ndarray) -> None:
    """Each removed item hands its own count + 1 to its representative (in place)."""
    gone = np.flatnonzero(rep >= 0)
    np.add.at(dup_count, rep[gone], dup_count[gone] + 1)
    dup_count[gone] = 0
