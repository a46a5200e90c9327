"""The chat record schema and its validation (one JSONL line = one record).

``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...], "category": optional str}``
Rules: ``messages`` is a non-empty list; a system message may only come first; at least one assistant turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Conversation:
    messages: Tuple[Tuple[str, str], ...]  # (role, content) pairs
    category: Optional[str] = None


def parse_record(obj: object) -> Conversation:
    """Validate a decoded JSON value; raise ``ValueError(reason)`` (the caller adds file:line)."""
    if not isinstance(obj, dict):
        raise ValueError(f"record must be a JSON object, got {type(obj).__name__}")
    if "messages" not in obj:
        raise ValueError("missing 'messages'")
    msgs = obj["messages"]
    if not isinstance(msgs, list):
        raise ValueError(f"'messages' must be a list, got {type(msgs).__name__}")
    if not msgs:
        raise ValueError("'messages' is empty")
    out: List[Tuple[str, str]] = []
    for k, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{k}] must be an object, got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"messages[{k}]: unknown role {role!r} (expected {', '.join(ROLES)})")
        content = m.get("content")
        if not isinstance(content, str):
            raise ValueError(f"messages[{k}]: content must be a string, got {type(content).__name__}")
        if role == "system" and k != 0:
            raise ValueError(f"messages[{k}]: a system message may only be the first message")
        out.append((role, content))
    if not any(role == "assistant" for role, _ in out):
        raise ValueError("conversation has no assistant turn (nothing to learn from)")
    category = obj.get("category")
    if category is not None and not isinstance(category, str):
        raise ValueError(f"'category' must be a string, got {type(category).__name__}")
    return Conversation(tuple(out), category)
