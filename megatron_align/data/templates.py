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

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Type

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
    """A span of a rendered conversation: ``control`` pieces are one special token each."""

    text: str
    loss: bool = False
    control: bool = False


def encode_pieces(tok: ChatTokenizer, pieces: Sequence[Piece], template: str = "") -> Encoded:
    """Control pieces -> their single ids; each run of text between them with one loss flag -> one ``encode`` call.

    A run ends where the loss flag changes, i.e. the assistant content is tokenized apart from its header (as
    TRL tokenizes a completion apart from its prompt): the rendering of a prompt with the generation prompt is then
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
            if run and p.loss != run_loss:
                flush()
            run.append(p.text)
            run_loss = p.loss
    flush()
    return Encoded(ids, mask)


class ChatTemplate(abc.ABC):
    """A template: ``render`` (pieces) and ``encode`` (ids + loss mask). ``system_prompt`` is the configured value:
    ``"default"`` (the template's own default), None (insert none) or a text inserted into conversations that
    have no system message; :attr:`system_text` is the text actually inserted."""

    name = ""
    special_tokens: Tuple[str, ...] = ()
    default_system_prompt: Optional[str] = None

    def __init__(self, tokenizer: ChatTokenizer, system_prompt: Optional[str] = DEFAULT_SYSTEM) -> None:
        self.tok = tokenizer
        self.system_prompt = system_prompt
        self.system_text = self.default_system_prompt if system_prompt == DEFAULT_SYSTEM else system_prompt
        self.ids = {t: tokenizer.special_id(t, self.name) for t in self.special_tokens}

    def with_system(self, messages: Sequence[Tuple[str, str]]) -> List[Tuple[str, str]]:
        msgs = list(messages)
        if self.system_text is not None and (not msgs or msgs[0][0] != "system"):
            msgs.insert(0, ("system", self.system_text))
        return msgs

    @abc.abstractmethod
    def render(self, messages: Sequence[Tuple[str, str]], add_generation_prompt: bool = False) -> List[Piece]:
        """The pieces of (role, content) pairs (the system prompt already inserted)."""

    def encode(self, messages: Sequence[Tuple[str, str]], add_generation_prompt: bool = False) -> Encoded:
        """Encode (role, content) pairs. ``add_generation_prompt`` appends the assistant header (inference)."""
        pieces = self.render(self.with_system(messages), add_generation_prompt)
        return encode_pieces(self.tok, pieces, self.name)

    def render_text(self, messages: Sequence[Tuple[str, str]], add_generation_prompt: bool = False) -> str:
        """The rendered conversation as one string (what ``apply_chat_template(tokenize=False)`` returns)."""
        return "".join(p.text for p in self.render(self.with_system(messages), add_generation_prompt))

    def describe(self) -> str:
        return f"built-in {self.name!r}"


class TurnTemplate(ChatTemplate):
    """A built-in template made of a prefix and one block of pieces per message."""

    def prefix(self, messages: List[Tuple[str, str]]) -> List[Piece]:
        return []

    @abc.abstractmethod
    def turn(self, role: str, content: str, last: bool) -> List[Piece]:
        """The pieces of one message (``last``: the conversation's final message)."""

    @abc.abstractmethod
    def generation_prompt(self) -> List[Piece]:
        """Pieces that open the assistant's turn."""

    def render(self, messages, add_generation_prompt=False):
        msgs = list(messages)
        out = self.prefix(msgs)
        for k, (role, content) in enumerate(msgs):
            out += self.turn(role, content, k == len(msgs) - 1)
        if add_generation_prompt:
            out += self.generation_prompt()
        return out


def _control(token: str, loss: bool = False) -> Piece:
    return Piece(token, loss, True)


class Llama3Template(TurnTemplate):
    """Meta-Llama-3-Instruct: ``<|begin_of_text|>`` then per message
    ``<|start_header_id|>role<|end_header_id|>\\n\\n{content | trim}<|eot_id|>``."""

    name = "llama3"
    special_tokens = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

    def prefix(self, messages):
        return [_control("<|begin_of_text|>")] if messages else []

    def _header(self, role: str) -> List[Piece]:
        return [_control("<|start_header_id|>"), Piece(role), _control("<|end_header_id|>"), Piece("\n\n")]

    def _content(self, role: str, content: str) -> str:
        return content.strip()

    def turn(self, role, content, last):
        loss = role == "assistant"
        return self._header(role) + [Piece(self._content(role, content), loss), _control("<|eot_id|>", loss)]

    def generation_prompt(self):
        return self._header("assistant")


LLAMA31_DATE_BLOCK = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"


class Llama31Template(Llama3Template):
    """Llama-3.1-Instruct: as ``llama3``, but a system block always comes first, holding
    ``Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n`` + the trimmed system message."""

    name = "llama3.1"

    def render(self, messages, add_generation_prompt=False):
        msgs = list(messages)
        if not msgs or msgs[0][0] != "system":
            msgs.insert(0, ("system", ""))
        return super().render(msgs, add_generation_prompt)

    def _content(self, role, content):
        return LLAMA31_DATE_BLOCK + content.strip() if role == "system" else content.strip()


QWEN2_DEFAULT_SYSTEM = "You are a helpful assistant."


class ChatMLTemplate(TurnTemplate):
    """Qwen2-Instruct: ``<|im_start|>role\\ncontent<|im_end|>\\n``; loss on content + ``<|im_end|>`` (not the
    newline). A conversation without a system message gets Qwen2's default one (``data.system_prompt``:
    ``default``; null: none; or your text)."""

    name = "chatml"
    special_tokens = ("<|im_start|>", "<|im_end|>")
    default_system_prompt = QWEN2_DEFAULT_SYSTEM

    def turn(self, role, content, last):
        loss = role == "assistant"
        return [_control("<|im_start|>"), Piece(role + "\n"), Piece(content, loss), _control("<|im_end|>", loss),
                Piece("\n")]

    def generation_prompt(self):
        return [_control("<|im_start|>"), Piece("assistant\n")]


class BaichuanTemplate(TurnTemplate):
    """Baichuan2-Chat (``build_chat_input``): system text first, user turns ``<reserved_106>content``, assistant
    turns ``<reserved_107>content``, nothing between turns; a conversation ending with an assistant turn ends with
    ``</s>`` (fine-tune.py's end-of-sequence target). Loss on assistant content and that final ``</s>``."""

    name = "baichuan"
    special_tokens = ("<reserved_106>", "<reserved_107>", "</s>")

    def turn(self, role, content, last):
        if role == "system":
            return [Piece(content)]
        if role == "user":
            return [_control("<reserved_106>"), Piece(content)]
        end = [_control("</s>", True)] if last else []
        return [_control("<reserved_107>"), Piece(content, True)] + end

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
