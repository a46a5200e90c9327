"""Workers for the generation tests (spawned via helpers.dist): build a tiny model at a layout, load
shared weights, generate with the megatron engine and decode step by step with the full forward."""

from __future__ import annotations

import os
from typing import List, Optional

import torch

MODEL = "tiny-llama"
SEQ = 64
PROMPT_LENS = (3, 9, 5, 12, 1, 7)


def make_prompts(vocab: int, seed: int = 0) -> List[List[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in PROMPT_LENS]


def build(tp: int, pp: int, workdir: str, save: bool, sp: bool = False, seed: int = 7):
    from megatron_align.checkpoint.model_io import load_model, save_model
    from megatron_align.config import ModelConfig, ParallelConfig
    from megatron_align.models.builder import build_model
    from megatron_align.runtime import setup_runtime

    par = ParallelConfig(tp=tp, pp=pp, sp=sp)
    setup_runtime(par, seed=seed)
    built = build_model(ModelConfig(name=MODEL, precision="fp32"), par, seq_length=SEQ)
    wdir = os.path.join(workdir, "weights")
    if save:
        save_model(built.chunks, wdir)
    else:
        load_model(built.chunks, wdir)
    return built


@torch.no_grad()
def full_forward_greedy(model, prompts: List[List[int]], max_new: int):
    """Step-by-step argmax with no KV cache: each step runs the whole prefix (TP-gathered logits).
    Returns tokens and the log-prob of each chosen token."""
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    model.eval()
    toks_out, lps_out = [], []
    for p in prompts:
        seq = list(p)
        toks, lps = [], []
        for _ in range(max_new):
            x = torch.tensor([seq])
            pos = torch.arange(len(seq))[None]
            logits = gather_from_tensor_model_parallel_region(model(x, pos, None))[0, -1].double()
            lp = torch.log_softmax(logits, -1)
            t = int(lp.argmax())
            toks.append(t)
            lps.append(float(lp[t]))
            seq.append(t)
        toks_out.append(toks)
        lps_out.append(lps)
    return toks_out, lps_out


def run_generate(tp: int, pp: int, workdir: str, save: bool, max_new: int = 12, sp: bool = False,
                 reference: bool = True):
    from megatron_align.rollout import SamplingParams
    from megatron_align.rollout.megatron_engine import MegatronGenerationEngine

    built = build(tp, pp, workdir, save, sp=sp)
    model = built.chunks[0]
    prompts = make_prompts(built.arch.vocab_size)
    engine = MegatronGenerationEngine(model, max_seq_length=SEQ, max_requests=8)
    gens = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=max_new))
    out = {"tokens": [g.token_ids for g in gens], "log_probs": [g.log_probs for g in gens],
           "finish": [g.finish_reason.value for g in gens], "training_after": model.training,
           "sp_after": bool(model.config.sequence_parallel)}
    if reference and pp == 1:
        out["ref_tokens"], out["ref_log_probs"] = full_forward_greedy(model, prompts, max_new)
    return out
