"""The ``rl`` section of the GRPO / PPO stages: rollout sampling, rewards, the GRPO objective, the KL
terms (report: ``E[r - β·KL(π‖π_ref)] - γ·KL_{D_SFT}(π‖π_orig)``, exact KL over the reference's top-500
tokens) and PPO's critic settings. Key names follow issue 11 (``rl.num_generations``, ``rl.kl.beta``,
``rl.kl.top_k``, ``rl.kl_sft.gamma``, ``rl.kl_sft.data``, ``rl.category_weights``)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from megatron_align.config.base import ConfigError, help_field
from megatron_align.config.optim import OptimizerConfig


@dataclass
class FrozenLayout:
    """Where a frozen model's weights live: its own TP x PP over the same GPUs (DP = GPUs / (tp*pp))."""

    tp: Optional[int] = help_field(None, help="Tensor-parallel size of this model (null: the policy's parallel.tp).")
    pp: Optional[int] = help_field(None, help="Pipeline-parallel size of this model (null: the policy's parallel.pp).")

    def check(self, key: str) -> None:
        """Called by the section that holds it (``key``: its dotted name, for the message)."""
        for name in ("tp", "pp"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{key}.{name}: must be >= 1 or null, got {value}")

    def resolve(self, tp: int, pp: int) -> tuple:
        """(tp, pp) with nulls taken from the policy's layout."""
        return (self.tp or tp, self.pp or pp)


@dataclass
class RewardModelConfig:
    name: Optional[str] = help_field(None, help="Architecture preset of the reward model behind `type: model` rewards "
                                                "(null with hf_config null: the policy's architecture).")
    hf_config: Optional[str] = help_field(None, help="Its Hugging Face config.json (overrides name).")
    load: Optional[str] = help_field(None, help="The reward-model checkpoint (a `megatron-align rm` run or step) that "
                                                "scores `type: model` rewards (scorer name: params.scorer, default rm).")
    parallel: FrozenLayout = help_field(default_factory=FrozenLayout, help="Its layout (frozen: weights only).")

    def validate(self) -> None:
        self.parallel.check("rl.reward_model.parallel")


@dataclass
class RolloutConfig:
    engine: str = help_field("megatron", help="Generation engine (megatron-core's dynamic inference engine).",
                             choices=("megatron",))
    temperature: float = help_field(1.0, help="Sampling temperature (0: greedy). Old log-probs are recomputed by "
                                              "the trainer with logits / temperature.")
    top_p: float = help_field(1.0, help="Nucleus sampling mass (1.0: off). Not combinable with top_k on the megatron engine.")
    top_k: int = help_field(0, help="Sample among the k most likely tokens (0: off).")
    max_new_tokens: int = help_field(256, help="Completion length cap (also dr_grpo's max_completion_length).")
    max_prompt_length: int = help_field(
        1024, help="Prompts longer than this (in tokens, template applied) are skipped and counted.")
    stop_tokens: List[str] = help_field(
        default_factory=list, help="Extra stop tokens (single tokens of the tokenizer, e.g. '<|im_end|>'); the "
                                   "tokenizer's EOS and the chat template's end-of-turn always stop.")
    seed: int = help_field(1234, help="Sampling seed; the rollout of step s uses seed + s (reproducible, resumable).")
    max_requests: int = help_field(64, help="Sequences decoded concurrently (the KV cache holds this many).")
    kv_cache_gb: float = help_field(2.0, help="KV-cache memory per rank for generation.")
    block_size_tokens: int = help_field(64, help="Paged KV-cache block size.")
    tp: Optional[int] = help_field(
        None, help="Generate in a replica with this tensor-parallel size, refreshed in memory after each step "
                   "(megatron.core.resharding); null: generate at the training layout directly.")

    def validate(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"rl.rollout.temperature: must be a finite number >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"rl.rollout.top_p: must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"rl.rollout.top_k: must be >= 0, got {self.top_k}")
        if self.top_k > 1 and self.top_p < 1.0 and self.engine == "megatron":
            raise ConfigError("rl.rollout.top_k and rl.rollout.top_p cannot both be set with the megatron engine "
                              "(megatron-core 0.16.1); set one of them off")
        for key in ("max_new_tokens", "max_prompt_length", "max_requests", "block_size_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(f"rl.rollout.{key}: must be >= 1, got {getattr(self, key)}")
        if self.kv_cache_gb <= 0:
            raise ConfigError(f"rl.rollout.kv_cache_gb: must be > 0, got {self.kv_cache_gb}")
        if self.tp is not None and self.tp < 1:
            raise ConfigError(f"rl.rollout.tp: must be >= 1 or null, got {self.tp}")

    def sampling_params(self, stop_ids: List[int], step: int = 0):
        """The engine's :class:`~megatron_align.rollout.SamplingParams` for rollout step ``step``."""
        from megatron_align.rollout.engine import SamplingParams

        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              max_new_tokens=self.max_new_tokens, stop_ids=tuple(stop_ids), seed=self.seed + step)


@dataclass
class RewardSpec:
    type: str = help_field("", help="Reward kind (required): exact_match, format, length, keywords, function (a user "
                                "path/to/file.py:function), model (a registered reward-model scorer).")
    name: Optional[str] = help_field(None, help="Label in the metrics (reward/<name>); defaults to the type.")
    weight: float = help_field(1.0, help="Weight in the summed reward.")
    fallback: float = help_field(0.0, help="Reward used when this component raises or returns NaN (counted).")
    params: Dict[str, Any] = help_field(default_factory=dict, help="Keyword arguments of the reward kind.")

    def validate(self) -> None:
        if not self.type:
            raise ConfigError(f"rl.rewards: component {self.name or ''!r} has no `type` (exact_match, format, length, "
                              f"keywords, function, model)")
        if not (math.isfinite(self.weight) and math.isfinite(self.fallback)):
            raise ConfigError(f"rl.rewards: weight and fallback of {self.name or self.type} must be finite")


@dataclass
class KLConfig:
    beta: float = help_field(0.04, help="β: weight of KL(π‖π_ref) per token (0: no reference model).")
    estimator: str = help_field(
        "topk", help="topk: the report's exact KL over the reference's top-k tokens, both renormalised there; k1/k3: "
                     "sampled-token estimators (k3 is TRL's).", choices=("topk", "k1", "k3"))
    top_k: int = help_field(500, help="k of the top-k KL (the report's 500); k >= vocabulary is the exact KL.")
    in_reward: bool = help_field(
        False, help="Put -β·KL into the token-level reward (the report's and PPO's form) instead of the loss.")
    ratio_correction: bool = help_field(
        False, help="Multiply the k1/k3 loss term by the importance ratio (TRL's use_bias_correction_kl).")

    def validate(self) -> None:
        if self.beta < 0:
            raise ConfigError(f"rl.kl.beta: must be >= 0, got {self.beta}")
        if self.top_k < 1:
            raise ConfigError(f"rl.kl.top_k: must be >= 1, got {self.top_k}")


@dataclass
class KLSFTConfig:
    gamma: float = help_field(0.0, help="γ: weight of KL(π‖π_orig) on SFT data each step, in place of a PTX loss "
                                        "(the report); 0 disables it and the original model.")
    data: Optional[str] = help_field(None, help="SFT data (JSONL chat records or a preprocessed dataset) for that term.")
    top_k: int = help_field(500, help="k of the top-k KL to the original model on SFT tokens.")
    micro_batches: int = help_field(1, help="SFT micro-batches per optimizer step for the term (when samples_per_step "
                                            "is null: micro_batches x train.micro_batch_size samples).")
    samples_per_step: Optional[int] = help_field(
        None, help="SFT samples per optimizer step (global, whatever the layout); null: micro_batches x "
                   "train.micro_batch_size.")
    load: Optional[str] = help_field(None, help="The original model's checkpoint (default: the policy's start).")
    parallel: FrozenLayout = help_field(default_factory=FrozenLayout, help="The original model's layout (frozen: "
                                                                          "weights only).")

    def validate(self) -> None:
        if self.gamma < 0:
            raise ConfigError(f"rl.kl_sft.gamma: must be >= 0, got {self.gamma}")
        if self.gamma > 0 and not self.data:
            raise ConfigError("rl.kl_sft.data: required when rl.kl_sft.gamma > 0")
        if self.samples_per_step is not None and self.samples_per_step < 1:
            raise ConfigError(f"rl.kl_sft.samples_per_step: must be >= 1 or null, got {self.samples_per_step}")
        if self.top_k < 1 or self.micro_batches < 1:
            raise ConfigError("rl.kl_sft.top_k and rl.kl_sft.micro_batches: must be >= 1")
        self.parallel.check("rl.kl_sft.parallel")


@dataclass
class PPOConfig:
    gamma: float = help_field(1.0, help="GAE discount γ.")
    lam: float = help_field(0.95, help="GAE λ.")
    value_clip: Optional[float] = help_field(0.2, help="Clip the value prediction to old ± this (null: off).")
    critic_lr: float = help_field(5e-6, help="The critic's peak learning rate; its other optimizer settings are the "
                                             "stage's `optim` section (min_lr capped at this lr).")
    critic_optim: Optional[OptimizerConfig] = help_field(
        None, help="A whole optimizer section for the critic (overrides critic_lr and the stage's `optim`).")
    critic_load: Optional[str] = help_field(
        None, help="Critic initial weights: a reward-model checkpoint (its reward head becomes the value head) or "
                   "any checkpoint of the policy's architecture (an LM checkpoint gets a freshly initialised value "
                   "head); null: the policy's start (train.load), value head fresh.")
    whiten_advantages: bool = help_field(True, help="Normalise GAE advantages over the batch.")

    def validate(self) -> None:
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"rl.ppo.gamma and rl.ppo.lam: must be in [0, 1], got {self.gamma}, {self.lam}")
        if self.value_clip is not None and self.value_clip <= 0:
            raise ConfigError(f"rl.ppo.value_clip: must be > 0 or null, got {self.value_clip}")
        if self.critic_lr <= 0:
            raise ConfigError(f"rl.ppo.critic_lr: must be > 0, got {self.critic_lr}")

    def critic_optimizer(self, stage_optim: OptimizerConfig) -> OptimizerConfig:
        """The critic's optimizer section: ``critic_optim``, else the stage's with ``lr = critic_lr``."""
        if self.critic_optim is not None:
            return self.critic_optim
        return dataclasses.replace(stage_optim, lr=self.critic_lr, min_lr=min(stage_optim.min_lr, self.critic_lr))


