"""Chat record formats: each becomes one :class:`~megatron_align.data.schema.Conversation`.

``messages`` (OpenAI / Hugging Face), ``sharegpt`` (``conversations`` of ``from``/``value``), ``alpaca``
(``instruction``/``input``/``output``), ``prompt_completion`` and ``query_response`` pairs (strings, or message
lists as TRL's conversational form), raw ``text`` (all tokens trained). Per-turn loss flags (``weight`` 0/1,
``loss``, ``training``) are read on every turn object, whatever the format.
"""

from __future__ import annotations

import json
from typing import Any, List, Optional

from megatron_align.data.formats.base import RecordFormat, register
from megatron_align.data.schema import (Conversation, Message, RecordError, conversation, loss_flag, optional_str,
                                        parse_message, parse_messages, text_content, tool_call)


@register
class MessagesFormat(RecordFormat):
    name, keys = "messages", ("messages",)
    example = ('{"messages": [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"}], '
               '"category": "math"}')

    def parse(self, obj):
        return conversation(parse_messages(obj["messages"], "messages"), obj)


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "function_call": "assistant", "observation": "tool", "tool": "tool", "function": "tool"}


def _sharegpt_turn(t: Any, where: str) -> Message:
    if not isinstance(t, dict):
        raise RecordError(f"{where} must be an object, got {type(t).__name__}")
    if "from" not in t and "role" in t:  # the messages keys inside `conversations` (axolotl / LLaMA-Factory tags)
        return parse_message(t, where)
    who = t.get("from")
    if who not in SHAREGPT_ROLES:
        raise RecordError(f"{where}.from: unknown speaker {who!r} (expected {', '.join(SHAREGPT_ROLES)})")
    role = SHAREGPT_ROLES[who]
    flag = loss_flag(t, where)
    if flag is True and role != "assistant":
        raise RecordError(f"{where}: a loss flag can only turn training on for assistant turns ({who!r})")
    if who != "function_call":
        return Message(role, text_content(t.get("value"), where), flag)
    value = t.get("value")
    try:  # LLaMA-Factory: the call(s) as JSON text {"name": ..., "arguments": ...} or a list of them
        calls = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as exc:
        raise RecordError(f"{where}.value: a function_call turn must hold JSON ({exc.msg})") from None
    calls = calls if isinstance(calls, list) else [calls]
    return Message("assistant", "", flag, tuple(tool_call(c, f"{where}.value") for c in calls))


@register
class ShareGPTFormat(RecordFormat):
    name, keys = "sharegpt", ("conversations",)
    example = ('{"conversations": [{"from": "human", "value": "2+3?"}, {"from": "gpt", "value": "5"}], '
               '"system": "Be brief."}')

    def parse(self, obj):
        turns = obj["conversations"]
        if not isinstance(turns, list):
            raise RecordError(f"'conversations' must be a list, got {type(turns).__name__}")
        if not turns:
            raise RecordError("'conversations' is empty")
        msgs = [_sharegpt_turn(t, f"conversations[{k}]") for k, t in enumerate(turns)]
        system = optional_str(obj, "system")
        if system and msgs[0].role != "system":
            msgs.insert(0, Message("system", system))
        return conversation(msgs, obj, "conversations")


def _history(obj: dict) -> List[Message]:
    """``history``: ``[[user, assistant], ...]`` turns before the record's own exchange (Alpaca, ms-swift)."""
    hist = obj.get("history") or []
    if not isinstance(hist, list):
        raise RecordError(f"'history' must be a list of [user, assistant] pairs, got {type(hist).__name__}")
    out = []
    for k, pair in enumerate(hist):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RecordError(f"history[{k}]: must be a [user, assistant] pair of strings")
        out += [Message("user", pair[0]), Message("assistant", pair[1])]
    return out


def _string(obj: dict, field: str, required: bool = True) -> Optional[str]:
    value = obj.get(field)
    if value is None and not required:
        return None
    if field not in obj:
        raise RecordError(f"missing '{field}'")
    if not isinstance(value, str):
        raise RecordError(f"'{field}' must be a string, got {type(value).__name__}")
    return value


def _exchange(obj: dict, prompt: str, answer: str, field: str) -> Conversation:
    msgs: List[Message] = []
    system = _string(obj, "system", required=False)
    if system:
        msgs.append(Message("system", system))
    msgs += _history(obj) + [Message("user", prompt), Message("assistant", answer)]
    return conversation(msgs, obj, field)


@register
class AlpacaFormat(RecordFormat):
    """The user turn is ``instruction`` + ``"\\n"`` + ``input`` (``input`` when non-empty), as LLaMA-Factory."""

    name, keys = "alpaca", ("instruction", "output")
    example = '{"instruction": "Add the numbers.", "input": "2 3", "output": "5"}'

    def parse(self, obj):
        instruction, output = _string(obj, "instruction"), _string(obj, "output")
        extra = _string(obj, "input", required=False)
        prompt = instruction + "\n" + extra if extra else instruction
        return _exchange(obj, prompt, output, "output")


def _pair(obj: dict, prompt_key: str, answer_key: str) -> Conversation:
    for key in (prompt_key, answer_key):
        if key not in obj:
            raise RecordError(f"missing '{key}' (a {prompt_key}/{answer_key} record needs both)")
    prompt, answer = obj[prompt_key], obj[answer_key]
    if isinstance(prompt, str) and isinstance(answer, str):
        return _exchange(obj, prompt, answer, answer_key)
    head = parse_messages(prompt, prompt_key, "user")
    tail = parse_messages(answer, answer_key, "assistant")
    if any(m.role not in ("assistant", "tool") for m in tail):
        raise RecordError(f"'{answer_key}' must hold assistant (and tool) messages only")
    system = _string(obj, "system", required=False)
    if system and head[0].role != "system":
        head = (Message("system", system),) + head
    return conversation(_history(obj) + list(head) + list(tail), obj, answer_key)


class ExchangeFormat(RecordFormat):
    """A prompt key and an answer key: strings (a user and an assistant turn, rendered with the chat template; the
    answer is what is trained) or message lists (TRL's conversational form); optional ``system``, ``history``."""

    def parse(self, obj):
        return _pair(obj, *self.keys)


@register
class PromptCompletionFormat(ExchangeFormat):
    """TRL's prompt-completion form."""

    name, keys = "prompt_completion", ("prompt", "completion")
    example = '{"prompt": "2+3?", "completion": "5"}'


@register
class QueryResponseFormat(ExchangeFormat):
    """ms-swift's query-response form."""

    name, keys = "query_response", ("query", "response")
    example = '{"query": "2+3?", "response": "5", "history": [["hi", "hello"]]}'


@register
class TextFormat(RecordFormat):
    """Raw text for continued pre-training: every token trained (BOS/EOS as the template's family writes a
    document), no chat turns; documents are packed like any sample."""

    name, keys = "text", ("text",)
    example = '{"text": "Raw document text for continued pre-training."}'

    def parse(self, obj):
        text = _string(obj, "text")
        if not text.strip():
            raise RecordError("'text' is empty (nothing to train)")
        return Conversation((), optional_str(obj, "category"), None, text)
