"""Optimizer and learning-rate schedule."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_align.config.base import ConfigError, help_field


@dataclass
class OptimizerConfig:
    lr: float = help_field(1e-5, help="Peak learning rate (the report's SFT uses 1e-5).")
    min_lr: float = help_field(0.0, help="Learning rate at the end of decay.")
    weight_decay: float = help_field(0.1, help="Decoupled (AdamW) weight decay; not applied to norms and biases.")
    adam_beta1: float = help_field(0.9, help="Adam beta1.")
    adam_beta2: float = help_field(0.95, help="Adam beta2.")
    adam_eps: float = help_field(1e-8, help="Adam epsilon.")
    clip_grad: float = help_field(1.0, help="Clip the global gradient norm to this (0 disables).")
    warmup_steps: int = help_field(0, help="Linear warm-up steps from 0 to lr.")
    decay_style: str = help_field("cosine", help="Decay after warm-up.", choices=("cosine", "linear", "constant"))

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr: must be > 0, got {self.lr}")
        if self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"optim.min_lr: must be in [0, lr={self.lr}], got {self.min_lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay: must be >= 0, got {self.weight_decay}")
        for key in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"optim.{key}: must be in [0, 1), got {getattr(self, key)}")
        if self.adam_eps <= 0:
            raise ConfigError(f"optim.adam_eps: must be > 0, got {self.adam_eps}")
        if self.clip_grad < 0:
            raise ConfigError(f"optim.clip_grad: must be >= 0, got {self.clip_grad}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps: must be >= 0, got {self.warmup_steps}")
