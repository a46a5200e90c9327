"""Forward-only passes that return something per document (a reward, token log-probs), on the same packed rows and
the same forward as training.

:class:`PerDocument` is an :class:`~megatron_align.engine.objective.Objective` with no loss: on the last pipeline
stage it hands each micro-batch's output to ``fn(inputs, output) -> {sample_id: value}`` and keeps the results;
:func:`gather_to_rank0` merges what every rank collected (only tensor-parallel rank 0 of the last stage
contributes, so each document comes back once).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch

from megatron_align.engine.inputs import ModelInputs
from megatron_align.engine.objective import Objective, ObjectiveOutput, Unit, empty_output


class PerDocument(Objective):
    unit = Unit.SEQUENCE
    metric_specs: Dict = {}

    def __init__(self, fn: Callable[[ModelInputs, torch.Tensor], Dict[int, Any]]) -> None:
        self.fn = fn
        self.results: Dict[int, Any] = {}

    def __call__(self, inputs: ModelInputs, output: torch.Tensor) -> ObjectiveOutput:
        if inputs.docs is not None and inputs.docs.start.numel():
            with torch.no_grad():
                self.results.update(self.fn(inputs, output))
        return ObjectiveOutput(empty_output(output), torch.zeros((), device=output.device))


def gather_to_rank0(local: Dict[int, Any]) -> Optional[Dict[int, Any]]:
    """Merge the per-document results of every rank on global rank 0 (None elsewhere)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    mine = local if (parallel_state.is_pipeline_last_stage()
                     and parallel_state.get_tensor_model_parallel_rank() == 0) else {}
    parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(mine, parts, dst=0)
    if dist.get_rank() != 0:
        return None
    merged: Dict[int, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


def run_per_document(session, samples, fn, *, pad_id: int = 0, device=None) -> Optional[Dict[int, Any]]:
    """``fn`` over every sample (document), packed into rows exactly like training (best-fit, isolated documents,
    positions restarting) and sharded over data-parallel ranks by tokens; results merged on global rank 0."""
    from megatron.core import parallel_state

    from megatron_align.data.batch import make_micro_batches
    from megatron_align.data.sampler import shard_for_rank

    ids = list(range(len(samples)))
    mine = shard_for_rank(ids, parallel_state.get_data_parallel_rank(),
                          parallel_state.get_data_parallel_world_size(), [len(s) for s in samples])
    mbs = make_micro_batches([samples[i] for i in mine], session.seq_length, session.micro_batch_size,
                             packing=True, pad_id=pad_id)
    inputs = [ModelInputs.from_micro_batch(mb).to(device) for mb in mbs]
    collector = PerDocument(fn)
    session.run(inputs, collector, forward_only=True)
    return gather_to_rank0(collector.results)


def write_in_input_order(path: str, results: Dict[int, Any], n: int, line: Callable[[int, Any], dict],
                         what: str) -> None:
    """Rank 0: one JSON line per input ``0..n-1`` (``line(i, results[i])``), written atomically (tmp + rename).
    Every input must have come back (a missing one is a bug, not a user error)."""
    import json
    import os

    missing = [i for i in range(n) if i not in results]
    if missing:
        raise RuntimeError(f"internal error: no {what} came back for inputs {missing[:5]}")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        for i in range(n):
            f.write(json.dumps(line(i, results[i])) + "\n")
    os.replace(tmp, path)
