"""Spawned worker for tests/plan/test_rl_plan.py: what megatron really allocates for the RL terms of the
planner on one rank of a tiny model: the dynamic engine's KV cache, a frozen reward model's weights (bf16
params; the scalar head stays fp32), and a PPO critic's (head=value) DDP buffers and Adam states."""

from __future__ import annotations

from typing import Dict

from plan_measure import _optimizer_bytes

MODEL = "tiny-llama"
SEQ = 64
KV = dict(max_requests=4, buffer_size_gb=0.0005, block_size_tokens=16)


def measure_rl(tp: int) -> Dict[str, object]:
    import torch
    from megatron.core import parallel_state
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megatron_align.config import ModelConfig, ParallelConfig
    from megatron_align.engine.wrap import wrap_ddp
    from megatron_align.models.builder import build_model
    from megatron_align.rollout.megatron_engine import MegatronGenerationEngine
    from megatron_align.runtime import setup_runtime

    par = ParallelConfig(tp=tp, distributed_optimizer=True)
    setup_runtime(par, seed=3)
    out: Dict[str, object] = {"pp_rank": parallel_state.get_pipeline_model_parallel_rank()}

    built = build_model(ModelConfig(name=MODEL, precision="bf16"), par, seq_length=SEQ)
    engine = MegatronGenerationEngine(built.chunks, max_seq_length=SEQ, **KV)
    out["kv"] = engine.kv_cache()
    del engine, built

    # a frozen reward model: what its parameters occupy (bf16 layers, the scalar head in fp32)
    rm = build_model(ModelConfig(name=MODEL, precision="bf16", head="reward"), par, seq_length=SEQ)
    out["reward_bf16"] = sum(p.numel() * p.element_size() for c in rm.chunks for p in c.parameters())
    del rm

    critic = build_model(ModelConfig(name=MODEL, precision="bf16", head="value"), par, seq_length=SEQ)
    chunks = wrap_ddp(critic.chunks, use_distributed_optimizer=True)
    opt = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-4, bf16=True, params_dtype=torch.bfloat16,
                        use_distributed_optimizer=True), chunks, use_gloo_process_groups=False)
    opt.step()
    out["critic"] = {
        "weights": sum(b.param_data.numel() * b.param_data.element_size() for c in chunks for b in c.buffers),
        "grads": sum(b.grad_data.numel() * b.grad_data.element_size() for c in chunks for b in c.buffers),
        "optimizer": _optimizer_bytes(opt)}
    return out
