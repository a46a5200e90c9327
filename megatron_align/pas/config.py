"""Typed configuration of ``megatron-align pas generate`` / ``augment`` (YAML + dotted overrides)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from megatron_align.config.base import help_field
from megatron_align.config.model import ModelConfig
from megatron_align.config.parallel import ParallelConfig

TEACHER_KINDS = ("checkpoint", "openai")
CRITIC_MODES = ("teacher", "separate", "none")
ON_REJECT = ("rewrite", "regenerate")


@dataclass
class SamplingSection:
    temperature: float = help_field(0.7, help="Sampling temperature (0: greedy).")
    top_p: float = help_field(1.0, help="Nucleus sampling mass (1.0: off).")
    top_k: int = help_field(0, help="Top-k sampling (0: off; checkpoint teachers cannot combine it with top_p).")
    max_new_tokens: int = help_field(128, help="Reply length cap in tokens.")
    seed: int = help_field(1234, help="Sampling seed (checkpoint teachers; sent as `seed` to endpoints).")

    def validate(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"sampling.temperature: must be a finite number >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling.top_p: must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError("sampling.top_k must be >= 0 and sampling.max_new_tokens >= 1")


def check_engine_sampling(s: SamplingSection, where: str) -> None:
    """What megatron-core's engine cannot do (0.16.1 raises inside the step): top_k together with top_p."""
    if s.temperature > 0 and s.top_k > 1 and s.top_p < 1.0:
        raise ValueError(f"{where}: top_k and top_p cannot be combined on the megatron engine; set one of them off")


@dataclass
class TeacherConfig:
    """A model that answers chat requests: a megatron_align checkpoint (through the generation engine) or an
    OpenAI-compatible endpoint."""

    kind: str = help_field("checkpoint", choices=TEACHER_KINDS, help="checkpoint | openai")
    # checkpoint
    load: Optional[str] = help_field(None, help="checkpoint: run directory (with `latest`) or checkpoint dir.")
    template: Optional[str] = help_field(None, help="checkpoint: chat template (default: the model family's).")
    system_prompt: Optional[str] = help_field(
        None, help="checkpoint: system prompt for requests without one ('default': the template's own; null: none).")
    max_seq_length: int = help_field(2048, help="checkpoint: prompt + reply tokens at most (longer: counted, skipped).")
    max_requests: int = help_field(16, help="checkpoint: sequences decoded together (KV-cache slots).")
    kv_cache_gb: float = help_field(0.5, help="checkpoint: KV-cache memory per rank.")
    # openai
    base_url: Optional[str] = help_field(None, help="openai: e.g. http://127.0.0.1:8000/v1")
    model: Optional[str] = help_field(None, help="openai: the model name sent with each request.")
    api_key_env: Optional[str] = help_field(
        None, help="openai: name of the environment variable holding the api key (null: no key sent).")
    timeout_s: float = help_field(60.0, help="openai: seconds per request.")
    max_retries: int = help_field(5, help="openai: retries on connection errors, timeouts, 408/409/429/5xx.")
    backoff_s: float = help_field(0.5, help="openai: first retry delay; doubles per retry (Retry-After wins).")
    max_backoff_s: float = help_field(8.0, help="openai: retry delay cap.")
    concurrency: int = help_field(8, help="openai: requests in flight at once.")
    rate_limit_rps: float = help_field(0.0, help="openai: requests per second at most (0: unlimited).")
    sampling: SamplingSection = help_field(default_factory=SamplingSection, help="Sampling of the replies.")

    def validate(self) -> None:
        if self.kind == "openai" and not (self.base_url and self.model):
            raise ValueError("teacher.kind=openai needs base_url and model")
        if self.kind == "checkpoint" and not self.load:
            raise ValueError("teacher.kind=checkpoint needs load (a checkpoint path)")
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0 or self.rate_limit_rps < 0:
            raise ValueError("teacher: concurrency >= 1, max_retries >= 0, timeout_s > 0, rate_limit_rps >= 0")
        if self.max_seq_length < 2 or self.max_requests < 1:
            raise ValueError("teacher: max_seq_length >= 2 and max_requests >= 1")
        if self.kind == "checkpoint":
            check_engine_sampling(self.sampling, "teacher.sampling")


def _critic_teacher() -> TeacherConfig:
    return TeacherConfig(kind="openai", base_url="http://127.0.0.1:8000/v1", model="critic",
                         sampling=SamplingSection(temperature=0.0))


