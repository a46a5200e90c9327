"""Spawned GRPO / PPO runs for the RL tests (module-level functions for helpers.dist.run_distributed)."""

from __future__ import annotations

import os
from typing import List

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = {"grpo": os.path.join(ROOT, "examples", "configs", "grpo_tiny_cpu.yaml"),
           "ppo": os.path.join(ROOT, "examples", "configs", "ppo_tiny_cpu.yaml")}
TINY = os.path.join(ROOT, "megatron_align", "assets", "tiny")

# small and quick: 2 layers, short completions, few prompts per step
BASE = ["model.num_layers=2", "data.seq_length=160", "rl.prompts_per_step=4", "rl.num_generations=3",
        "rl.rollout.max_new_tokens=6", "rl.rollout.max_prompt_length=40", "train.eval_interval=0",
        "output.tensorboard=false", "output.progress_bar=false", "optim.warmup_steps=0",
        f"rl.prompts={TINY}/rl_prompts_train.jsonl", f"rl.eval_prompts={TINY}/rl_prompts_eval.jsonl"]


def load(name: str, overrides: List[str], base: bool = True):
    from megatron_align.config.base import load_config
    from megatron_align.config.rl_job import GRPOJobConfig, PPOJobConfig

    cls = GRPOJobConfig if name == "grpo" else PPOJobConfig
    os.chdir(ROOT)  # the example configs name the reward function relative to the repository root
    return load_config(cls, CONFIGS[name], (BASE if base else []) + list(overrides))


def trainer_for(name: str, cfg):
    if name == "grpo":
        from megatron_align.stages.grpo import GRPOTrainer

        return GRPOTrainer(cfg)
    from megatron_align.stages.ppo import PPOTrainer

    return PPOTrainer(cfg)


def run(name: str, overrides: List[str], base: bool = True):
    from megatron_align.engine.trainer import run_trainer

    out = run_trainer(trainer_for(name, load(name, overrides, base)))
    return {k: v for k, v in out.items() if isinstance(v, (int, float))}


def fixed_groups(seed: int, n_groups: int, n_gen: int, vocab: int):
    """Deterministic synthetic rollout groups: random prompts / completions of varied lengths, random rewards."""
    import numpy as np

    from megatron_align.stages.rl_prompts import Group, Prompt

    rng = np.random.default_rng(seed)
    cats = ("a", "e", "o")
    groups = []
    for g in range(n_groups):
        p = Prompt(rng.integers(3, vocab, int(rng.integers(4, 12))).tolist(), "x", {}, cats[g % 3])
        comps = [rng.integers(3, vocab, int(rng.integers(1, 7))).tolist() for _ in range(n_gen)]
        rewards = rng.normal(size=n_gen).tolist()
        groups.append(Group(g, p, comps, [False] * n_gen, rewards))
    return groups


def train_fixed_rollout(name: str, overrides: List[str], seed: int = 3):
    """Set up a trainer and run its updates on a fixed synthetic rollout: the loss, grad norm and metrics of each
    update, which must not depend on the layout, then the held-out eval (generation at the updated weights)."""
    from megatron_align.runtime import teardown
    from megatron_align.stages.rl_rollout import RolloutDataset

    trainer = trainer_for(name, load(name, overrides))
    try:
        trainer.setup()
        rl = trainer.cfg.rl
        groups = fixed_groups(seed, rl.prompts_per_step, rl.num_generations, 1536)
        trainer.stage.advantages(trainer, groups)
        records = []
        orig_update = trainer.update

        def update(mbs, inputs):
            r = orig_update(mbs, inputs)
            records.append(r)
            return r

        trainer.update = update
        trainer.train_on_rollout(RolloutDataset(groups))
        return records + [trainer.evaluate()]  # greedy held-out completions at the updated weights
    finally:
        teardown()


def evaluate_only(name: str, overrides: List[str]):
    """The held-out eval metrics at the start weights (what a run's step-0 eval would report)."""
    from megatron_align.runtime import teardown

    trainer = trainer_for(name, load(name, overrides))
    try:
        trainer.setup()
        return trainer.evaluate()
    finally:
        teardown()


def cli(argv: List[str]) -> int:
    from megatron_align.cli import main

    os.chdir(ROOT)
    return main(list(argv))


