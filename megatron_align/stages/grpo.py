"""GRPO (the report's choice): group-normalised rewards of ``rl.num_generations`` completions per prompt, the
clipped surrogate with TRL's reductions, β·KL to the reference over its top-k tokens, γ·KL to the original model
on SFT data. The loop is :class:`~megatron_align.stages.rl.RLTrainer`'s."""

from __future__ import annotations

from megatron_align.engine.trainer import run_trainer
from megatron_align.stages.rl import RLStage, RLTrainer


class GRPOStage(RLStage):
    name = "grpo"


class GRPOTrainer(RLTrainer):
    def __init__(self, cfg) -> None:
        super().__init__(cfg, GRPOStage(cfg))


def run_grpo(cfg):
    return run_trainer(GRPOTrainer(cfg))
