"""Prompt records of a JSONL file: the text of a line, streamed with byte offsets, and read back by offset.

A line is a JSON object with ``prompt`` (a string, or a list of chat messages), ``messages`` (the first user
turn is the prompt) or ``text``; every other field is kept and written back with the selection. Only the
offsets stay in memory between the passes; a selected line is read again from the file by its offset.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from megatron_align.data.jsonl import decode_json_line, iter_records_at

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
                 skipped: Optional[List[int]] = None) -> Iterator[Tuple[int, int, str, Dict[str, Any]]]:
    """Yield (line number, byte offset, prompt text, record) per valid line (errors: see iter_records_at)."""
    for lineno, offset, (text, obj) in iter_records_at(path, lambda o: (prompt_text(o), o), on_bad_line, skipped):
        yield lineno, offset, text, obj


def read_at(path: str, offsets: Iterable[int]) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """(offset, record) for the given byte offsets, in increasing offset order (one forward sweep)."""
    with open(path, "rb") as f:
        for off in sorted(set(int(o) for o in offsets)):
            f.seek(off)
            yield off, decode_json_line(f.readline())


def count_lines(path: str, block: int = 1 << 24) -> int:
    """Newline count (+1 for an unterminated last line): an upper bound of the records, to size arrays."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while True:
            buf = f.read(block)
            if not buf:
                break
            n += buf.count(b"\n")
            last = buf[-1:]
    return n + (last != b"\n")