@dataclass
class CriticConfig:
    mode: str = help_field("teacher", choices=CRITIC_MODES,
                           help="teacher: the teacher judges its own complements; separate: `critic.teacher` "
                                "judges; none: no critique.")
    on_reject: str = help_field("rewrite", choices=ON_REJECT,
                                help="rewrite: the critic's corrected complement replaces a rejected one (the "
                                     "report's way); regenerate: ask the teacher again.")
    teacher: TeacherConfig = help_field(default_factory=_critic_teacher, help="The critic (mode=separate).")


@dataclass
class PasGenerateConfig:
    input: str = help_field("", help="Selected prompts JSONL: {prompt|messages, id?, category?, ...}.")
    output: str = help_field("", help="SFT chat JSONL, appended per prompt (a re-run resumes).")
    dropped: Optional[str] = help_field(None, help="Ledger of dropped prompts (default: <output>.dropped.jsonl).")
    stats: Optional[str] = help_field(None, help="Stats summary JSON (default: <output>.stats.json).")
    id_field: str = help_field("id", help="Field holding a prompt's stable id (absent: a hash of the prompt).")
    category_field: str = help_field("category", help="Field naming a prompt's category (picks few-shot pairs).")
    few_shot: Optional[str] = help_field(
        None, help="Golden pairs JSONL {prompt, complement, category?}: up to few_shot_per_prompt of the prompt's "
                   "category (else uncategorised ones) become earlier turns of the request.")
    few_shot_per_prompt: int = help_field(4, help="Golden pairs per request at most.")
    max_words: int = help_field(60, help="Complements longer than this are bad replies (counted, regenerated).")
    max_tries: int = help_field(3, help="Teacher/critic rounds per prompt before it is dropped (counted).")
    batch_size: int = help_field(16, help="Prompts per round trip (and per append to the output).")
    max_prompts: Optional[int] = help_field(None, help="Stop after this many new prompts (resume later).")
    teacher: TeacherConfig = help_field(default_factory=TeacherConfig, help="The complement writer.")
    critic: CriticConfig = help_field(default_factory=CriticConfig, help="The critique step.")
    model: ModelConfig = help_field(default_factory=ModelConfig, help="Backends/precision of checkpoint teachers.")
    parallel: ParallelConfig = help_field(default_factory=ParallelConfig, help="TP/PP of checkpoint teachers.")

    def validate(self) -> None:
        if not self.input or not self.output:
            raise ValueError("input and output are required (config keys or --input/--out)")
        if self.max_tries < 1 or self.batch_size < 1 or self.max_words < 1 or self.few_shot_per_prompt < 0:
            raise ValueError("max_tries, batch_size, max_words must be >= 1 and few_shot_per_prompt >= 0")
        if self.max_prompts is not None and self.max_prompts < 0:
            raise ValueError("max_prompts must be >= 0")
        self.teacher.validate()  # a section left at its defaults is not validated by the loader
        if self.critic.mode == "separate":
            self.critic.teacher.validate()


@dataclass
class PasAugmentConfig:
    load: str = help_field("", help="The PAS model checkpoint.")
    input: str = help_field("", help="User prompts JSONL: {prompt|messages, ...}.")
    output: str = help_field("", help="Augmented JSONL: the lines with the complement appended to the prompt.")
    id_field: str = help_field("id", help="Field holding a prompt's stable id (absent: a hash of the prompt).")
    template: Optional[str] = help_field(None, help="Chat template (default: the model family's).")
    system_prompt: Optional[str] = help_field(None, help="System prompt of the PAS requests (null: none).")
    max_seq_length: int = help_field(1024, help="Request + complement tokens at most (longer prompts: kept "
                                                "unaugmented, counted).")
    max_requests: int = help_field(32, help="Sequences decoded together.")
    kv_cache_gb: float = help_field(0.5, help="KV-cache memory per rank.")
    batch_size: int = help_field(64, help="Prompts per engine call (and per append).")
    sampling: SamplingSection = help_field(default_factory=lambda: SamplingSection(temperature=0.0, max_new_tokens=96),
                                           help="Sampling (default greedy).")
    model: ModelConfig = help_field(default_factory=ModelConfig, help="Backends/precision.")
    parallel: ParallelConfig = help_field(default_factory=ParallelConfig, help="TP/PP.")

    def validate(self) -> None:
        if not self.load or not self.input or not self.output:
            raise ValueError("load, input and output are required (config keys or --load/--input/--out)")
        if self.batch_size < 1 or self.max_requests < 1:
            raise ValueError("batch_size and max_requests must be >= 1")
        check_engine_sampling(self.sampling, "sampling")
