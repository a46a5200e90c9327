"""Workers for the critic tests (spawned via helpers.dist): a tiny-llama value model on synthetic
(prompt + response, per-token return) documents."""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np
import torch

SEQ = 64
CLIP = 0.2
N_DOCS = 8


def make_docs(seed: int, n: int = N_DOCS, vocab: int = 2048):
    """Documents of 9..30 tokens, the last 5..12 of them the response (after a prompt of >= 4); per response token a return and an old
    value (both drawn, fp32), keyed by sample id."""
    from megatron_align.data.samples import Sample

    g = torch.Generator().manual_seed(seed)
    docs, returns, old = [], {}, {}
    for i in range(n):
        resp = int(torch.randint(5, 13, (1,), generator=g))
        length = int(torch.randint(resp + 4, 31, (1,), generator=g))  # a prompt of >= 4 tokens
        ids = torch.randint(3, vocab, (length,), generator=g).numpy().astype(np.int64)
        mask = np.zeros(length, dtype=np.uint8)
        mask[length - resp:] = 1
        docs.append(Sample(sample_id=100 + i, input_ids=ids, target_mask=mask))
        # the loss mask sets the positions that predict a response token: resp of them
        returns[100 + i] = torch.randn(resp, generator=g)
        old[100 + i] = 0.3 * torch.randn(resp, generator=g)
    return docs, returns, old


def parity_docs(seed: int, n: int, vocab: int = 2048):
    """The learning task: the return at each response position is +1 if the token there is even, else -1."""
    docs, _, _ = make_docs(seed, n, vocab)
    returns = {}
    for d in docs:
        pos = np.nonzero(d.target_mask)[0] - 1  # positions that predict the response tokens
        returns[d.sample_id] = torch.tensor(np.where(d.input_ids[pos] % 2 == 0, 1.0, -1.0), dtype=torch.float32)
    return docs, returns


def inputs_for(docs, mbs: int, packing: bool, returns=None, old=None):
    from megatron_align.data.batch import make_micro_batches
    from megatron_align.engine.inputs import ModelInputs
    from megatron_align.stages.critic import set_token_values

    inputs = [ModelInputs.from_micro_batch(mb) for mb in make_micro_batches(docs, SEQ, mbs, packing=packing)]
    if returns is not None:
        set_token_values(inputs, "returns", returns)
    if old is not None:
        set_token_values(inputs, "old_values", old)
    return inputs


def build(tp: int, pp: int, mbs: int, load: Optional[str], clip: Optional[float] = CLIP, lr: float = 1e-3,
          total_steps: int = 10, setup: bool = True):
    from megatron_align.config import ModelConfig, ParallelConfig
    from megatron_align.config.optim import OptimizerConfig
    from megatron_align.models.families import resolve_arch
    from megatron_align.runtime import setup_runtime
    from megatron_align.stages.critic import Critic

    par = ParallelConfig(tp=tp, pp=pp)
    if setup:
        setup_runtime(par, seed=5)
    arch = resolve_arch("tiny-llama", None, None, 2)
    optim = OptimizerConfig(lr=lr, min_lr=lr, weight_decay=0.0, warmup_steps=0, decay_style="constant")
    return Critic(ModelConfig(name="tiny-llama", precision="fp32", num_layers=2), par, arch, optim,
                  seq_length=SEQ, micro_batch_size=mbs, total_steps=total_steps, value_clip=clip, load=load)


def full_forward_values(critic, docs) -> Dict[int, torch.Tensor]:
    """Each document alone in one unpacked row through the unwrapped value model (positions 0..L-1, no document
    mask): the values at the positions that predict its response tokens."""
    from megatron_align.checkpoint.model_io import unwrap

    model = unwrap(critic.session.chunks[0])
    out = {}
    with torch.no_grad():
        for d in docs:
            x = torch.from_numpy(d.input_ids)[None]
            v = model(x, torch.arange(x.shape[1])[None], None)[0]
            pos = torch.from_numpy(np.nonzero(d.target_mask)[0] - 1)
            out[d.sample_id] = v[pos].float()
    return out


def hand_loss(values: Dict[int, torch.Tensor], returns, old, clip: Optional[float]) -> float:
    """float64 token mean of 0.5·max((V−R)², (clip(V, V_old±c)−R)²) over every response token."""
    total, n = 0.0, 0
    for sid, v in values.items():
        v, r, o = v.double(), returns[sid].double(), old[sid].double()
        a = (v - r) ** 2
        if clip is not None:
            a = torch.maximum(a, (torch.minimum(torch.maximum(v, o - clip), o + clip) - r) ** 2)
        total += float(0.5 * a.sum())
        n += v.numel()
    return total / n


