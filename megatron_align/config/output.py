"""What a run writes besides checkpoints."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_align.config.base import ConfigError, help_field


@dataclass
class OutputConfig:
    tensorboard: bool = help_field(True, help="Write TensorBoard event files under <output_dir>/tensorboard.")
    progress_bar: bool = help_field(True, help="Show a progress bar on rank 0.")
    keep_last: int = help_field(2, help="Checkpoints to keep (older complete ones are deleted); 0 keeps all.")

    def validate(self) -> None:
        if self.keep_last < 0:
            raise ConfigError(f"output.keep_last: must be >= 0, got {self.keep_last}")
