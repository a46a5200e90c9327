"""The GRPO / PPO jobs: the SFT sections (model, parallel, data, optim, train, output) plus ``rl``.

In an RL job ``data`` gives the tokenizer, the chat template and the training rows (``data.seq_length``,
``data.packing``); the prompts come from ``rl.prompts`` (``data.path`` / ``data.eval_path`` are not read). A
GRPO group (one prompt and its ``rl.num_generations`` completions) stays on one data-parallel rank; each
completion (prompt + response, at most ``max_prompt_length + max_new_tokens`` tokens) is a packed document.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_align.config.base import ConfigError, help_field
from megatron_align.config.rl import RLConfig
from megatron_align.config.sft import SFTConfig


@dataclass
class RLJobConfig(SFTConfig):
    rl: RLConfig = help_field(default_factory=RLConfig, help="Online RL section (prompts, rollout, rewards, KL).")
    output_dir: str = help_field("runs/grpo", help="Where checkpoints, metrics.jsonl, TensorBoard events and plots go.")

    def validate(self) -> None:
        self.validate_shape()
        self.validate_run()

    def validate_shape(self) -> None:
        """What any use of the config needs (a run, or `plan`)."""
        super().validate()
        if self.model.head != "lm":
            raise ConfigError(f"model.head: the policy is a language model; set model.head=lm (got {self.model.head!r})")
        if self.model.loss_backend == "fused_linear":
            raise ConfigError("model.loss_backend: the RL stages need the policy's logits (entropy, top-k KL); "
                              "use fused or unfused")

    def validate_run(self) -> None:
        """What only a run needs: prompt data, rows that hold a prompt and its completion, one model chunk
        per rank (`plan` notes these instead), frozen models at the policy's layout (`plan` may try others)."""
        if not self.rl.prompts:
            raise ConfigError("rl.prompts: required (a JSONL file of prompt records)")
        r = self.rl.rollout
        need = r.max_prompt_length + r.max_new_tokens
        if need > self.data.seq_length:
            raise ConfigError(f"data.seq_length={self.data.seq_length} cannot hold a prompt and its completion: "
                              f"rl.rollout.max_prompt_length={r.max_prompt_length} + rl.rollout.max_new_tokens="
                              f"{r.max_new_tokens} = {need} tokens")
        if self.parallel.interleaved_vpp:
            raise ConfigError("parallel.vpp: rollouts need one model chunk per rank (no interleaved pipeline)")
        policy = (self.parallel.tp, self.parallel.pp)
        for key, frozen in (("rl.reference_parallel", self.rl.reference_parallel),
                            ("rl.kl_sft.parallel", self.rl.kl_sft.parallel),
                            ("rl.reward_model.parallel", self.rl.reward_model.parallel)):
            if frozen.resolve(*policy) != policy:
                raise ConfigError(f"{key}: the RL stage runs frozen models at the policy's layout (tp={policy[0]}, "
                                  f"pp={policy[1]}); other layouts are a planner option only for now (set null)")


@dataclass
class GRPOJobConfig(RLJobConfig):
    def validate_shape(self) -> None:
        super().validate_shape()
        if self.rl.kl.in_reward:
            raise ConfigError("rl.kl.in_reward: GRPO adds β·KL to the loss (per token); the KL in the reward is PPO's "
                              "form (`megatron-align ppo` always puts it there)")


@dataclass
class PPOJobConfig(RLJobConfig):
    output_dir: str = help_field("runs/ppo", help="Where checkpoints, metrics.jsonl, TensorBoard events and plots go.")
