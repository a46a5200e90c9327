"""The in-memory tokenized dataset: a chat JSONL file tokenized at construction (small corpora, test references).

Training runs open a JSONL file through the tokenization cache instead (:mod:`megatron_align.data.token_cache`):
tokenized once, stored in the indexed format, memory-mapped by every rank.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from megatron_align.data.jsonl import iter_tokenized
from megatron_align.data.samples import ChatDataset, DataStats, Sample
from megatron_align.data.templates import ChatTemplate


class JsonlChatDataset(ChatDataset):
    """A chat JSONL file, tokenized in memory at construction; token ids in the smallest dtype of the vocabulary."""

    def __init__(self, path: str, template: ChatTemplate, seq_length: Optional[int] = None,
                 overlong: str = "truncate", on_bad_line: str = "error", record_format: str = "auto") -> None:
        self.path = path
        self.stats = DataStats()
        dtype = np.uint16 if template.tok.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
        self._items = [(ids.astype(dtype), mask, category) for ids, mask, category in
                       iter_tokenized(path, template, self.stats, seq_length, overlong, on_bad_line,
                                      record_format)]
        self.lengths = np.asarray([len(ids) for ids, _, _ in self._items], dtype=np.int64)

    def __getitem__(self, idx: int) -> Sample:
        ids, mask, category = self._items[idx]
        return Sample(int(idx), ids.astype(np.int64), mask, category)

    def category_names(self) -> List[str]:
        return sorted({c for _, _, c in self._items if c is not None})
