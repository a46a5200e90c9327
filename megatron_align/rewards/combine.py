"""Weighted sum of reward components, with failures counted instead of crashing the run.

``total = Σ_c weight_c · value_c``, where ``value_c`` is the component's score, or its ``fallback``
when the component raised for that sample, returned NaN/inf, or returned something that is not a
number. Per-component values (after fallback) and failure counts come back for metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from megatron_align.rewards.base import REWARD_TYPES, RewardComponent, RewardConfigError


@dataclass
class RewardResult:
    total: List[float]
    components: Dict[str, List[float]]  # per component, per sample (fallback applied)
    failures: Dict[str, int]  # per component: samples that raised / were not finite
    errors: Dict[str, str] = field(default_factory=dict)  # per component: the first failure, for the log

    def metrics(self) -> Dict[str, tuple]:
        """``{name: (sum, count)}`` for the trainer's metric reduction (reward, each component, failures)."""
        n = len(self.total)
        out = {"reward": (sum(self.total), n)}
        for name, vals in self.components.items():
            out[f"reward/{name}"] = (sum(vals), n)
            out[f"reward_failures/{name}"] = (float(self.failures[name]), 1)
        return out


@dataclass
class _Entry:
    name: str
    component: RewardComponent
    weight: float
    fallback: float


class CombinedReward:
    def __init__(self, entries: Sequence[_Entry]) -> None:
        if not entries:
            raise RewardConfigError("rewards: at least one reward component is required")
        self.entries = list(entries)

    @property
    def names(self) -> List[str]:
        return [e.name for e in self.entries]

    def __call__(self, prompts: Sequence[str], responses: Sequence[str],
                 samples: Optional[Sequence[Mapping[str, Any]]] = None) -> RewardResult:
        n = len(prompts)
        if len(responses) != n:
            raise ValueError(f"{n} prompts but {len(responses)} responses")
        samples = list(samples) if samples is not None else [{} for _ in range(n)]
        if len(samples) != n:
            raise ValueError(f"{n} prompts but {len(samples)} samples")
        total = [0.0] * n
        components: Dict[str, List[float]] = {}
        failures: Dict[str, int] = {}
        errors: Dict[str, str] = {}
        for e in self.entries:
            try:
                raw = e.component.score_batch(prompts, responses, samples)
                if len(raw) != n:
                    raise ValueError(f"returned {len(raw)} values for {n} samples")
            except Exception as exc:  # noqa: BLE001 - a failing scorer fails its samples, not the run
                raw = [exc] * n
            vals, bad = [], 0
            for v in raw:
                value, why = _checked(v)
                if why is not None:
                    bad += 1
                    errors.setdefault(e.name, why)
                    value = e.fallback
                vals.append(value)
            components[e.name], failures[e.name] = vals, bad
            for i, v in enumerate(vals):
                total[i] += e.weight * v
        return RewardResult(total, components, failures, errors)


def _checked(v: Any):
    if isinstance(v, BaseException):
        return 0.0, f"{type(v).__name__}: {v}"
    if isinstance(v, bool):
        return float(v), None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return 0.0, f"returned {type(v).__name__} {v!r}, not a number"
    if not math.isfinite(f):
        return 0.0, f"returned {f}"
    return f, None


def build_reward(specs: Sequence[Any], base_dir: str = "") -> CombinedReward:
    """From reward specs (``megatron_align.config.rl.RewardSpec`` or mappings with ``type``, ``name``,
    ``weight``, ``fallback``, ``params``). Every component is constructed here, so a bad type, bad
    params, or a user function file/function that does not exist fails now, naming ``rewards[i]``."""
    import megatron_align.rewards.model  # noqa: F401 - registers the reward types
    import megatron_align.rewards.user  # noqa: F401
    import megatron_align.rewards.verifiers  # noqa: F401

    entries = []
    seen = set()
    for i, spec in enumerate(specs):
        get = spec.get if isinstance(spec, Mapping) else (lambda k, d=None, s=spec: getattr(s, k, d))
        kind = get("type")
        where = f"rl.rewards[{i}]"
        if kind not in REWARD_TYPES:
            raise RewardConfigError(f"{where}.type: unknown reward type {kind!r}; known: {', '.join(sorted(REWARD_TYPES))}")
        params = dict(get("params") or {})
        if kind == "function" and base_dir and "base_dir" not in params:
            params["base_dir"] = base_dir
        try:
            component = REWARD_TYPES[kind](**params)
        except RewardConfigError as e:
            raise RewardConfigError(f"{where}: {e}") from None
        except TypeError as e:
            raise RewardConfigError(f"{where}.params: {e}") from None
        name = get("name") or kind
        if name in seen:
            raise RewardConfigError(f"{where}.name: {name!r} is used by two components; give each a distinct name")
        seen.add(name)
        weight, fallback = float(get("weight", 1.0)), float(get("fallback", 0.0))
        if not (math.isfinite(weight) and math.isfinite(fallback)):
            raise RewardConfigError(f"{where}: weight and fallback must be finite numbers")
        entries.append(_Entry(name, component, weight, fallback))
    return CombinedReward(entries)
