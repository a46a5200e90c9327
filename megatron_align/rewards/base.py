"""What a reward component is: a function of (prompt, response, sample fields) -> float.

Rule verifiers (verifiers.py), user functions from a file (user.py) and a reward model (model.py)
all become :class:`RewardComponent` objects; :class:`~megatron_align.rewards.combine.CombinedReward`
weights and sums them, turning a component that raises or returns NaN into its fallback value.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Sequence

RewardFn = Callable[[str, str, Mapping[str, Any]], float]


class RewardConfigError(ValueError):
    """A reward is misconfigured (unknown type, bad parameter, missing file/function); raised at
    build time, before any rollout."""


class RewardComponent:
    """Scores a batch. The default scores each sample with :meth:`score_one`; batched scorers (a
    reward model) override :meth:`score_batch`. An exception from ``score_batch`` fails every sample
    of the batch; per-sample exceptions fail only that sample."""

    def score_one(self, prompt: str, response: str, sample: Mapping[str, Any]) -> float:
        raise NotImplementedError(f"{type(self).__name__} must override score_one or score_batch")

    def score_batch(self, prompts: Sequence[str], responses: Sequence[str],
                    samples: Sequence[Mapping[str, Any]]) -> List[Any]:
        """Per sample: a float, or the exception that sample raised."""
        out: List[Any] = []
        for p, r, s in zip(prompts, responses, samples):
            try:
                out.append(self.score_one(p, r, s))
            except Exception as exc:  # noqa: BLE001 - a failing verifier is counted, never fatal
                out.append(exc)
        return out


class FunctionComponent(RewardComponent):
    """Wraps a plain ``fn(prompt, response, sample) -> float``."""

    def __init__(self, fn: RewardFn, name: str = "") -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "function")

    def score_one(self, prompt: str, response: str, sample: Mapping[str, Any]) -> float:
        return self.fn(prompt, response, sample)


# registry: type name -> factory(params: dict) -> RewardComponent
REWARD_TYPES: Dict[str, Callable[..., RewardComponent]] = {}


def register_reward(name: str):
    """Register a component factory under ``name`` (its keyword arguments are the config ``params``)."""

    def deco(factory):
        if name in REWARD_TYPES:
            raise ValueError(f"reward type {name!r} is registered twice")
        REWARD_TYPES[name] = factory
        return factory

    return deco
