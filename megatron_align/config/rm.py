"""The reward-model job: the SFT sections (model, parallel, data, optim, train, output) plus ``rm``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from megatron_align.config.base import ConfigError, help_field
from megatron_align.config.model import ModelConfig
from megatron_align.config.sft import SFTConfig

SCORE_NORMALIZATIONS = ("none", "range", "zscore")


@dataclass
class RewardConfig:
    mse_alpha: Dict[str, float] = help_field(
        default_factory=dict,
        help="alpha of the MSE-to-absolute-score term per dataset name (the pair's `dataset` field, else the data "
             "file's name without extension), e.g. {helpsteer: 0.5}; datasets not listed get 0 (pure Bradley-Terry)")
    score_normalization: str = help_field(
        "none", choices=SCORE_NORMALIZATIONS,
        help="how absolute scores are normalised before the MSE: none; range (score_range [lo, hi] -> [0, 1]); "
             "zscore (per dataset, with the mean and std of that dataset's training scores)")
    score_range: Optional[List[float]] = help_field(
        None, help="[lo, hi] of the raw scores for score_normalization=range (e.g. [1, 10])")

    def validate(self) -> None:
        for name, alpha in self.mse_alpha.items():
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha < 0:
                raise ConfigError(f"rm.mse_alpha.{name}: must be a number >= 0, got {alpha!r}")
        if self.score_normalization == "range":
            if not self.score_range or len(self.score_range) != 2 or not self.score_range[0] < self.score_range[1]:
                raise ConfigError(f"rm.score_range: score_normalization=range needs [lo, hi] with lo < hi, "
                                  f"got {self.score_range!r}")


@dataclass
class RMConfig(SFTConfig):
    model: ModelConfig = help_field(default_factory=lambda: ModelConfig(name="tiny-llama", head="reward"),
                                    help="Model section (model.head must be reward).")
    rm: RewardConfig = help_field(default_factory=RewardConfig, help="Reward-model loss section.")
    output_dir: str = help_field("runs/rm", help="Where checkpoints, metrics.jsonl, TensorBoard events and plots go.")

    def validate(self) -> None:
        super().validate()
        if self.model.head != "reward":
            raise ConfigError(f"model.head: the reward-model stage trains a scalar head; set model.head=reward "
                              f"(got {self.model.head!r})")
