"""Reading chat records from any data path (with file:line errors or counted skips) and the in-memory tokenized
dataset. The file types themselves are :mod:`megatron_align.data.sources`'s."""

from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Tuple, TypeVar

import numpy as np

from megatron_align.data.config import ON_BAD_LINE_CHOICES
from megatron_align.data.errors import DataError
from megatron_align.data.samples import (ChatDataset, DataStats, Sample, has_target_after_first,
                                         overlong_action)
from megatron_align.data.schema import Conversation, RecordError
from megatron_align.data.sources import BadRecord, iter_source
from megatron_align.data.templates import ChatTemplate

T = TypeVar("T")


def iter_records(path: str, parse: Callable[[object], T], on_bad_line: str = "error",
                 skipped: Optional[List[int]] = None) -> Iterator[Tuple[int, T]]:
    """Yield (location, parse(decoded JSON)) for each record behind ``path``: any file type of
    :mod:`megatron_align.data.sources` (JSONL, compressed, JSON arrays, Parquet/Arrow, save_to_disk directories,
    directories and globs of shards). The location is an int (line, or Parquet/Arrow row) that names its own file.

    Blank lines carry no record and are passed over. A bad record (not JSON, or ``parse`` raises
    ``ValueError(reason)``) raises ``DataError(file:line: reason)`` or, with ``on_bad_line="skip"``, is skipped and
    its location appended to ``skipped``. A missing path, no records at all and no valid record raise ``DataError``.
    """
    if on_bad_line not in ON_BAD_LINE_CHOICES:
        raise ValueError(f"on_bad_line must be one of {ON_BAD_LINE_CHOICES}, got {on_bad_line!r}")
    if not isinstance(path, str):
        raise DataError(str(path), None, "a mixture (a list of datasets) is not read here: this command reads one "
                                         "data path")
    skipped = [] if skipped is None else skipped
    n_good = n_records = 0
    for loc, obj in iter_source(path):
        n_records += 1
        try:
            if isinstance(obj, BadRecord):
                raise ValueError(obj.reason)
            record = parse(obj)
        except ValueError as exc:
            if on_bad_line == "error":
                raise DataError(path, loc, str(exc)) from None
            skipped.append(loc)
            continue
        n_good += 1
        yield loc, record
    if n_records == 0:
        raise DataError(path, None, "file is empty (no records)")
    if n_good == 0:
        raise DataError(path, None, f"no valid record: all {n_records} records were bad and skipped")


def iter_conversations(path: str, on_bad_line: str = "error", skipped: Optional[List[int]] = None,
                       record_format: str = "auto") -> Iterator[Tuple[int, Conversation]]:
    """Yield (line number, Conversation) for each chat record of a file, whatever its chat record format
    (detected from the first valid record, or ``record_format``; see :mod:`megatron_align.data.formats`)."""
    from megatron_align.data.formats import RecordReader

    return iter_records(path, RecordReader(("chat",), record_format), on_bad_line, skipped)


def iter_tokenized(path: str, template: ChatTemplate, stats: DataStats, seq_length: Optional[int] = None,
                   overlong: str = "truncate", on_bad_line: str = "error", record_format: str = "auto"
                   ) -> Iterator[Tuple[np.ndarray, np.ndarray, Optional[str]]]:
    """Tokenize the records of ``path`` with ``template`` and apply the over-long policy, counting in ``stats``.

    Yields (input_ids int64 [L], target_mask uint8 [L], category) with L <= seq_length. A record with nothing to
    train (every assistant turn flagged off or empty) is counted in ``n_nothing_to_train`` and skipped; a
    truncated sample left without any loss token is dropped (counted in ``n_dropped``). A record the template
    cannot render (tool calls for a family without a tool format) is a bad record (``file:line``)."""
    skipped: List[int] = []
    for lineno, conv in iter_conversations(path, on_bad_line, skipped, record_format):
        try:
            enc = template.encode_conversation(conv)
        except RecordError as exc:
            if on_bad_line == "error":
                raise DataError(path, lineno, str(exc)) from None
            skipped.append(lineno)
            continue
        ids = np.asarray(enc.ids, dtype=np.int64)
        mask = np.asarray(enc.target_mask, dtype=np.uint8)
        if not has_target_after_first(mask, len(mask)):
            stats.n_nothing_to_train += 1
            continue
        action = overlong_action(len(ids), seq_length, overlong)
        if action == "drop" or (action == "truncate" and not has_target_after_first(mask, seq_length)):
            stats.n_dropped += 1
            continue
        if action == "truncate":
            ids, mask = ids[:seq_length], mask[:seq_length]
            stats.n_truncated += 1
        stats.n_samples += 1
        yield ids, mask, conv.category
    stats.n_skipped_bad += len(skipped)


class JsonlChatDataset(ChatDataset):
    """A chat JSONL file, tokenized in memory at construction (small and medium corpora)."""

    def __init__(self, path: str, template: ChatTemplate, seq_length: Optional[int] = None,
                 overlong: str = "truncate", on_bad_line: str = "error", record_format: str = "auto") -> None:
        self.path = path
        self.stats = DataStats()
        self._items = list(iter_tokenized(path, template, self.stats, seq_length, overlong, on_bad_line,
                                          record_format))
        self.lengths = np.asarray([len(ids) for ids, _, _ in self._items], dtype=np.int64)

    def __getitem__(self, idx: int) -> Sample:
        ids, mask, category = self._items[idx]
        return Sample(int(idx), ids, mask, category)
