"""Chat data in megatron-core's indexed binary format (``<prefix>.bin`` / ``<prefix>.idx``), format v2.

Layout: one megatron *document* per sample made of two sequences, in this order:
  0. token ids                          (length L, the smallest dtype of the vocabulary: uint16 or int32)
  1. loss mask as bits (``np.packbits``, 1 = loss token; the ``target_mask`` of :class:`Sample`), padded to
     whole elements of the token dtype (length ceil(L / 8 / itemsize)): 1/16 of a uint16 mask
and two sidecars:
  ``<prefix>.docs.npy``   int32 [N, 2] per document: the first loss position after position 0 (L when there is
                          none; the over-long policy of a shorter run needs only this) and the category code
                          (index into ``categories`` of the meta, 0 = none). Opening a dataset reads this and
                          the .idx lengths, never the .bin.
  ``<prefix>.meta.json``  the format version, template, system prompt, tokenizer file and its sha256, the
                          seq_length/overlong policy used, the category names and the build stats.
Format v1 (PR 1's: a uint16-per-token mask in the .bin, no .docs.npy) is refused with "re-run preprocess".
megatron-core is imported only inside the functions that need it (it is slow to import).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from array import array
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from megatron_align.data.errors import DataError
from megatron_align.data.jsonl import iter_tokenized
from megatron_align.data.samples import ChatDataset, DataStats, Sample
from megatron_align.data.templates import ChatTemplate, build_template
from megatron_align.data.tokenizer import load_tokenizer

FORMAT = "megatron_align.chat.v2"
OLD_FORMATS = ("megatron_align.chat.v1",)
SEQS_PER_SAMPLE = 2
FILE_SUFFIXES = (".bin", ".idx", ".docs.npy", ".meta.json")  # the meta last: its presence marks a complete set


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
    """A preprocess output (any format version) at ``prefix``: .bin, .idx and .meta.json."""
    return all(os.path.isfile(prefix + ext) for ext in (".bin", ".idx", ".meta.json"))


def token_dtype(vocab_size: int):
    """The smallest dtype megatron's index stores that holds every id: uint16, else int32."""
    return _megatron_indexed().DType.optimal_dtype(vocab_size)


def pack_mask(mask: np.ndarray, dtype) -> np.ndarray:
    """A 0/1 mask as bits, padded to whole ``dtype`` elements and viewed as ``dtype`` (what the .bin stores)."""
    bits = np.packbits(mask != 0)
    itemsize = np.dtype(dtype).itemsize
    pad = -len(bits) % itemsize
    if pad:
        bits = np.concatenate([bits, np.zeros(pad, np.uint8)])
    return bits.view(dtype)


