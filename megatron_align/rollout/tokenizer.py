"""What megatron-core's inference controller expects of a tokenizer, over ours.

The controller calls ``tokenize(str)``, ``detokenize(ids, ...)``, ``eod`` and ``bos`` (with add_BOS).
Prompts reach the engine as ids, so only detokenisation of results (and string stop words) uses it.
A tokenizer is optional: :class:`IdsOnlyTokenizer` serves an engine driven purely by ids.
"""

from __future__ import annotations

from typing import List, Optional, Sequence


class MegatronTokenizerAdapter:
    """Adapts :class:`megatron_align.data.tokenizer.ChatTokenizer` (``encode`` / ``decode``)."""

    def __init__(self, tokenizer, eod: int, bos: Optional[int] = None) -> None:
        self._tok = tokenizer
        self.eod = int(eod)
        self.bos = bos

    @property
    def vocab_size(self) -> int:
        return self._tok.vocab_size

    def tokenize(self, text: str) -> List[int]:
        return list(self._tok.encode(text))

    def detokenize(self, ids: Sequence[int], skip_special_tokens: bool = False, **kwargs) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


class IdsOnlyTokenizer:
    """No vocabulary: ids in, ids out. ``detokenize`` renders ids as text for megatron's bookkeeping."""

    def __init__(self, eod: int = -1, bos: Optional[int] = None) -> None:
        self.eod = int(eod)
        self.bos = bos

    def tokenize(self, text: str) -> List[int]:
        raise ValueError("this generation engine has no tokenizer: pass prompts and stop words as ids")

    def detokenize(self, ids: Sequence[int], skip_special_tokens: bool = False, **kwargs) -> str:
        return " ".join(str(int(i)) for i in ids)
