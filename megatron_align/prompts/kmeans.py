"""Multi-granularity spherical k-means (the report's layered clustering: coarse, then fine inside each coarse).

One level: ``k`` centroids trained on at most ``k * max_points_per_centroid`` rows sampled with the seed
(greedy k-means++ seeding, then ``niter`` Lloyd steps, best of ``n_init`` such runs with unit-norm centroids: faiss
``Kmeans(spherical=True)`` from that same seeding, or the numpy loop), then every row is assigned to its
nearest centroid in blocks. Labels are renumbered in order of first appearance, so a partition has one
labelling whatever backend or seeding found it. Level ``l + 1`` runs this inside every cluster of level ``l``
(``k = 0``: ``ceil(sqrt(n / 2))`` for a cluster of ``n`` rows); ids are global per level.
"""

from __future__ import annotations

import math
from typing import List

import numpy as np

from megatron_align.prompts.neighbors import resolve_backend
from megatron_align.prompts.progress import bar as progress_bar

BLOCK = 8192


def auto_k(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n / 2)))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding: each next seed is the best (lowest total squared distance) of
    ``2 + ln k`` candidates (1 candidate for k > 128, where this would cost too much) drawn with probability
    proportional to the squared distance to the nearest seed (``|a - b|^2 = 2 - 2 cos`` for unit rows).
    Returns float32 [k, d] unit rows."""
    trials = 2 + int(math.log(k)) if k <= 128 else 1
    chosen = [int(rng.integers(len(x)))]
    best = np.clip(2.0 - 2.0 * (x @ x[chosen[0]]), 0.0, None).astype(np.float64)
    for _ in range(1, k):
        total = float(best.sum())
        if total <= 0:
            cand = rng.integers(len(x), size=1)
        else:
            cand = rng.choice(len(x), size=trials, p=best / total)
        dists = np.clip(2.0 - 2.0 * (x[cand] @ x.T), 0.0, None)
        pots = np.minimum(dists, best[None, :]).sum(axis=1)
        pick = int(np.argmin(pots))
        chosen.append(int(cand[pick]))
        best = np.minimum(best, dists[pick])
    return x[chosen].copy()


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), BLOCK):
        out[s:s + BLOCK] = np.argmax(x[s:s + BLOCK].astype(np.float32) @ centroids.T, axis=1)
    return out


def _lloyd_numpy(x: np.ndarray, c: np.ndarray, niter: int) -> np.ndarray:
    for _ in range(niter):
        labels = assign(x, c)
        sums = np.zeros_like(c)
        np.add.at(sums, labels, x)
        counts = np.bincount(labels, minlength=len(c))
        for e in np.flatnonzero(counts == 0):  # empty: split the largest cluster (a perturbed copy)
            big = int(np.argmax(counts))
            sums[e] = sums[big] * (1 + 1e-3)
            counts[e] = counts[big]
        c = _unit(sums).astype(np.float32)
    return c


def _lloyd_faiss(x: np.ndarray, c: np.ndarray, niter: int, seed: int) -> np.ndarray:
    import faiss

    km = faiss.Kmeans(x.shape[1], len(c), niter=niter, spherical=True, seed=seed, verbose=False,
                      max_points_per_centroid=max(1, len(x)), min_points_per_centroid=1)
    km.train(np.ascontiguousarray(x), init_centroids=np.ascontiguousarray(c))
    return np.asarray(km.centroids, dtype=np.float32)


def canonical(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0, 1, ... in order of first appearance."""
    _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inv.reshape(-1)]


def spherical_kmeans(x: np.ndarray, k: int, *, niter: int = 20, seed: int = 0, max_points_per_centroid: int = 256,
                     n_init: int = 3, backend: str = "auto") -> np.ndarray:
    """Canonical labels int64 [n] of ``k`` spherical k-means clusters of the unit rows ``x``: the best of
    ``n_init`` seedings by the k-means objective (the sum of each sampled row's cosine to its centroid)."""
    n = len(x)
    k = min(k, n)
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    m = min(n, k * max_points_per_centroid)
    sample = np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)
    xs = np.asarray(x[sample], dtype=np.float32)
    use_faiss = resolve_backend(backend) == "faiss"
    best, best_obj = None, -np.inf
    for _ in range(n_init):
        c = kmeanspp(xs, k, rng)
        c = _lloyd_faiss(xs, c, niter, seed) if use_faiss else _lloyd_numpy(xs, c, niter)
        obj = float(np.max(xs @ c.T, axis=1).sum())
        if obj > best_obj + 1e-6 * abs(best_obj if np.isfinite(best_obj) else 0.0):
            best, best_obj = c, obj
    return canonical(assign(x, best))


def hierarchical(x: np.ndarray, levels: List[int], *, niter: int = 20, seed: int = 0,
                 max_points_per_centroid: int = 256, n_init: int = 3, backend: str = "auto",
                 progress: bool = False) -> np.ndarray:
    """int64 [n, len(levels)]: the cluster id of each row at each level (level ids global, canonical)."""
    n = len(x)
    out = np.zeros((n, len(levels)), dtype=np.int64)
    parents = [np.arange(n)]
    for lvl, k in enumerate(levels):
        nxt, base = [], 0
        for members in progress_bar(progress, iterable=parents, desc=f"cluster level {lvl + 1}", unit="cluster"):
            kk = k if k > 0 else auto_k(len(members))
            labels = spherical_kmeans(x[members], kk, niter=niter, seed=seed + lvl, backend=backend,
                                      max_points_per_centroid=max_points_per_centroid, n_init=n_init)
            out[members, lvl] = labels + base
            n_clusters = int(labels.max()) + 1 if len(labels) else 0
            order = np.argsort(labels, kind="stable")
            bounds = np.searchsorted(labels[order], np.arange(n_clusters + 1))
            nxt.extend(members[order[bounds[c]:bounds[c + 1]]] for c in range(n_clusters))
            base += n_clusters
        parents = nxt
    return out
