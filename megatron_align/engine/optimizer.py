"""Megatron optimizer (AdamW, optionally sharded over DP) and its LR/WD schedule from our configs."""

from __future__ import annotations

from typing import List

import torch

from megatron_align.config.optim import OptimizerConfig

# fp16 dynamic loss scaling starts here (megatron's default is 2**32, torch's GradScaler 2**16). Our loss is
# a per-token *sum* (calculate_per_token_loss; gradients are divided by the token count only in fp32 after
# the reduction), so fp16 gradients are ~tokens times those of a mean loss: an output-layer weight gradient
# sums scale * (p - onehot) * h over every token of the micro-batch. At 2**15 the tiny CPU model's first
# steps (~100 loss tokens) all overflowed; 2**10 does not. Overflowing steps are skipped and halve the
# scale (hysteresis 2), clean ones double it every 1000 steps: megatron's dynamic scaler does the rest.
FP16_INITIAL_LOSS_SCALE = 2.0 ** 10


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
        initial_loss_scale=FP16_INITIAL_LOSS_SCALE,
    )
    optimizer = get_megatron_optimizer(mcfg, chunks, use_gloo_process_groups=False)
    wire_loss_scaling(chunks, optimizer, fp16=mcfg.fp16)
    return optimizer


def wire_loss_scaling(chunks: List[torch.nn.Module], optimizer, *, fp16: bool) -> None:
    """fp16: the schedule multiplies the loss by the optimizer's current loss scale before backward
    (megatron reads ``config.grad_scale_func``; its training loop sets it the same way). The optimizer
    divides the gradients by that scale again, so without this fp16 gradients came out 2**-scale small.
    bf16/fp32 have no scaler (the scale is 1), so nothing is set."""
    if not fp16:
        return
    from megatron.core.utils import get_model_config

    for chunk in chunks:
        get_model_config(chunk).grad_scale_func = optimizer.scale_loss


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
