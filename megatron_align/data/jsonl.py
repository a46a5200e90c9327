"""Reading chat records from any data path (with file:line errors or counted skips) and tokenizing them. The file
types themselves are :mod:`megatron_align.data.sources`'s; the record formats :mod:`megatron_align.data.formats`'."""

from __future__ import annotations

import functools
from typing import Callable, Iterator, List, Optional, Tuple, TypeVar

import numpy as np

from megatron_align.data.config import ON_BAD_LINE_CHOICES
from megatron_align.data.errors import DataError
from megatron_align.data.samples import DataStats, has_target_after_first, overlong_action
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


def tokenize_conversation(template: ChatTemplate, conv: Conversation, seq_length: Optional[int] = None,
                          overlong: str = "truncate") -> Tuple[str, np.ndarray, np.ndarray, Optional[str]]:
    """(action, input_ids int64 [L], target_mask uint8 [L], category) of one conversation after the over-long
    policy: action is 'keep', 'truncate' (cut to seq_length), 'drop' (arrays then empty), 'nothing' (no token to
    train) or 'bad:<reason>' (the template cannot render the record)."""
    try:
        enc = template.encode_conversation(conv)
    except RecordError as exc:
        return f"bad:{exc}", np.zeros(0, np.int64), np.zeros(0, np.uint8), conv.category
    ids = np.asarray(enc.ids, dtype=np.int64)
    mask = np.asarray(enc.target_mask, dtype=np.uint8)
    if not has_target_after_first(mask, len(mask)):
        return "nothing", ids[:0], mask[:0], conv.category
    action = overlong_action(len(ids), seq_length, overlong)
    if action == "drop" or (action == "truncate" and not has_target_after_first(mask, seq_length)):
        return "drop", ids[:0], mask[:0], conv.category
    if action == "truncate":  # copies: a kept array never holds the untruncated buffer alive
        ids, mask = ids[:seq_length].copy(), mask[:seq_length].copy()
    return action, ids, mask, conv.category


def _tokenize_located(template: ChatTemplate, located: Tuple[int, Conversation], seq_length: Optional[int] = None,
                      overlong: str = "truncate"):
    loc, conv = located
    return (loc, *tokenize_conversation(template, conv, seq_length, overlong))


def iter_tokenized(path: str, template: ChatTemplate, stats: DataStats, seq_length: Optional[int] = None,
                   overlong: str = "truncate", on_bad_line: str = "error", record_format: str = "auto",
                   workers: int = 1) -> Iterator[Tuple[np.ndarray, np.ndarray, Optional[str]]]:
    """Tokenize the records of ``path`` with ``template`` and apply the over-long policy, counting in ``stats``.

    Yields (input_ids int64 [L], target_mask uint8 [L], category) with L <= seq_length, in file order. A record with
    nothing to train (every assistant turn flagged off or empty) is counted in ``n_nothing_to_train`` and skipped; a
    truncated sample left without any loss token is dropped (counted in ``n_dropped``). A record the template
    cannot render (tool calls for a family without a tool format) is a bad record (``file:line``). ``workers`` > 1
    tokenizes on that many processes (:func:`megatron_align.data.parallel.map_ordered`): the same samples, the
    same order."""
    from megatron_align.data.parallel import map_ordered

    skipped: List[int] = []
    convs = iter_conversations(path, on_bad_line, skipped, record_format)
    encode = functools.partial(_tokenize_located, template, seq_length=seq_length, overlong=overlong)
    for loc, action, ids, mask, category in map_ordered(encode, convs, workers):
        if action.startswith("bad:"):
            if on_bad_line == "error":
                raise DataError(path, loc, action[4:]) from None
            skipped.append(loc)
            continue
        if action == "nothing":
            stats.n_nothing_to_train += 1
            continue
        if action == "drop":
            stats.n_dropped += 1
            continue
        stats.n_truncated += action == "truncate"
        stats.n_samples += 1
        yield ids, mask, category
    stats.n_skipped_bad += len(skipped)


def __getattr__(name: str):
    """``JsonlChatDataset`` moved to :mod:`megatron_align.data.tokenized`; importable from here as before."""
    if name == "JsonlChatDataset":
        from megatron_align.data.tokenized import JsonlChatDataset

        return JsonlChatDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
