"""The RL plan as a JSON-ready dict and as text: every term per pipeline stage at the config's layout, the
total against the budget, the KV cache configured vs needed, and the search with the RL terms."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Dict, List, Optional

from megatron_align.models.arch import ArchSpec, padded_vocab_size
from megatron_align.plan.memory import GiB, Dtypes, Layout, Workload, candidate_ranks
from megatron_align.plan.rl import RLWorkload, generation_layout, kv_cache, rl_rank_memory
from megatron_align.plan.search import Candidate, SearchResult, SearchSpace

MODES = (("none", "no recompute"), ("selective", "selective (core attention)"), ("full", "per-layer (full) recompute"),
         ("kblock", "k-block recompute"))
TERM_LABELS = {
    "policy_weights": "policy weights",
    "policy_grads": "policy grads (fp32 main_grad)",
    "policy_optimizer": "policy Adam states (+ master)",
    "policy_activations": "policy activations + logits/recompute",
    "critic_weights_grads_optimizer": "critic weights + grads + Adam",
    "reference_weights": "reference weights (frozen)",
    "original_weights": "original model weights (frozen)",
    "reward_model_weights": "reward model weights (frozen)",
    "generation_replica_weights": "generation replica weights",
    "kv_cache": "KV cache (allocated)",
    "rollout_buffers": "rollout buffers (ids, log-probs, top-k)",
    "topk_kl_working": "top-k KL saved for backward",
}


def _gib(x: float) -> float:
    return round(x / GiB, 3)


def rl_candidate_dict(c: Candidate) -> Dict[str, Any]:
    mem = c.memory
    terms = {k: _gib(v) for k, v in mem.terms().items()}
    terms["total"] = _gib(mem.total)
    return {"gpus": c.layout.gpus, "layout": c.layout.label(), "tp": c.layout.tp, "pp": c.layout.pp,
            "cp": c.layout.cp, "dp": c.layout.dp, "vpp": c.layout.vpp, "sp": c.layout.seq_parallel,
            "recompute": c.recompute, "k": c.k, "peak_pp_rank": mem.pp_rank,
            "recompute_flops_overhead": round(c.overhead, 4), "memory_gib": terms}


def build_rl_report(arch: ArchSpec, name: str, rl: RLWorkload, work: Workload, dtypes: Dtypes, layout: Layout,
                    space: SearchSpace, gpu_memory_gib: float, reserve: float, result: Optional[SearchResult],
                    models: Dict[str, str], top: int = 10) -> Dict[str, Any]:
    budget = gpu_memory_gib * (1 - reserve) * GiB
    ranks = [rl_rank_memory(arch, layout, work, rl, r, dtypes) for r in candidate_ranks(layout.pp)]
    peak = max(ranks, key=lambda m: m.total)
    g_tp, g_pp = generation_layout(layout, rl.rollout)
    kv = kv_cache(arch, g_tp, g_pp, rl.rollout, dtypes.params)
    ro = rl.rollout
    vocab = padded_vocab_size(arch.vocab_size, work.vocab_divisible_by, layout.tp)
    rep: Dict[str, Any] = {
        "stage": rl.stage,
        "model": {"name": name, "parameters": arch.num_parameters(vocab), "num_layers": arch.num_layers,
                  "hidden_size": arch.hidden_size, "query_groups": arch.num_query_groups,
                  "head_dim": arch.kv_channels, "vocab": arch.vocab_size},
        "models": models,
        "layout": layout.label(), "gpus": layout.gpus,
        "frozen_layouts": {m.role: "tp{} pp{}".format(*m.at(layout)) for m in rl.frozen},
        "assumptions": {
            "seq_length": work.seq_length, "micro_batch_size": work.micro_batch_size, "recompute": work.recompute,
            "recompute_k": work.recompute_k, "dtypes_bytes": asdict(dtypes),
            "loss_backend": work.options.loss_backend, "attention": work.options.attention,
            "gpu_memory_gib": gpu_memory_gib, "reserve_fraction": reserve, "budget_gib": round(budget / GiB, 2),
        },
        "rollout": {"prompts_per_step": ro.prompts_per_step, "num_generations": ro.num_generations,
                    "max_requests": ro.max_requests, "sequence_tokens": ro.sequence_tokens,
                    "max_new_tokens": ro.max_new_tokens, "kl_top_k": ro.kl_top_k, "kl_sft_top_k": ro.sft_top_k,
                    "kl_sft_tokens": ro.sft_tokens, "critic": ro.critic},
        "kv_cache": {**kv.to_dict(), "configured_gib": ro.kv_cache_gb,
                     "holds_max_requests": kv.concurrent_sequences >= ro.max_requests},
        "ranks": [{"pp_rank": m.pp_rank, **{k: _gib(v) for k, v in m.terms().items()}, "total": _gib(m.total)}
                  for m in ranks],
        "peak": {"pp_rank": peak.pp_rank, "total_gib": _gib(peak.total)},
        "fits": peak.total <= budget,
        "notes": notes(rl, work, kv, layout),
    }
    if result is not None:
        rep["search"] = {
            "min_gpus": result.min_gpus,
            "best": {m: (rl_candidate_dict(c) if c else None) for m, c in result.best.items()},
            "feasible": [rl_candidate_dict(c) for c in result.feasible[:top]],
            "feasible_total": len(result.feasible),
        }
    return rep


def notes(rl: RLWorkload, work: Workload, kv, layout: Layout) -> List[str]:
    """What the config asks that the numbers alone do not show."""
    ro, out = rl.rollout, []
    why = {"rl.reference_parallel": "rl.kl.beta is 0", "rl.kl_sft.parallel": "rl.kl_sft.gamma is 0",
           "rl.reward_model": "no reward has type: model"}
    out += [f"{key} is set but {why[key]}: that model is not loaded and not counted" for key in rl.unused]
    if (layout.vpp or 1) > 1 and not ro.generation_tp:
        out.append(f"parallel.vpp={layout.vpp}: the generation engine takes one model chunk per rank; set "
                   f"rl.rollout.tp to generate in a replica (counted above once set)")
    if work.seq_length < ro.sequence_tokens:
        out.append(f"data.seq_length={work.seq_length} is shorter than rl.rollout.max_prompt_length + max_new_tokens = "
                   f"{ro.sequence_tokens}: a long prompt with a full completion does not fit one training row")
    if kv.concurrent_sequences < ro.max_requests:
        out.append(f"rl.rollout.kv_cache_gb holds {kv.concurrent_sequences} full-length sequences, max_requests is "
                   f"{ro.max_requests}: raise kv_cache_gb to {kv.needed / GiB:.2f} or lower max_requests")
    return out


HEADER = " GPUs  layout             recompute  k  peakGiB  policy  critic  frozen     kv  rollout  act+kl  +FLOPs"


def _row(c: Dict[str, Any]) -> str:
    m = c["memory_gib"]
    policy = m["policy_weights"] + m["policy_grads"] + m["policy_optimizer"]
    frozen = sum(v for k, v in m.items() if k.endswith("_weights") and not k.startswith("policy"))
    act = m["policy_activations"] + m["topk_kl_working"]
    k = str(c["k"]) if c["recompute"] in ("kblock", "full") else "-"
    return (f"{c['gpus']:>5}  {c['layout']:<18} {c['recompute']:<9} {k:>2}  {m['total']:>7.2f}  {policy:>6.2f}  "
            f"{m.get('critic_weights_grads_optimizer', 0.0):>6.2f}  {frozen:>6.2f} {m['kv_cache']:>6.2f}  "
            f"{m['rollout_buffers']:>7.2f}  {act:>6.2f}  {100 * c['recompute_flops_overhead']:>5.1f}%")


def format_rl_text(rep: Dict[str, Any]) -> str:
    md, a, ro, kv = rep["model"], rep["assumptions"], rep["rollout"], rep["kv_cache"]
    d = a["dtypes_bytes"]
    out: List[str] = []
    out.append(f"{rep['stage'].upper()} plan: policy {md['name']} ({md['parameters'] / 1e9:.2f} B parameters, "
               f"L={md['num_layers']}, h={md['hidden_size']}, {md['query_groups']} KV heads x {md['head_dim']})")
    out.append("models: " + "; ".join(f"{role} {desc}" for role, desc in rep["models"].items()))
    frozen = ", ".join(f"{r} {lay}" for r, lay in rep["frozen_layouts"].items()) or "none"
    k = f" k={a['recompute_k']}" if a["recompute"] == "kblock" else ""
    out.append(f"layout {rep['layout']} ({rep['gpus']} GPUs); frozen layouts: {frozen}")
    out.append(f"training rows: seq {a['seq_length']} x micro-batch {a['micro_batch_size']}, recompute "
               f"{a['recompute']}{k}, loss {a['loss_backend']}, attention {a['attention']}; bytes/element: params "
               f"{d['params']}, grads {d['grads']}, Adam 2x{d['optim_state']} + master {d['main_params']}")
    kl = f"top-k KL k={ro['kl_top_k']}" if ro["kl_top_k"] else "no top-k KL"
    sft = (f"KL to the original on {ro['kl_sft_tokens']} SFT tokens/step (k={ro['kl_sft_top_k']})"
           if ro["kl_sft_top_k"] else "no KL to the original")
    out.append(f"rollout: {ro['prompts_per_step']} prompts x {ro['num_generations']} completions per step, "
               f"{ro['sequence_tokens']} tokens each ({ro['max_new_tokens']} new); {kl}; {sft}")
    state = ("holds all max_requests" if kv["holds_max_requests"] else
             "SHORT: the engine pauses the other requests (slower, still runs)")
    out.append(f"KV cache at {kv['layout']}: block {kv['block_bytes'] / 2 ** 20:.3f} MiB; rl.rollout.kv_cache_gb="
               f"{kv['configured_gib']:g} -> {kv['allocated_blocks']} blocks = {kv['allocated_gib']:.2f} GiB, "
               f"{kv['concurrent_sequences']} full-length sequences at once; max_requests={ro['max_requests']} needs "
               f"{kv['needed_blocks']} blocks = {kv['needed_gib']:.2f} GiB ({state})")
    out.append("")
    ranks = rep["ranks"]
    out.append(f"per-GPU memory (GiB)                        " + "".join(f"{'stage ' + str(r['pp_rank']):>10}"
                                                                        for r in ranks))
    for key in ranks[0]:
        if key in ("pp_rank", "total"):
            continue
        out.append(f"  {TERM_LABELS.get(key, key):<42}" + "".join(f"{r[key]:>10.2f}" for r in ranks))
    out.append(f"  {'total':<42}" + "".join(f"{r['total']:>10.2f}" for r in ranks))
    verdict = "fits" if rep["fits"] else "DOES NOT FIT"
    out.append(f"peak {rep['peak']['total_gib']:.2f} GiB on stage {rep['peak']['pp_rank']}; budget "
               f"{a['budget_gib']:g} GiB ({a['gpu_memory_gib']:g} GiB - {100 * a['reserve_fraction']:g}% reserve): "
               f"{verdict}")
    out += [f"note: {n}" for n in rep["notes"]]
    s = rep.get("search")
    if s:
        out.append("")
        out.append("search with the RL terms (frozen layouts as configured, null ones follow the policy; CP = 1):")
        out.append(HEADER)
        for mode, label in MODES:
            if mode not in s["best"]:
                continue
            c = s["best"][mode]
            out.append(_row(c) + f"   <- {label}" if c else f"    -  {label}: nothing fits")
        out.append(f"feasible ({len(s['feasible'])} of {s['feasible_total']} up to the largest minimum):")
        out.append(HEADER)
        out += [_row(c) for c in s["feasible"]]
    return "\n".join(out)
