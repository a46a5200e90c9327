"""Rewards for online RL: rule verifiers, user functions from files, a reward-model slot, and their
weighted combination with counted failures. ``build_reward(specs)`` is the entry point."""

from megatron_align.rewards.base import (  # noqa: F401
    REWARD_TYPES,
    FunctionComponent,
    RewardComponent,
    RewardConfigError,
    register_reward,
)
from megatron_align.rewards.combine import CombinedReward, RewardResult, build_reward  # noqa: F401
from megatron_align.rewards.model import RewardScorer, register_scorer, unregister_scorer  # noqa: F401
