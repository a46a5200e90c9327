"""One RL rollout: generate ``rl.num_generations`` completions per prompt with the policy's current weights,
score them, and turn the groups into units the trainer packs.

Each data-parallel replica of the generating model (the policy at its training layout, or the ``rl.rollout.tp``
replica refreshed by :class:`~megatron_align.rollout.refit.Refitter`) generates and scores its share of the
prompts; the results (ids and rewards, small) are then gathered on every rank, so the rollout batch, its
advantages and its metrics are the same everywhere and the trainer shards the *groups* over data-parallel ranks
like any other units (a group never straddles data-parallel ranks; its completions are packed as documents).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np

from megatron_align.data.samples import DataStats, Sample, Unit
from megatron_align.stages.rl_prompts import Group, Prompt


class RolloutDataset:
    """Groups as units: document j of group g is prompt + completion j (loss on the completion tokens),
    ``values["adv"]`` its advantage (GRPO), ``values["score"]`` its reward. ``ds[i]`` / ``get_units`` / ``lengths`` as the trainer expects."""

    def __init__(self, groups: Sequence[Group]) -> None:
        self.groups = list(groups)
        self._units: List[Unit] = []
        k = 0
        for u, g in enumerate(self.groups):
            docs = []
            for j, comp in enumerate(g.completions):
                ids = np.asarray(list(g.prompt.ids) + list(comp), dtype=np.int64)
                mask = np.concatenate([np.zeros(len(g.prompt.ids), np.uint8), np.ones(len(comp), np.uint8)])
                adv = float(g.advantages[j]) if g.advantages else 0.0
                docs.append(Sample(k, ids, mask, g.prompt.category, j, {"adv": adv, "score": float(g.rewards[j])}))
                k += 1
            self._units.append(Unit(u, docs, g.prompt.category, None))
        self.lengths = np.asarray([len(u) for u in self._units], dtype=np.int64)
        self.stats = DataStats(n_samples=len(self._units))

    def __len__(self) -> int:
        return len(self._units)

    def __getitem__(self, i: int) -> Unit:
        return self._units[int(i)]

    def get_units(self, ids: Sequence[int]) -> List[Unit]:
        """The completions of groups ``ids``, one unit each: the trainer shards *groups* over data-parallel ranks
        (``lengths`` are the groups'), so a group stays on one rank, and packs its completions as separate
        documents (a row holds one prompt + completion at least, not a whole group)."""
        return [Unit(d.sample_id, [d], u.category, None) for i in ids for u in [self._units[int(i)]] for d in u.docs]


def stop_ids(tokenizer, template, extra: Sequence[str] = ()) -> List[int]:
    """The ids that end a completion: the tokenizer's EOS, the chat template's end of an assistant turn and
    ``rl.rollout.stop_tokens`` (each must be one token: a ConfigError otherwise)."""
    from megatron_align.config.base import ConfigError

    ids: List[int] = []
    enc = template.encode([("user", "x"), ("assistant", "y")])
    marked = [i for i, m in zip(enc.ids, enc.target_mask) if m]
    if marked:
        ids.append(int(marked[-1]))  # the assistant turn's last trained token: its end-of-turn id
    eos = tokenizer.special_tokens_map().get("eos_token")
    for tok in ([eos] if eos else []) + list(extra):
        tid = tokenizer.token_id(tok)
        if tid is None:
            if tok in extra:
                raise ConfigError(f"rl.rollout.stop_tokens: {tok!r} is not a single token of the tokenizer")
            continue
        ids.append(int(tid))
    return list(dict.fromkeys(ids))


@dataclass
class RolloutStats:
    generate_s: float = 0.0
    score_s: float = 0.0
    refit_s: float = 0.0
    generated_tokens: int = 0
    failures: Dict[str, int] = field(default_factory=dict)
    errors: Dict[str, str] = field(default_factory=dict)
    components: Dict[str, List[float]] = field(default_factory=dict)  # global order, per completion


class Roller:
    """Generates and scores rollouts (collective over all ranks)."""

    def __init__(self, engine, reward, tokenizer, rollout_cfg, stops: Sequence[int], dp_rank: int, dp_size: int,
                 refitter=None) -> None:
        self.engine, self.reward, self.tok = engine, reward, tokenizer
        self.cfg, self.stops = rollout_cfg, list(stops)
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.refitter = refitter

    def params(self, step: int, greedy: bool = False):
        from megatron_align.rollout.engine import SamplingParams

        c = self.cfg
        seed = c.seed + step * self.dp_size + self.dp_rank  # per step and replica: reproducible, resumable
        if greedy:
            return SamplingParams(temperature=0.0, max_new_tokens=c.max_new_tokens, stop_ids=self.stops, seed=seed)
        return SamplingParams(temperature=c.temperature, top_p=c.top_p, top_k=c.top_k,
                              max_new_tokens=c.max_new_tokens, stop_ids=self.stops, seed=seed)

    def run(self, prompts: Sequence[Prompt], num_generations: int, step: int, greedy: bool = False):
        """``prompts`` (the global batch, in order) -> groups with completions and rewards (every rank), stats."""
        import torch.distributed as dist

        stats = RolloutStats()
        if self.refitter is not None:
            stats.refit_s = self.refitter.refit().seconds
        mine = list(range(self.dp_rank, len(prompts), self.dp_size))
        requests = [prompts[i].ids for i in mine for _ in range(num_generations)]
        t0 = time.perf_counter()
        gens = self.engine.generate(requests, self.params(step, greedy)) if requests else []
        stats.generate_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        texts = [self.tok.decode(g.token_ids, skip_special_tokens=True) for g in gens]
        owners = [prompts[i] for i in mine for _ in range(num_generations)]
        result = self.reward([p.text for p in owners], texts, [p.record for p in owners]) if gens else None
        stats.score_s = time.perf_counter() - t0
        local = {}
        for k, i in enumerate(mine):
            sl = slice(k * num_generations, (k + 1) * num_generations)
            local[i] = {"ids": [g.token_ids for g in gens[sl]],
                        "truncated": [g.finish_reason.value == "length" for g in gens[sl]],
                        "reward": result.total[sl],
                        "components": {n: v[sl] for n, v in result.components.items()}}
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, {"groups": local, "failures": result.failures if result else {},
                                       "errors": result.errors if result else {}, "dp_rank": self.dp_rank})
        merged: Dict[int, dict] = {}
        seen = set()
        for part in parts:
            merged.update(part["groups"])
            if part["dp_rank"] not in seen:  # the ranks of one replica scored the same completions: count once
                seen.add(part["dp_rank"])
                for n, c in part["failures"].items():
                    stats.failures[n] = stats.failures.get(n, 0) + int(c)
                for n, e in part["errors"].items():
                    stats.errors.setdefault(n, e)
        groups = []
        for i, p in enumerate(prompts):
            r = merged[i]
            groups.append(Group(i, p, r["ids"], r["truncated"], [float(x) for x in r["reward"]]))
            for n, v in r["components"].items():
                stats.components.setdefault(n, []).extend(float(x) for x in v)
        stats.generated_tokens = sum(len(c) for g in groups for c in g.completions)
        return groups, stats


def rollout_metrics(groups: Sequence[Group], stats: RolloutStats, categories: Sequence[str],
                    prefix: str = "") -> Dict[str, float]:
    """Reward mean / std (overall, per category, per component), failures, lengths, truncation, timing."""
    rewards = np.asarray([r for g in groups for r in g.rewards], dtype=np.float64)
    lengths = np.asarray([len(c) for g in groups for c in g.completions], dtype=np.float64)
    truncated = np.asarray([t for g in groups for t in g.truncated], dtype=np.float64)
    out: Dict[str, float] = {f"{prefix}reward": float(rewards.mean()),
                             f"{prefix}reward_std": float(rewards.std(ddof=1)) if rewards.size > 1 else 0.0}
    for cat in categories:
        vals = [r for g in groups if g.prompt.category == cat for r in g.rewards]
        if vals:
            out[f"{prefix}reward/category/{cat}"] = float(np.mean(vals))
    for name, vals in stats.components.items():
        out[f"{prefix}reward/{name}"] = float(np.mean(vals))
        out[f"{prefix}reward_failures/{name}"] = float(stats.failures.get(name, 0))
    out.update({f"{prefix}response_length": float(lengths.mean()), f"{prefix}response_length_max": float(lengths.max()),
                f"{prefix}truncated_rate": float(truncated.mean())})
    if not prefix:
        out.update({"time/generate": stats.generate_s, "time/score": stats.score_s, "time/refit": stats.refit_s,
                    "generated_tokens": float(stats.generated_tokens),
                    "generate_tokens_per_sec": stats.generated_tokens / max(stats.generate_s, 1e-9)})
    return out
