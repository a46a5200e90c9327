"""``prompts select``: stream -> quality cut -> identical-text dedup -> embed + MinHash -> text dedup ->
embedding dedup -> layered clustering -> diversity sampling -> the selected lines, annotated.

Memory model (per prompt that passes the quality cut and is not an identical duplicate; texts are never kept):
the embedding row (``dim * 2`` bytes in float16, 768 B for MiniLM), the LSH band keys (``bands * 8``, 168 B by
default), record number, quality, category, duplicate count (~28 B), and one entry of the identical-text hash
table (~100 B): about 1.1 KB, so 1M prompts take ~1.1 GB; the peak, while near-duplicates are searched and
clusters trained, is ~4x the float16 matrix (a copy of the surviving rows, the faiss IVF index, the float32
k-means sample; docs/prompt-selection.md has the measured figures). Streamed chunks hold
``embedding.chunk_size`` texts. The MinHash stage streams the file again to read the texts of its candidate
pairs (exact Jaccard); the output pass streams it once more for the selected records.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, List

import numpy as np

from megatron_align.errors import UserError
from megatron_align.prompts.config import SelectConfig
from megatron_align.prompts.dedup import fold_counts, greedy_dedup, priority_order
from megatron_align.prompts.minhash import normalise
from megatron_align.prompts.progress import bar as progress_bar
from megatron_align.prompts.reader import iter_prompts, pick


@dataclass
class Summary:
    """Counts of one run; ``read = malformed + low_quality + exact_dups + near_dups + candidates`` and
    ``selected <= candidates``."""

    read: int = 0
    malformed: int = 0
    low_quality: int = 0
    exact_dups: int = 0
    near_dups: int = 0
    candidates: int = 0
    selected: int = 0
    embedder: str = ""
    clusters: List[int] = field(default_factory=list)
    out: str = ""
    seconds: Dict[str, float] = field(default_factory=dict)  # wall time per stage


class _Store:
    """Per-candidate arrays, grown by doubling; embeddings kept as the streamed chunks' row blocks."""

    def __init__(self, bands: int, cap: int = 1 << 14) -> None:
        self.n = 0
        self.record = np.zeros(cap, dtype=np.int64)
        self.quality = np.zeros(cap, dtype=np.float32)
        self.category = np.full(cap, -1, dtype=np.int32)
        self.dup_count = np.zeros(cap, dtype=np.int64)
        self.keys = np.zeros((cap, bands), dtype=np.uint64)
        self.emb_blocks: List[np.ndarray] = []  # block j holds the rows of candidates [starts[j], starts[j+1])

    _ARRAYS = ("record", "quality", "category", "dup_count", "keys")

    def append(self) -> int:
        if self.n == len(self.record):
            for name in self._ARRAYS:
                old = getattr(self, name)
                new = np.zeros((2 * len(old),) + old.shape[1:], dtype=old.dtype)
                if name == "category":
                    new.fill(-1)
                new[:len(old)] = old
                setattr(self, name, new)
        self.n += 1
        return self.n - 1

    def trim(self) -> None:
        for name in self._ARRAYS:
            setattr(self, name, getattr(self, name)[:self.n].copy())

    def rows(self, idx: np.ndarray, dtype) -> np.ndarray:
        """The embedding rows of candidates ``idx`` (sorted), as one matrix."""
        if not self.emb_blocks:
            return np.zeros((0, 1), dtype=dtype)
        starts = np.cumsum([0] + [len(b) for b in self.emb_blocks])
        parts = []
        for j, block in enumerate(self.emb_blocks):
            sel = idx[(idx >= starts[j]) & (idx < starts[j + 1])] - starts[j]
            parts.append(block[sel])
        return np.concatenate(parts)


def _category_code(obj: Dict[str, Any], field_name: str, codes: Dict[str, int]) -> int:
    value = obj.get(field_name)
    if value is None:
        return -1
    return codes.setdefault(str(value), len(codes))


