"""One forward-backward pass over a list of micro-batches through megatron's pipeline schedules."""

from __future__ import annotations

import functools
from typing import Callable, Dict, List, Optional, Sequence

import torch

from megatron_align.engine.inputs import ModelInputs
from megatron_align.engine.loss import lm_loss
from megatron_align.engine.objective import Objective, combine_reports, report_for_schedule

LossFn = Callable[[ModelInputs, torch.Tensor], tuple]


def _local_forward(model, inputs: ModelInputs):
    """Local spec: document ids stand in for the attention mask (see models/attention.py)."""
    return model(inputs.tokens, inputs.position_ids, inputs.doc_ids)


def _thd_forward(model, inputs: ModelInputs):
    """Transformer Engine spec: the micro-batch as one THD row, samples separated by cu_seqlens
    (megatron's PackedSeqParams); RoPE restarts per sample inside TE/megatron. Needs TE + CUDA."""
    from megatron.core.packed_seq_params import PackedSeqParams

    if inputs.cu_seqlens is None:
        return model(inputs.tokens, inputs.position_ids, None)
    b, s = inputs.tokens.shape
    cu = inputs.cu_seqlens.to(torch.int32)
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                             max_seqlen_q=inputs.max_seqlen, max_seqlen_kv=inputs.max_seqlen)
    out = model(inputs.tokens.reshape(1, b * s), inputs.position_ids.reshape(1, b * s), None,
                packed_seq_params=params)
    return out if out.dim() < 3 or out.shape[0] != 1 else out.reshape(b, s, -1)


# transformer_impl -> how a micro-batch is fed to the model (chosen once, like the layer spec)
FORWARDS = {"local": _local_forward, "te": _thd_forward}


def run_model(model, inputs: ModelInputs, transformer_impl: str = "local"):
    """One chunk's forward on one micro-batch, the way the configured layer spec takes packed rows."""
    return FORWARDS[transformer_impl](model, inputs)


def lm_forward_step(loss_backend: str, loss_fn: Optional[Callable] = None, transformer_impl: str = "local"):
    """A megatron ``forward_step_func``: run the chunk, hand the loss a closure over the batch."""
    loss_fn = loss_fn or functools.partial(lm_loss, loss_backend=loss_backend)
    run_model = FORWARDS[transformer_impl]

    def forward_step(data_iterator, model):
        inputs: ModelInputs = next(data_iterator)
        output = run_model(model, inputs)
        return output, functools.partial(_call_loss, loss_fn, inputs)

    return forward_step


def _call_loss(loss_fn, inputs, output):
    return loss_fn(inputs, logits=output)


def _objective_loss(objective: Objective):
    def loss_fn(inputs: ModelInputs, logits: torch.Tensor):
        return report_for_schedule(objective, objective(inputs, logits))

    return loss_fn


def forward_backward(chunks: List[torch.nn.Module], micro_batches: Sequence[ModelInputs], *,
                     seq_length: int, micro_batch_size: int, loss_backend: str = "fused",
                     forward_only: bool = False, loss_fn: Optional[Callable] = None,
                     transformer_impl: str = "local", objective: Optional[Objective] = None
                     ) -> Dict[str, torch.Tensor]:
    """Run every micro-batch; return the combined reports (on the last pipeline stage, else {}).

    ``chunks`` are the (DDP-wrapped, or frozen) model chunks of this rank; every rank receives the same
    list of micro-batches (first stage uses tokens, last stage labels/mask, all use positions). The loss is an
    :class:`~megatron_align.engine.objective.Objective` (reports combined by each metric's reduction) or a
    plain ``loss_fn(inputs, logits) -> (loss_sum, count, report)`` (reports summed).
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if objective is not None:
        loss_fn = _objective_loss(objective)
    fb = get_forward_backward_func()
    n = len(micro_batches)
    iters = [iter(micro_batches) for _ in chunks]
    reports = fb(
        forward_step_func=lm_forward_step(loss_backend, loss_fn, transformer_impl),
        data_iterator=iters if len(chunks) > 1 else iters[0],
        model=chunks,
        num_microbatches=n,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    if objective is not None:
        return combine_reports(objective, reports)
    totals: Dict[str, torch.Tensor] = {}
    for rep in reports or []:
        for key, value in rep.items():
            totals[key] = totals[key] + value if key in totals else value.clone()
    return totals
