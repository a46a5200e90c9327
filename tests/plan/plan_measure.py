"""Spawned workers. ``measure``: build tiny models at several layouts, wrap them in megatron DDP, build
megatron's (distributed) optimizer, take one step, and report what each rank really holds.
``measure_activations``: one micro-batch per recompute mode through a small model, saved bytes and
allocator peak next to the planner's prediction (:mod:`megatron_align.plan.measure`)."""

from __future__ import annotations

from typing import Dict, List, Tuple

# (model, tp, pp, precision, distributed_optimizer) per world size
CASES: Dict[int, List[Tuple[str, int, int, str, bool]]] = {
    1: [("tiny-llama", 1, 1, "fp32", False), ("tiny-llama", 1, 1, "fp32", True),
        ("tiny-qwen2", 1, 1, "fp32", True), ("tiny-baichuan2", 1, 1, "bf16", True),
        ("tiny-llama", 1, 1, "bf16", False)],
    2: [("tiny-llama", 2, 1, "fp32", True), ("tiny-qwen2", 1, 2, "fp32", True), ("tiny-qwen2", 2, 1, "fp32", False),
        ("tiny-llama", 1, 2, "fp32", False), ("tiny-llama", 1, 1, "fp32", True), ("tiny-qwen2", 1, 1, "fp32", True)],
}


def _optimizer_bytes(opt) -> Dict[str, int]:
    out = {"exp_avg": 0, "exp_avg_sq": 0, "main_params": 0, "state_elements": 0}
    for o in getattr(opt, "chained_optimizers", [opt]):
        for group in o.optimizer.param_groups:
            for p in group["params"]:
                state = o.optimizer.state[p]
                out["exp_avg"] += state["exp_avg"].numel() * state["exp_avg"].element_size()
                out["exp_avg_sq"] += state["exp_avg_sq"].numel() * state["exp_avg_sq"].element_size()
                out["state_elements"] += p.numel()
        masters = getattr(o, "shard_fp32_from_float16_groups", None) or getattr(o, "fp32_from_float16_groups", [])
        out["main_params"] += sum(p.numel() * p.element_size() for g in masters for p in g)
    return out


def measure(world_size: int) -> List[dict]:
    import torch
    from megatron.core import parallel_state
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megatron_align.config import ModelConfig, ParallelConfig
    from megatron_align.engine.wrap import wrap_ddp
    from megatron_align.models.builder import build_model
    from megatron_align.runtime import setup_runtime

    results = []
    for name, tp, pp, precision, distopt in CASES[world_size]:
        par = ParallelConfig(tp=tp, pp=pp, distributed_optimizer=distopt)
        setup_runtime(par, seed=3)
        built = build_model(ModelConfig(name=name, precision=precision), par, seq_length=32)
        params = [[(n, p.numel()) for n, p in c.named_parameters()] for c in built.chunks]
        param_bytes_plain = sum(p.numel() * p.element_size() for c in built.chunks for p in c.parameters())
        chunks = wrap_ddp(built.chunks, use_distributed_optimizer=distopt)
        grad_bytes = sum(b.grad_data.numel() * b.grad_data.element_size() for c in chunks for b in c.buffers)
        weight_bytes = (sum(b.param_data.numel() * b.param_data.element_size() for c in chunks for b in c.buffers)
                        if distopt else param_bytes_plain)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        opt = get_megatron_optimizer(
            OptimizerConfig(optimizer="adam", lr=1e-4, bf16=precision == "bf16", params_dtype=dtype,
                            use_distributed_optimizer=distopt),
            chunks, use_gloo_process_groups=False)
        opt.step()
        results.append({
            "case": (name, tp, pp, precision, distopt),
            "pp_rank": parallel_state.get_pipeline_model_parallel_rank(),
            "dp": parallel_state.get_data_parallel_world_size(with_context_parallel=True),
            "dp_rank": parallel_state.get_data_parallel_rank(with_context_parallel=True),
            "params": params, "weights": weight_bytes, "grads": grad_bytes, "optimizer": _optimizer_bytes(opt),
        })
        del opt, chunks, built
    return results


# Activation memory: one micro-batch through a small llama-shaped model (3 layers, so k=2 has an uneven block).
MEASURE_SHAPE = dict(num_layers=3, hidden_size=256, ffn_hidden_size=704, num_attention_heads=8, num_query_groups=2,
                     vocab_size=4000)
MODES = [dict(recompute="none"), dict(recompute="selective"), dict(recompute="full"), dict(recompute="kblock", k=2)]
ACTIVATION_CASES = {
    1: MODES + [dict(precision="bf16"), dict(packed=True), dict(packed=True, recompute="full"),
                dict(loss_backend="megatron", precision="bf16"), dict(loss_backend="megatron")],
    2: MODES + [dict(precision="bf16", recompute="kblock", k=2)],
}


def measure_activations(tp: int) -> List[dict]:
    from megatron_align.config import ParallelConfig
    from megatron_align.models.families import preset
    from megatron_align.plan.measure import MeasureCase, run_measure
    from megatron_align.runtime import setup_runtime

    setup_runtime(ParallelConfig(tp=tp, sp=tp > 1), seed=1)
    arch = preset("tiny-llama").replace(**MEASURE_SHAPE)
    cases = [MeasureCase(tp=tp, sp=tp > 1, seq_length=512, **kw) for kw in ACTIVATION_CASES[tp]]
    out = run_measure(arch, cases)
    for r in out:
        r["case"] = r["label"]
    return out
