"""Chat templates: messages -> token ids + a per-token loss flag.

A template renders a conversation as :class:`Piece` s: text, or a control token written by the template
(a single id), each with a loss flag. :func:`encode_pieces` tokenizes each run of text with one loss flag between
control tokens as one string (the way ``transformers`` tokenizes a rendered chat, so ids equal
``apply_chat_template``'s; see :func:`encode_pieces` for the one exception). ``target_mask[i] == 1`` iff token i
is an assistant-content token or the end-of-turn token closing an assistant turn (role headers and separators are never loss tokens).

Built-in templates equal the models' official ones (the tests render the official Jinja templates through
``transformers`` and compare strings and ids):

* ``llama3``: Meta-Llama-3-*-Instruct (every message ``| trim``-ed);
* ``llama3.1``: Llama-3.1-*-Instruct (a system block with the knowledge/today dates always comes first);
* ``chatml``: Qwen2-*-Instruct, with Qwen2's default system prompt when a conversation has none;
* ``baichuan``: Baichuan2-*-Chat (``build_chat_input`` of its generation_utils.py, and the final ``</s>``
  target of its fine-tune.py).

``auto`` (see :func:`build_template`) uses the tokenizer directory's own Jinja ``chat_template``
(:mod:`megatron_align.data.chat_jinja`) and falls back to the family's built-in template.

Registry: ``TEMPLATES`` (name -> class) and ``FAMILY_TEMPLATES`` (model family -> default template).
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Type

from megatron_align.data.schema import Conversation, Message, MessageLike, RecordError, as_message
from megatron_align.data.tokenizer import ChatTokenizer

#: ``system_prompt`` value meaning "the template's own default" (Qwen2's for chatml; none for the others).
DEFAULT_SYSTEM = "default"
AUTO = "auto"


@dataclass
class Encoded:
    ids: List[int]
    target_mask: List[int]  # 1 where the token is a loss (assistant) token


@dataclass
class Piece:
    """A span of a rendered conversation: ``control`` pieces are one special token each. ``boundary``: the text
    of an assistant turn, tokenized apart from what precedes it whether or not it is trained (so a per-turn loss
    flag changes the loss mask only, never the token ids)."""

    text: str
    loss: bool = False
    control: bool = False
    boundary: bool = False


def encode_pieces(tok: ChatTokenizer, pieces: Sequence[Piece], template: str = "") -> Encoded:
    """Control pieces -> their single ids; each run of text between them with one loss flag -> one ``encode`` call.

    A run ends where the loss flag changes or an assistant turn's text starts (``Piece.boundary``), i.e. the
    assistant content is tokenized apart from its header, trained or not (as TRL tokenizes a completion apart from
    its prompt): the rendering of a prompt with the generation prompt is then
    a token prefix of the prompt + response, and no token straddles a trained and an untrained span. This equals
    tokenizing the whole rendered string (``apply_chat_template``) except where the tokenizer would merge text
    across that boundary (with the Llama-3 / Qwen2 pre-tokenizers: content that begins with a newline, after the
    header's newline)."""
    ids: List[int] = []
    mask: List[int] = []
    run: List[str] = []
    run_loss = False

    def flush() -> None:
        if run:
            part = tok.encode("".join(run))
            ids.extend(part)
            mask.extend([int(run_loss)] * len(part))
            run.clear()

    for p in pieces:
        if p.control:
            flush()
            ids.append(tok.special_id(p.text, template))
            mask.append(int(p.loss))
        elif p.text:
            if run and (p.loss != run_loss or p.boundary):
                flush()
            run.append(p.text)
            run_loss = p.loss
    flush()
    return Encoded(ids, mask)


class ChatTemplate(abc.ABC):
    """A template: ``render`` (pieces) and ``encode`` (ids + loss mask). ``system_prompt`` is the configured value:
    ``"default"`` (the template's own default), None (insert none) or a text inserted into conversations that
    have no system message; :attr:`system_text` is the text actually inserted.

    Messages are :class:`~megatron_align.data.schema.Message` s or ``(role, content)`` pairs. A turn is trained
    when ``Message.trained`` (assistant turns, unless flagged off; never an empty answer). ``tools`` (function
    schemas) and tool calls are rendered by the templates that have an official tool format
    (:attr:`supports_tools`); the others refuse them with :class:`~megatron_align.data.schema.RecordError`."""

    name = ""
    family = ""
    special_tokens: Tuple[str, ...] = ()
    default_system_prompt: Optional[str] = None
    supports_tools = False
    #: a raw-text document: (BOS token or None, EOS token) written around it (``encode_text``)
    document_tokens: Tuple[Optional[str], Optional[str]] = (None, None)

    def __init__(self, tokenizer: ChatTokenizer, system_prompt: Optional[str] = DEFAULT_SYSTEM) -> None:
        self.tok = tokenizer
        self.system_prompt = system_prompt
        self.system_text = self.default_system_prompt if system_prompt == DEFAULT_SYSTEM else system_prompt
        self.ids = {t: tokenizer.special_id(t, self.name) for t in self.special_tokens}

    def with_system(self, messages: Sequence[MessageLike]) -> List[Message]:
        msgs = [as_message(m) for m in messages]
        if self.system_text is not None and (not msgs or msgs[0].role != "system"):
            msgs.insert(0, Message("system", self.system_text))
        return msgs

    def check_tools(self, messages: Sequence[Message], tools) -> None:
        """Refuse tools / tool calls / tool results where this template has no format for them."""
        if self.supports_tools:
            return
        fields = ["tools"] if tools else []
        for k, m in enumerate(messages):
            if m.tool_calls:
                fields.append(f"messages[{k}].tool_calls")
            elif m.role == "tool":
                fields.append(f"messages[{k}] (role 'tool')")
        if fields:
            raise RecordError(f"{fields[0]}: chat template {self.name!r} ({self.family or 'this template'}) has no "
                              f"tool-call format; use a family with one (llama3.1, chatml) or drop the tool turns")

    @abc.abstractmethod
    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False, tools=None) -> List[Piece]:
        """The pieces of the messages (the system prompt already inserted)."""

    def _pieces(self, messages, add_generation_prompt, tools) -> List[Piece]:
        msgs = self.with_system(messages)
        self.check_tools(msgs, tools)
        return self.render(msgs, add_generation_prompt, tuple(tools) if tools else None)

    def encode(self, messages: Sequence[MessageLike], add_generation_prompt: bool = False, tools=None) -> Encoded:
        """Encode messages. ``add_generation_prompt`` appends the assistant header (inference)."""
        return encode_pieces(self.tok, self._pieces(messages, add_generation_prompt, tools), self.name)

    def render_text(self, messages: Sequence[MessageLike], add_generation_prompt: bool = False, tools=None) -> str:
        """The rendered conversation as one string (what ``apply_chat_template(tokenize=False)`` returns)."""
        return "".join(p.text for p in self._pieces(messages, add_generation_prompt, tools))

    def encode_text(self, text: str) -> Encoded:
        """A raw-text document: [BOS] text EOS, every token but the BOS trained."""
        bos, eos = self.document_tokens
        pieces = ([_control(bos)] if bos else []) + [Piece(text, True)] + ([_control(eos, True)] if eos else [])
        return encode_pieces(self.tok, pieces, self.name)

    def encode_conversation(self, conv: Conversation) -> Encoded:
        """A record of any chat format: raw text, or its messages with its tools."""
        if conv.text is not None:
            return self.encode_text(conv.text)
        return self.encode(conv.messages, tools=conv.tools)

    def describe(self) -> str:
        return f"built-in {self.name!r}"


