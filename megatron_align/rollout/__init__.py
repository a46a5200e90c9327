"""Rollout generation behind a small interface (:class:`GenerationEngine`).

``megatron_align.rollout.engine``: the interface and its value types (no heavy imports).
``megatron_align.rollout.megatron_engine``: megatron-core's dynamic inference engine at the training layout.
``megatron_align.rollout.refit``: in-memory weight refit into a differently laid-out replica.
"""

from megatron_align.rollout.engine import (  # noqa: F401
    FinishReason,
    Generation,
    GenerationEngine,
    PromptScreen,
    SamplingParams,
    screen_prompts,
)
