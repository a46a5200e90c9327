"""Memory and parallelism planner (`megatron-align plan`): pure arithmetic, no torch or megatron import
(except :mod:`~megatron_align.plan.measure`, which `plan --measure` imports to check the model).

- :mod:`~megatron_align.plan.params`: exact per-rank parameters, DDP buffers, distributed-optimizer shards
- :mod:`~megatron_align.plan.activations`: what the layers, the loss and a backward keep, term by term
- :mod:`~megatron_align.plan.measure`: saved bytes and allocator peak of a small build, next to the prediction
- :mod:`~megatron_align.plan.memory`: per-GPU breakdown of one layout
- :mod:`~megatron_align.plan.kblock`: the report's k-block checkpointing model, k* = √(L/n)
- :mod:`~megatron_align.plan.flops`: recompute cost
- :mod:`~megatron_align.plan.search`: the TP/PP/CP/DP grid and the minimum GPU count
- :mod:`~megatron_align.plan.report`: the printed table and the JSON dict
- :mod:`~megatron_align.plan.rl`: the RL case (`plan --config`): critic, frozen models, KV cache, rollout buffers
- :mod:`~megatron_align.plan.rl_report`: its per-stage table and JSON dict
"""
