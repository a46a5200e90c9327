"""Functions run on spawned gloo ranks (helpers.dist.run_distributed) by the converter tests.

Process start-up (megatron import) dominates on a 2-core machine, so one 4-rank run visits every layout in
turn (TP2xPP2, TP2, PP2, TP1; the spare ranks are data-parallel replicas) by re-initialising parallel_state.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch


def _logits(ckpt: str, par, tokens: torch.Tensor):
    from megatron.core import parallel_state

    from megatron_align.checkpoint import layout
    from megatron_align.config import ModelConfig
    from megatron_align.convert.inference import TaggedInputs, build_and_load, forward_only, gather_vocab
    from megatron_align.engine.inputs import ModelInputs

    b, s = tokens.shape
    base = ModelInputs.causal(tokens)
    mb = TaggedInputs(base.tokens, base.position_ids, base.labels, base.loss_mask, None, batch_id=0)
    ckpt = layout.resolve(ckpt)
    arch = layout.read_arch(ckpt)
    built = build_and_load(ckpt, arch, ModelConfig(precision="fp32"), par, s)
    res = forward_only(built.chunks, [mb], seq_length=s, micro_batch_size=b,
                       fn=lambda inputs, logits: gather_vocab(logits).clone())
    mine = res and parallel_state.get_tensor_model_parallel_rank() == 0 and parallel_state.get_data_parallel_rank() == 0
    return built, arch, (res[0][..., : arch.vocab_size].numpy().copy() if mine else None)  # numpy: pickled by value


def _resave(built, arch, root: str) -> None:
    """Save a loaded model back at the current layout as a new checkpoint root (what a training save does)."""
    import torch.distributed as dist

    from megatron_align.checkpoint import layout
    from megatron_align.checkpoint.model_io import save_model

    tmp = os.path.join(root, "release.tmp")
    if dist.get_rank() == 0:
        os.makedirs(tmp, exist_ok=True)
    dist.barrier()
    save_model(built.chunks, os.path.join(tmp, layout.MODEL_DIR))
    dist.barrier()
    if dist.get_rank() == 0:
        layout.write_arch(tmp, arch)
        layout.commit(root, tmp, layout.RELEASE)
    dist.barrier()


def logits_at_layouts(layouts: Sequence[Tuple[str, int, int]], jobs: Dict[str, Dict[str, str]], tokens: torch.Tensor,
                      resave: Optional[Tuple[str, str, str]] = None,
                      logprobs_argv: Optional[List[str]] = None) -> Dict[str, object]:
    """For each (layout name, tp, pp) and each {name: checkpoint} of ``jobs[layout]``: load, forward ``tokens``
    (plain causal rows), and return {layout: {name: full-vocab logits}} from the one rank that is last stage,
    TP rank 0 and DP rank 0. ``resave`` = (layout, name, root): re-save that model there. ``logprobs_argv``:
    finally run `megatron-align logprobs` with these arguments (its exit code is returned)."""
    from megatron_align.config import ParallelConfig
    from megatron_align.runtime import setup_runtime

    out: Dict[str, object] = {}
    for lname, tp, pp in layouts:
        par = ParallelConfig(tp=tp, pp=pp)
        setup_runtime(par, seed=0)
        for name, ckpt in jobs[lname].items():
            built, arch, logits = _logits(ckpt, par, tokens)
            if logits is not None:
                out.setdefault(lname, {})[name] = logits
            if resave and resave[:2] == (lname, name):
                _resave(built, arch, resave[2])
    if logprobs_argv:
        from megatron_align.cli import main

        out["logprobs_rc"] = main(["logprobs"] + logprobs_argv)
    return out
