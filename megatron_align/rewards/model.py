"""The reward-model slot: a frozen model scores (prompt, response) pairs in-process, in batches.

The RM stage supplies the scorer (anything with ``score(prompts, responses, samples) -> list of
floats``); the reward registry only knows the interface. Scorers are registered by name at runtime
with :func:`register_scorer` (the GRPO/PPO stage registers the loaded reward model as e.g. ``"rm"``)
and referenced from the config as ``type: model, params: {scorer: rm}``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Protocol, Sequence, runtime_checkable

from megatron_align.rewards.base import RewardComponent, RewardConfigError, register_reward


@runtime_checkable
class RewardScorer(Protocol):
    def score(self, prompts: Sequence[str], responses: Sequence[str],
              samples: Sequence[Mapping[str, Any]]) -> Sequence[float]:
        ...


_SCORERS: Dict[str, RewardScorer] = {}


def register_scorer(name: str, scorer: RewardScorer) -> None:
    if not isinstance(scorer, RewardScorer):
        raise TypeError(f"scorer {name!r} has no score(prompts, responses, samples) method")
    _SCORERS[name] = scorer


def unregister_scorer(name: str) -> None:
    _SCORERS.pop(name, None)


class ModelReward(RewardComponent):
    def __init__(self, scorer: RewardScorer) -> None:
        self.scorer = scorer

    def score_batch(self, prompts, responses, samples) -> List[Any]:
        scores = list(self.scorer.score(prompts, responses, samples))
        if len(scores) != len(prompts):
            raise ValueError(f"reward model returned {len(scores)} scores for {len(prompts)} responses")
        return [float(s) for s in scores]


@register_reward("model")
def model_reward(scorer: str = "rm") -> ModelReward:
    if scorer not in _SCORERS:
        raise RewardConfigError(f"model: no reward-model scorer {scorer!r} is registered "
                                f"(registered: {', '.join(_SCORERS) or 'none'})")
    return ModelReward(_SCORERS[scorer])