def run_signal_after(name: str, overrides: List[str], step: int):
    """Like :func:`run`, but rank 0 receives SIGUSR1 (Slurm's pre-timeout signal) after ``step``."""
    import signal

    import torch.distributed as dist

    from megatron_align.stages import rl as rl_mod

    orig = rl_mod.RLTrainer.train_step

    def train_step(self, global_ids):
        out = orig(self, global_ids)
        if self.sampler.step == step and dist.get_rank() == 0:
            os.kill(os.getpid(), signal.SIGUSR1)
        return out

    rl_mod.RLTrainer.train_step = train_step
    return run(name, overrides)


def final_weights(run_dir: str):
    """The model tensors of a run's latest checkpoint, by name (single-process layout)."""
    import torch

    from megatron_align.checkpoint import layout

    ckpt = layout.resolve(run_dir)
    out = {}
    for root, _, files in os.walk(os.path.join(ckpt, layout.MODEL_DIR)):
        for f in sorted(files):
            if f.endswith((".pt", ".distcp")):
                out[os.path.relpath(os.path.join(root, f), ckpt)] = open(os.path.join(root, f), "rb").read()
    del torch
    return out


def learn(name: str, overrides: List[str]):
    """A run from scratch; the held-out eval at the start weights and at the end."""
    from megatron_align.engine.trainer import run_trainer

    trainer = trainer_for(name, load(name, overrides, base=False))
    box = {}
    setup = trainer.setup

    def setup_then_eval():
        setup()
        box["before"] = trainer.evaluate()

    trainer.setup = setup_then_eval
    out = run_trainer(trainer)
    after = {k: v for k, v in out.items() if k.startswith("eval_")}
    return {"before": box["before"], "after": after, "last": {k: v for k, v in out.items()
                                                              if isinstance(v, (int, float))}}


class FakeEngine:
    """A generation engine (the GenerationEngine protocol) that answers from a fixed table: completion k of a
    call is ``table[k % len(table)]``, finish "stop" when it ends with a stop id."""

    def __init__(self, table):
        self.table = table

    def generate(self, prompts, params):
        from megatron_align.rollout.engine import truncate_at_stop

        out = []
        for k, p in enumerate(prompts):
            ids = list(self.table[(len(p) + k) % len(self.table)])
            out.append(truncate_at_stop(ids, [0.0] * len(ids), params.stop_ids, params.max_new_tokens))
        return out


def roll_with_fake_engine(reward_path: str, dp_rank_of_world: bool):
    """Roller over a fake engine on 1 or 2 ranks (each rank its own DP replica): groups, rewards and failure
    counts gathered on every rank, in prompt order."""
    import torch.distributed as dist

    from megatron_align.config.base import from_dict
    from megatron_align.config.rl import RolloutConfig
    from megatron_align.data.builder import tokenizer_and_template
    from megatron_align.data.config import DataConfig
    from megatron_align.rewards import build_reward
    from megatron_align.stages.rl_prompts import PromptDataset
    from megatron_align.stages.rl_rollout import Roller, rollout_metrics, stop_ids

    dist.init_process_group("gloo")
    tok, template = tokenizer_and_template(DataConfig(), "llama")
    ds = PromptDataset(os.path.join(TINY, "rl_prompts_eval.jsonl"), template, 64)
    reward = build_reward([{"name": "nanny", "type": "function", "params": {"path": reward_path}},
                           {"name": "len", "type": "length", "weight": 0.5, "params": {"unit": "chars", "max": 8}}])
    table = [tok.encode("aeiou"), tok.encode("xyz bcd"), tok.encode("oo") + [stop_ids(tok, template)[0]]]
    rank, world = dist.get_rank(), dist.get_world_size()
    roller = Roller(FakeEngine(table), reward, tok, from_dict(RolloutConfig, {"max_new_tokens": 5}),
                    stop_ids(tok, template), rank if dp_rank_of_world else 0, world if dp_rank_of_world else 1)
    groups, stats = roller.run([ds[i] for i in range(6)], 3, step=0)
    m = rollout_metrics(groups, stats, ["line", "name", "word"])
    texts = [tok.decode(c, skip_special_tokens=True) for g in groups for c in g.completions]
    return {"rewards": [g.rewards for g in groups], "completions": [g.completions for g in groups], "texts": texts,
            "truncated": [g.truncated for g in groups], "failures": stats.failures, "metrics": m}


