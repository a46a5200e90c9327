"""The one conversation every record format normalises into, and the validation of chat messages.

A message (OpenAI / Hugging Face chat form)::

    {"role": "system"|"developer"|"user"|"assistant"|"tool"|"ipython",
     "content": "text" | [{"type": "text", "text": "..."}, ...] | null (an assistant turn with tool_calls),
     "name": optional str, "tool_calls": [{"type": "function", "function": {"name": str, "arguments": {..}|"json"}}],
     "tool_call_id": optional str,
     "weight": 0|1 | "loss": true|false | "training": true|false}      # per-turn loss flag (assistant turns)

Rules: a system message (``developer`` is read as ``system``: none of the built-in families has a developer
role; a checkpoint's own Jinja template that names the ``developer`` role gets it as written) may only come first; ``ipython`` is read as ``tool`` (Llama-3.1's name for it); a ``tool`` message follows
an assistant turn with ``tool_calls``; at least one assistant turn. Loss: an assistant turn is trained unless its
flag says otherwise; a tool-call turn's call text is trained like any assistant text; an assistant turn with no
text and no tool call is never trained (no training on an empty answer); other roles are never trained (a flag
``true`` on them is an error, ``false`` is what they are anyway).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple, Union

ROLES = ("system", "user", "assistant", "tool")
#: roles read as another one: OpenAI's ``developer`` (none of the families has it) and Llama-3.1's ``ipython``
ROLE_ALIASES = {"developer": "system", "ipython": "tool"}
#: per-turn loss flags: field -> how its value reads (``weight`` is OpenAI's fine-tuning convention)
LOSS_FLAGS = ("weight", "loss", "training")


class RecordError(ValueError):
    """A record the data cannot be trained from as written (the caller adds ``file:line``)."""


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: Any  # the decoded JSON arguments (an object), as the chat templates expect
    id: Optional[str] = None

    def as_openai(self) -> dict:
        out = {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        if self.id is not None:
            out["id"] = self.id
        return out


@dataclass(frozen=True)
class Message:
    """One turn. ``train``: the record's per-turn loss flag (None: the default rule, see :attr:`trained`)."""

    role: str
    content: str
    train: Optional[bool] = None
    tool_calls: Tuple[ToolCall, ...] = ()
    name: Optional[str] = None
    tool_call_id: Optional[str] = None
    written_role: Optional[str] = None  # the role as the record wrote it, when it was an alias (``developer``)

    @property
    def trained(self) -> bool:
        """True when this turn's text (and its end-of-turn token) is a loss target."""
        if self.role != "assistant" or self.train is False:
            return False
        return bool(self.content.strip() or self.tool_calls)

    def as_dict(self) -> dict:
        """The Hugging Face chat-template form (``tool_calls`` only when there are some)."""
        out = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.as_openai() for c in self.tool_calls]
        if self.name is not None:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


MessageLike = Union[Message, Tuple[str, str]]


def as_message(m: MessageLike) -> Message:
    """A :class:`Message`, or a ``(role, content)`` pair (the form tests and older callers use)."""
    return m if isinstance(m, Message) else Message(m[0], m[1])


@dataclass(frozen=True)
class Conversation:
    """What every chat record format becomes. ``text`` set: a raw-text record (all tokens trained, no template
    turns; ``messages`` empty). ``tools``: the function schemas offered to the model (OpenAI form)."""

    messages: Tuple[Message, ...]
    category: Optional[str] = None
    tools: Optional[Tuple[dict, ...]] = None
    text: Optional[str] = None


