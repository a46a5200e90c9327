"""Prompt records in, append-only results out.

An input line holds its prompt in ``prompt`` (a string or chat messages), ``messages`` (chat messages ending with
the user turn PAS works on) or ``text``, as `prompts select` reads and writes them; every other field is kept. Each prompt has a stable id: the ``id_field`` of the line when present, else a hash of the
prompt. Results are appended one line per prompt and flushed, so a killed run loses at most the batch in flight;
a re-run skips every id already in the output (or in the dropped ledger) and repairs a half-written last line.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Set

from megatron_align.errors import UserError


class PasInputError(UserError, ValueError):
    """A file this tool cannot resume from; the message names ``file:line``."""


@dataclass
class PromptRecord:
    """One input line: its id, the prompt text PAS works on (the last user turn) and the line as read."""

    id: str
    prompt: str
    raw: Dict[str, Any]
    where: str
    category: Optional[str] = None


def prompt_id(prompt_or_messages: Any) -> str:
    """A stable id from the prompt itself: sha1 of its canonical JSON, 16 hex digits."""
    blob = json.dumps(prompt_or_messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


#: where a line holds its prompt, in order of preference (`prompts select` reads the same fields)
PROMPT_FIELDS = ("prompt", "messages", "text")


def prompt_field(rec: Any) -> str:
    """The field holding the prompt: ``prompt`` (a string or chat messages), ``messages`` or ``text``."""
    if not isinstance(rec, dict):
        raise ValueError("expected a JSON object")
    for key in PROMPT_FIELDS:
        if key in rec:
            return key
    raise ValueError("expected an object with `prompt`, `messages` or `text`")


def _prompt_of(rec: Any) -> str:
    """The prompt text of a decoded line (of chat messages: the last turn, a user turn); ``ValueError(reason)``
    names the field (the reader adds file:line)."""
    key = prompt_field(rec)
    value = rec[key]
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"field `{key}` must not be empty")
        return value
    if key == "text":
        raise ValueError("field `text` must be a non-empty string")
    if not isinstance(value, list) or not value or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        raise ValueError(f"field `{key}` must be a non-empty string or a non-empty list of {{role, content}} strings")
    if value[-1]["role"] != "user" or not value[-1]["content"].strip():
        raise ValueError(f"field `{key}` must end with a non-empty user turn (the prompt)")
    return value[-1]["content"]


def read_prompts(path: str, id_field: Optional[str] = "id", category_field: Optional[str] = "category"
                 ) -> List[PromptRecord]:
    """Every record of ``path``; a malformed line raises a DataError naming ``path:line`` and the field."""
    from megatron_align.data.jsonl import iter_records

    def parse(rec: Any) -> PromptRecord:
        prompt = _prompt_of(rec)
        if id_field and id_field in rec:
            rid = rec[id_field]
            if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid) == "":
                raise ValueError(f"field `{id_field}` must be a non-empty string or an integer")
            rid = str(rid)
        else:
            rid = prompt_id(rec[prompt_field(rec)])
        cat = rec.get(category_field) if category_field else None
        return PromptRecord(rid, prompt, rec, "", cat if isinstance(cat, str) else None)

    out = []
    for loc, r in iter_records(path, parse):
        r.where = loc.where() if hasattr(loc, "where") else f"{path}:{loc}"  # a line (or a row of other sources)
        out.append(r)
    return out


def unique_by_id(records: Iterable[PromptRecord]) -> tuple:
    """(first record of each id, number of later duplicates): a prompt is never generated twice."""
    seen: Set[str] = set()
    kept, dups = [], 0
    for r in records:
        if r.id in seen:
            dups += 1
            continue
        seen.add(r.id)
        kept.append(r)
    return kept, dups


@dataclass
class AppendLog:
    """A JSONL file appended one record per prompt; ``done`` holds the ids already in it."""

    path: str
    id_key: str = "id"
    writable: bool = True  # False: read only (ranks that do not write leave a partial last line alone)
    done: Set[str] = field(default_factory=set)
    repaired_bytes: int = 0

    def __post_init__(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            data = f.read()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):  # a run killed mid-write: drop the partial last line
            self.repaired_bytes = len(data) - cut
            if self.writable:
                with open(self.path, "r+b") as f:
                    f.truncate(cut)
            data = data[:cut]
        for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                self.done.add(str(json.loads(line)[self.id_key]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise PasInputError(f"{self.path}:{lineno}: not a record of this tool (no `{self.id_key}`); "
                                    f"resume needs the output of an earlier run or a new path") from None

    def append(self, records: List[Dict[str, Any]]) -> None:
        if not records:
            return
        if not self.writable:
            raise RuntimeError(f"{self.path} was opened read-only")
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done.update(str(r[self.id_key]) for r in records)
