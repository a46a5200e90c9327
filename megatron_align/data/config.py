"""Typed configuration of the data layer (``data.*`` keys of a stage config).

Each field is a :func:`help_field`: ``metadata["help"]`` (docs and CLI) and, for enumerations,
``metadata["choices"]`` (non-null values). ``validate()`` raises ``ValueError`` naming ``data.<field>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional

from megatron_align.config.base import ConfigError, help_field

TINY_ASSETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "tiny")
DEFAULT_TOKENIZER = TINY_ASSETS_DIR
DEFAULT_TRAIN_PATH = os.path.join(TINY_ASSETS_DIR, "chat_train.jsonl")
DEFAULT_EVAL_PATH = os.path.join(TINY_ASSETS_DIR, "chat_eval.jsonl")

OVERLONG_CHOICES = ("truncate", "drop")
ON_BAD_LINE_CHOICES = ("error", "skip")
TEMPLATE_CHOICES = ("auto", "llama3", "llama3.1", "chatml", "baichuan")  # = templates.TEMPLATE_NAMES
#: = formats.format_names() (checked by tests/data/test_formats.py)
FORMAT_CHOICES = ("auto", "messages", "sharegpt", "alpaca", "prompt_completion", "query_response", "text",
                  "preference", "unpaired", "tokens")


@dataclass(frozen=True)
class DataSource:
    """One dataset of ``data.path`` / ``data.eval_path``: where it is, its sampling weight (normalised over the
    mixture) and the name its metrics and counts are reported under."""

    path: str
    weight: float = 1.0
    name: str = ""


@dataclass
class DataConfig:
    path: Any = help_field(
        DEFAULT_TRAIN_PATH,
        help="training data: a data file (JSONL, .jsonl.gz/.zst, JSON array, Parquet, Arrow), a Hugging Face "
             "save_to_disk directory, a directory or glob of shards, or the prefix of an indexed dataset written by "
             "`megatron-align preprocess` (<prefix>.bin/.idx/.meta.json); or a mixture: a list of "
             "{path, weight, name} (weights normalised, name defaults to the file name without suffix)")
    eval_path: Any = help_field(
        None, help="evaluation data, same forms as `path` (a list: each dataset evaluated whole and reported under "
                   "its name, no weights); null (default): no evaluation")
    format: str = help_field(
        "auto", choices=FORMAT_CHOICES,
        help="record format of the data files: 'auto' detects it per file from the first valid record (messages, "
             "sharegpt, alpaca, prompt_completion, query_response, text; preference / unpaired for the "
             "preference stages), or name one to require it")
    tokenizer: Optional[str] = help_field(
        None,
        help="tokenizer: a directory holding tokenizer.json, or the tokenizer.json file itself; null (default): "
             "the tokenizer saved with train.load, or the bundled tiny byte-level BPE when there is no train.load")
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

        parse_sources(self.path, "path", weighted=True)
        if self.eval_path is not None:
            parse_sources(self.eval_path, "eval_path", weighted=False)
        if self.format not in FORMAT_CHOICES:
            raise bad("format", f"unknown record format {self.format!r} (expected one of {', '.join(FORMAT_CHOICES)})")
        if self.tokenizer is not None and (not isinstance(self.tokenizer, str) or not self.tokenizer):
            raise bad("tokenizer", f"must be a non-empty path or null, got {self.tokenizer!r}")
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

    def sources(self) -> List[DataSource]:
        """``data.path`` as datasets with normalised weights (one dataset of weight 1 for a single path)."""
        return parse_sources(self.path, "path", weighted=True)

    def eval_sources(self) -> List[DataSource]:
        """``data.eval_path`` as datasets ([] when null)."""
        return [] if self.eval_path is None else parse_sources(self.eval_path, "eval_path", weighted=False)


def parse_sources(value: Any, key: str, weighted: bool) -> List[DataSource]:
    """A path, or a list of paths / ``{path, weight, name}`` mappings -> datasets; ValueError naming
    ``data.<key>[i].<field>`` for anything else. Weights are normalised to sum to 1."""
    from megatron_align.data.sources import source_label

    def bad(where: str, why: str) -> ValueError:
        return ValueError(f"data.{key}{where}: {why}")

    if isinstance(value, str):
        if not value:
            raise bad("", "must be a non-empty path")
        return [DataSource(value, 1.0, source_label(value))]
    if not isinstance(value, (list, tuple)) or not value:
        raise bad("", f"must be a path or a non-empty list of {{path, weight, name}}, got {value!r}")
    out: List[DataSource] = []
    for i, item in enumerate(value):
        item = {"path": item} if isinstance(item, str) else item
        if not isinstance(item, dict):
            raise bad(f"[{i}]", f"must be a path or a mapping {{path, weight, name}}, got {item!r}")
        unknown = sorted(set(item) - {"path", "weight", "name"})
        if unknown:
            raise bad(f"[{i}].{unknown[0]}", "unknown key (a dataset has path, weight, name)")
        path, weight, name = item.get("path"), item.get("weight", 1.0), item.get("name")
        if not isinstance(path, str) or not path:
            raise bad(f"[{i}].path", f"must be a non-empty path, got {path!r}")
        if not weighted and "weight" in item:
            raise bad(f"[{i}].weight", "evaluation sets are evaluated whole; weights apply to data.path only")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0 or weight == float("inf"):
            raise bad(f"[{i}].weight", f"must be a number > 0, got {weight!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise bad(f"[{i}].name", f"must be a non-empty string, got {name!r}")
        out.append(DataSource(path, float(weight), name or source_label(path)))
    names = [s.name for s in out]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise bad(f"[{i}].name", f"dataset name {n!r} is used twice (names default to the file name without "
                                     f"suffix); give each dataset its own name")
    total = sum(s.weight for s in out)
    return [DataSource(s.path, s.weight / total, s.name) for s in out]


def single_path(value: Any, stage: str) -> str:
    """The one path of ``data.path`` / ``data.eval_path`` for a stage that reads no mixture (a one-entry list
    gives its path); a ConfigError for a list of several."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return parse_sources(value, "path", weighted=True)[0].path
    raise ConfigError(f"data.path / data.eval_path: a mixture of several datasets is read by sft only; the {stage} "
                      f"stage takes one data path (a file, a directory or a glob of shards)")


def default_tokenizer(load: Optional[str]) -> str:
    """``data.tokenizer`` when it is null: the tokenizer saved with the ``train.load`` checkpoint, or the bundled
    tiny one when there is no ``train.load``. A ``train.load`` without a tokenizer is a ConfigError (the tiny
    tokenizer would silently mismatch its weights)."""
    if not load:
        return DEFAULT_TOKENIZER
    from megatron_align.checkpoint import layout

    try:
        ckpt = layout.resolve(load)
    except layout.CheckpointError as exc:
        raise ConfigError(f"data.tokenizer is null, so it comes from train.load, but {exc}") from None
    tok_dir = os.path.join(ckpt, layout.TOKENIZER_DIR)
    if not os.path.isdir(tok_dir) or not os.listdir(tok_dir):
        raise ConfigError(f"data.tokenizer: null (the default) takes the tokenizer saved with train.load, but "
                          f"{ckpt} has no {layout.TOKENIZER_DIR}/ directory; set data.tokenizer to the model's "
                          f"tokenizer")
    return tok_dir
