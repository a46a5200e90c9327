"""The GRPO objective on a packed rollout micro-batch vs the unpacked per-completion math (spawned: the vocab-parallel
ops need the runtime)."""

from __future__ import annotations

from typing import Dict

import torch


def _setup():
    import torch.distributed as dist

    from megatron_align.config import ParallelConfig
    if dist.is_initialized():
        return
    from megatron_align.runtime import setup_runtime

    setup_runtime(ParallelConfig(), seed=1)


def _rl(loss_type: str, estimator: str, steps: int = 1):
    from megatron_align.config.base import from_dict
    from megatron_align.config.rl import RLConfig

    return from_dict(RLConfig, {"loss_type": loss_type, "epsilon_low": 0.2, "epsilon_high": 0.28,
                                "num_generations": 3, "prompts_per_step": 4, "steps_per_rollout": steps,
                                "rollout": {"temperature": 0.7, "max_new_tokens": 6},
                                "kl": {"beta": 0.05, "estimator": estimator, "top_k": 40}})


def packed_vs_unpacked(loss_type: str, estimator: str) -> Dict[str, float]:
    """Loss sum, count, metrics and logits gradient of GRPOObjective on one packed micro-batch, and the same from
    ``clipped_policy_loss`` + ``reduce_policy_loss`` on unpacked [completions, tokens] rows (float64 softmax)."""
    import numpy as np

    from megatron_align.data.batch import make_micro_batches
    from megatron_align.engine.inputs import ModelInputs
    from megatron_align.engine.objective import StepCounts
    from megatron_align.losses.rl import clipped_policy_loss, kl_k1, kl_k3, reduce_policy_loss
    from megatron_align.losses.rl_objectives import GRPOObjective, topk_at_loss_positions
    from megatron_align.stages.rl_rollout import RolloutDataset
    from rl.rl_workers import fixed_groups

    _setup()
    torch.manual_seed(0)
    V, S = 64, 192
    groups = fixed_groups(5, 3, 3, V)
    for g in groups:
        g.advantages = np.random.default_rng(len(g.completions[0])).normal(size=3).tolist()
    ds = RolloutDataset(groups)
    (mb,) = make_micro_batches(ds.get_units(range(3)), S, 1, packing=True)
    x = ModelInputs.from_micro_batch(mb, ("adv",))
    rl = _rl(loss_type, estimator, steps=2)
    T = rl.rollout.temperature
    logits = torch.randn(1, S, V, dtype=torch.float32, requires_grad=True)
    ref_logits = torch.randn(1, S, V)
    old = torch.randn(S) * 0.3  # old log-probs = current + noise: ratios off 1, some clipped
    flat_ref = ref_logits.reshape(S, V)
    with torch.no_grad():
        cur = torch.log_softmax(logits.reshape(S, V).double() / T, -1)
        lab = x.labels.reshape(-1).clamp(min=0)
        cur_tok = cur.gather(1, lab[:, None])[:, 0]
        x.extra["old_logp"] = (cur_tok + old.double()).float()
        ref_tok = torch.log_softmax(flat_ref.double() / T, -1).gather(1, lab[:, None])[:, 0]
        x.extra["ref_logp"] = ref_tok.float()
        t = topk_at_loss_positions(x, ref_logits, rl.kl.top_k)
        x.extra["ref_vals"], x.extra["ref_ids"] = t["vals"], t["ids"]
    obj = GRPOObjective(rl)
    n_tok = float(mb.loss_mask.sum())
    obj.begin_step(StepCounts(tokens=n_tok, sequences=9.0, units=3.0))
    obj.generation_tokens = 2 * n_tok
    out = obj(x, logits)
    out.loss_sum.backward()
    got_grad = logits.grad.clone()

    # unpacked reference: one row per completion, right-padded, float64
    logits2 = logits.detach().clone().double().requires_grad_(True)
    lp_all = torch.log_softmax(logits2.reshape(S, V) / T, -1)
    rows, olds, refk, masks, adv, kls = [], [], [], [], [], []
    L = max(len(c) for g in groups for c in g.completions)
    mask_flat = mb.loss_mask.reshape(-1)
    for d, (start, n) in enumerate(mb.doc_spans):
        pos = [p for p in range(start, start + n) if mask_flat[p] > 0]
        pad = L - len(pos)
        pos_t = torch.tensor(pos, dtype=torch.long)
        lp = lp_all[pos_t].gather(1, lab[pos_t][:, None])[:, 0]
        rows.append(torch.cat([lp, lp.new_zeros(pad)]))
        olds.append(torch.cat([x.extra["old_logp"][pos_t].double(), torch.zeros(pad, dtype=torch.float64)]))
        r = ref_tok[pos_t]
        if estimator == "topk":  # exact KL over the reference's top-k (both renormalised), float64
            k = rl.kl.top_k
            top = torch.topk(flat_ref[pos_t].double(), k, dim=-1).indices
            p_log = torch.log_softmax((logits2.reshape(S, V)[pos_t] / T).gather(1, top), -1)
            q_log = torch.log_softmax((flat_ref[pos_t].double() / T).gather(1, top), -1)
            kl = (p_log.exp() * (p_log - q_log)).sum(-1)
        else:
            kl = (kl_k1 if estimator == "k1" else kl_k3)(lp, r)
        kls.append(torch.cat([kl, kl.new_zeros(pad)]))
        masks.append(torch.cat([torch.ones(len(pos)), torch.zeros(pad)]).double())
        adv.append(float(x.docs.values["adv"][d]))
    logp, old_lp, kl, mask = torch.stack(rows), torch.stack(olds), torch.stack(kls), torch.stack(masks)
    terms = clipped_policy_loss(logp, old_lp, torch.tensor(adv, dtype=torch.float64), eps_low=0.2, eps_high=0.28,
                                kl=kl, beta=0.05)
    ref_sum, ref_count, _ = reduce_policy_loss(terms.per_token_loss, mask, loss_type, max_completion_length=6)
    if loss_type == "dapo":
        ref_sum = ref_sum * (n_tok * 2 / (2 * n_tok))
    ref_sum.backward()
    clip = ((terms.low_clipped | terms.high_clipped).double() * mask).sum() / mask.sum()
    return {"loss_sum": float(out.loss_sum), "count": float(out.count), "ref_loss_sum": float(ref_sum),
            "ref_count": float(ref_count), "grad_err": float((got_grad.double() - logits2.grad).abs().max()),
            "grad_max": float(logits2.grad.abs().max()), "clip": float(out.metrics["clip_ratio"][0] / out.metrics["clip_ratio"][1]),
            "ref_clip": float(clip), "kl": float(out.metrics["kl"][0] / out.metrics["kl"][1]),
            "ref_kl": float((kl.detach() * mask).sum() / mask.sum())}


def topk_full_vocab_is_exact_kl() -> float:
    """The stored-top-k KL with k = vocabulary against the exact KL(π‖π_ref) in float64: max abs difference."""
    from megatron_align.losses.rl_objectives import stored_topk_kl
    from megatron_align.ops import reference_topk

    _setup()
    torch.manual_seed(1)
    pol, ref = torch.randn(20, 50), torch.randn(20, 50) * 2
    vals, ids = reference_topk(ref, 50)
    got = stored_topk_kl(pol, vals, ids, k=50, temperature=0.8)
    p, q = torch.log_softmax(pol.double() / 0.8, -1), torch.log_softmax(ref.double() / 0.8, -1)
    exact = (p.exp() * (p - q)).sum(-1)
    return float((got.double() - exact).abs().max())


CASES = [("grpo", "topk"), ("bnpo", "k3"), ("dr_grpo", "k1"), ("dapo", "topk")]


def all_cases():
    """Every case in one spawned process."""
    out = [packed_vs_unpacked(loss_type, est) for loss_type, est in CASES]
    out.append({"exact_kl_err": topk_full_vocab_is_exact_kl()})
    return out
