"""The SFT job: one section per concern, plus where the run writes."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_align.config.base import ConfigError, help_field
from megatron_align.config.model import ModelConfig
from megatron_align.config.optim import OptimizerConfig
from megatron_align.config.output import OutputConfig
from megatron_align.config.parallel import ParallelConfig
from megatron_align.config.train import TrainingConfig
from megatron_align.data.config import DataConfig, default_tokenizer


@dataclass
class SFTConfig:
    model: ModelConfig = help_field(default_factory=lambda: ModelConfig(name="tiny-llama"), help="Model section.")
    parallel: ParallelConfig = help_field(default_factory=ParallelConfig, help="Parallel layout section.")
    data: DataConfig = help_field(default_factory=DataConfig, help="Data section.")
    optim: OptimizerConfig = help_field(default_factory=OptimizerConfig, help="Optimizer section.")
    train: TrainingConfig = help_field(default_factory=TrainingConfig, help="Training loop section.")
    output: OutputConfig = help_field(default_factory=OutputConfig, help="Logging/outputs section.")
    output_dir: str = help_field("runs/sft", help="Where checkpoints, metrics.jsonl, TensorBoard events and plots go.")

    def validate(self) -> None:
        if self.data.tokenizer is None:  # the checkpoint's own tokenizer, or the tiny one without train.load
            self.data.tokenizer = default_tokenizer(self.train.load)
        if not self.output_dir:
            raise ConfigError("output_dir: must be a non-empty path")
        if self.model.seq_length is not None and self.model.seq_length < self.data.seq_length:
            raise ConfigError(f"model.seq_length={self.model.seq_length} is shorter than "
                              f"data.seq_length={self.data.seq_length}")
        if self.parallel.sp and self.data.seq_length % self.parallel.tp:
            raise ConfigError(f"data.seq_length={self.data.seq_length} must be divisible by parallel.tp="
                              f"{self.parallel.tp} with parallel.sp=true")
