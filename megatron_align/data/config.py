"""Typed configuration of the data layer (``data.*`` keys of a stage config).

Each field is a :func:`help_field`: ``metadata["help"]`` (docs and CLI) and, for enumerations,
``metadata["choices"]`` (non-null values). ``validate()`` raises ``ValueError`` naming ``data.<field>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from megatron_align.config.base import help_field

TINY_ASSETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "tiny")
DEFAULT_TOKENIZER = TINY_ASSETS_DIR
DEFAULT_TRAIN_PATH = os.path.join(TINY_ASSETS_DIR, "chat_train.jsonl")
DEFAULT_EVAL_PATH = os.path.join(TINY_ASSETS_DIR, "chat_eval.jsonl")

OVERLONG_CHOICES = ("truncate", "drop")
ON_BAD_LINE_CHOICES = ("error", "skip")
TEMPLATE_CHOICES = ("auto", "llama3", "llama3.1", "chatml", "baichuan")  # = templates.TEMPLATE_NAMES


@dataclass
class DataConfig:
    path: str = help_field(
        DEFAULT_TRAIN_PATH,
        help="training data: a chat JSONL file (*.jsonl) or the prefix of an indexed dataset "
             "written by `megatron-align preprocess` (<prefix>.bin/.idx/.meta.json)")
    eval_path: Optional[str] = help_field(
        DEFAULT_EVAL_PATH, help="evaluation data, same formats as `path`; null for none")
    tokenizer: str = help_field(
        DEFAULT_TOKENIZER,
        help="tokenizer: a directory holding tokenizer.json, or the tokenizer.json file itself "
             "(default: the bundled tiny byte-level BPE)")
    template: Optional[str] = help_field(
        "auto", choices=TEMPLATE_CHOICES,
        help="chat template: 'auto' uses the tokenizer directory's own chat_template (tokenizer_config.json or "
             "chat_template.jinja) and falls back to the model family's built-in template; a built-in name "
             "forces it; null: the family's built-in (llama->llama3, llama3.1 presets->llama3.1, qwen2->chatml, "
             "baichuan2->baichuan)")
    system_prompt: Optional[str] = help_field(
        "default", help="system prompt for conversations that have none: 'default' = the template's own "
                        "(Qwen2's 'You are a helpful assistant.' for chatml, none for the others), null = none, "
                        "or your text")
    packing: bool = help_field(
        True, help="pack several samples per sequence (attention isolated per sample via cu_seqlens); "
                   "false: one sample per row, right-padded")
    seq_length: int = help_field(
        512, help="tokens per sequence (row) fed to the model; longer samples are truncated or dropped")
    overlong: str = help_field(
        "truncate", choices=OVERLONG_CHOICES,
        help="what to do with samples longer than seq_length (counted in the data stats)")
    on_bad_line: str = help_field(
        "error", choices=ON_BAD_LINE_CHOICES,
        help="a malformed JSONL record: 'error' stops with file:line, 'skip' counts and skips it")
    cache_dir: Optional[str] = help_field(
        None, help="where a JSONL data.path/eval_path is tokenized once and reused by later launches and every rank "
                   "(indexed format, memory-mapped); null: $MEGATRON_ALIGN_CACHE, else ~/.cache/megatron_align/"
                   "tokenized. Must be shared by the nodes of a multi-node run (else each node builds its own)")
    shuffle: bool = help_field(True, help="shuffle sample order each epoch (seeded by seed and the epoch number)")
    seed: int = help_field(1234, help="seed of the per-epoch shuffle")
    balance_dp_by_tokens: bool = help_field(
        True, help="split each global batch across data-parallel ranks balanced by token count "
                   "(deterministic); false: strided split by position")

    def validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"data.{name}: {why}")

        if not isinstance(self.path, str) or not self.path:
            raise bad("path", f"must be a non-empty path, got {self.path!r}")
        if self.eval_path is not None and (not isinstance(self.eval_path, str) or not self.eval_path):
            raise bad("eval_path", f"must be a non-empty path or null, got {self.eval_path!r}")
        if not isinstance(self.tokenizer, str) or not self.tokenizer:
            raise bad("tokenizer", f"must be a non-empty path, got {self.tokenizer!r}")
        if self.template is not None and self.template not in TEMPLATE_CHOICES:
            raise bad("template", f"unknown template {self.template!r} (expected one of {', '.join(TEMPLATE_CHOICES)})")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise bad("system_prompt", f"must be a string or null, got {type(self.system_prompt).__name__}")
        for name in ("packing", "shuffle", "balance_dp_by_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, f"must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.seq_length, bool) or not isinstance(self.seq_length, int) or self.seq_length < 2:
            raise bad("seq_length", f"must be an integer >= 2, got {self.seq_length!r}")
        if self.overlong not in OVERLONG_CHOICES:
            raise bad("overlong", f"must be one of {', '.join(OVERLONG_CHOICES)}, got {self.overlong!r}")
        if self.on_bad_line not in ON_BAD_LINE_CHOICES:
            raise bad("on_bad_line", f"must be one of {', '.join(ON_BAD_LINE_CHOICES)}, got {self.on_bad_line!r}")
        if self.cache_dir is not None and (not isinstance(self.cache_dir, str) or not self.cache_dir):
            raise bad("cache_dir", f"must be a non-empty path or null, got {self.cache_dir!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", f"must be a non-negative integer, got {self.seed!r}")