def packed_length(n_tokens: int, dtype) -> int:
    """Elements of ``dtype`` holding the bits of ``n_tokens`` mask entries."""
    return -(-(-(-n_tokens // 8)) // np.dtype(dtype).itemsize)


def first_target(mask: np.ndarray) -> int:
    """The first loss position after position 0 (position 0 is never a label), ``len(mask)`` when none."""
    if len(mask) < 2:
        return len(mask)
    i = int(np.argmax(mask[1:])) + 1
    return i if mask[i] else len(mask)


def write_indexed(docs: Iterable[Tuple[np.ndarray, np.ndarray, Optional[str]]], output_prefix: str, dtype,
                  meta: dict, stats: DataStats) -> None:
    """Write (ids, target_mask, category) documents as ``output_prefix``.{bin,idx,docs.npy,meta.json}; ``meta``
    gets ``format``, ``categories`` and ``stats`` (read once the stream, which fills them, is exhausted). Files are
        written under a unique temporary prefix and renamed into place (the meta last), so a reader never sees a
    partial set; an error removes the temporary files."""
    mi = _megatron_indexed()
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    tmp = f"{output_prefix}.tmp{os.getpid()}.{uuid.uuid4().hex[:8]}"
    builder = mi.IndexedDatasetBuilder(tmp + ".bin", dtype=dtype)
    categories: Dict[Optional[str], int] = {None: 0}
    per_doc = array("i")
    try:
        for ids, mask, category in docs:
            code = categories.setdefault(category, len(categories))
            bits = pack_mask(mask, dtype)
            builder.add_document(np.concatenate([ids.astype(dtype), bits]), [len(ids), len(bits)])
            per_doc.extend((first_target(mask), code))
        builder.finalize(tmp + ".idx")
        np.save(tmp + ".docs.npy", np.frombuffer(per_doc, dtype=np.int32).reshape(-1, 2))
        names = [c for c, _ in sorted(categories.items(), key=lambda kv: kv[1])]
        meta = dict(meta, format=FORMAT, stats=stats.as_dict(), categories=names)
        with open(tmp + ".meta.json", "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        for ext in FILE_SUFFIXES:  # publish only complete outputs, the meta last
            os.replace(tmp + ext, output_prefix + ext)
    finally:
        if not builder.data_file.closed:
            builder.data_file.close()
        for ext in FILE_SUFFIXES:
            if os.path.exists(tmp + ext):
                os.remove(tmp + ext)


def build_index(input_path: str, output_prefix: str, template: ChatTemplate, seq_length: Optional[int] = None,
                overlong: str = "truncate", on_bad_line: str = "error", workers: int = 1,
                extra_meta: Optional[dict] = None, record_format: str = "auto") -> DataStats:
    """Tokenize ``input_path`` with ``template`` (on ``workers`` processes, output identical for any number) and
    write the indexed dataset ``output_prefix``. Streams the input. Returns the build stats."""
    tok = template.tok
    stats = DataStats()
    docs = iter_tokenized(input_path, template, stats, seq_length, overlong, on_bad_line, record_format,
                          workers=workers)
    meta = {"template": template.name, "system_prompt": template.system_prompt,
            "tokenizer": os.path.abspath(tok.file), "tokenizer_sha256": file_sha256(tok.file),
            "seq_length": seq_length, "overlong": overlong, "source": os.path.abspath(input_path),
            "record_format": record_format}
    meta.update(extra_meta or {})
    write_indexed(docs, output_prefix, token_dtype(tok.vocab_size), meta, stats)
    return stats


def preprocess(input_jsonl: str, output_prefix: str, tokenizer_path: str, template: str,
               seq_length: Optional[int] = None, overlong: str = "truncate", on_bad_line: str = "error",
               system_prompt: Optional[str] = None, workers: int = 1, record_format: str = "auto") -> DataStats:
    """Tokenize a chat JSONL with the template named ``template`` and write ``output_prefix``.{bin,idx,docs.npy,
    meta.json} (see :func:`build_index`). ``seq_length`` (optional) applies the over-long policy at build time;
    the reader can apply a shorter one again."""
    tmpl = build_template(template, load_tokenizer(tokenizer_path), system_prompt)
    return build_index(input_jsonl, output_prefix, tmpl, seq_length, overlong, on_bad_line, workers,
                       record_format=record_format)


def read_meta(prefix: str) -> dict:
    if not index_exists(prefix):
        raise DataError(prefix, None, "no indexed chat dataset here (expected <prefix>.bin, .idx and "
                                      ".meta.json written by `megatron-align preprocess`)")
    try:
        with open(meta_path(prefix), encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(meta_path(prefix), None, f"corrupt meta ({exc}); re-run `megatron-align preprocess`") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt in OLD_FORMATS:
        raise DataError(meta_path(prefix), None, f"written in the older format {fmt} (a uint16 loss mask per token, "
                                                 f"no per-document index); re-run `megatron-align preprocess` to "
                                                 f"rebuild it as {FORMAT}")
    if fmt != FORMAT:
        raise DataError(meta_path(prefix), None, f"unknown format {fmt!r} (expected {FORMAT})")
    if not os.path.isfile(prefix + ".docs.npy"):
        raise DataError(prefix + ".docs.npy", None, "missing (an incomplete copy?); re-run `megatron-align preprocess`")
    return meta


def _open_checked(prefix: str):
    """megatron's IndexedDataset over ``prefix`` and the per-document sidecar, checked for truncation/corruption
    without reading the token data."""
    mi = _megatron_indexed()
    corrupt = "corrupt indexed dataset (truncated or overwritten files); re-run `megatron-align preprocess`"
    try:
        with open(prefix + ".idx", "rb") as f:  # megatron's reader asserts on a bad header (and warns in __del__)
            header = f.read(len(mi._INDEX_HEADER) + 8)
        if header[:len(mi._INDEX_HEADER)] != mi._INDEX_HEADER or len(header) < len(mi._INDEX_HEADER) + 8:
            raise ValueError("not a megatron index (.idx header)")
        ds = mi.IndexedDataset(prefix, mmap=True)
        docs = np.load(prefix + ".docs.npy", mmap_mode="r")
    except (AssertionError, ValueError, OSError, EOFError) as exc:
        raise DataError(prefix, None, f"{corrupt}: {exc}") from None
    index = ds.index
    n_seq = len(index.sequence_lengths)
    n_docs = n_seq // SEQS_PER_SAMPLE
    end = int(index.sequence_pointers[-1]) + int(index.sequence_lengths[-1]) * index.dtype_size if n_seq else 0
    if (n_seq % SEQS_PER_SAMPLE or len(index.document_indices) != n_docs + 1 or docs.shape != (n_docs, 2)
            or os.path.getsize(prefix + ".bin") != end):
        raise DataError(prefix, None, corrupt)
    return ds, docs


class IndexedChatDataset(ChatDataset):
    """Reader of :func:`write_indexed` output; samples are read lazily (mmap), one document's tokens per sample.

    ``seq_length``/``overlong`` re-apply the over-long policy for a run shorter than the build's, from the stored
    lengths and first loss positions only (no token data read at open)."""

    def __init__(self, prefix: str, seq_length: Optional[int] = None, overlong: str = "truncate") -> None:
        self.prefix = prefix
        self.meta = read_meta(prefix)
        self._ds, docs = _open_checked(prefix)
        self.categories: List[Optional[str]] = self.meta["categories"]
        self._dtype = self._ds.index.dtype
        stored = self._ds.index.sequence_lengths[0::SEQS_PER_SAMPLE].astype(np.int64)
        built = self.meta["stats"]
        self.stats = DataStats(n_truncated=built["n_truncated"], n_dropped=built["n_dropped"],
                               n_skipped_bad=built["n_skipped_bad"],
                               n_nothing_to_train=built.get("n_nothing_to_train", 0))
        self._codes = docs[:, 1]
        self._docs: Optional[np.ndarray] = None  # kept documents, None: all of them
        if seq_length is not None:
            if overlong not in ("truncate", "drop"):
                raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")
            over = stored > seq_length
            drop = over if overlong == "drop" else over & (docs[:, 0] >= seq_length)
            self.stats.n_dropped += int(drop.sum())
            self.stats.n_truncated += int((over & ~drop).sum())
            if drop.any():
                self._docs = np.flatnonzero(~drop)
                stored = stored[self._docs]
            stored = np.minimum(stored, seq_length)
        self.seq_length = seq_length
        self.lengths = stored
        self.stats.n_samples = len(stored)

    def _doc(self, idx: int) -> int:
        return int(idx) if self._docs is None else int(self._docs[idx])

    def __getitem__(self, idx: int) -> Sample:
        doc = self._doc(idx)
        n = int(self.lengths[idx])
        base = doc * SEQS_PER_SAMPLE
        ids = np.asarray(self._ds.get(base, length=n), dtype=np.int64)
        bits = np.asarray(self._ds.get(base + 1, length=packed_length(n, self._dtype))).view(np.uint8)
        mask = np.unpackbits(bits, count=n)
        return Sample(int(idx), ids, mask, self.categories[int(self._codes[doc])])

    def category_names(self) -> List[str]:
        codes = np.unique(self._codes if self._docs is None else self._codes[self._docs])
        return sorted(self.categories[int(c)] for c in codes if c != 0)