# ------------------------------------------------------------------------------------------------ field parsers
def text_content(value: Any, where: str) -> str:
    """A string, or OpenAI content parts ``[{"type": "text", "text": ...}, ...]`` joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        out = []
        for k, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RecordError(f"{where}: content[{k}]: only text parts {{\"type\": \"text\", \"text\": ...}} are "
                                  f"supported, got {kind!r}")
            out.append(part["text"])
        return "".join(out)
    raise RecordError(f"{where}: content must be a string or a list of text parts, got {type(value).__name__}")


def loss_flag(m: dict, where: str) -> Optional[bool]:
    """The per-turn loss flag of a message: ``weight`` 0/1, ``loss`` or ``training`` true/false (None: unset)."""
    found = {}
    for f in LOSS_FLAGS:
        if f not in m or m[f] is None:
            continue
        v = m[f]
        if f == "weight":
            if isinstance(v, bool) or v not in (0, 1):
                raise RecordError(f"{where}.weight: must be 0 or 1, got {v!r}")
            v = bool(v)
        elif not isinstance(v, bool):
            raise RecordError(f"{where}.{f}: must be true or false, got {v!r}")
        found[f] = v
    if len(set(found.values())) > 1:
        raise RecordError(f"{where}: loss flags disagree ({', '.join(f'{k}={v}' for k, v in found.items())})")
    return next(iter(found.values()), None)


def tool_arguments(value: Any, where: str) -> Any:
    if isinstance(value, str):  # OpenAI writes the arguments as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{where}: arguments is a string that is not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise RecordError(f"{where}: arguments must be a JSON object, got {type(value).__name__}")
    return value


def tool_call(value: Any, where: str) -> ToolCall:
    """``{"type": "function", "function": {"name", "arguments"}, "id"}`` or ``{"name", "arguments"}``."""
    if not isinstance(value, dict):
        raise RecordError(f"{where}: a tool call must be an object, got {type(value).__name__}")
    fn = value.get("function", value)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise RecordError(f"{where}: a tool call needs function.name (a non-empty string)")
    call_id = value.get("id")
    if call_id is not None and not isinstance(call_id, str):
        raise RecordError(f"{where}.id: must be a string, got {type(call_id).__name__}")
    return ToolCall(fn["name"], tool_arguments(fn.get("arguments", {}), f"{where}.function"), call_id)


def tools_field(value: Any, where: str = "tools") -> Optional[Tuple[dict, ...]]:
    """The function schemas: a list of objects (or that list as a JSON string, as LLaMA-Factory writes it)."""
    if value is None or value == [] or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RecordError(f"'{where}' is a string that is not valid JSON ({exc.msg})") from None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise RecordError(f"'{where}' must be a list of function schemas (objects)")
    return tuple(value)


def optional_str(obj: dict, field: str) -> Optional[str]:
    value = obj.get(field)
    if value is not None and not isinstance(value, str):
        raise RecordError(f"'{field}' must be a string, got {type(value).__name__}")
    return value


def parse_message(m: Any, where: str, default_role: Optional[str] = None) -> Message:
    """One message object in OpenAI / Hugging Face form (see the module doc)."""
    if not isinstance(m, dict):
        raise RecordError(f"{where} must be an object, got {type(m).__name__}")
    written = m.get("role", default_role)
    role = ROLE_ALIASES.get(written, written)
    if role not in ROLES:
        raise RecordError(f"{where}: unknown role {m.get('role')!r} (expected {', '.join(ROLES)}, "
                          f"or {', '.join(ROLE_ALIASES)})")
    calls = m.get("tool_calls") or []
    if not isinstance(calls, list):
        raise RecordError(f"{where}.tool_calls: must be a list, got {type(calls).__name__}")
    if calls and role != "assistant":
        raise RecordError(f"{where}.tool_calls: only an assistant turn may call tools (role {role!r})")
    content = m.get("content")
    if content is None and (calls or role == "assistant" and "tool_calls" in m):
        content = ""
    content = text_content(content, where)
    flag = loss_flag(m, where)
    if flag is True and role != "assistant":
        raise RecordError(f"{where}: a loss flag can only turn training on for assistant turns (role {role!r})")
    for f in ("name", "tool_call_id"):
        if m.get(f) is not None and not isinstance(m[f], str):
            raise RecordError(f"{where}.{f}: must be a string, got {type(m[f]).__name__}")
    return Message(role, content, flag, tuple(tool_call(c, f"{where}.tool_calls[{k}]") for k, c in enumerate(calls)),
                   m.get("name"), m.get("tool_call_id"), written if written != role else None)


def parse_messages(value: Any, field: str, default_role: Optional[str] = None) -> Tuple[Message, ...]:
    """A string (one ``default_role`` message) or a non-empty list of message objects."""
    if isinstance(value, str) and default_role is not None:
        return (Message(default_role, value),)
    if not isinstance(value, list):
        raise RecordError(f"'{field}' must be {'a string or ' if default_role else ''}a list of messages, "
                          f"got {type(value).__name__}")
    if not value:
        raise RecordError(f"'{field}' is empty")
    return tuple(parse_message(m, f"{field}[{k}]") for k, m in enumerate(value))


def check_conversation(msgs: Sequence[Message], field: str = "messages", need_assistant: bool = True) -> None:
    """System only first; a tool result only after a tool call; at least one assistant turn."""
    called = False
    for k, m in enumerate(msgs):
        if m.role == "system" and k != 0:
            raise RecordError(f"{field}[{k}]: a system message may only be the first message")
        if m.role == "tool" and not called:
            raise RecordError(f"{field}[{k}]: a tool result with no assistant tool call before it")
        called = called or bool(m.tool_calls)
    if need_assistant and not any(m.role == "assistant" for m in msgs):
        raise RecordError("conversation has no assistant turn (nothing to learn from)")


def conversation(msgs: Sequence[Message], obj: dict, field: str = "messages", tools: Any = None) -> Conversation:
    """Validate ``msgs`` and attach the record's ``category`` and ``tools``."""
    msgs = tuple(msgs)
    check_conversation(msgs, field)
    return Conversation(msgs, optional_str(obj, "category"), tools_field(obj.get("tools") if tools is None else tools))


def parse_record(obj: object) -> Conversation:
    """A ``messages`` record; raise ``ValueError(reason)`` (the caller adds file:line). Any record format:
    :class:`megatron_align.data.formats.RecordReader`."""
    if not isinstance(obj, dict):
        raise RecordError(f"record must be a JSON object, got {type(obj).__name__}")
    if "messages" not in obj:
        raise RecordError("missing 'messages'")
    return conversation(parse_messages(obj["messages"], "messages"), obj)
