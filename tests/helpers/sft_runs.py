"""Spawned SFT runs for tests (module-level functions for helpers.dist.run_distributed)."""

from __future__ import annotations

import os
from typing import List

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "examples", "configs", "tiny_cpu.yaml")

# Small and quick: 2 layers, short rows, few samples per step.
BASE = ["model.num_layers=2", "data.seq_length=128", "train.global_batch_size=8", "train.eval_interval=0",
        "output.tensorboard=false", "output.progress_bar=false", "parallel.tp=1", "optim.warmup_steps=0"]


def sft(overrides: List[str]):
    from megatron_align.config.base import load_config
    from megatron_align.config.sft import SFTConfig
    from megatron_align.stages.sft import run_sft

    return run_sft(load_config(SFTConfig, CONFIG, BASE + list(overrides)))


def sft_crash_on_commit(overrides: List[str], crash_step: int):
    """Like :func:`sft`, but the commit of the checkpoint of ``crash_step`` dies after all files are written."""
    from megatron_align.checkpoint import layout

    orig = layout.commit

    def commit(root, tmp_dir, name):
        if name == layout.step_name(crash_step):
            raise SystemExit(f"simulated crash while committing {name}")
        return orig(root, tmp_dir, name)

    layout.commit = commit
    return sft(overrides)


def sft_first_step_grads(overrides: List[str]):
    """One optimizer step; return loss and grad norm (the global-batch token mean and its gradient)."""
    out = sft(list(overrides) + ["train.max_steps=1"])
    return {"loss": out["loss"], "grad_norm": out["grad_norm"]}


def sft_signal_after(overrides: List[str], step: int):
    """Like :func:`sft`, but rank 0 receives SIGUSR1 (Slurm's pre-timeout signal) after ``step``."""
    import signal

    import torch.distributed as dist

    from megatron_align.stages import sft as sft_mod

    orig = sft_mod.SFTTrainer.train_step

    def train_step(self, global_ids):
        out = orig(self, global_ids)
        if self.sampler.step == step and dist.get_rank() == 0:
            os.kill(os.getpid(), signal.SIGUSR1)
        return out

    sft_mod.SFTTrainer.train_step = train_step
    return sft(overrides)


def sft_nan_at(overrides: List[str], step: int):
    """Like :func:`sft`, but the loss of ``step`` comes out NaN (as after an overflow)."""
    from megatron_align.stages import sft as sft_mod

    orig = sft_mod.SFTTrainer.train_step

    def train_step(self, global_ids):
        out = orig(self, global_ids)
        if self.sampler.step == step:
            out["loss"] = float("nan")
        return out

    sft_mod.SFTTrainer.train_step = train_step
    return sft(overrides)