def single_process(workdir: str):
    """Reference layout (packed, mbs 2) and the single-process variants, the hand loss, values() vs a full
    forward, save -> load -> next update, and the start checkpoint the parallel layouts load."""
    start = os.path.join(workdir, "start")
    docs, returns, old = make_docs(0)
    res = {}
    c0 = build(1, 1, 2, None)
    assert c0.head_init == "fresh"
    c0.save(start)  # <start>/critic: weights with a value head (a complete checkpoint)
    load = os.path.join(start, "critic")
    for name, (mbs, packing) in {"ref": (2, True), "packed_mbs1": (1, True), "unpacked_mbs1": (1, False)}.items():
        c = build(1, 1, mbs, load, setup=False)
        assert c.head_init == "checkpoint"
        inputs = inputs_for(docs, mbs, packing, returns, old)
        vals = c.values(inputs)
        direct = full_forward_values(c, docs) if name == "ref" else None
        m = c.update(inputs)
        res[name] = {"loss": m["value_loss"], "grad_norm": m["value_grad_norm"], "clipfrac": m["value_clipfrac"],
                     "ev": m["value_explained_var"], "values_mean": m["values_mean"],
                     "returns_mean": m["returns_mean"]}
        if name == "ref":
            res["values"] = {k: v.tolist() for k, v in vals.items()}
            res["direct"] = {k: v.tolist() for k, v in direct.items()}
            res["hand_loss"] = hand_loss(vals, returns, old, CLIP)
            res["hand_loss_unclipped"] = hand_loss(vals, returns, old, None)
            all_v = torch.cat([vals[k] for k in sorted(vals)]).double()
            all_r = torch.cat([returns[k] for k in sorted(vals)]).double()
            all_o = torch.cat([old[k] for k in sorted(vals)]).double()
            clipped = (all_o + (all_v - all_o).clamp(-CLIP, CLIP) - all_r) ** 2 > (all_v - all_r) ** 2
            res["hand_clipfrac"] = float(clipped.double().mean())
            res["hand_ev"] = float(1 - (all_r - all_v).var(unbiased=False) / all_r.var(unbiased=False))
            res["hand_values_mean"], res["hand_returns_mean"] = float(all_v.mean()), float(all_r.mean())
    res["starts"] = starts(workdir)
    # unclipped loss through the objective (one more fresh critic, forward only through update's metrics)
    c = build(1, 1, 2, load, clip=None, setup=False)
    res["unclipped_loss"] = c.update(inputs_for(docs, 2, True, returns))["value_loss"]
    # exact resume: update A, save, update B  vs  load, update B
    docs_b, returns_b, old_b = make_docs(1)
    a = build(1, 1, 2, load, setup=False)
    a.update(inputs_for(docs, 2, True, returns, old))
    a.save(os.path.join(workdir, "mid"))
    mb = a.update(inputs_for(docs_b, 2, True, returns_b, old_b))
    after_a = a.values(inputs_for(docs_b, 2, True))
    b = build(1, 1, 2, None, setup=False)  # weights, Adam state and schedule must all come from the load
    b.load(os.path.join(workdir, "mid"))
    assert b.updates == 1
    mb2 = b.update(inputs_for(docs_b, 2, True, returns_b, old_b))
    after_b = b.values(inputs_for(docs_b, 2, True))
    res["resume"] = {"uninterrupted": [mb["value_loss"], mb["value_grad_norm"], mb["value_lr"]],
                     "resumed": [mb2["value_loss"], mb2["value_grad_norm"], mb2["value_lr"]],
                     "max_value_diff": max(float((after_a[k] - after_b[k]).abs().max()) for k in after_a)}
    return res


def parallel_layout(workdir: str, tp: int, pp: int, dp: int):
    """The reference update at another layout: this DP rank's half of the documents (by position), the same
    start weights; returns the reduced metrics and this rank's values()."""
    from megatron.core import parallel_state

    docs, returns, old = make_docs(0)
    c = build(tp, pp, 2 if pp == 1 else 1, os.path.join(workdir, "start", "critic"))
    if dp > 1:
        docs = docs[parallel_state.get_data_parallel_rank()::dp]
    inputs = inputs_for(docs, c.session.micro_batch_size, True, returns, old)
    vals = c.values(inputs)
    m = c.update(inputs)
    return {"loss": m["value_loss"], "grad_norm": m["value_grad_norm"], "clipfrac": m["value_clipfrac"],
            "values": {k: v.tolist() for k, v in vals.items()}}