class TurnTemplate(ChatTemplate):
    """A built-in template made of a prefix and one block of pieces per message."""

    def prefix(self, messages: List[Message], tools=None) -> List[Piece]:
        return []

    @abc.abstractmethod
    def turn(self, m: Message, last: bool) -> List[Piece]:
        """The pieces of one message (``last``: the conversation's final message)."""

    @abc.abstractmethod
    def generation_prompt(self) -> List[Piece]:
        """Pieces that open the assistant's turn."""

    def render(self, messages, add_generation_prompt=False, tools=None):
        msgs = list(messages)
        out = self.prefix(msgs, tools)
        for k, m in enumerate(msgs):
            out += self.turn(m, k == len(msgs) - 1)
        if add_generation_prompt:
            out += self.generation_prompt()
        return out


def _control(token: str, loss: bool = False) -> Piece:
    return Piece(token, loss, True)


def tojson(x, indent=None) -> str:
    """``tojson`` as transformers' chat-template environment writes it (no ASCII escaping)."""
    return json.dumps(x, ensure_ascii=False, indent=indent)


class Llama3Template(TurnTemplate):
    """Meta-Llama-3-Instruct: ``<|begin_of_text|>`` then per message
    ``<|start_header_id|>role<|end_header_id|>\\n\\n{content | trim}<|eot_id|>``. No tool format."""

    name, family = "llama3", "Llama-3"
    special_tokens = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    document_tokens = ("<|begin_of_text|>", "<|end_of_text|>")

    def prefix(self, messages, tools=None):
        return [_control("<|begin_of_text|>")] if messages else []

    def _header(self, role: str) -> List[Piece]:
        return [_control("<|start_header_id|>"), Piece(role), _control("<|end_header_id|>"), Piece("\n\n")]

    def _body(self, m: Message) -> str:
        return m.content.strip()

    def turn(self, m, last):
        loss = m.trained
        return self._header(m.role) + [Piece(self._body(m), loss, boundary=m.role == "assistant"),
                                       _control("<|eot_id|>", loss)]

    def generation_prompt(self):
        return self._header("assistant")


