"""Pairs of rows whose cosine is >= a threshold, exact or approximate, with faiss or numpy.

Rows are unit vectors (float16 or float32). Candidates come from a range search at ``threshold - margin``
and every candidate is confirmed by its exact float32 cosine, so the backends agree wherever their candidate
sets do (always for ``exact``). Backends:

- ``numpy`` exact: blocks of rows against all later rows (``O(N^2 d)``; fine to a few 10k prompts).
- ``faiss`` exact: ``IndexFlatIP.range_search`` in query blocks.
- ``faiss`` ``ivf``: ``IndexIVFScalarQuantizer`` (fp16 codes, ``nlist = 4 sqrt(N)`` inverted lists trained on a
  sample, ``nprobe`` lists visited per query): memory ``2 d`` bytes per row besides our own matrix; a
  duplicate pair whose rows fall in lists not probed is missed (recall ~1 at nprobe 16 for near-duplicates,
  which sit close to the same centroid).
"""

from __future__ import annotations

import math
import numpy as np

from megatron_align.errors import UserError
from megatron_align.prompts.progress import bar as progress_bar

MARGIN = 1e-2  # candidates are searched this far below the threshold, then confirmed exactly
BLOCK = 2048


def have_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "faiss" if have_faiss() else "numpy"
    if backend == "faiss" and not have_faiss():
        raise UserError("backend=faiss but faiss is not installed (pip install faiss-cpu, or use backend=numpy)")
    return backend


def exact_cosines(x: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    out = np.empty(len(pairs), dtype=np.float32)
    for s in range(0, len(pairs), 1 << 16):
        p = pairs[s:s + (1 << 16)]
        out[s:s + len(p)] = np.einsum("ij,ij->i", x[p[:, 0]].astype(np.float32), x[p[:, 1]].astype(np.float32))
    return out


def _numpy_candidates(x: np.ndarray, radius: float, progress) -> np.ndarray:
    found = []
    for s in range(0, len(x), BLOCK):
        progress.update(min(BLOCK, len(x) - s))
        q = x[s:s + BLOCK].astype(np.float32)
        for t in range(s, len(x), BLOCK):
            sims = q @ x[t:t + BLOCK].astype(np.float32).T
            i, j = np.nonzero(sims >= radius)
            i, j = i + s, j + t
            keep = i < j
            found.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)


def _faiss_index(x: np.ndarray, index: str, nprobe: int, seed: int):
    import faiss

    d = x.shape[1]
    if index == "exact":
        idx = faiss.IndexFlatIP(d)
    else:
        nlist = max(1, min(int(4 * math.sqrt(len(x))), len(x) // 39))
        quantizer = faiss.IndexFlatIP(d)
        idx = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_fp16,
                                            faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(len(x), size=min(len(x), nlist * 40), replace=False))  # faiss wants >= 39
        idx.train(np.ascontiguousarray(x[sample], dtype=np.float32))
        idx.nprobe = min(nprobe, nlist)
    for s in range(0, len(x), 1 << 14):  # float32 copies of 16k rows at a time
        idx.add(np.ascontiguousarray(x[s:s + (1 << 14)], dtype=np.float32))
    return idx


def _faiss_candidates(x: np.ndarray, radius: float, index: str, nprobe: int, seed: int, progress) -> np.ndarray:
    idx = _faiss_index(x, index, nprobe, seed)
    found = []
    for s in range(0, len(x), BLOCK):
        progress.update(min(BLOCK, len(x) - s))
        lims, _, ids = idx.range_search(np.ascontiguousarray(x[s:s + BLOCK], dtype=np.float32), radius)
        lims = lims.astype(np.int64)
        rows = np.repeat(np.arange(s, s + len(lims) - 1), np.diff(lims))
        keep = rows < ids
        found.append(np.stack([rows[keep], ids[keep]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)


def cosine_pairs(x: np.ndarray, threshold: float, *, backend: str = "auto", index: str = "auto",
                 exact_max: int = 50000, nprobe: int = 16, seed: int = 0, progress: bool = False) -> np.ndarray:
    """int64 [m, 2] pairs (i < j) of rows of ``x`` with cosine >= ``threshold``, sorted."""
    if len(x) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    backend = resolve_backend(backend)
    if index == "auto":
        index = "exact" if len(x) <= exact_max else "ivf"
    if index == "ivf" and backend != "faiss":
        raise UserError("dedup.index=ivf needs faiss (pip install faiss-cpu); numpy searches exactly only")
    radius = threshold - MARGIN
    with progress_bar(progress, total=len(x), desc=f"near-dups ({backend} {index})", unit="prompt") as bar:
        cand = (_numpy_candidates(x, radius, bar) if backend == "numpy"
                else _faiss_candidates(x, radius, index, nprobe, seed, bar)).astype(np.int64)
    cand = cand[exact_cosines(x, cand) >= threshold]
    return np.unique(cand, axis=0) if len(cand) else np.zeros((0, 2), dtype=np.int64)
