"""Megatron optimizer (AdamW, optionally sharded over DP) and its LR/WD schedule from our configs."""

from __future__ import annotations

from typing import List

import torch

from megatron_align.config.optim import OptimizerConfig


def build_optimizer(cfg: OptimizerConfig, chunks: List[torch.nn.Module], *, params_dtype: torch.dtype,
                    distributed: bool):
    from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
    from megatron.core.optimizer import get_megatron_optimizer

    from megatron_align.engine import megatron_fixes

    megatron_fixes.apply()

    mcfg = MegatronOptimizerConfig(
        optimizer="adam",  # decoupled weight decay (AdamW) in megatron's Adam
        lr=cfg.lr,
        min_lr=cfg.min_lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        adam_eps=cfg.adam_eps,
        clip_grad=cfg.clip_grad,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        params_dtype=params_dtype,
        use_distributed_optimizer=distributed,
    )
    return get_megatron_optimizer(mcfg, chunks, use_gloo_process_groups=torch.cuda.is_available())


def build_scheduler(cfg: OptimizerConfig, optimizer, total_steps: int):
    """Warm-up then cosine / linear / constant decay to min_lr over the remaining steps."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if warmup > 0 else cfg.lr,
        max_lr=cfg.lr,
        min_lr=cfg.min_lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=max(total_steps, warmup + 1),
        lr_decay_style=cfg.decay_style,
        start_wd=cfg.weight_decay,
        end_wd=cfg.weight_decay,
        wd_incr_steps=max(total_steps, 1),
        wd_incr_style="constant",
    )