LLAMA31_DATE_BLOCK = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
LLAMA31_TOOLS_INTRO = ("Given the following functions, please respond with a JSON for a function call with its proper "
                       "arguments that best answers the given prompt.\n\nRespond in the format {\"name\": function "
                       "name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n")


class Llama31Template(Llama3Template):
    """Llama-3.1-Instruct: as ``llama3``, but a system block always comes first, holding
    ``Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n`` + the trimmed system message.

    Tools (the official template's JSON tool calling, ``tools_in_user_message``): the system block starts with
    ``Environment: ipython\\n``; the function schemas (``tojson(indent=4)``) go into the first user message after
    the official instruction; an assistant tool call is ``{"name": ..., "parameters": {...}}`` (one call per turn,
    its text content not rendered, as the official template); a tool result is an ``ipython`` turn holding the
    result as a JSON string."""

    name = "llama3.1"
    family = "Llama-3.1"
    supports_tools = True

    def render(self, messages, add_generation_prompt=False, tools=None):
        msgs = list(messages)
        system = msgs.pop(0).content if msgs and msgs[0].role == "system" else ""
        env = "Environment: ipython\n" if tools else ""
        out = [_control("<|begin_of_text|>")] + self._header("system") + [
            Piece(env + LLAMA31_DATE_BLOCK + system.strip()), _control("<|eot_id|>")]
        if tools:
            if not msgs or msgs[0].role != "user":
                raise RecordError("tools: Llama-3.1 puts the tools into the first user message, but the "
                                  "conversation does not start with a user message")
            intro = LLAMA31_TOOLS_INTRO + "".join(tojson(t, indent=4) + "\n\n" for t in tools)
            out += self._header("user") + [Piece(intro + msgs.pop(0).content.strip()), _control("<|eot_id|>")]
        for k, m in enumerate(msgs):
            out += self.turn(m, k == len(msgs) - 1)
        if add_generation_prompt:
            out += self.generation_prompt()
        return out

    def _body(self, m):
        if m.tool_calls:
            if len(m.tool_calls) != 1:
                raise RecordError(f"tool_calls: Llama-3.1 takes one tool call per assistant turn, got "
                                  f"{len(m.tool_calls)}")
            call = m.tool_calls[0]
            return '{"name": "' + call.name + '", "parameters": ' + tojson(call.arguments) + "}"
        if m.role == "tool":
            return tojson(m.content)
        return super()._body(m)

    def turn(self, m, last):
        if m.role == "tool":
            return self._header("ipython") + [Piece(self._body(m)), _control("<|eot_id|>")]
        return super().turn(m, last)


QWEN2_DEFAULT_SYSTEM = "You are a helpful assistant."
QWEN_TOOLS_INTRO = ("\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are "
                    "provided with function signatures within <tools></tools> XML tags:\n<tools>")
QWEN_TOOLS_OUTRO = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                    "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
                    "\"arguments\": <args-json-object>}\n</tool_call>")


class ChatMLTemplate(TurnTemplate):
    """Qwen2-Instruct: ``<|im_start|>role\\ncontent<|im_end|>\\n``; loss on content + ``<|im_end|>`` (not the
    newline). A conversation without a system message gets Qwen2's default one (``data.system_prompt``:
    ``default``; null: none; or your text).

    Tools (Qwen2.5's official format, Hermes style): the system message (or the default) is followed by the
    ``# Tools`` block listing each schema in ``<tools>``; an assistant tool call is
    ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` after its text; consecutive tool results are
    one ``user`` turn of ``<tool_response>\\n...\\n</tool_response>`` blocks."""

    name, family = "chatml", "Qwen2 / ChatML"
    special_tokens = ("<|im_start|>", "<|im_end|>")
    default_system_prompt = QWEN2_DEFAULT_SYSTEM
    supports_tools = True
    document_tokens = (None, "<|endoftext|>")

    def render(self, messages, add_generation_prompt=False, tools=None):
        msgs = list(messages)
        out: List[Piece] = []
        if tools:
            system = msgs[0].content if msgs and msgs[0].role == "system" else (self.system_text or "")
            if msgs and msgs[0].role == "system":
                msgs = msgs[1:]
            text = system + QWEN_TOOLS_INTRO + "".join("\n" + tojson(t) for t in tools) + QWEN_TOOLS_OUTRO
            out += [_control("<|im_start|>"), Piece("system\n" + text), _control("<|im_end|>"), Piece("\n")]
        for k, m in enumerate(msgs):
            if m.role != "tool":
                out += self.turn(m, k == len(msgs) - 1)
                continue
            first = k == 0 or msgs[k - 1].role != "tool"
            last = k == len(msgs) - 1 or msgs[k + 1].role != "tool"
            out += ([_control("<|im_start|>"), Piece("user")] if first else [])
            out.append(Piece("\n<tool_response>\n" + m.content + "\n</tool_response>"))
            out += [_control("<|im_end|>"), Piece("\n")] if last else []
        if add_generation_prompt:
            out += self.generation_prompt()
        return out

    def turn(self, m, last):
        loss = m.trained
        body = m.content
        if m.tool_calls:
            calls = ['<tool_call>\n{"name": "' + c.name + '", "arguments": ' + tojson(c.arguments) + '}\n</tool_call>'
                     for c in m.tool_calls]
            body = "\n".join(([m.content] if m.content else []) + calls)
        return [_control("<|im_start|>"), Piece(m.role + "\n"), Piece(body, loss, boundary=m.role == "assistant"),
                _control("<|im_end|>", loss), Piece("\n")]

    def generation_prompt(self):
        return [_control("<|im_start|>"), Piece("assistant\n")]


