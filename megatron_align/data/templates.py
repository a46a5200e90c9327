"""Chat templates: messages -> token ids + a per-token loss flag, tokenized segment by segment.

Each template emits segments (ids, is_loss); the ids are concatenated, never re-tokenized as one string,
so the loss flags are exact. ``target_mask[i] == 1`` iff token i is an assistant-content token or the
end-of-turn token closing an assistant turn (role headers and separators are never loss tokens).

Registry: ``TEMPLATES`` (name -> class) and ``FAMILY_TEMPLATES`` (model family -> default template).
"""

from __future__ import annotations

import abc

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Type

from megatron_align.data.tokenizer import ChatTokenizer

Segment = Tuple[List[int], bool]


@dataclass
class Encoded:
    ids: List[int]
    target_mask: List[int]  # 1 where the token is a loss (assistant) token


class ChatTemplate(abc.ABC):
    """Base class: subclasses define the control tokens and the shape of a turn."""

    name = ""
    special_tokens: Tuple[str, ...] = ()

    def __init__(self, tokenizer: ChatTokenizer, system_prompt: Optional[str] = None) -> None:
        self.tok = tokenizer
        self.system_prompt = system_prompt
        self.ids = {t: tokenizer.special_id(t, self.name) for t in self.special_tokens}

    # -- to override -----------------------------------------------------------------------------
    def prefix(self) -> List[int]:
        return []

    @abc.abstractmethod
    def turn(self, role: str, content: str) -> List[Segment]:
        """The segments of one message."""

    @abc.abstractmethod
    def generation_prompt(self) -> List[int]:
        """Tokens that open the assistant's turn."""

    # -- shared ----------------------------------------------------------------------------------
    def encode(self, messages: Sequence[Tuple[str, str]], add_generation_prompt: bool = False) -> Encoded:
        """Encode (role, content) pairs. ``add_generation_prompt`` appends the assistant header (inference)."""
        msgs = list(messages)
        if self.system_prompt is not None and (not msgs or msgs[0][0] != "system"):
            msgs.insert(0, ("system", self.system_prompt))
        ids: List[int] = list(self.prefix())
        mask: List[int] = [0] * len(ids)
        for role, content in msgs:
            for seg, is_loss in self.turn(role, content):
                ids.extend(seg)
                mask.extend([int(is_loss and role == "assistant")] * len(seg))
        if add_generation_prompt:
            gen = self.generation_prompt()
            ids.extend(gen)
            mask.extend([0] * len(gen))
        return Encoded(ids, mask)


class Llama3Template(ChatTemplate):
    """``<|begin_of_text|>`` then per turn ``<|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>``."""

    name = "llama3"
    special_tokens = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

    def prefix(self) -> List[int]:
        return [self.ids["<|begin_of_text|>"]]

    def _header(self, role: str) -> List[int]:
        return ([self.ids["<|start_header_id|>"]] + self.tok.encode_cached(role)
                + [self.ids["<|end_header_id|>"]] + self.tok.encode_cached("\n\n"))

    def turn(self, role: str, content: str) -> List[Segment]:
        return [(self._header(role), False), (self.tok.encode(content) + [self.ids["<|eot_id|>"]], True)]

    def generation_prompt(self) -> List[int]:
        return self._header("assistant")


class ChatMLTemplate(ChatTemplate):
    """Qwen2: ``<|im_start|>role\\ncontent<|im_end|>\\n``; loss on content + ``<|im_end|>`` (not the newline).

    Qwen2's own default system prompt is :data:`QWEN2_DEFAULT_SYSTEM`; pass it as ``system_prompt`` to
    reproduce Qwen2-Instruct formatting exactly (``data.system_prompt``)."""

    name = "chatml"
    special_tokens = ("<|im_start|>", "<|im_end|>")

    def turn(self, role: str, content: str) -> List[Segment]:
        return [([self.ids["<|im_start|>"]] + self.tok.encode_cached(role + "\n"), False),
                (self.tok.encode(content) + [self.ids["<|im_end|>"]], True),
                (self.tok.encode_cached("\n"), False)]

    def generation_prompt(self) -> List[int]:
        return [self.ids["<|im_start|>"]] + self.tok.encode_cached("assistant\n")


QWEN2_DEFAULT_SYSTEM = "You are a helpful assistant."


class BaichuanTemplate(ChatTemplate):
    """Baichuan2-chat: system text first, user turns ``<reserved_106>content``, assistant turns
    ``<reserved_107>content</s>``; loss on assistant content + ``</s>``."""

    name = "baichuan"
    special_tokens = ("<reserved_106>", "<reserved_107>", "</s>")

    def turn(self, role: str, content: str) -> List[Segment]:
        if role == "system":
            return [(self.tok.encode(content), False)]
        if role == "user":
            return [([self.ids["<reserved_106>"]] + self.tok.encode(content), False)]
        return [([self.ids["<reserved_107>"]], False), (self.tok.encode(content) + [self.ids["</s>"]], True)]

    def generation_prompt(self) -> List[int]:
        return [self.ids["<reserved_107>"]]


TEMPLATES: Dict[str, Type[ChatTemplate]] = {
    t.name: t for t in (Llama3Template, ChatMLTemplate, BaichuanTemplate)
}
FAMILY_TEMPLATES: Dict[str, str] = {"llama": "llama3", "qwen2": "chatml", "baichuan2": "baichuan"}
ALL_SPECIAL_TOKENS: Tuple[str, ...] = tuple(dict.fromkeys(t for c in TEMPLATES.values() for t in c.special_tokens))


def resolve_template_name(template: Optional[str], family: Optional[str] = None) -> str:
    """The explicit template, else the family's default; ValueError when neither is known."""
    if template is not None:
        if template not in TEMPLATES:
            raise ValueError(f"unknown chat template {template!r} (expected one of {', '.join(TEMPLATES)})")
        return template
    if family is None:
        raise ValueError("no chat template given and no model family to pick a default from")
    if family not in FAMILY_TEMPLATES:
        raise ValueError(f"model family {family!r} has no default chat template "
                         f"(known: {', '.join(FAMILY_TEMPLATES)}); set data.template")
    return FAMILY_TEMPLATES[family]


def build_template(name: str, tokenizer: ChatTokenizer, system_prompt: Optional[str] = None) -> ChatTemplate:
    return TEMPLATES[resolve_template_name(name)](tokenizer, system_prompt)