def _stream(path: str, cfg: SelectConfig, scorer, embed_rows, hasher, summary: Summary,
            codes: Dict[str, int]) -> _Store:
    """Pass 1: read, score, drop low quality and identical texts, embed and MinHash the rest in chunks."""
    store = _Store(hasher.bands if hasher is not None else 0)
    seen: Dict[bytes, int] = {}
    keep_quality = cfg.dedup.keep == "quality"
    chunk_texts: List[str] = []
    chunk_idx: List[int] = []

    def flush() -> None:
        if not chunk_idx:
            return
        idx = np.asarray(chunk_idx)
        rows = embed_rows(chunk_texts, store.record[idx])
        if store.emb_blocks and rows.shape[1] != store.emb_blocks[0].shape[1]:
            raise UserError(f"embedding dimension changed from {store.emb_blocks[0].shape[1]} to {rows.shape[1]}")
        store.emb_blocks.append(rows.astype(cfg.embedding.dtype))
        if hasher is not None:
            store.keys[idx] = hasher.keys(chunk_texts)
        chunk_texts.clear()
        chunk_idx.clear()

    skipped: List[int] = []
    bar = progress_bar(cfg.progress, desc="read+embed", unit="prompt")
    n_valid = 0
    for record_no, text, obj in iter_prompts(path, cfg.on_bad_line, skipped):
        n_valid += 1
        bar.update(1)
        q = scorer(text, obj)
        if q < cfg.quality.min_quality:
            summary.low_quality += 1
            continue
        digest = hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=16).digest()
        first = seen.get(digest)
        if first is not None:
            summary.exact_dups += 1
            store.dup_count[first] += 1
            if keep_quality and q > store.quality[first]:  # an identical text that scores higher represents
                store.record[first], store.quality[first] = record_no, q
                store.category[first] = _category_code(obj, cfg.selection.category_field, codes)
            continue
        i = store.append()
        seen[digest] = i
        store.record[i], store.quality[i] = record_no, q
        store.category[i] = _category_code(obj, cfg.selection.category_field, codes)
        chunk_texts.append(text)
        chunk_idx.append(i)
        if len(chunk_idx) >= cfg.embedding.chunk_size:
            flush()
    flush()
    bar.close()
    summary.malformed = len(skipped)
    summary.read = n_valid + len(skipped)
    store.trim()
    return store


@contextmanager
def _timed(summary: Summary, stage: str):
    t0 = time.perf_counter()
    yield
    summary.seconds[stage] = round(summary.seconds.get(stage, 0.0) + time.perf_counter() - t0, 3)


def _texts_of(path: str, store: _Store, idx: np.ndarray, on_bad_line: str):
    """(candidate, text) of candidates ``idx``, from another pass over the file."""
    by_record = {int(store.record[i]): int(i) for i in idx}
    for no, text, _ in pick(path, by_record, on_bad_line):
        yield by_record[no], text


def _dedup_stage(alive_mask: np.ndarray, pairs: np.ndarray, store: _Store, keep: str) -> int:
    """Greedy-dedup the alive items over ``pairs`` (global indices), in place; returns how many were removed."""
    alive = np.flatnonzero(alive_mask)
    if len(pairs) == 0:
        return 0
    local = np.full(len(alive_mask), -1, dtype=np.int64)
    local[alive] = np.arange(len(alive))
    lp = local[pairs]
    lp = lp[(lp >= 0).all(axis=1)]
    rep = greedy_dedup(len(alive), lp, priority_order(store.quality[alive], keep))
    grep = np.where(rep >= 0, alive[np.maximum(rep, 0)], -1)
    full = np.full(len(alive_mask), -1, dtype=np.int64)
    full[alive] = grep
    fold_counts(store.dup_count, full)
    gone = alive[rep >= 0]
    alive_mask[gone] = False
    return len(gone)


