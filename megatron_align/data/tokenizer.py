"""A local Hugging Face ``tokenizer.json`` behind the small interface the data layer needs.

Content text is encoded with ``encode_special_tokens=True``: a literal ``<|im_end|>`` typed by a user is
ordinary text, never a control token. Control tokens come only from the template, as single ids looked up
with :meth:`ChatTokenizer.special_id`, which fails naming the token and the tokenizer path.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

from megatron_align.data.errors import DataError

PAD_CANDIDATES = ("<pad>", "<|endoftext|>", "<unk>", "</s>")


def resolve_tokenizer_file(path: str) -> str:
    """``path`` may be a directory holding tokenizer.json or the file itself."""
    candidate = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(candidate):
        raise DataError(path, None, "no tokenizer.json found (give a directory holding tokenizer.json or the file)")
    return candidate


class ChatTokenizer:
    """Wraps ``tokenizers.Tokenizer``; ids are plain Python ints."""

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer

        self.path = path
        self.file = resolve_tokenizer_file(path)
        try:
            self._tok = Tokenizer.from_file(self.file)
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise DataError(self.file, None, f"cannot load tokenizer: {exc}") from exc
        self._tok.encode_special_tokens = True
        self._cache: Dict[str, List[int]] = {}
        self._config = self._read_config()
        self.pad_id = self._pick_pad_id()

    def _read_config(self) -> dict:
        cfg_path = os.path.join(os.path.dirname(self.file), "tokenizer_config.json")
        if os.path.isfile(cfg_path):
            with open(cfg_path, encoding="utf-8") as f:
                return json.load(f)
        return {}

    def _pick_pad_id(self) -> int:
        pad = self._config.get("pad_token")
        if isinstance(pad, dict):
            pad = pad.get("content")
        for name in ([pad] if pad else []) + list(PAD_CANDIDATES):
            tid = self._tok.token_to_id(name)
            if tid is not None:
                return tid
        return 0

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> List[int]:
        """Ids of ``text`` as plain text: no BOS/EOS added, special-token strings not interpreted."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_cached(self, text: str) -> List[int]:
        """Like :meth:`encode`, memoised: for the short fixed strings of templates (role names, newlines)."""
        ids = self._cache.get(text)
        if ids is None:
            ids = self._cache[text] = self.encode(text)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> Optional[int]:
        return self._tok.token_to_id(token)

    def special_id(self, token: str, template: str = "") -> int:
        """The single id of a template control token, or a DataError naming token and tokenizer path."""
        tid = self._tok.token_to_id(token)
        if tid is None:
            who = f"chat template {template!r}" if template else "the chat template"
            raise DataError(self.file, None, f"tokenizer has no single token {token!r}, which {who} needs; "
                                             f"add it as a special token or choose another template")
        return tid


_TOKENIZERS: Dict[str, ChatTokenizer] = {}


def load_tokenizer(path: str) -> ChatTokenizer:
    """Load (once per process and resolved path) the tokenizer at ``path``."""
    key = os.path.abspath(resolve_tokenizer_file(path))
    tok = _TOKENIZERS.get(key)
    if tok is None:
        tok = _TOKENIZERS[key] = ChatTokenizer(path)
    return tok