def rm_scores_vs_direct(rm_dir: str):
    """The stage's reward-model scorer against a direct forward of the same sequences (the `score` command's
    per-document pass): rewards of three prompt/response pairs."""
    import numpy as np

    from megatron_align.data.samples import Sample
    from megatron_align.engine.collect import run_per_document
    from megatron_align.runtime import setup_runtime, teardown
    from megatron_align.stages.rl_reward_model import build_scorer

    cfg = load("grpo", [f"rl.reward_model.load={rm_dir}", "rl.rewards=[{type: model}]"])
    rt = setup_runtime(cfg.parallel, seed=0)
    try:
        from megatron_align.data.builder import tokenizer_and_template

        tok, template = tokenizer_and_template(cfg.data, "llama")
        scorer = build_scorer(cfg, template, tok, rt.device)
        samples = [{"prompt": "Say a vowel word."}, {"prompt": "Type a line.", "category": "line"},
                   {"messages": [{"role": "user", "content": "Hi"}]}]
        responses = ["aeiou", "xyz", ""]
        got = scorer.score(["p"] * 3, responses, samples)
        docs = [Sample(i, scorer.encode(r, s), np.ones(len(scorer.encode(r, s)), np.uint8))
                for i, (r, s) in enumerate(zip(responses, samples))]
        direct = run_per_document(scorer.session, docs,
                                  lambda x, v: dict(zip(x.docs.sample_ids, v.reshape(-1)[x.docs.last].tolist())),
                                  device=rt.device)
        return {"got": got, "direct": [direct[i] for i in range(3)] if direct is not None else None}
    finally:
        teardown()


def ppo_advantages_vs_manual(overrides: List[str]):
    """PPO's per-token advantages and returns on a fixed rollout against a hand computation: the critic's values,
    KL-penalised token rewards (k3 of the stored old / reference log-probs), GAE, whitening over the batch."""
    import torch

    from megatron_align.losses.rl import gae, kl_k3
    from megatron_align.runtime import teardown
    from megatron_align.stages.critic import _response_positions
    from megatron_align.stages.rl_rollout import RolloutDataset

    trainer = trainer_for("ppo", load("ppo", overrides))
    try:
        trainer.setup()
        rl = trainer.cfg.rl
        groups = fixed_groups(4, rl.prompts_per_step, rl.num_generations, 1536)
        ds = RolloutDataset(groups)
        mbs, inputs = trainer.micro_batches(ds, list(range(len(ds))))
        trainer.prepare_rollout_inputs(inputs)
        values = trainer.stage.critic.values(inputs)
        trainer.before_updates([(mbs, inputs)])
        advs, rets, got_a, got_r, kls = [], [], [], [], []
        for x in inputs:
            for d, (sid, pos) in enumerate(_response_positions(x)):
                old = x.extra["old_logp"].reshape(-1)[pos].double()
                ref = x.extra["ref_logp"].reshape(-1)[pos].double()
                r = -rl.kl.beta * kl_k3(old, ref)
                kls.append(kl_k3(old, ref))
                r[-1] += float(x.docs.values["score"][d])
                a, ret = gae(r[None], values[sid].double()[None], torch.ones(1, len(pos)), gamma=rl.ppo.gamma,
                             lam=rl.ppo.lam)
                advs.append(a[0])
                rets.append(ret[0])
                got_a.append(x.extra["adv_tok"].reshape(-1)[pos].double())
                got_r.append(x.extra["returns"].reshape(-1)[pos].double())
        a = torch.cat(advs)
        want_a = (a - a.mean()) / torch.sqrt(a.var(unbiased=True) + 1e-8)
        return {"adv_err": float((torch.cat(got_a) - want_a).abs().max()),
                "ret_err": float((torch.cat(got_r) - torch.cat(rets)).abs().max()),
                "adv_std": float(torch.cat(got_a).std()), "n": int(a.numel()),
                "kl_max": float(torch.cat(kls).abs().max())}
    finally:
        teardown()
