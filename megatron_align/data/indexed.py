"""Chat data in megatron-core's indexed binary format (``<prefix>.bin`` / ``<prefix>.idx``).

Layout: one megatron *document* per sample made of three sequences, in this order:
  0. token ids                       (length L)
  1. loss mask, 1 = assistant token   (length L, same dtype; the ``target_mask`` of :class:`Sample`)
  2. category code                   (length 1; index into ``categories`` of the sidecar, 0 = none)
A sidecar ``<prefix>.meta.json`` records the format version, template, system prompt, tokenizer file and
its sha256, the seq_length/overlong policy used, the category names and the build stats.
megatron-core is imported only inside the functions that need it (it is slow to import).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List, Optional

import numpy as np

from megatron_align.data.errors import DataError
from megatron_align.data.jsonl import iter_tokenized
from megatron_align.data.samples import (ChatDataset, DataStats, Sample, has_target_after_first,
                                         overlong_action)
from megatron_align.data.templates import build_template
from megatron_align.data.tokenizer import load_tokenizer

FORMAT = "megatron_align.chat.v1"
SEQS_PER_SAMPLE = 3


def _megatron_indexed():
    """megatron.core.datasets.indexed_dataset, imported on first use (its TE/Apex warnings are silenced once for
    the package: megatron_align/__init__.py)."""
    from megatron.core.datasets import indexed_dataset

    return indexed_dataset


def meta_path(prefix: str) -> str:
    return prefix + ".meta.json"


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def index_exists(prefix: str) -> bool:
    return all(os.path.isfile(prefix + ext) for ext in (".bin", ".idx", ".meta.json"))


def preprocess(input_jsonl: str, output_prefix: str, tokenizer_path: str, template: str,
               seq_length: Optional[int] = None, overlong: str = "truncate", on_bad_line: str = "error",
               system_prompt: Optional[str] = None) -> DataStats:
    """Tokenize a chat JSONL with ``template`` and write ``output_prefix``.{bin,idx,meta.json}.

    Streams the input (constant memory apart from the index). ``seq_length`` (optional) applies the
    over-long policy at build time; the reader can apply a shorter one again. Returns the build stats."""
    import torch

    mi = _megatron_indexed()

    tok = load_tokenizer(tokenizer_path)
    tmpl = build_template(template, tok, system_prompt)
    dtype = mi.DType.optimal_dtype(tok.vocab_size)
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    tmp_prefix = output_prefix + ".tmp"
    builder = mi.IndexedDatasetBuilder(tmp_prefix + ".bin", dtype=dtype)
    stats = DataStats()
    categories: Dict[Optional[str], int] = {None: 0}
    try:
        for ids, mask, category in iter_tokenized(input_jsonl, tmpl, stats, seq_length, overlong, on_bad_line):
            code = categories.setdefault(category, len(categories))
            builder.add_document(torch.from_numpy(np.concatenate([ids, mask.astype(np.int64), [code]])),
                                 [len(ids), len(ids), 1])
    except BaseException:
        builder.data_file.close()
        os.remove(tmp_prefix + ".bin")
        raise
    builder.finalize(tmp_prefix + ".idx")
    meta = {"format": FORMAT, "template": tmpl.name, "system_prompt": system_prompt,
            "tokenizer": os.path.abspath(tok.file), "tokenizer_sha256": file_sha256(tok.file),
            "seq_length": seq_length, "overlong": overlong, "source": os.path.abspath(input_jsonl),
            "categories": [c for c, _ in sorted(categories.items(), key=lambda kv: kv[1])],
            "stats": stats.as_dict()}
    with open(tmp_prefix + ".meta.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    for ext in (".bin", ".idx", ".meta.json"):  # publish only complete outputs
        os.replace(tmp_prefix + ext, output_prefix + ext)
    return stats


def read_meta(prefix: str) -> dict:
    if not index_exists(prefix):
        raise DataError(prefix, None, "no indexed chat dataset here (expected <prefix>.bin, .idx and "
                                      ".meta.json written by `megatron-align preprocess`)")
    with open(meta_path(prefix), encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise DataError(meta_path(prefix), None, f"unknown format {meta.get('format')!r} (expected {FORMAT})")
    return meta


class IndexedChatDataset(ChatDataset):
    """Reader of :func:`preprocess` output; samples are read lazily (mmap).

    ``seq_length``/``overlong`` re-apply the over-long policy for a run shorter than the build's."""

    def __init__(self, prefix: str, seq_length: Optional[int] = None, overlong: str = "truncate") -> None:
        self.prefix = prefix
        self.meta = read_meta(prefix)
        self._ds = _megatron_indexed().IndexedDataset(prefix, mmap=True)
        n_seq = len(self._ds)
        if n_seq % SEQS_PER_SAMPLE or len(self._ds.document_indices) != n_seq // SEQS_PER_SAMPLE + 1:
            raise DataError(prefix, None, f"corrupt index: {n_seq} sequences do not form "
                                          f"{SEQS_PER_SAMPLE}-sequence documents")
        self.categories: List[Optional[str]] = self.meta["categories"]
        stored = self._ds.sequence_lengths[0::SEQS_PER_SAMPLE].astype(np.int64)
        built = self.meta["stats"]
        self.stats = DataStats(n_truncated=built["n_truncated"], n_dropped=built["n_dropped"],
                               n_skipped_bad=built["n_skipped_bad"])
        keep = []
        for doc, length in enumerate(stored.tolist()):
            action = overlong_action(length, seq_length, overlong)
            if action == "truncate":
                mask = self._ds.get(doc * SEQS_PER_SAMPLE + 1, length=seq_length)
                action = "truncate" if has_target_after_first(mask, seq_length) else "drop"
            if action == "drop":
                self.stats.n_dropped += 1
                continue
            self.stats.n_truncated += action == "truncate"
            keep.append(doc)
        self._docs = np.asarray(keep, dtype=np.int64)
        self.seq_length = seq_length
        self.lengths = stored[self._docs] if seq_length is None else np.minimum(stored[self._docs], seq_length)
        self.stats.n_samples = len(keep)

    def __getitem__(self, idx: int) -> Sample:
        doc = int(self._docs[idx])
        n = int(self.lengths[idx])
        base = doc * SEQS_PER_SAMPLE
        ids = np.asarray(self._ds.get(base, length=n), dtype=np.int64)
        mask = np.asarray(self._ds.get(base + 1, length=n), dtype=np.uint8)
        code = int(self._ds.get(base + 2)[0])
        return Sample(int(idx), ids, mask, self.categories[code])
