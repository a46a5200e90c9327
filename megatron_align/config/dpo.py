"""The DPO-family job: the SFT sections (model, parallel, data, optim, train, output) plus ``dpo``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron_align.config.base import ConfigError, help_field
from megatron_align.config.sft import SFTConfig

LOSS_TYPES = ("dpo", "ipo", "simpo", "orpo", "kto", "rpo")


@dataclass
class PreferenceLossConfig:
    loss_type: str = help_field("dpo", choices=LOSS_TYPES,
                                help="dpo (sigmoid), ipo, simpo, orpo, kto, rpo (= dpo + rpo_alpha * NLL on chosen)")
    beta: float = help_field(0.1, help="beta (for orpo: the lambda of the odds-ratio term)")
    label_smoothing: float = help_field(
        0.0, help="epsilon of conservative / robust DPO (and SimPO's smoothing); 0 disables")
    smoothing: str = help_field("conservative", choices=("conservative", "robust"),
                                help="with label_smoothing > 0: conservative DPO (cDPO) or robust DPO (rDPO)")
    simpo_gamma: float = help_field(0.5, help="SimPO target reward margin gamma")
    rpo_alpha: float = help_field(1.0, help="weight of the NLL on chosen responses for loss_type=rpo")
    kto_desirable_weight: float = help_field(1.0, help="KTO lambda_D (weight of desirable examples)")
    kto_undesirable_weight: float = help_field(1.0, help="KTO lambda_U (weight of undesirable examples)")
    reference: str = help_field(
        "online", choices=("online", "cache"),
        help="reference log-probs: online (a frozen reference model next to the policy, same layout, evaluated in "
             "the same step) or cache (precomputed by `dpo --precompute-reference`, file reference_cache)")
    reference_load: Optional[str] = help_field(
        None, help="reference checkpoint (default: train.load, the model the policy starts from)")
    reference_cache: Optional[str] = help_field(
        None, help="reference log-prob cache file (default: <output_dir>/reference_logps.jsonl)")

    def validate(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"dpo.beta: must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"dpo.label_smoothing: must be in [0, 0.5), got {self.label_smoothing}")
        for k in ("rpo_alpha", "kto_desirable_weight", "kto_undesirable_weight"):
            if getattr(self, k) < 0:
                raise ConfigError(f"dpo.{k}: must be >= 0, got {getattr(self, k)}")


@dataclass
class DPOConfig(SFTConfig):
    dpo: PreferenceLossConfig = help_field(default_factory=PreferenceLossConfig, help="Preference-loss section.")
    output_dir: str = help_field("runs/dpo", help="Where checkpoints, metrics.jsonl, TensorBoard events and plots go.")

    def validate(self) -> None:
        super().validate()
        if self.model.head != "lm":
            raise ConfigError(f"model.head: DPO trains a language model; set model.head=lm (got {self.model.head!r})")