@dataclass
class RLConfig:
    prompts: Optional[str] = help_field(None, help="JSONL prompt records: {prompt|messages, category?, <fields "
                                                   "the rewards read>}.")
    eval_prompts: Optional[str] = help_field(None, help="Held-out prompts: mean reward per category at eval.")
    prompts_per_step: int = help_field(8, help="Prompts per rollout batch (global); x num_generations completions.")
    num_generations: int = help_field(3, help="Completions per prompt (the report's n = 3); a group is never "
                                              "split across data-parallel ranks.")
    steps_per_rollout: int = help_field(1, help="Optimizer steps per rollout batch (its completions split evenly, "
                                                "groups kept whole).")
    epochs_per_rollout: int = help_field(1, help="Passes over each rollout batch.")
    loss_type: str = help_field("grpo", help="Loss reduction as TRL defines it.",
                                choices=("grpo", "bnpo", "dr_grpo", "dapo"))
    scale_rewards: str = help_field("group", help="Advantage scaling: group std (GRPO), batch std, or none (Dr. GRPO).",
                                    choices=("group", "batch", "none"))
    epsilon_low: float = help_field(0.2, help="Lower clip of the ratio (1 - ε_low).")
    epsilon_high: Optional[float] = help_field(None, help="Upper clip (1 + ε_high); null: = epsilon_low.")
    rollout: RolloutConfig = help_field(default_factory=RolloutConfig, help="Rollout generation section.")
    rewards: List[RewardSpec] = help_field(default_factory=list, help="Reward components, summed with their weights.")
    kl: KLConfig = help_field(default_factory=KLConfig, help="KL to the reference model.")
    kl_sft: KLSFTConfig = help_field(default_factory=KLSFTConfig, help="KL to the original model on SFT data.")
    ppo: PPOConfig = help_field(default_factory=PPOConfig, help="PPO critic and GAE (ppo stage only).")
    category_weights: Dict[str, float] = help_field(
        default_factory=dict, help="Prompt-mix weight per category (prompt field `category`); unlisted categories "
                                   "weigh 1; 0 drops a category.")
    reference_load: Optional[str] = help_field(None, help="Reference model checkpoint (default: the policy's start).")
    reference_parallel: FrozenLayout = help_field(default_factory=FrozenLayout,
                                                  help="The reference model's layout (frozen: weights only).")
    reward_model: RewardModelConfig = help_field(default_factory=RewardModelConfig,
                                                 help="The reward model of `type: model` rewards: architecture and "
                                                      "layout (what `megatron-align plan` counts).")

    def validate(self) -> None:
        for key in ("prompts_per_step", "num_generations", "steps_per_rollout", "epochs_per_rollout"):
            if getattr(self, key) < 1:
                raise ConfigError(f"rl.{key}: must be >= 1, got {getattr(self, key)}")
        if self.num_generations < 2 and self.scale_rewards == "group":
            raise ConfigError("rl.num_generations: group-normalised advantages need >= 2 completions per prompt")
        if self.prompts_per_step % self.steps_per_rollout:
            raise ConfigError(f"rl.steps_per_rollout={self.steps_per_rollout} must divide rl.prompts_per_step="
                              f"{self.prompts_per_step} (groups are never split)")
        if not 0.0 < self.epsilon_low < 1.0:
            raise ConfigError(f"rl.epsilon_low: must be in (0, 1), got {self.epsilon_low}")
        if self.epsilon_high is not None and self.epsilon_high <= 0:
            raise ConfigError(f"rl.epsilon_high: must be > 0, got {self.epsilon_high}")
        for cat, w in self.category_weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ConfigError(f"rl.category_weights.{cat}: must be a finite number >= 0, got {w!r}")
        self.reference_parallel.check("rl.reference_parallel")
        names = [r.name or r.type for r in self.rewards]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"rl.rewards: component name {sorted(dup)[0]!r} is used twice; set distinct `name`s")

    @property
    def eps_high(self) -> float:
        return self.epsilon_low if self.epsilon_high is None else self.epsilon_high