class BaichuanTemplate(TurnTemplate):
    """Baichuan2-Chat (``build_chat_input``): system text first, user turns ``<reserved_106>content``, assistant
    turns ``<reserved_107>content``, nothing between turns; a conversation ending with an assistant turn ends with
    ``</s>`` (fine-tune.py's end-of-sequence target). Loss on assistant content and that final ``</s>``.
    No tool format."""

    name, family = "baichuan", "Baichuan2"
    special_tokens = ("<reserved_106>", "<reserved_107>", "</s>")
    document_tokens = (None, "</s>")

    def turn(self, m, last):
        if m.role == "system":
            return [Piece(m.content)]
        if m.role == "user":
            return [_control("<reserved_106>"), Piece(m.content)]
        loss = m.trained
        end = [_control("</s>", loss)] if last else []
        return [_control("<reserved_107>"), Piece(m.content, loss, boundary=True)] + end

    def generation_prompt(self):
        return [_control("<reserved_107>")]


TEMPLATES: Dict[str, Type[ChatTemplate]] = {
    t.name: t for t in (Llama3Template, Llama31Template, ChatMLTemplate, BaichuanTemplate)
}
#: choices of ``data.template``: ``auto`` (the tokenizer's own chat_template, else the family default) + built-ins
TEMPLATE_NAMES: Tuple[str, ...] = (AUTO,) + tuple(TEMPLATES)
FAMILY_TEMPLATES: Dict[str, str] = {"llama": "llama3", "qwen2": "chatml", "baichuan2": "baichuan"}
ALL_SPECIAL_TOKENS: Tuple[str, ...] = tuple(dict.fromkeys(t for c in TEMPLATES.values() for t in c.special_tokens))


def family_default_template(family) -> Optional[str]:
    """The built-in template of a model family name or an ArchSpec (Llama-3.1 style rope scaling: ``llama3.1``)."""
    if family is None:
        return None
    if not isinstance(family, str):
        from megatron_align.models.families import default_chat_template

        return default_chat_template(family)
    return FAMILY_TEMPLATES.get(family)


def resolve_template_name(template: Optional[str], family=None) -> str:
    """``template`` (a built-in name, or ``auto`` kept as it is), else the family's default (``family``: a family
    name or an ArchSpec); ValueError when neither is known."""
    if template is not None:
        if template not in TEMPLATE_NAMES:
            raise ValueError(f"unknown chat template {template!r} (expected one of {', '.join(TEMPLATE_NAMES)})")
        return template
    if family is None:
        raise ValueError("no chat template given and no model family to pick a default from")
    name = family_default_template(family)
    if name is None:
        raise ValueError(f"model family {family!r} has no default chat template "
                         f"(known: {', '.join(FAMILY_TEMPLATES)}); set data.template")
    return name


def build_template(name: Optional[str], tokenizer: ChatTokenizer, system_prompt: Optional[str] = DEFAULT_SYSTEM,
                   family=None) -> ChatTemplate:
    """The template ``name`` (None: the family default). ``auto``: the tokenizer directory's own chat_template
    when it has one, else the family's built-in template (ValueError when there is no family either)."""
    name = resolve_template_name(name, family)
    if name == AUTO:
        if tokenizer.chat_template_source is not None:
            from megatron_align.data.chat_jinja import JinjaTemplate

            return JinjaTemplate(tokenizer, system_prompt)
        if family is None:
            raise ValueError(f"data.template is 'auto' but the tokenizer directory {tokenizer.dir} has no "
                             f"chat_template and no model family gives a default; set data.template")
        name = resolve_template_name(None, family)
    return TEMPLATES[name](tokenizer, system_prompt)
