"""Spawned runs of the preference / RL stages for tests (module-level functions for helpers.dist.run_distributed)."""

from __future__ import annotations

import os
from typing import List

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = {"rm": os.path.join(ROOT, "examples", "configs", "rm_tiny_cpu.yaml"),
           "dpo": os.path.join(ROOT, "examples", "configs", "dpo_tiny_cpu.yaml")}
TINY = os.path.join(ROOT, "megatron_align", "assets", "tiny")

# Layouts the same global batch must give the same loss and gradient in (world size, overrides); the reference
# is packed rows, micro-batch 2, one process.
LAYOUTS = {
    "unpacked_mbs1": (1, ["data.packing=false", "train.micro_batch_size=1"]),
    "packed_mbs1": (1, ["train.micro_batch_size=1"]),
    "packed_tp2": (2, ["parallel.tp=2"]),
    "packed_pp2": (2, ["parallel.pp=2", "train.micro_batch_size=1"]),
    "unpacked_dp2": (2, ["data.packing=false"]),
}

# Small and quick: 2 layers, short rows, few pairs per step.
BASE = ["model.num_layers=2", "data.seq_length=64", "train.global_batch_size=8", "train.eval_interval=0",
        "output.tensorboard=false", "output.progress_bar=false", "parallel.tp=1", "optim.warmup_steps=0",
        f"data.path={TINY}/pairs_train.jsonl", f"data.eval_path={TINY}/pairs_eval.jsonl"]


def stage(name: str, overrides: List[str]):
    from megatron_align.config.base import load_config

    if name == "rm":
        from megatron_align.config.rm import RMConfig
        from megatron_align.stages.rm import run_rm

        return run_rm(load_config(RMConfig, CONFIGS["rm"], BASE + list(overrides)))
    if name == "dpo":
        from megatron_align.config.dpo import DPOConfig
        from megatron_align.stages.dpo import precompute_reference, run_dpo

        cfg = load_config(DPOConfig, CONFIGS["dpo"], BASE + [o for o in overrides if o != "--precompute-reference"])
        return precompute_reference(cfg) if "--precompute-reference" in overrides else run_dpo(cfg)
    raise KeyError(name)


def first_step(name: str, overrides: List[str]):
    """One optimizer step: the loss over the global batch, the norm of its gradient, the reported metrics."""
    out = stage(name, list(overrides) + ["train.max_steps=1", "train.log_interval=1"])
    return {k: v for k, v in out.items() if isinstance(v, (int, float))}


def cli(argv: List[str]) -> int:
    """``megatron-align ARGV`` inside a spawned rank (torchrun-style environment already set)."""
    from megatron_align.cli import main

    return main(list(argv))


def stage_first_loss(overrides: List[str]):
    """The first step's loss and accuracy of an RM run (computed at the starting weights)."""
    out = stage("rm", list(overrides) + ["train.max_steps=1"])
    return {"loss": out["loss"], "accuracy": out["accuracy"]}


def logprobs_through_impl(argv: List[str]):
    """Run `logprobs` with the session's transformer_impl forced to "te" and the THD forward replaced by a recorder
    (TE itself is GPU-only): proves the command feeds the same forward as training, with cu_seqlens."""
    from megatron_align.engine import forward_backward as fb
    from megatron_align.engine import session as sess

    calls = []
    orig_init = sess.ModelSession.__init__

    def init(self, *a, **k):
        orig_init(self, *a, **k)
        self.impl = "te"

    def thd_recorder(model, inputs):
        calls.append({"cu_seqlens": None if inputs.cu_seqlens is None else inputs.cu_seqlens.tolist(),
                      "docs": len(inputs.docs.sample_ids)})
        return fb._local_forward(model, inputs)

    sess.ModelSession.__init__ = init
    fb.FORWARDS["te"] = thd_recorder
    rc = cli(argv)
    return {"rc": rc, "calls": calls}
