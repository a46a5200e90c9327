"""Diversity sampling across the cluster hierarchy, with optional per-category quotas.

The budget is shared among the clusters of level 1 by water-filling: every cluster gets an equal share,
capped by its size; what a small cluster cannot use goes to the others; a remainder smaller than the number of
open clusters goes one each to the largest open clusters (ties: lower id). Inside each cluster the same is done
across its level-2 clusters, and so on; inside a finest cluster the highest quality prompts are taken (ties:
file order). So a small topic is kept whole before a big topic loses anything, and the result depends only on
the partition, the qualities and the budget: deterministic.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np


def water_fill(sizes: np.ndarray, budget: int) -> np.ndarray:
    """int64 allocation with ``alloc <= sizes``, ``sum = min(budget, sizes.sum())``, as even as the caps allow."""
    sizes = np.asarray(sizes, dtype=np.int64)
    alloc = np.zeros_like(sizes)
    left = int(min(budget, sizes.sum()))
    while left > 0:
        open_ = np.flatnonzero(alloc < sizes)
        share = left // len(open_)
        if share == 0:
            pick = open_[np.lexsort((open_, -sizes[open_]))][:left]
            alloc[pick] += 1
            break
        give = np.minimum(sizes[open_] - alloc[open_], share)
        alloc[open_] += give
        left -= int(give.sum())
    return alloc


def spread_select(members: np.ndarray, clusters: np.ndarray, quality: np.ndarray, budget: int,
                  level: int = 0) -> np.ndarray:
    """``budget`` of ``members`` (indices into ``clusters`` [n, L] and ``quality`` [n]) spread over the levels."""
    if budget <= 0 or len(members) == 0:
        return np.zeros(0, dtype=np.int64)
    if budget >= len(members):
        return np.sort(members)
    if level == clusters.shape[1]:
        order = np.lexsort((members, -quality[members].astype(np.float64)))
        return np.sort(members[order[:budget]])
    labels = clusters[members, level]
    order = np.argsort(labels, kind="stable")
    ids, starts = np.unique(labels[order], return_index=True)
    bounds = np.r_[starts, len(members)]
    alloc = water_fill(np.diff(bounds), budget)
    parts = [spread_select(members[order[bounds[g]:bounds[g + 1]]], clusters, quality, int(alloc[g]), level + 1)
             for g in range(len(ids)) if alloc[g] > 0]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def select_with_quotas(clusters: np.ndarray, quality: np.ndarray, target: int, categories: Optional[np.ndarray],
                       quotas: Dict[int, int]) -> np.ndarray:
    """Indices selected: each quota category its quota (capped), the unlisted categories share the rest."""
    n = len(quality)
    if not quotas or categories is None:
        return spread_select(np.arange(n), clusters, quality, target)
    picked: List[np.ndarray] = []
    for code, quota in sorted(quotas.items()):
        picked.append(spread_select(np.flatnonzero(categories == code), clusters, quality, quota))
    used = int(sum(len(p) for p in picked))
    rest = np.flatnonzero(~np.isin(categories, list(quotas)))
    picked.append(spread_select(rest, clusters, quality, max(0, target - used)))
    return np.sort(np.concatenate(picked))
