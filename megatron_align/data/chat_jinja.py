"""The checkpoint's own Jinja chat template (``data.template: auto``), rendered as ``transformers`` renders it.

Rendering follows ``apply_chat_template``: a sandboxed Jinja environment with ``trim_blocks`` and
``lstrip_blocks``, the ``loopcontrols`` extension, a ``tojson`` filter that does not escape HTML,
``raise_exception`` and ``strftime_now``, and the ``{% generation %}`` block; the context holds ``messages``,
``add_generation_prompt``, ``tools`` (the record's function schemas, or None), ``documents`` (None) and the
tokenizer's special-token strings (``bos_token``, ``eos_token``, ...). Messages are passed in Hugging Face form
(``tool_calls`` with decoded ``arguments``, ``name``, ``tool_call_id``); a template whose output does not hold a
tool's or a tool call's name ignores them, which is an error (never a silent drop). Control-token text inside
message content is marked before rendering and encoded as plain text afterwards, so a user cannot forge a control
token.

Loss mask: the characters inside ``{% generation %}`` blocks when the template has them; otherwise, for each
assistant message k, the text between ``render(messages[:k], add_generation_prompt=True)`` and
``render(messages[:k+1])`` up to and including its last control token (the end-of-turn token; a trailing
newline is not trained). Both renderings must be prefixes of the whole conversation's rendering; a template that
rewrites earlier turns breaks that and is a :class:`TemplateError` naming the template and the conversation.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from datetime import datetime
from typing import List, Optional, Sequence, Tuple

from megatron_align.data.schema import Message, RecordError
from megatron_align.data.templates import TEMPLATES, ChatTemplate, Piece, DEFAULT_SYSTEM
from megatron_align.data.tokenizer import ChatTokenizer
from megatron_align.errors import UserError

MARK_OPEN, MARK_CLOSE = "\ue000", "\ue001"  # around control-token text found in message content
GEN_OPEN, GEN_CLOSE = "\ue002", "\ue003"  # around the output of a {% generation %} block
_PRIVATE = re.compile("[\ue000-\ue003]")
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


class TemplateError(UserError, ValueError):
    """A chat template that cannot be rendered, or whose trained tokens cannot be derived."""


@functools.lru_cache(maxsize=None)
def _environment():
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """``{% generation %}...{% endgeneration %}``: its output is wrapped in GEN_OPEN/GEN_CLOSE."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_wrap"), [], [], body).set_lineno(lineno)

        def _wrap(self, caller):
            return GEN_OPEN + caller() + GEN_CLOSE

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@functools.lru_cache(maxsize=16)
def _compile(text: str):
    return _environment().from_string(text)


def _conversation(messages: Sequence[Message], limit: int = 300) -> str:
    s = json.dumps([m.as_dict() for m in messages], ensure_ascii=False)
    return s if len(s) <= limit else s[:limit] + "...]"


