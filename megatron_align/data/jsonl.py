"""Reading chat JSONL (with file:line errors or counted skips) and tokenizing its records."""

from __future__ import annotations

import functools
import json
import os
from typing import Callable, Iterator, List, Optional, Tuple, TypeVar

import numpy as np

from megatron_align.data.config import ON_BAD_LINE_CHOICES
from megatron_align.data.errors import DataError
from megatron_align.data.samples import DataStats, has_target_after_first, overlong_action
from megatron_align.data.schema import Conversation, parse_record
from megatron_align.data.templates import ChatTemplate

T = TypeVar("T")



def iter_records(path: str, parse: Callable[[object], T], on_bad_line: str = "error",
                 skipped: Optional[List[int]] = None) -> Iterator[Tuple[int, T]]:
    """Yield (line number, parse(decoded JSON)) for each record of a JSONL file.

    Blank lines carry no record and are passed over. A bad record (``parse`` raises ``ValueError(reason)``)
    raises ``DataError(path:line: reason)`` or, with ``on_bad_line="skip"``, is skipped and its line number
    appended to ``skipped``. A missing file, an empty file and a file with no valid record raise ``DataError``.
    """
    if on_bad_line not in ON_BAD_LINE_CHOICES:
        raise ValueError(f"on_bad_line must be one of {ON_BAD_LINE_CHOICES}, got {on_bad_line!r}")
    if not os.path.exists(path):
        raise DataError(path, None, "no such file")
    if os.path.isdir(path):
        raise DataError(path, None, "is a directory, expected a JSONL file")
    skipped = [] if skipped is None else skipped
    n_good = n_records = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            n_records += 1
            try:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ValueError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"malformed JSON: {exc.msg} (column {exc.colno})") from None
                record = parse(obj)
            except ValueError as exc:
                if on_bad_line == "error":
                    raise DataError(path, lineno, str(exc)) from None
                skipped.append(lineno)
                continue
            n_good += 1
            yield lineno, record
    if n_records == 0:
        raise DataError(path, None, "file is empty (no JSONL records)")
    if n_good == 0:
        raise DataError(path, None, f"no valid record: all {n_records} records were bad and skipped")


def iter_conversations(path: str, on_bad_line: str = "error",
                       skipped: Optional[List[int]] = None) -> Iterator[Tuple[int, Conversation]]:
    """Yield (line number, Conversation) for each chat record of a JSONL file (see :func:`iter_records`)."""
    return iter_records(path, parse_record, on_bad_line, skipped)


def tokenize_conversation(template: ChatTemplate, conv: Conversation, seq_length: Optional[int] = None,
                          overlong: str = "truncate") -> Tuple[str, np.ndarray, np.ndarray, Optional[str]]:
    """(action, input_ids int64 [L], target_mask uint8 [L], category) of one conversation after the over-long
    policy: action is 'keep', 'truncate' (cut to seq_length) or 'drop' (arrays then empty)."""
    enc = template.encode(conv.messages)
    ids = np.asarray(enc.ids, dtype=np.int64)
    mask = np.asarray(enc.target_mask, dtype=np.uint8)
    action = overlong_action(len(ids), seq_length, overlong)
    if action == "drop" or (action == "truncate" and not has_target_after_first(mask, seq_length)):
        return "drop", ids[:0], mask[:0], conv.category
    if action == "truncate":  # copies: a kept array never holds the untruncated buffer alive
        ids, mask = ids[:seq_length].copy(), mask[:seq_length].copy()
    return action, ids, mask, conv.category


def iter_tokenized(path: str, template: ChatTemplate, stats: DataStats, seq_length: Optional[int] = None,
                   overlong: str = "truncate", on_bad_line: str = "error", workers: int = 1
                   ) -> Iterator[Tuple[np.ndarray, np.ndarray, Optional[str]]]:
    """Tokenize the records of ``path`` with ``template`` and apply the over-long policy, counting in ``stats``.

    Yields (input_ids int64 [L], target_mask uint8 [L], category) with L <= seq_length, in file order. A
    truncated sample left without any loss token is dropped (counted in ``n_dropped``). ``workers`` > 1 tokenizes
    on that many processes (:func:`megatron_align.data.parallel.map_ordered`): the same samples, the same order."""
    from megatron_align.data.parallel import map_ordered

    skipped: List[int] = []
    convs = (conv for _, conv in iter_conversations(path, on_bad_line, skipped))
    encode = functools.partial(tokenize_conversation, template, seq_length=seq_length, overlong=overlong)
    for action, ids, mask, category in map_ordered(encode, convs, workers):
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
