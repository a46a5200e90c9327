"""Online RL on the trainer core: the loop step of GRPO (and, with a critic, PPO).

One loop step is one rollout batch:

1. ``rl.prompts_per_step`` prompts (the sampler's global batch: category-weighted, position checkpointed);
2. refit the rollout replica if there is one (``rl.rollout.tp``), generate ``rl.num_generations`` completions
   per prompt with megatron-core's engine, score them (``rl.rewards``), gather the groups on every rank;
3. advantages (GRPO: ``losses.rl.group_advantages``; PPO: the stage's :meth:`RLStage.advantages`);
4. the groups become units (:class:`~megatron_align.stages.rl_rollout.RolloutDataset`), split into
   ``rl.steps_per_rollout`` optimizer steps (groups kept whole) and packed like any other units;
5. forward-only passes store, per micro-batch, the old log-probs (policy before the first update, with
   ``logits / temperature``; skipped when one rollout feeds one update, where they equal the current ones) and the
   frozen reference's top-k logits (or token log-probs for k1 / k3);
6. ``rl.epochs_per_rollout`` passes of ``rl.steps_per_rollout`` optimizer steps with the GRPO objective, each with
   SFT micro-batches carrying ``γ·KL(π‖π_orig)`` when ``rl.kl_sft.gamma > 0``.

Evaluation (``train.eval_interval`` and at the end): one greedy completion per held-out prompt
(``rl.eval_prompts``), mean reward overall and per category.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

import torch

from megatron_align.config.base import ConfigError
from megatron_align.engine.trainer import Stage, StageData, Trainer, run_trainer


class RLStage(Stage):
    name = "grpo"
    value_keys = ("adv",)
    batch_unit = "prompts"
    log_keys = ("reward", "kl", "entropy", "response_length", "value_loss")

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._pending_state: Dict[str, Any] = {}
        self.kl_sft_sampler = None

    # ------------------------------------------------------------------------------------------- data
    def build_data(self, arch) -> StageData:
        from megatron_align.data.builder import tokenizer_and_template
        from megatron_align.stages.rl_prompts import PromptDataset

        cfg, rl = self.cfg, self.cfg.rl
        tok, self.template = tokenizer_and_template(cfg.data, arch)
        mpl = rl.rollout.max_prompt_length
        train = PromptDataset(rl.prompts, self.template, mpl, cfg.data.on_bad_line, arch.vocab_size)
        evalds = PromptDataset(rl.eval_prompts, self.template, mpl, cfg.data.on_bad_line, arch.vocab_size) \
            if rl.eval_prompts else None
        cats = tuple(sorted(set(train.categories) | set(evalds.categories if evalds else ())))
        missing = sorted(set(rl.category_weights) - set(train.categories))
        if missing:
            raise ConfigError(f"rl.category_weights: no prompt of {rl.prompts} has category {missing[0]!r} "
                              f"(categories: {', '.join(train.categories) or 'none'})")
        self.reward = self.build_reward(tok)  # a bad reward (e.g. a missing function file) fails before any model
        summary = f"train {train.stats.summary()}"
        if evalds is not None:
            summary += f"; eval {evalds.stats.summary()}"
        summary += (f"; {rl.prompts_per_step} prompts x {rl.num_generations} completions per step, loss "
                    f"{rl.loss_type}, KL beta {rl.kl.beta} ({rl.kl.estimator}), kl_sft gamma {rl.kl_sft.gamma}")
        return StageData(tok, train, evalds, groups={"category": cats}, summary=summary)

    def build_reward(self, tokenizer=None):
        """``rl.rewards`` as one :class:`~megatron_align.rewards.CombinedReward` (user-function paths relative to
        the working directory); a bad component is a ConfigError naming ``rl.rewards[i]``. ``type: model`` rewards
        score with the frozen reward model of ``rl.reward_model.load`` (registered under their ``scorer`` names)."""
        from megatron_align.rewards import RewardConfigError, build_reward, register_scorer

        if not self.cfg.rl.rewards:
            raise ConfigError("rl.rewards: at least one reward component is required")
        scorers = {(r.params or {}).get("scorer", "rm") for r in self.cfg.rl.rewards if r.type == "model"}
        if scorers and tokenizer is not None:
            import torch

            from megatron_align.stages.rl_reward_model import build_scorer

            device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else \
                torch.device("cpu")
            self.reward_scorer = build_scorer(self.cfg, self.template, tokenizer, device)
            for name in scorers:
                register_scorer(name, self.reward_scorer)
        try:
            return build_reward(self.cfg.rl.rewards, base_dir="")
        except RewardConfigError as exc:
            raise ConfigError(str(exc)) from None

    def train_objective(self, data: StageData):
        from megatron_align.losses.rl_objectives import GRPOObjective

        return GRPOObjective(self.cfg.rl)

    # ------------------------------------------------------------------------------------------- advantages
    def advantages(self, trainer: "RLTrainer", groups) -> None:
        """Fill ``group.advantages`` (GRPO: group-normalised rewards)."""
        from megatron_align.losses.rl import group_advantages

        rl = self.cfg.rl
        rewards = torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float64)
        adv = group_advantages(rewards, rl.num_generations, rl.scale_rewards).tolist()
        n = rl.num_generations
        for k, g in enumerate(groups):
            g.advantages = adv[k * n:(k + 1) * n]

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, Any]:
        return {"kl_sft_sampler": self.kl_sft_sampler.state_dict()} if self.kl_sft_sampler is not None else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._pending_state = dict(state)


def _vocab_check(load: str, policy_arch, what: str) -> str:
    """The checkpoint at ``load`` (resolved) if its vocabulary is the policy's; a ConfigError otherwise."""
    from megatron_align.checkpoint import layout

    ckpt = layout.resolve(load)
    arch = layout.read_arch(ckpt)
    if arch.vocab_size != policy_arch.vocab_size:
        raise ConfigError(f"{what}: checkpoint {ckpt} has a vocabulary of {arch.vocab_size} tokens but the policy's "
                          f"is {policy_arch.vocab_size}; the KL needs the same vocabulary (use a reference of the "
                          f"policy's family and tokenizer)")
    return ckpt


