"""One forward-backward pass over a list of micro-batches through megatron's pipeline schedules."""

from __future__ import annotations

import functools
from typing import Callable, Dict, List, Optional, Sequence

import torch

from megatron_align.engine.inputs import ModelInputs
from megatron_align.engine.loss import lm_loss

LossFn = Callable[[ModelInputs, torch.Tensor], tuple]


def lm_forward_step(loss_backend: str, loss_fn: Optional[Callable] = None):
    """A megatron ``forward_step_func``: run the chunk, hand the loss a closure over the batch."""
    loss_fn = loss_fn or functools.partial(lm_loss, loss_backend=loss_backend)

    def forward_step(data_iterator, model):
        inputs: ModelInputs = next(data_iterator)
        output = model(inputs.tokens, inputs.position_ids, inputs.doc_ids)
        return output, functools.partial(_call_loss, loss_fn, inputs)

    return forward_step


def _call_loss(loss_fn, inputs, output):
    return loss_fn(inputs, logits=output)


def forward_backward(chunks: List[torch.nn.Module], micro_batches: Sequence[ModelInputs], *,
                     seq_length: int, micro_batch_size: int, loss_backend: str = "fused",
                     forward_only: bool = False, loss_fn: Optional[Callable] = None) -> Dict[str, torch.Tensor]:
    """Run every micro-batch; return the summed loss reports (on the last pipeline stage, else {}).

    ``chunks`` are the (DDP-wrapped) model chunks of this rank; every rank receives the same
    list of micro-batches (first stage uses tokens, last stage labels/mask, all use positions).
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    fb = get_forward_backward_func()
    n = len(micro_batches)
    iters = [iter(micro_batches) for _ in chunks]
    reports = fb(
        forward_step_func=lm_forward_step(loss_backend, loss_fn),
        data_iterator=iters if len(chunks) > 1 else iters[0],
        model=chunks,
        num_microbatches=n,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    totals: Dict[str, torch.Tensor] = {}
    for rep in reports or []:
        for key, value in rep.items():
            totals[key] = totals[key] + value if key in totals else value.clone()
    return totals
