"""RL prompts: the JSONL records, their tokenisation with the chat template, and the category-weighted sampler.

One line is one prompt::

    {"prompt": "text" | [messages...], "category": "math", "answer": "42", ...}     # any extra fields
    {"messages": [...]}                                                             # = "prompt" as a list

The prompt is rendered with the chat template and the assistant header (``add_generation_prompt``). A record
whose prompt text is empty and one longer than ``rl.rollout.max_prompt_length`` tokens is counted and skipped
(reported in the data summary), never silently dropped. Rewards get the last user message as ``prompt``
and the whole record as ``sample``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from megatron_align.data.jsonl import iter_records
from megatron_align.data.sampler import GlobalBatchSampler


@dataclass
class Prompt:
    ids: List[int]
    text: str  # the last user message (what rewards see as the prompt)
    record: Dict[str, Any]
    category: Optional[str] = None


@dataclass
class PromptStats:
    kept: int = 0
    empty: int = 0
    too_long: int = 0
    skipped_bad: int = 0

    def summary(self) -> str:
        return (f"{self.kept} prompts (skipped: {self.empty} empty, {self.too_long} over max_prompt_length, "
                f"{self.skipped_bad} bad lines)")


def parse_prompt(obj: object):
    """A decoded JSON value -> (messages, record); ``ValueError(reason)`` for a malformed one."""
    from megatron_align.data.preference import _messages

    if not isinstance(obj, dict):
        raise ValueError(f"record must be a JSON object, got {type(obj).__name__}")
    key = "prompt" if "prompt" in obj else "messages" if "messages" in obj else None
    if key is None:
        raise ValueError("missing 'prompt' (a string or a list of messages) or 'messages'")
    category = obj.get("category")
    if category is not None and not isinstance(category, str):
        raise ValueError(f"'category' must be a string, got {type(category).__name__}")
    value = obj[key]
    if isinstance(value, str) and not value.strip():
        return (), obj  # empty: counted by the dataset
    msgs = _messages(value, "prompt", "user")
    if msgs[-1].role == "assistant":
        raise ValueError("the prompt must end with a user (or system) message, not an assistant one")
    return msgs, obj


class PromptDataset:
    """The prompts of a JSONL file, tokenised; ``len``, ``ds[i] -> Prompt``, ``categories``, ``stats``."""

    def __init__(self, path: str, template, max_prompt_length: int, on_bad_line: str = "error",
                 vocab_size: Optional[int] = None) -> None:
        self.path = path
        self.stats = PromptStats()
        self.prompts: List[Prompt] = []
        skipped: List[int] = []
        for lineno, (msgs, rec) in iter_records(path, parse_prompt, on_bad_line, skipped):
            text = next((m.content for m in reversed(msgs) if m.role == "user"), "")
            if not msgs or not any(m.content.strip() for m in msgs):
                self.stats.empty += 1
                continue
            ids = list(template.encode(list(msgs), add_generation_prompt=True).ids)
            if len(ids) > max_prompt_length:
                self.stats.too_long += 1
                continue
            if vocab_size is not None and max(ids) >= vocab_size:
                from megatron_align.data.errors import DataError

                raise DataError(path, lineno, f"token id {max(ids)} is outside the vocabulary [0, {vocab_size})")
            self.prompts.append(Prompt(ids, text, rec, rec.get("category")))
        self.stats.kept = len(self.prompts)
        self.stats.skipped_bad = len(skipped)
        if not self.prompts:
            from megatron_align.data.errors import DataError

            raise DataError(path, None, f"no usable prompt ({self.stats.summary()})")
        self.lengths = np.asarray([len(p.ids) for p in self.prompts], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> Prompt:
        return self.prompts[int(i)]

    @property
    def categories(self) -> List[str]:
        return sorted({p.category for p in self.prompts if p.category is not None})


class WeightedPromptSampler(GlobalBatchSampler):
    """:class:`GlobalBatchSampler` over prompts whose epoch order follows ``rl.category_weights``: without
    weights (or all equal) a seeded permutation; otherwise N draws with replacement, prompt i with probability
    ∝ the weight of its category (unlisted categories and prompts without one weigh 1, weight 0 never drawn).
    So weight 2 draws a category's prompts twice as often as plain shuffling would. The order of epoch e depends
    only on (seed, e): the position in ``state_dict`` resumes exactly."""

    def __init__(self, categories: Sequence[Optional[str]], weights: Dict[str, float], global_batch_size: int,
                 seed: int, max_steps: Optional[int], epochs: Optional[float]) -> None:
        w = np.asarray([float(weights.get(c, 1.0)) if c is not None else 1.0 for c in categories])
        if not (w > 0).any():
            raise ValueError("rl.category_weights gives every prompt weight 0")
        self.probs = None if np.all(w == w[0]) else w / w.sum()
        super().__init__(len(categories), global_batch_size, seed=seed, shuffle=True, epochs=epochs,
                         max_steps=max_steps)

    def epoch_order(self, epoch: int) -> np.ndarray:
        if self.probs is None:
            return super().epoch_order(epoch)
        if self._order_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = rng.choice(self.num_samples, size=self.num_samples, replace=True, p=self.probs)
            self._order_epoch = epoch
        return self._order


@dataclass
class Group:
    """One prompt's rollout: its completions (ids, finish reasons), rewards, advantages."""

    prompt_index: int
    prompt: Prompt
    completions: List[List[int]] = field(default_factory=list)
    truncated: List[bool] = field(default_factory=list)
    rewards: List[float] = field(default_factory=list)
    advantages: List[float] = field(default_factory=list)
