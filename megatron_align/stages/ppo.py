"""PPO with a critic (the report's baseline), on the same rollouts as GRPO.

Per rollout batch, after the forward-only passes (reference top-k / log-probs, the policy's old log-probs and the
per-token KL(π_old‖π_ref) they give):

- the critic's values of every completion token (:meth:`~megatron_align.stages.critic.Critic.values`);
- token rewards: ``−β·KL_t`` on every completion token and the sequence's reward on its last one
  (``losses.rl.kl_penalized_rewards``: in PPO the KL is always in the reward);
- GAE (``losses.rl.gae``, ``rl.ppo.gamma`` / ``rl.ppo.lam``) -> per-token advantages and returns; advantages
  whitened over the whole rollout batch (all data-parallel ranks) when ``rl.ppo.whiten_advantages``;
- each policy update (the clipped surrogate of :class:`~megatron_align.losses.rl_objectives.GRPOObjective` with the
  per-token advantages) is followed by one critic update (clipped value loss, its own optimizer).

The critic is saved into each step checkpoint (``<step>/critic``) and restored on resume.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from megatron_align.engine.trainer import run_trainer
from megatron_align.stages.rl import RLStage, RLTrainer


class PPOStage(RLStage):
    name = "ppo"
    value_keys = ("adv", "score")

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.critic = None
        self._critic_resume: Optional[str] = None

    def train_objective(self, data):
        from megatron_align.losses.rl_objectives import GRPOObjective

        return GRPOObjective(self.cfg.rl, kl_in_reward=True)

    def advantages(self, trainer, groups) -> None:
        """PPO's advantages are per token (GAE, in :meth:`PPOTrainer.before_updates`)."""

    def save_extra(self, trainer, ckpt_dir: str) -> None:
        self.critic.save(ckpt_dir)

    def load_extra(self, trainer, ckpt_dir: str) -> None:
        self._critic_resume = ckpt_dir  # the critic is built after the policy's resume


class PPOTrainer(RLTrainer):
    def __init__(self, cfg) -> None:
        super().__init__(cfg, PPOStage(cfg))

    @property
    def needs_old_logps(self) -> bool:  # the KL in the reward is the rollout policy's
        return True

    def _setup_rl(self) -> None:
        from megatron_align.stages.critic import Critic

        super()._setup_rl()
        stage = self.stage
        stage.critic = Critic.from_config(self.cfg, self.arch, total_steps=len(self.sampler) * self.updates_per_step)
        if stage._critic_resume:
            stage.critic.load(stage._critic_resume)

    def old_policy_fn(self, x, out) -> Dict[str, torch.Tensor]:
        """Old log-probs and the per-token KL(π_old‖π_ref) of the completion tokens (0 elsewhere)."""
        from megatron_align.losses.rl import KL_ESTIMATORS
        from megatron_align.losses.rl_objectives import (loss_positions, sampling_temperature, stored_topk_kl,
                                                         token_logps)

        rl = self.cfg.rl
        temp = sampling_temperature(rl.rollout.temperature)
        logp = token_logps(x, out, temp)
        kl = torch.zeros_like(logp)
        if "ref_vals" in x.extra:
            pos = loss_positions(x)
            flat = out.reshape(-1, out.shape[-1])
            kl[pos] = stored_topk_kl(flat.index_select(0, pos), x.extra["ref_vals"], x.extra["ref_ids"],
                                     k=rl.kl.top_k, temperature=temp).to(kl.dtype)
        elif "ref_logp" in x.extra:
            kl = KL_ESTIMATORS[rl.kl.estimator](logp, x.extra["ref_logp"].reshape(-1)) * (x.loss_mask.reshape(-1) > 0)
        return {"old_logp": logp, "old_kl": kl}

    def before_updates(self, batches) -> None:
        """Values, KL-penalised token rewards, GAE and (whitened) advantages of the whole rollout batch."""
        import torch.distributed as dist
        from megatron.core import parallel_state

        from megatron_align.losses.rl import gae, kl_penalized_rewards
        from megatron_align.stages.critic import set_token_values, stack, unstack

        rl, critic = self.cfg.rl, self.stage.critic
        last = parallel_state.is_pipeline_last_stage()
        per_chunk = []
        for _, inputs in batches:
            values = critic.values(inputs)
            set_token_values(inputs, "old_values", values)
            ids, scores, kls = [], {}, {}
            for x in inputs:
                if x.docs is None or not last:
                    continue
                flat_kl = x.extra["old_kl"].reshape(-1)
                score = x.docs.values["score"]
                for d, (sid, pos) in enumerate(_positions(x)):
                    ids.append(sid)
                    scores[sid] = float(score[d])
                    kls[sid] = flat_kl[pos].double()
            adv = ret = None
            if ids:
                V, mask = stack({i: values[i].double() for i in ids}, ids)
                K, _ = stack(kls, ids)
                r = kl_penalized_rewards(torch.tensor([scores[i] for i in ids], dtype=torch.float64, device=V.device),
                                         K, mask, rl.kl.beta)
                adv, ret = gae(r, V, mask, gamma=rl.ppo.gamma, lam=rl.ppo.lam)
                adv, ret = adv * mask, ret * mask
            per_chunk.append((inputs, ids, adv, ret, mask if ids else None))
        if rl.ppo.whiten_advantages:  # statistics over the whole rollout batch, every DP rank
            dev = self.rt.device
            stats = torch.zeros(3, dtype=torch.float64, device=dev)
            for _, ids, adv, _, mask in per_chunk:
                if ids:
                    stats += torch.stack([adv.sum(), (adv * adv).sum(), mask.sum()]).to(dev)
            dist.all_reduce(stats, group=parallel_state.get_data_parallel_group())
            s, sq, n = stats.tolist()
            mean = s / max(n, 1.0)
            var = (sq - n * mean * mean) / max(n - 1.0, 1.0)
            for k, (inputs, ids, adv, ret, mask) in enumerate(per_chunk):
                if ids:
                    per_chunk[k] = (inputs, ids, (adv - mean) * torch.rsqrt(torch.tensor(var + 1e-8)) * mask, ret, mask)
        for inputs, ids, adv, ret, mask in per_chunk:
            if ids:  # the last pipeline stage, where the objectives read them
                set_token_values(inputs, "adv_tok", unstack(adv.float(), mask, ids))
                set_token_values(inputs, "returns", unstack(ret.float(), mask, ids))

    def after_update(self, mbs, inputs) -> Dict[str, float]:
        return self.stage.critic.update(inputs)


def _positions(x):
    from megatron_align.stages.critic import _response_positions

    return _response_positions(x)


def run_ppo(cfg):
    return run_trainer(PPOTrainer(cfg))
