"""Wrap model chunks in megatron's DistributedDataParallel and set the schedule hooks."""

from __future__ import annotations

from typing import List

import torch


def wrap_ddp(chunks: List[torch.nn.Module], *, use_distributed_optimizer: bool) -> List[torch.nn.Module]:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    config = chunks[0].config
    # Must be set before DDP is built: it then leaves gradients unscaled for finalize_model_grads
    # to divide by the global number of loss tokens (instead of 1/dp).
    config.calculate_per_token_loss = True
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=use_distributed_optimizer,
        check_for_nan_in_grad=False,
        bucket_size=None,
        average_in_collective=False,
    )
    wrapped = [
        DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk,
                                disable_bucketing=(i > 0))
        for i, chunk in enumerate(chunks)
    ]
    for chunk in wrapped:
        chunk.broadcast_params()
    config.finalize_model_grads_func = finalize_model_grads
    return wrapped
