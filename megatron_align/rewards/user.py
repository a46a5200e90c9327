"""User reward functions given as ``path/to/file.py:function``; ``function(prompt, response, sample) -> float``.

Loaded when the reward is built (before any rollout): a missing file, a file that fails to import, a
missing or non-callable attribute, or a function that cannot take three arguments are one-line errors.
"""

from __future__ import annotations

from megatron_align.rewards.base import FunctionComponent, RewardConfigError, RewardFn, register_reward
from megatron_align.user_code import load_user_callable


def load_user_function(spec: str, base_dir: str = "") -> RewardFn:
    return load_user_callable(spec, base_dir=base_dir, call_args=("prompt", "response", {}),
                              call_text="(prompt, response, sample)", label="reward function",
                              error=RewardConfigError)


@register_reward("function")
def function_reward(path: str = "", base_dir: str = "") -> FunctionComponent:
    """``params.path``: ``path/to/file.py:function`` (relative paths against ``base_dir``, the config's
    directory when built from a config file)."""
    if not path:
        raise RewardConfigError("function: params.path (path/to/file.py:function) is required")
    return FunctionComponent(load_user_function(path, base_dir), name=path)
