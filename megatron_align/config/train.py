"""Training loop: batch sizes, length of training, evaluation, checkpoint cadence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron_align.config.base import ConfigError, help_field


@dataclass
class TrainingConfig:
    micro_batch_size: int = help_field(1, help="Rows (packed sequences) per micro-batch per data-parallel rank.")
    global_batch_size: int = help_field(
        8, help="Samples (conversations) per optimizer step across all data-parallel ranks.")
    max_steps: Optional[int] = help_field(None, help="Stop after this many optimizer steps (overrides epochs).")
    epochs: float = help_field(1.0, help="Passes over the training data when max_steps is not set.")
    seed: int = help_field(1234, help="Seed for weights, data order and dropout.")
    eval_interval: int = help_field(0, help="Evaluate on data.eval_path every N steps (0: only at the end).")
    save_interval: int = help_field(0, help="Save a checkpoint every N steps (0: only at the end).")
    log_interval: int = help_field(1, help="Write a metrics line every N steps.")
    load: Optional[str] = help_field(
        None, help="Checkpoint to start from when output_dir has none yet: a run directory (its latest) or a "
                   "converted HF checkpoint. A run whose output_dir already has `latest` resumes from that instead.")
    finetune: bool = help_field(
        False, help="Load only model weights from `load` (fresh optimizer, schedule and data position).")

    def validate(self) -> None:
        if self.micro_batch_size < 1:
            raise ConfigError(f"train.micro_batch_size: must be >= 1, got {self.micro_batch_size}")
        if self.global_batch_size < 1:
            raise ConfigError(f"train.global_batch_size: must be >= 1, got {self.global_batch_size}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"train.max_steps: must be >= 1, got {self.max_steps}")
        if self.epochs <= 0:
            raise ConfigError(f"train.epochs: must be > 0, got {self.epochs}")
        for key in ("eval_interval", "save_interval"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}: must be >= 0, got {getattr(self, key)}")
        if self.log_interval < 1:
            raise ConfigError(f"train.log_interval: must be >= 1, got {self.log_interval}")
