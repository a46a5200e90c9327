"""The generation interface every rollout engine implements (megatron-core's now, vLLM later).

An engine takes prompts as token-id lists and returns, per prompt and in the same order, the generated
ids, the log-probability of each generated id and why generation stopped. Text never crosses this
interface: chat templating and detokenisation stay with the caller, so rollout and trainer see the
very same ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional, Protocol, Sequence, runtime_checkable


class FinishReason(str, Enum):
    STOP = "stop"  # a stop id was generated (it is the last generated id)
    LENGTH = "length"  # max_new_tokens reached (or the engine's max sequence length)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one batch of prompts.

    ``temperature == 0`` or ``top_k == 1`` is greedy decoding. ``top_k == 0`` and ``top_p == 1.0``
    switch the respective filters off. ``stop_ids``: generation ends after the first of these ids
    (the id is kept in the output). ``seed``: the same prompts with the same seed give the same
    tokens; ``None`` draws from the engine's running generator.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    stop_ids: Sequence[int] = field(default_factory=tuple)
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        object.__setattr__(self, "stop_ids", tuple(int(i) for i in self.stop_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


@dataclass
class Generation:
    """One prompt's completion. ``log_probs[i]`` is log π(token_ids[i] | prefix) under the model's
    unprocessed distribution (temperature 1, no top-k/top-p), as the engine computed it; trainers
    recompute behaviour log-probs with their own temperature."""

    token_ids: List[int]
    log_probs: List[float]
    finish_reason: FinishReason

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.log_probs):
            raise ValueError(f"{len(self.token_ids)} generated ids but {len(self.log_probs)} log-probs")


@runtime_checkable
class GenerationEngine(Protocol):
    """What a stage needs from a rollout engine. Collective: every rank of the model's
    tensor/pipeline groups calls ``generate`` with the same prompts and gets the same results."""

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> List[Generation]:
        ...


def truncate_at_stop(token_ids: List[int], log_probs: List[float], stop_ids: Sequence[int],
                     max_new_tokens: int) -> Generation:
    """Cut a raw completion after its first stop id (kept) or at ``max_new_tokens``."""
    stops = set(stop_ids)
    for i, t in enumerate(token_ids[:max_new_tokens]):
        if t in stops:
            return Generation(list(token_ids[: i + 1]), list(log_probs[: i + 1]), FinishReason.STOP)
    n = min(len(token_ids), max_new_tokens)
    return Generation(list(token_ids[:n]), list(log_probs[:n]), FinishReason.LENGTH)


@dataclass
class PromptScreen:
    """Which prompts can be generated from: ``kept`` indices, and how many were skipped and why."""

    kept: List[int]
    empty: int = 0
    too_long: int = 0

    @property
    def skipped(self) -> int:
        return self.empty + self.too_long


def screen_prompts(prompts: Sequence[Sequence[int]], max_prompt_length: int) -> PromptScreen:
    """Skip (and count) empty prompts and prompts longer than ``max_prompt_length`` tokens, before any
    rollout; an engine raises on either."""
    screen = PromptScreen(kept=[])
    for i, p in enumerate(prompts):
        if len(p) == 0:
            screen.empty += 1
        elif len(p) > max_prompt_length:
            screen.too_long += 1
        else:
            screen.kept.append(i)
    return screen