def select_prompts(input_path: str, out_path: str, cfg: SelectConfig, base_dir: str = "") -> Summary:
    """Run the whole selection; writes ``out_path`` (atomically) and returns the counts."""
    from megatron_align.prompts.embed import PrecomputedEmbeddings, build_embedder
    from megatron_align.prompts.kmeans import hierarchical
    from megatron_align.prompts.minhash import BandHasher, candidate_pairs, confirm_pairs
    from megatron_align.prompts.neighbors import cosine_pairs
    from megatron_align.prompts.quality import QualityScorer
    from megatron_align.prompts.sample import select_with_quotas

    if os.path.abspath(input_path) == os.path.abspath(out_path):
        raise UserError(f"--out {out_path} is the input file")
    summary = Summary(out=out_path)
    scorer = QualityScorer(cfg.quality, base_dir)
    if cfg.embedding.embeddings:
        pre = PrecomputedEmbeddings(cfg.embedding.embeddings)
        summary.embedder = f"precomputed:{cfg.embedding.embeddings}"

        def embed_rows(texts, records):
            return pre.take(records)
    else:
        embedder = build_embedder(cfg.embedding)
        summary.embedder = embedder.name

        def embed_rows(texts, records):
            return embedder.embed(texts)
    d = cfg.dedup
    hasher = BandHasher(d.num_perm, d.lsh_threshold, d.shingle_size) if d.minhash else None
    codes: Dict[str, int] = {}
    with _timed(summary, "read_score_embed"):
        store = _stream(input_path, cfg, scorer, embed_rows, hasher, summary, codes)
    alive = np.ones(store.n, dtype=bool)

    if hasher is not None and store.n > 1:
        with _timed(summary, "minhash_dedup"):
            cand = candidate_pairs(store.keys)
            involved = np.unique(cand)
            pairs = confirm_pairs(cand, _texts_of(input_path, store, involved, cfg.on_bad_line), d.shingle_size,
                                  d.jaccard_threshold)
            summary.exact_dups += _dedup_stage(alive, pairs, store, d.keep)
    # from here on only the surviving rows: the line-count-sized matrix is released
    rows_of = np.flatnonzero(alive)
    x = store.rows(rows_of, cfg.embedding.dtype)
    store.emb_blocks = []
    if d.embedding and len(rows_of) > 1:
        with _timed(summary, "embedding_dedup"):
            pairs = cosine_pairs(x, d.threshold, backend=d.backend, index=d.index, exact_max=d.exact_max,
                                 nprobe=d.nprobe, seed=cfg.selection.seed, progress=cfg.progress)
            summary.near_dups += _dedup_stage(alive, rows_of[pairs] if len(pairs) else pairs, store, d.keep)

    idx = np.flatnonzero(alive)
    x = x[np.isin(rows_of, idx)]
    summary.candidates = len(idx)
    c = cfg.cluster
    with _timed(summary, "cluster"):
        clusters = hierarchical(x, list(c.levels), niter=c.niter, seed=cfg.selection.seed,
                                max_points_per_centroid=c.max_points_per_centroid, n_init=c.n_init,
                                backend=c.backend, progress=cfg.progress)
    summary.clusters = [int(clusters[:, lvl].max()) + 1 if len(idx) else 0 for lvl in range(clusters.shape[1])]
    s = cfg.selection
    target = len(idx) if s.target is None and s.fraction is None else (
        s.target if s.target is not None else int(round(s.fraction * len(idx))))
    quotas = {codes[k]: v for k, v in s.quotas.items() if k in codes}
    with _timed(summary, "sample_write"):
        picked = select_with_quotas(clusters, store.quality[idx], target, store.category[idx], quotas)
        summary.selected = len(picked)
        _write(input_path, out_path, store, idx[picked], clusters[picked], cfg.on_bad_line)
    return summary


def _write(input_path: str, out_path: str, store: _Store, chosen: np.ndarray, clusters: np.ndarray,
           on_bad_line: str) -> None:
    info = {int(store.record[i]): (i, clusters[k]) for k, i in enumerate(chosen)}
    parent = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{out_path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for no, _, obj in pick(input_path, info, on_bad_line):
                i, cl = info[no]
                obj = dict(obj)
                obj["cluster"] = [int(v) for v in cl]
                obj["quality"] = round(float(store.quality[i]), 6)
                obj["dup_count"] = int(store.dup_count[i])
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
