"""Workers for parallel-vs-single-process parity runs (spawned by tests via helpers.dist).

The reference run (1 process) builds a tiny model, saves its weights as a megatron
dist-checkpoint, runs forward-backward over fixed micro-batches and saves the *gradients* as a
second dist-checkpoint. A parallel run loads the weights (resharding to its TP/PP layout), runs the
same micro-batches (split over DP ranks), and saves its gradients the same way. Both gradient
checkpoints are then read back as full tensors (torch DCP -> plain dict) and compared key by key.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import torch

SEQ = 16
MBS = 2
N_MICRO = 4


def make_micro_batches(vocab: int, seed: int = 0) -> List["ModelInputs"]:
    from megatron_align.engine.inputs import ModelInputs

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(N_MICRO):
        tokens = torch.randint(0, vocab, (MBS, SEQ), generator=g)
        mi = ModelInputs.causal(tokens)
        mi.loss_mask = (torch.rand(MBS, SEQ, generator=g) > 0.2).float() * mi.loss_mask
        if i % 2 == 1:  # packed rows: two documents per row, positions restart, attention isolated
            cut = SEQ // 2 - 1
            mi.doc_ids = (torch.arange(SEQ) >= cut).long().expand(MBS, SEQ).contiguous()
            pos = torch.arange(SEQ)
            mi.position_ids = torch.where(pos >= cut, pos - cut, pos).expand(MBS, SEQ).contiguous()
            mi.loss_mask[:, cut - 1] = 0.0  # no label across the document boundary
        out.append(mi)
    return out


def _grads_sharded_state_dict(wrapped_chunks) -> Dict:
    """The model's sharded state dict with each parameter's data replaced by its gradient."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    from megatron_align.checkpoint.model_io import model_sharded_state_dict

    grads = {}
    for chunk in wrapped_chunks:
        for p in chunk.module.parameters():
            grads[id(p)] = p.main_grad.detach().clone()
    sd = model_sharded_state_dict(wrapped_chunks)

    def swap(obj):
        if isinstance(obj, dict):
            return {k: swap(v) for k, v in obj.items()}
        if isinstance(obj, (ShardedTensor, ShardedTensorFactory)) and id(obj.data) in grads:
            obj.data = grads[id(obj.data)]
            return obj
        if isinstance(obj, ShardedTensor):  # non-parameter state (e.g. buffers): drop
            return None
        return obj

    return {k: v for k, v in _flatten(swap(sd)).items() if v is not None and not isinstance(v, (int, float, str, bytes))}


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def run(model_name: str, tp: int, pp: int, sp: bool, vpp: Optional[int], dp: int, workdir: str, tag: str,
        save_weights: bool, recompute: str = "none", recompute_k: int = 1, num_layers: Optional[int] = None):
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    from megatron_align.checkpoint.model_io import load_model, save_model
    from megatron_align.config import ModelConfig, ParallelConfig
    from megatron_align.engine.forward_backward import forward_backward
    from megatron_align.engine.wrap import wrap_ddp
    from megatron_align.models.builder import build_model
    from megatron_align.runtime import setup_runtime

    par = ParallelConfig(tp=tp, pp=pp, sp=sp, vpp=vpp)
    setup_runtime(par, seed=11)
    mcfg = ModelConfig(name=model_name, recompute=recompute, recompute_k=recompute_k, num_layers=num_layers)
    built = build_model(mcfg, par, seq_length=SEQ)
    wdir = os.path.join(workdir, "weights")
    if save_weights:
        save_model(built.chunks, wdir)
    else:
        load_model(built.chunks, wdir)
    chunks = wrap_ddp(built.chunks, use_distributed_optimizer=False)
    for c in chunks:
        c.zero_grad_buffer()
    mbs = make_micro_batches(built.arch.vocab_size)
    dp_rank = parallel_state.get_data_parallel_rank()
    mine = mbs[dp_rank::dp] if dp > 1 else mbs
    totals = forward_backward(chunks, mine, seq_length=SEQ, micro_batch_size=MBS, loss_backend="fused")
    # The schedule's finalize hook already scaled grads by 1/global tokens.
    gdir = os.path.join(workdir, f"grads_{tag}")
    os.makedirs(gdir, exist_ok=True)
    dist_checkpointing.save(_grads_sharded_state_dict(chunks), gdir)
    result = {}
    if parallel_state.is_pipeline_last_stage() and "lm_loss" in totals:
        rep = totals["lm_loss"].clone()
        torch.distributed.all_reduce(rep, group=parallel_state.get_data_parallel_group())
        result["loss"] = (rep[0] / rep[1]).item()
    # logits of micro-batch 0, gathered over TP (forward only, no grad)
    last = built.chunks[-1]
    x = mbs[0]
    if pp == 1 and (vpp or 1) == 1:
        with torch.no_grad():
            logits = last(x.tokens, x.position_ids, x.doc_ids)
        result["logits"] = gather_from_tensor_model_parallel_region(logits).clone()
    return result


def read_full(ckpt_dir: str) -> Dict[str, torch.Tensor]:
    """A dist-checkpoint (torch_dist) -> {key: full tensor}, in the test process (no process group)."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = os.path.join(tempfile.mkdtemp(), "full.pt")
    dcp_to_torch_save(ckpt_dir, out)
    sd = torch.load(out, weights_only=False)
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
