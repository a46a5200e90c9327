"""The planner's answer as a JSON-ready dict, and the same dict as text."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any, Dict, List

from megatron_align.models.arch import ArchSpec, padded_vocab_size
from megatron_align.plan import activations as act
from megatron_align.plan.kblock import detailed_curve, report_optimal_k, report_units, units_per_layer
from megatron_align.plan.memory import GiB, Dtypes, Layout, Workload
from megatron_align.plan.search import Candidate, SearchResult, SearchSpace

THREE_CASES = (("none", "no recompute"), ("full", "per-layer (full) recompute"),
               ("kblock", "k-block recompute"))


def _gib(x: float) -> float:
    return round(x / GiB, 2)


def candidate_dict(c: Candidate) -> Dict[str, Any]:
    mem = {k: (_gib(v) if k not in ("pp_rank", "inflight") else v) for k, v in c.memory.to_dict().items()}
    return {"gpus": c.layout.gpus, "tp": c.layout.tp, "pp": c.layout.pp, "cp": c.layout.cp, "dp": c.layout.dp,
            "vpp": c.layout.vpp, "sp": c.layout.seq_parallel, "recompute": c.recompute, "k": c.k,
            "recompute_flops_overhead": round(c.overhead, 4), "memory_gib": mem}


def _reference_layout(result: SearchResult, space: SearchSpace) -> Layout:
    for mode in ("kblock", "full", "none", "selective"):
        c = result.best.get(mode)
        if c is not None:
            return c.layout
    return Layout(tp=max(space.tp), pp=1, sp=space.sp, distributed_optimizer=space.distributed_optimizer)


def kblock_section(arch: ArchSpec, layout: Layout, work: Workload, dtypes: Dtypes) -> Dict[str, Any]:
    """Report model vs detailed model on one layout (stage 0 of its pipeline)."""
    opts = replace(work.options, act_bytes=dtypes.activations)
    sp, tokens = layout.seq_parallel, work.seq_length * work.micro_batch_size / layout.cp
    n = units_per_layer(arch, layout.tp, sp, opts)
    L = arch.num_layers
    curve = detailed_curve(arch, layout.tp, layout.pp, sp, opts)
    k_best = min(curve, key=lambda kv: kv[1])[0]
    unit = act.checkpoint_bytes_per_token(arch, layout.tp, sp, opts) * tokens
    return {
        "layout": layout.label(),
        "n": round(n, 3),
        "checkpoint_unit_gib": _gib(unit),
        "layer_activation_gib": _gib(n * unit),
        "report_optimal_k": round(report_optimal_k(L, n), 3),
        "report_per_layer_gib": _gib(report_units(L, n, 1) * unit),
        "report_kblock_gib": {k: _gib(report_units(L, n, k) * unit) for k in range(1, 9)},
        "detailed_best_k": k_best,
        "detailed_stage0_activation_gib": {k: _gib(v * tokens) for k, v in curve[:8]},
    }


def build_report(arch: ArchSpec, name: str, work: Workload, dtypes: Dtypes, space: SearchSpace, gpu_memory_gib: float,
                 reserve: float, result: SearchResult, top: int = 20) -> Dict[str, Any]:
    ref = _reference_layout(result, space)
    opts = replace(work.options, act_bytes=dtypes.activations)
    vocab = padded_vocab_size(arch.vocab_size, work.vocab_divisible_by, ref.tp)
    tokens = work.seq_length * work.micro_batch_size / ref.cp
    logits = {}
    for backend in act.LOSS_BACKENDS:  # kept + the backend's transient, per micro-batch on the last stage
        o = replace(opts, loss_backend=backend)
        terms = act.output_terms(arch, vocab, ref.tp, ref.seq_parallel, o)
        extra = act.output_peak_terms(arch, vocab, ref.tp, o, tokens)
        logits[backend] = _gib((terms["logits"] + terms["loss_buffers"] + sum(extra.values())) * tokens)
    terms = act.layer_terms(arch, ref.tp, ref.seq_parallel, opts, work.seq_length // ref.cp)
    return {
        "model": {"name": name, "family": arch.family, "parameters": arch.num_parameters(vocab),
                  "num_layers": arch.num_layers, "hidden_size": arch.hidden_size,
                  "ffn_hidden_size": arch.ffn_hidden_size, "heads": arch.num_attention_heads,
                  "query_groups": arch.num_query_groups, "vocab": arch.vocab_size},
        "assumptions": {
            "seq_length": work.seq_length, "micro_batch_size": work.micro_batch_size,
            "num_microbatches": work.num_microbatches or ">= pipeline warm-up",
            "dtypes_bytes": asdict(dtypes), "distributed_optimizer": space.distributed_optimizer,
            "sequence_parallel": space.sp, "vpp": space.vpp, "norm": opts.norm, "fused_swiglu": opts.fused_swiglu,
            "loss_backend": opts.loss_backend, "attention": opts.attention,
            "gpu_memory_gib": gpu_memory_gib, "reserve_fraction": reserve,
            "budget_gib": round(gpu_memory_gib * (1 - reserve), 2), "gpus_per_node": space.gpus_per_node,
            "max_gpus": space.max_gpus, "tp_grid": list(space.tp), "cp_grid": list(space.cp),
        },
        "reference_layout": ref.label(),
        "layer_activation_bytes_per_token": {k: round(v, 2) for k, v in terms.items()},
        "logits_and_loss_gib_at_reference": logits,
        "min_gpus": result.min_gpus,
        "best": {m: (candidate_dict(c) if c else None) for m, c in result.best.items()},
        "kblock": kblock_section(arch, ref, work, dtypes),
        "feasible": [candidate_dict(c) for c in result.feasible[:top]],
        "feasible_total": len(result.feasible),
    }


def _row(c: Dict[str, Any]) -> str:
    m = c["memory_gib"]
    k = str(c["k"]) if c["recompute"] in ("kblock", "full") else "-"
    layout = f"tp{c['tp']} pp{c['pp']} cp{c['cp']} dp{c['dp']}"
    return (f"{c['gpus']:>5}  {layout:<20} {c['recompute']:<9} {k:>2}  {m['total']:>7.2f}  {m['weights']:>6.2f} "
            f"{m['grads']:>6.2f} {m['optimizer']:>6.2f} {m['activations']:>6.2f} {m['recompute_working']:>6.2f} "
            f"{m['logits_and_loss']:>6.2f}  {100 * c['recompute_flops_overhead']:>5.1f}%")


HEADER = (" GPUs  layout               recompute  k  peakGiB weight   grad  optim    act  recmp logits  +FLOPs")


def format_text(rep: Dict[str, Any]) -> str:
    md, a = rep["model"], rep["assumptions"]
    d = a["dtypes_bytes"]
    out: List[str] = []
    out.append(f"{md['name']}: {md['parameters'] / 1e9:.2f} B parameters, L={md['num_layers']}, h={md['hidden_size']}, "
               f"ffn={md['ffn_hidden_size']} (SwiGLU), heads {md['heads']}/{md['query_groups']} (GQA), vocab {md['vocab']}")
    out.append(f"seq {a['seq_length']}, micro-batch {a['micro_batch_size']}; bytes/element: params {d['params']}, "
               f"grads {d['grads']} (DDP main_grad), Adam states 2x{d['optim_state']} + master {d['main_params']}; "
               f"activations {d['activations']}")
    out.append(f"distributed optimizer over DP*CP: {a['distributed_optimizer']}; sequence parallel with TP>1: "
               f"{a['sequence_parallel']}; loss: {a['loss_backend']}; attention: {a['attention']}; norm: {a['norm']}; fused SwiGLU: {a['fused_swiglu']}; "
               f"schedule: {'interleaved vpp=' + str(a['vpp']) if (a['vpp'] or 1) > 1 else '1F1B'}")
    out.append(f"budget: {a['gpu_memory_gib']:g} GiB - {100 * a['reserve_fraction']:g}% reserve (allocator "
               f"fragmentation, NCCL buffers, CUDA context) = {a['budget_gib']:g} GiB per GPU; TP <= {a['gpus_per_node']} "
               f"(one node), TP in {a['tp_grid']}, CP in {a['cp_grid']}, up to {a['max_gpus']} GPUs")
    out.append("")
    terms = rep["layer_activation_bytes_per_token"]
    out.append(f"per-layer activations at {rep['reference_layout']} (bytes/token): "
               + ", ".join(f"{k} {v:g}" for k, v in terms.items()) + f" = {sum(terms.values()):g}")
    lg = rep["logits_and_loss_gib_at_reference"]
    out.append("logits + loss per micro-batch on the last stage (kept + transient): "
               + ", ".join(f"{k} {v} GiB" for k, v in lg.items()) + " (fused_linear: provisional)")
    out.append("")
    out.append("minimum GPUs (peak rank; GiB):")
    out.append(HEADER)
    for mode, label in THREE_CASES + (("selective", "selective (core attention)"),):
        if mode not in rep["best"]:
            continue
        c = rep["best"][mode]
        out.append(_row(c) + f"   <- {label}" if c else f"    -  {label}: nothing fits up to {a['max_gpus']} GPUs")
    out.append("")
    kb = rep["kblock"]
    out.append(f"k-block checkpointing at {kb['layout']}: n = one layer's activations / one checkpointed input "
               f"= {kb['n']:g} ({kb['layer_activation_gib']} GiB / {kb['checkpoint_unit_gib']} GiB per micro-batch)")
    out.append(f"  report model  h*L/k + k*h*n:  k* = sqrt(L/n) = {kb['report_optimal_k']:g};  "
               + "  ".join(f"k={k}: {v}" for k, v in list(kb["report_kblock_gib"].items())[:6]) + " GiB")
    out.append(f"  detailed (stage 0: pp in flight x ceil(L/pp/k) inputs + k layers rebuilt): best k = "
               f"{kb['detailed_best_k']};  "
               + "  ".join(f"k={k}: {v}" for k, v in list(kb["detailed_stage0_activation_gib"].items())[:6]) + " GiB")
    out.append("")
    out.append(f"feasible configurations (sorted by GPUs, recompute cost, memory; {len(rep['feasible'])} of "
               f"{rep['feasible_total']} up to the largest minimum):")
    out.append(HEADER)
    out += [_row(c) for c in rep["feasible"]]
    return "\n".join(out)