def learn(steps: int = 30):
    """Train on the parity task (16 documents per update, fresh every update) and measure held-out MSE before and
    after."""
    c = build(1, 1, 2, None, clip=None, lr=2e-3, total_steps=steps)
    held, held_r = parity_docs(999, 32)

    def mse() -> float:
        v = c.values(inputs_for(held, 4, True))
        return float(torch.cat([(v[k] - held_r[k]) ** 2 for k in held_r]).mean())

    before = mse()
    losses: List[float] = []
    for step in range(steps):
        docs, r = parity_docs(step, 16)
        losses.append(c.update(inputs_for(docs, 4, True, r))["value_loss"])
    return {"before": before, "after": mse(), "losses": losses}


def starts(workdir: str):
    """An LM checkpoint as the start (the policy's): the trunk is loaded, the value head is the fresh seeded one;
    a checkpoint of another architecture is refused naming the field."""
    import json

    from megatron_align.checkpoint import layout
    from megatron_align.checkpoint.layout import CheckpointError
    from megatron_align.checkpoint.model_io import save_model, unwrap
    from megatron_align.config import ModelConfig, ParallelConfig
    from megatron_align.engine.session import ModelSession
    from megatron_align.models.families import resolve_arch

    arch = resolve_arch("tiny-llama", None, None, 2)
    lm = ModelSession(ModelConfig(name="tiny-llama", precision="fp32", num_layers=2), ParallelConfig(), arch,
                      seq_length=SEQ, micro_batch_size=1, trainable=False)
    with torch.no_grad():
        for p in lm.chunks[0].parameters():
            p.add_(0.01)  # distinct from any fresh initialisation
    lm_dir = os.path.join(workdir, "lm")
    save_model(lm.chunks, os.path.join(lm_dir, layout.MODEL_DIR))
    layout.write_arch(lm_dir, arch)
    open(os.path.join(lm_dir, layout.COMPLETE), "w").write("ok\n")
    fresh = build(1, 1, 2, None, setup=False)
    c = build(1, 1, 2, lm_dir, setup=False)
    lm_sd, c_sd, f_sd = lm.chunks[0].state_dict(), unwrap(c.session.chunks[0]).state_dict(), \
        unwrap(fresh.session.chunks[0]).state_dict()
    emb = "embedding.word_embeddings.weight"
    out = {"head_init": c.head_init, "trunk_loaded": bool(torch.equal(c_sd[emb], lm_sd[emb])),
           "head_is_fresh_init": bool(torch.equal(c_sd["reward_head.weight"], f_sd["reward_head.weight"])),
           "lm_head_absent": not any(k.startswith("output_layer") for k in c_sd)}
    out["from_config"] = from_config(os.path.join(workdir, "start", "critic"))
    bad = os.path.join(workdir, "bad")
    os.makedirs(bad)
    a = json.load(open(os.path.join(lm_dir, layout.ARCH_FILE)))
    a["num_layers"] = 3
    json.dump(a, open(os.path.join(bad, layout.ARCH_FILE), "w"))
    open(os.path.join(bad, layout.COMPLETE), "w").write("ok\n")
    try:
        build(1, 1, 2, bad, setup=False)
        out["bad_arch_error"] = None
    except CheckpointError as exc:
        out["bad_arch_error"] = str(exc)
    return out


def from_config(critic_load: str):
    """Critic.from_config on a stage-like config: rl.ppo.critic_load wins over train.load, the optimizer is the
    stage's at rl.ppo.critic_lr."""
    from types import SimpleNamespace

    from megatron_align.config import ModelConfig, ParallelConfig
    from megatron_align.config.optim import OptimizerConfig
    from megatron_align.config.rl import PPOConfig, RLConfig
    from megatron_align.models.families import resolve_arch
    from megatron_align.stages.critic import Critic

    cfg = SimpleNamespace(model=ModelConfig(name="tiny-llama", precision="fp32", num_layers=2),
                          parallel=ParallelConfig(), optim=OptimizerConfig(lr=1e-5, warmup_steps=0),
                          data=SimpleNamespace(seq_length=SEQ),
                          train=SimpleNamespace(micro_batch_size=2, load="/nonexistent/policy/start"),
                          rl=RLConfig(ppo=PPOConfig(critic_load=critic_load, critic_lr=3e-6, value_clip=None)))
    c = Critic.from_config(cfg, resolve_arch("tiny-llama", None, None, 2), total_steps=4)
    return {"head_init": c.head_init, "loaded_from": c.loaded_from, "lr": c.optimizer.param_groups[0]["lr"],
            "clip": c.objective.value_clip, "micro_batch_size": c.session.micro_batch_size}
