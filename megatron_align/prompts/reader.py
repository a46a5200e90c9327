"""Prompt records of a data file: the text of a record, streamed with its record number, and streamed again to
pick records by number.

A record is a JSON object with ``prompt`` (a string, or a list of chat messages), ``messages`` (the first user
turn is the prompt) or ``text``; every other field is kept and written back with the selection. The file is
read with :func:`megatron_align.data.jsonl.iter_records` (file:line errors, ``on_bad_line``), so every file
type the data layer reads works here too. Between the passes only record numbers stay in memory: the record
number of a line is its position among the records, bad ones included (row ``i`` of a precomputed
embeddings file belongs to record ``i``).
"""

from __future__ import annotations

from typing import Any, Container, Dict, Iterator, List, Optional, Tuple

from megatron_align.data.jsonl import iter_records

TEXT_FIELDS = ("prompt", "messages", "text")


def prompt_text(obj: Any) -> str:
    """The prompt of one record; ``ValueError(reason)`` when it has none."""
    if not isinstance(obj, dict):
        raise ValueError(f"record must be a JSON object, got {type(obj).__name__}")
    for key in TEXT_FIELDS:
        if key in obj:
            value = obj[key]
            text = value if isinstance(value, str) else _first_user_turn(value, key)
            if not isinstance(text, str):
                raise ValueError(f"'{key}' must be a string or a list of chat messages, got {type(value).__name__}")
            if not text.strip():
                raise ValueError(f"'{key}' is empty")
            return text
    raise ValueError(f"no prompt: expected one of {', '.join(repr(k) for k in TEXT_FIELDS)}")


def _first_user_turn(value: Any, key: str) -> Optional[str]:
    if not isinstance(value, list):
        return None
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or "role" not in msg:
            raise ValueError(f"'{key}'[{i}] must be an object with 'role' and 'content'")
        if msg["role"] == "user":
            content = msg.get("content")
            if not isinstance(content, str):
                raise ValueError(f"'{key}'[{i}].content must be a string")
            return content
    raise ValueError(f"'{key}' has no user turn")


def iter_prompts(path: str, on_bad_line: str = "error",
                 skipped: Optional[List[int]] = None) -> Iterator[Tuple[int, str, Dict[str, Any]]]:
    """Yield (record number, prompt text, record) per valid record; bad ones raise or are appended to
    ``skipped`` (see iter_records)."""
    skipped = [] if skipped is None else skipped
    n_valid = 0
    for _, (text, obj) in iter_records(path, lambda o: (prompt_text(o), o), on_bad_line, skipped):
        yield n_valid + len(skipped), text, obj
        n_valid += 1


def pick(path: str, records: Container[int], on_bad_line: str = "error"
         ) -> Iterator[Tuple[int, str, Dict[str, Any]]]:
    """Another pass: (record number, text, record) of the wanted record numbers, in file order."""
    for no, text, obj in iter_prompts(path, on_bad_line):
        if no in records:
            yield no, text, obj