class RLTrainer(Trainer):
    """The loop of :class:`~megatron_align.engine.trainer.Trainer` with one rollout batch per step."""

    @property
    def updates_per_step(self) -> int:  # type: ignore[override]
        rl = self.cfg.rl
        return rl.steps_per_rollout * rl.epochs_per_rollout

    def build_sampler(self):
        from megatron_align.stages.rl_prompts import WeightedPromptSampler

        cfg = self.cfg
        cats = [p.category for p in self.data.train.prompts]
        try:
            return WeightedPromptSampler(cats, cfg.rl.category_weights, cfg.rl.prompts_per_step, cfg.data.seed,
                                         max_steps=cfg.train.max_steps,
                                         epochs=None if cfg.train.max_steps else cfg.train.epochs)
        except ValueError as exc:
            raise ConfigError(f"rl.prompts_per_step: {exc}") from None

    # ---------------------------------------------------------------------------------------- set-up
    def setup(self) -> None:
        super().setup()
        self._setup_rl()

    def _setup_rl(self) -> None:
        from megatron_align.stages.rl_rollout import Roller, stop_ids

        cfg, rl = self.cfg, self.cfg.rl
        self.ref_session = self._frozen(rl.reference_load, "rl.reference_load") if rl.kl.beta > 0 else None
        self.orig_session = self._frozen(rl.kl_sft.load, "rl.kl_sft.load") if rl.kl_sft.gamma > 0 else None
        if rl.kl_sft.gamma > 0:
            self._setup_kl_sft()
        engine, refitter, dp_rank, dp_size = self._engine()
        stops = stop_ids(self.data.tokenizer, self.stage.template, rl.rollout.stop_tokens)
        self.roller = Roller(engine, self.stage.reward, self.data.tokenizer, rl.rollout, stops, dp_rank, dp_size, refitter)

    def _frozen(self, load: Optional[str], key: str):
        from megatron_align.engine.session import frozen_from_checkpoint

        path = load or self.cfg.train.load
        if not path:
            raise ConfigError(f"{key}: the KL needs a frozen model (set {key} or train.load, the checkpoint the "
                              f"policy starts from), or set its weight to 0")
        ckpt = _vocab_check(path, self.arch, key)
        cfg = self.cfg
        return frozen_from_checkpoint(ckpt, cfg.model, cfg.parallel, seq_length=cfg.data.seq_length,
                                      micro_batch_size=cfg.train.micro_batch_size)

    def _setup_kl_sft(self) -> None:
        from megatron_align.data.builder import open_dataset
        from megatron_align.data.sampler import GlobalBatchSampler

        cfg, ks = self.cfg, self.cfg.rl.kl_sft
        self.kl_sft_data = open_dataset(ks.data, cfg.data, self.data.tokenizer, self.stage.template)
        per_step = ks.samples_per_step or ks.micro_batches * cfg.train.micro_batch_size
        try:
            sampler = GlobalBatchSampler(len(self.kl_sft_data), per_step, seed=cfg.data.seed + 1, shuffle=True,
                                         max_steps=len(self.sampler) * self.updates_per_step)
        except ValueError as exc:
            raise ConfigError(f"rl.kl_sft.data: {exc}") from None
        if self.stage._pending_state.get("kl_sft_sampler"):
            sampler.load_state_dict(self.stage._pending_state["kl_sft_sampler"])
        self.stage.kl_sft_sampler = sampler
        self._kl_sft_iter = iter(sampler)

    def _engine(self):
        """The generation engine on the policy (training layout) or on a ``rl.rollout.tp`` replica."""
        from megatron_align.rollout.megatron_engine import MegatronGenerationEngine

        r = self.cfg.rl.rollout
        max_len = r.max_prompt_length + r.max_new_tokens
        kw = dict(max_seq_length=max_len, max_requests=r.max_requests, buffer_size_gb=r.kv_cache_gb,
                  block_size_tokens=r.block_size_tokens, seed=r.seed)
        if r.tp is None or (r.tp == self.cfg.parallel.tp and self.cfg.parallel.pp == 1):
            return MegatronGenerationEngine(self.policy.chunks, **kw), None, self.dp_rank, self.dp_size
        from megatron_align.models.builder import BuiltModel
        from megatron_align.rollout.megatron_engine import unwrap_model
        from megatron_align.rollout.refit import Refitter, build_replica

        p = self.policy
        source = BuiltModel([unwrap_model(p.chunks)], self.arch, p.config, p.padded_vocab_size, p.impl,
                            p.attention_backend)
        try:
            replica = build_replica(self.cfg.model, source, tp=r.tp, max_seq_length=max_len)
        except ValueError as exc:
            raise ConfigError(f"rl.rollout.tp: {exc}") from None
        engine = MegatronGenerationEngine(replica, pg_collection=replica.pg_collection, **kw)
        return engine, Refitter(p.chunks, replica), replica.pg_collection.dp.rank(), replica.pg_collection.dp.size()

    # ---------------------------------------------------------------------------------------- one step
    def train_step(self, global_ids: List[int]) -> Dict[str, float]:
        from megatron_align.stages.rl_rollout import RolloutDataset, rollout_metrics

        t0 = time.perf_counter()
        step = self.sampler.step
        prompts = [self.data.train[i] for i in global_ids]
        groups, stats = self.roller.run(prompts, self.cfg.rl.num_generations, step)
        self._report_failures(stats)
        self.stage.advantages(self, groups)
        metrics = rollout_metrics(groups, stats, self.data.groups["category"])
        t1 = time.perf_counter()
        metrics.update(self.train_on_rollout(RolloutDataset(groups)))
        metrics["time/train"] = time.perf_counter() - t1
        metrics["step_time"] = time.perf_counter() - t0
        metrics["tokens_per_sec"] = metrics["tokens"] / max(metrics["step_time"], 1e-9)
        return metrics

    def _report_failures(self, stats) -> None:
        """The first failure of each reward component in the log (every failure is counted in the metrics)."""
        logged = self.__dict__.setdefault("_failures_logged", set())
        for name, err in stats.errors.items():
            if name not in logged:
                logged.add(name)
                self.log(f"reward {name}: {stats.failures.get(name, 0)} completion(s) got the fallback ({err}); "
                         f"counted in reward_failures/{name}")

    def train_on_rollout(self, dataset) -> Dict[str, float]:
        """``rl.epochs_per_rollout`` x ``rl.steps_per_rollout`` optimizer steps on one rollout dataset; the
        metrics averaged over its updates."""
        rl = self.cfg.rl
        n = len(dataset)
        per = n // rl.steps_per_rollout
        chunks = [list(range(k * per, (k + 1) * per)) for k in range(rl.steps_per_rollout)]
        batches = [self.micro_batches(dataset, ids) for ids in chunks]
        self.objective.generation_tokens = float(sum(int(d.target_mask.sum()) for u in dataset.get_units(range(n))
                                                     for d in u.docs))
        for _, inputs in batches:
            self.prepare_rollout_inputs(inputs)
        self.before_updates(batches)
        records = []
        for _ in range(rl.epochs_per_rollout):
            for mbs, inputs in batches:
                records.append(self.update(mbs, inputs))
                records[-1].update(self.after_update(mbs, inputs))
        out = {k: sum(r[k] for r in records if k in r) / sum(1 for r in records if k in r)
               for k in records[0]}
        out["tokens"] = int(sum(r["tokens"] for r in records))
        out["updates"] = len(records)
        return out

    def before_updates(self, batches) -> None:
        """After the forward-only passes, before the first update (PPO: values, KL-penalised rewards, GAE)."""

    def after_update(self, mbs, inputs) -> Dict[str, float]:
        """After each policy update (PPO: the critic's update); metrics to add to its record."""
        return {}

    @property
    def needs_old_logps(self) -> bool:
        return self.updates_per_step > 1

    def prepare_rollout_inputs(self, inputs) -> None:
        """Forward-only passes before any update: old log-probs (when one rollout feeds several updates) and the
        reference's top-k logits / token log-probs, stored per micro-batch."""
        from megatron_align.losses.rl_objectives import Collect, sampling_temperature, token_logps, topk_at_loss_positions

        rl = self.cfg.rl
        temp = sampling_temperature(rl.rollout.temperature)
        if self.ref_session is not None:
            if rl.kl.estimator == "topk":
                def fn(x, out):
                    t = topk_at_loss_positions(x, out, rl.kl.top_k)
                    return {"ref_vals": t["vals"], "ref_ids": t["ids"]}
            else:
                def fn(x, out):
                    return {"ref_logp": token_logps(x, out, temp)}
            self.ref_session.run(inputs, Collect(fn), forward_only=True)
        if self.needs_old_logps:
            self.policy.run(inputs, Collect(self.old_policy_fn), forward_only=True)

    def old_policy_fn(self, x, out) -> Dict[str, torch.Tensor]:
        """What the forward-only pass of the rollout's policy stores per micro-batch: the old log-probs."""
        from megatron_align.losses.rl_objectives import sampling_temperature, token_logps

        return {"old_logp": token_logps(x, out, sampling_temperature(self.cfg.rl.rollout.temperature))}

    def kl_sft_inputs(self):
        """This step's SFT micro-batches with the original model's top-k logits at their loss tokens, and their
        global loss-token count."""
        import torch.distributed as dist

        from megatron_align.losses.rl_objectives import Collect, topk_at_loss_positions

        ids = next(self._kl_sft_iter)
        mbs, inputs = self.micro_batches(self.kl_sft_data, ids)
        k = self.cfg.rl.kl_sft.top_k

        def fn(x, out):
            t = topk_at_loss_positions(x, out, k)
            return {"orig_vals": t["vals"], "orig_ids": t["ids"]}

        self.orig_session.run(inputs, Collect(fn), forward_only=True)
        for x in inputs:
            x.extra["kl_sft"] = torch.ones(1, device=x.tokens.device)
        from megatron.core import parallel_state

        n = torch.tensor([float(sum(m.num_loss_tokens for m in mbs))], dtype=torch.float64, device=self.rt.device)
        dist.all_reduce(n, group=parallel_state.get_data_parallel_group())
        return inputs, float(n.item())

    def update(self, mbs, inputs) -> Dict[str, float]:
        """One optimizer step on a share of the rollout (plus the SFT KL micro-batches)."""
        from megatron.core import parallel_state

        counts = self.step_counts(mbs)
        all_inputs = list(inputs)
        if self.orig_session is not None:
            sft_inputs, n_sft = self.kl_sft_inputs()
            counts.extra["kl_sft_tokens"] = n_sft
            all_inputs += sft_inputs
        self.objective.begin_step(counts)
        self.optimizer.zero_grad()
        totals = self.policy.run(all_inputs, self.objective)
        update_successful, grad_norm, _ = self.optimizer.step()
        if update_successful:
            self.scheduler.step(increment=1)
        last = parallel_state.is_pipeline_last_stage()
        host = torch.tensor([sum(m.num_real_tokens for m in mbs) if last else 0], dtype=torch.float64)
        metrics, extra = self.reduce_reports(self.objective, totals, host)
        metrics["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        metrics["tokens"] = int(extra[0].item())
        metrics["loss_tokens" if self.objective.unit.value == "token" else "sequences"] = \
            int(counts.of(self.objective.unit))
        return metrics

    # ---------------------------------------------------------------------------------------- evaluation
    def evaluate(self) -> Dict[str, float]:
        """Greedy completion of every held-out prompt: mean reward overall and per category."""
        from megatron_align.stages.rl_rollout import rollout_metrics

        if self.data.eval is None:
            return {}
        prompts = [self.data.eval[i] for i in range(len(self.data.eval))]
        groups, stats = self.roller.run(prompts, 1, self.sampler.step, greedy=True)
        m = rollout_metrics(groups, stats, self.data.groups["category"], prefix="eval_")
        return {k: v for k, v in m.items() if not k.startswith("eval_reward_std")}