class JinjaTemplate(ChatTemplate):
    """The tokenizer directory's chat_template. ``system_prompt``: ``default`` or None insert nothing (the template
    applies its own default, e.g. Qwen2's); a text is inserted as the system message of conversations without one."""

    supports_tools = True

    def __init__(self, tokenizer: ChatTokenizer, system_prompt: Optional[str] = DEFAULT_SYSTEM,
                 source: Optional[Tuple[str, str]] = None) -> None:
        self.source, self.text = source or tokenizer.chat_template_source
        self.sha256 = hashlib.sha256(self.text.encode("utf-8")).hexdigest()
        self.name = f"auto:{self.sha256[:12]}"
        super().__init__(tokenizer, system_prompt)
        import jinja2

        try:
            self._compiled = _compile(self.text)
        except jinja2.exceptions.TemplateSyntaxError as exc:
            raise TemplateError(f"{self.source}: chat_template line {exc.lineno}: {exc.message}") from None
        self.has_generation_blocks = bool(_GENERATION_TAG.search(self.text))
        # a family with a developer role (the template names it): such messages keep it; others read it as system
        self.has_developer_role = "developer" in self.text
        ctrl = "|".join(map(re.escape, sorted(tokenizer.control_tokens(), key=len, reverse=True))) or "(?!)"
        self._ctrl = re.compile(ctrl)
        self._scan = re.compile(f"{MARK_OPEN}({ctrl}){MARK_CLOSE}|({ctrl})|([\ue000-\ue003])")
        self._context = tokenizer.special_tokens_map()
        # a raw-text document: the tokenizer's own BOS / EOS (when it names them)
        self.document_tokens = (self._context.get("bos_token"), self._context.get("eos_token"))

    def describe(self) -> str:
        return f"{self.source} (the checkpoint's chat_template, sha256 {self.sha256[:12]})"

    # -- rendering --------------------------------------------------------------------------------
    def _mark(self, text: str) -> str:
        return self._ctrl.sub(lambda m: MARK_OPEN + m.group(0) + MARK_CLOSE, _PRIVATE.sub("", text))

    def _render(self, messages: Sequence[Message], add_generation_prompt: bool, tools=None) -> str:
        import jinja2

        msgs = [dict(m.as_dict(), content=self._mark(m.content)) for m in messages]
        for d, m in zip(msgs, messages):
            if m.written_role == "developer" and self.has_developer_role:
                d["role"] = "developer"
        try:
            return self._compiled.render(messages=msgs, add_generation_prompt=add_generation_prompt,
                                         tools=list(tools) if tools else None, documents=None, **self._context)
        except jinja2.exceptions.TemplateError as exc:
            raise TemplateError(f"chat template {self.describe()} failed on {_conversation(messages)}: {exc}") \
                from None

    def _turn_end(self, rendered: str, start: int) -> int:
        """End of the trained span of a turn starting at ``start``: after its last control token, if any."""
        end = len(rendered)
        for m in self._scan.finditer(rendered, start):
            if m.group(2) is not None:
                end = m.end()
        return end

    def _assistant_spans(self, messages: List[Message], full: str, tools=None,
                         trained: Optional[bool] = None) -> List[Tuple[int, int, bool]]:
        """(start, end, trained) of the assistant turns (only the trained / untrained ones when ``trained``)."""
        spans = []
        for k, m in enumerate(messages):
            if m.role != "assistant" or trained is not None and m.trained != trained:
                continue
            head = self._render(messages[:k], True, tools)
            turn = self._render(messages[:k + 1], False, tools)
            if not (turn.startswith(head) and full.startswith(turn)):
                raise TemplateError(
                    f"chat template {self.describe()}: cannot derive the trained tokens of {_conversation(messages)}: "
                    f"the rendering up to message {k + 1} ({m.role}) is not a prefix of the rendering of the whole "
                    f"conversation (the template rewrites earlier turns); mark the assistant text with "
                    f"{{% generation %}} in the template, or set data.template to a built-in template "
                    f"({', '.join(TEMPLATES)})")
            spans.append((len(head), self._turn_end(turn, len(head)), m.trained))
        return spans

    def _check_tools_rendered(self, messages: List[Message], tools, full: str) -> None:
        names = [(f"messages[{k}].tool_calls", c.name) for k, m in enumerate(messages) for c in m.tool_calls]
        names += [("tools", (t.get("function") or t).get("name")) for t in tools or ()]
        for field, name in names:
            if isinstance(name, str) and name not in full:
                raise RecordError(f"{field}: chat template {self.describe()} does not render {name!r} (it has no "
                                  f"tool-call format); use a template with one (llama3.1, chatml)")

    def render(self, messages, add_generation_prompt=False, tools=None) -> List[Piece]:
        msgs = list(messages)
        full = self._render(msgs, add_generation_prompt, tools)
        self._check_tools_rendered(msgs, tools, full)
        loss = [False] * len(full)
        off = [False] * len(full)  # assistant turns flagged off, inside {% generation %} blocks
        cut = set()  # where an assistant turn's text starts: tokenized apart, trained or not (encode_pieces)
        spans = self._assistant_spans(msgs, full, tools, None if not self.has_generation_blocks else False)
        for a, b, trained in spans:
            if self.has_generation_blocks:
                off[a:b] = [True] * (b - a)
            elif trained:
                loss[a:b] = [True] * (b - a)
            while a < len(full) and full[a] in (GEN_OPEN, GEN_CLOSE):
                a += 1
            cut.add(a)
        pieces: List[Piece] = []
        state = {"gen": False}

        def on(i: int) -> bool:
            return (state["gen"] or loss[i]) and not off[i]

        def text(a: int, b: int, value: Optional[str] = None) -> None:
            if a >= b:
                return
            flag = on(a)
            if value is not None:  # a control token's text typed in content: plain text
                pieces.append(Piece(value, flag, boundary=a in cut))
                return
            k = a
            for i in range(a + 1, b + 1):
                if i == b or on(i) != flag or i in cut:
                    pieces.append(Piece(full[k:i], flag, boundary=k in cut))
                    if i < b:
                        k, flag = i, on(i)

        pos = 0
        for m in self._scan.finditer(full):
            text(pos, m.start())
            if m.group(1) is not None:
                text(m.start(), m.end(), m.group(1))
            elif m.group(2) is not None:
                pieces.append(Piece(m.group(2), on(m.start()), True))
            elif m.group(3) in (GEN_OPEN, GEN_CLOSE):
                state["gen"] = m.group(3) == GEN_OPEN
            pos = m.end()
        text(pos, len(full))
        return pieces
