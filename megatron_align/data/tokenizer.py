"""A local tokenizer directory behind the small interface the data layer needs.

Two backends, picked by what the directory holds:

* ``tokenizer.json`` (Hugging Face ``tokenizers``): Llama-3, Qwen2, the bundled tiny tokenizer;
* ``tokenizer.model`` only (a sentencepiece model: Baichuan2, Llama-2): loaded with the ``sentencepiece``
  package, no remote code; its control and user-defined pieces (``<reserved_106>``, ``</s>``) are single ids.

Content text is encoded as plain text: a literal ``<|im_end|>`` typed by a user is ordinary text, never a
control token (the ``tokenizers`` backend encodes with ``encode_special_tokens=True``). Control tokens come only
from the template, as single ids looked up with :meth:`ChatTokenizer.special_id`, which fails naming the token
and the tokenizer path. The directory's ``tokenizer_config.json`` / ``chat_template.jinja`` give the checkpoint's
own chat template (:attr:`ChatTokenizer.chat_template`) and the special-token strings it renders with.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from megatron_align.data.errors import DataError

PAD_CANDIDATES = ("<pad>", "<|endoftext|>", "<unk>", "</s>")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
#: files of a tokenizer directory that a checkpoint must carry for the tokenizer and its chat template to load
CARRIED_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                 "chat_template.jinja")


def resolve_tokenizer_file(path: str) -> str:
    """``path`` may be a directory holding tokenizer.json (preferred) or tokenizer.model, or either file."""
    if os.path.isdir(path):
        for name in TOKENIZER_FILES:
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
    elif os.path.isfile(path):
        return path
    raise DataError(path, None, "no tokenizer.json found (give a directory holding tokenizer.json or a sentencepiece "
                                "tokenizer.model, or the file itself)")


def _token_text(value) -> Optional[str]:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class _HFBackend:
    """``tokenizers.Tokenizer`` from tokenizer.json."""

    def __init__(self, file: str) -> None:
        from tokenizers import Tokenizer

        try:
            self.tok = Tokenizer.from_file(file)
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise DataError(file, None, f"cannot load tokenizer: {exc}") from exc
        self.tok.encode_special_tokens = True

    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> List[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: List[int], skip_special_tokens: bool) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> Optional[int]:
        return self.tok.token_to_id(token)

    def control_tokens(self) -> List[str]:
        return [t.content for t in self.tok.get_added_tokens_decoder().values()]


class _SentencePieceBackend:
    """A sentencepiece ``tokenizer.model``: control / user-defined pieces are the control tokens. (sentencepiece
    itself matches user-defined pieces inside text, as the models' own slow tokenizers do.)"""

    def __init__(self, file: str) -> None:
        try:
            import sentencepiece as spm
        except ImportError:
            raise DataError(file, None, "a sentencepiece tokenizer.model needs the sentencepiece package "
                                        "(pip install sentencepiece)") from None
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(file)
        except (OSError, RuntimeError) as exc:
            raise DataError(file, None, f"cannot load sentencepiece model: {exc}") from exc
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        with open(file, "rb") as f:
            proto.ParseFromString(f.read())
        kinds = (pb.ModelProto.SentencePiece.CONTROL, pb.ModelProto.SentencePiece.USER_DEFINED)
        self._special = {i for i, p in enumerate(proto.pieces) if p.type in kinds}
        self._specials = {self.sp.IdToPiece(i): i for i in self._special}

    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def encode(self, text: str) -> List[int]:
        return list(self.sp.EncodeAsIds(text)) if text else []

    def decode(self, ids: List[int], skip_special_tokens: bool) -> str:
        out: List[str] = []
        run: List[int] = []
        for i in ids:
            if i in self._special:
                out.append(self.sp.DecodeIds(run) if run else "")
                run = []
                if not skip_special_tokens:
                    out.append(self.sp.IdToPiece(i))
            else:
                run.append(i)
        out.append(self.sp.DecodeIds(run) if run else "")
        return "".join(out)

    def token_id(self, token: str) -> Optional[int]:
        if token in self._specials:
            return self._specials[token]
        i = self.sp.PieceToId(token)
        return i if self.sp.IdToPiece(i) == token and not self.sp.IsUnknown(i) else None

    def control_tokens(self) -> List[str]:
        return list(self._specials)


class ChatTokenizer:
    """A tokenizer directory (or file); ids are plain Python ints."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.file = resolve_tokenizer_file(path)
        self.dir = os.path.dirname(os.path.abspath(self.file))
        self.kind = "sentencepiece" if self.file.endswith(".model") else "tokenizers"
        self._backend = _SentencePieceBackend(self.file) if self.kind == "sentencepiece" else _HFBackend(self.file)
        self._cache: Dict[str, List[int]] = {}
        self._config = self._read_config()
        self.pad_id = self._pick_pad_id()

    def _read_config(self) -> dict:
        cfg_path = os.path.join(self.dir, "tokenizer_config.json")
        if os.path.isfile(cfg_path):
            try:
                with open(cfg_path, encoding="utf-8") as f:
                    return json.load(f)
            except json.JSONDecodeError as exc:
                raise DataError(cfg_path, exc.lineno, f"not valid JSON: {exc.msg}") from None
        return {}

    def _pick_pad_id(self) -> int:
        pad = _token_text(self._config.get("pad_token"))
        for name in ([pad] if pad else []) + list(PAD_CANDIDATES):
            tid = self._backend.token_id(name)
            if tid is not None:
                return tid
        return 0

    def files(self) -> List[str]:
        """The files of this tokenizer's directory to copy next to a checkpoint (tokenizer, config, template)."""
        return [os.path.join(self.dir, n) for n in CARRIED_FILES if os.path.isfile(os.path.join(self.dir, n))]

    # -- the checkpoint's chat template -----------------------------------------------------------
    @property
    def chat_template(self) -> Optional[str]:
        """The directory's own Jinja chat template: ``chat_template.jinja`` (what transformers writes since 4.49,
        and prefers), else ``tokenizer_config.json``'s ``chat_template`` (a string, or a list of named templates:
        the one named ``default``); None when there is none."""
        src = self.chat_template_source
        return None if src is None else src[1]

    @property
    def chat_template_source(self) -> Optional[Tuple[str, str]]:
        """(file it came from, template text) or None."""
        jinja_file = os.path.join(self.dir, "chat_template.jinja")
        if os.path.isfile(jinja_file):
            with open(jinja_file, encoding="utf-8") as f:
                return jinja_file, f.read()
        value = self._config.get("chat_template")
        where = os.path.join(self.dir, "tokenizer_config.json")
        if isinstance(value, list):
            named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
            value = named.get("default")
        return (where, value) if isinstance(value, str) and value.strip() else None

    def special_tokens_map(self) -> Dict[str, str]:
        """``bos_token`` etc. as strings (what a chat template renders), from tokenizer_config.json."""
        out = {}
        for key in SPECIAL_TOKEN_KEYS:
            text = _token_text(self._config.get(key))
            if text is not None:
                out[key] = text
        return out

    def control_tokens(self) -> List[str]:
        """Strings that the tokenizer maps to one id each when a template writes them (added / control tokens)."""
        return self._backend.control_tokens()

    # -- encoding ---------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._backend.vocab_size()

    def encode(self, text: str) -> List[int]:
        """Ids of ``text`` as plain text: no BOS/EOS added, special-token strings not interpreted."""
        return self._backend.encode(text)

    def encode_cached(self, text: str) -> List[int]:
        """Like :meth:`encode`, memoised: for the short fixed strings of templates (role names, newlines)."""
        ids = self._cache.get(text)
        if ids is None:
            ids = self._cache[text] = self.encode(text)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._backend.decode([int(i) for i in ids], skip_special_tokens)

    def token_id(self, token: str) -> Optional[int]:
        return self._backend.token_id(token)

    def special_id(self, token: str, template: str = "") -> int:
        """The single id of a template control token, or a DataError naming token and tokenizer path."""
        tid = self._backend.token_id(token)
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
