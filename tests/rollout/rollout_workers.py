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
def teacher_forced_log_probs(model, prompt: List[int], completion: List[int]) -> List[float]:
    """log p(completion[i] | prompt + completion[:i]) from one full forward (float64 softmax)."""
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    from megatron_align.rollout.megatron_engine import generation_mode

    seq = list(prompt) + list(completion)
    x = torch.tensor([seq])
    with generation_mode(model):  # any length: sequence parallelism off
        logits = gather_from_tensor_model_parallel_region(model(x, torch.arange(len(seq))[None], None))[0].double()
    lp = torch.log_softmax(logits[len(prompt) - 1: len(seq) - 1], -1)
    return lp.gather(1, torch.tensor(completion)[:, None])[:, 0].tolist()


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
                 reference: bool = True, sampling: bool = False):
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
    if sampling:
        out["sampling"] = sampling_and_stop(model, built.arch.vocab_size, prompts)
    if save:  # the single-process weights by name, for the refit test
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items() if "_extra_state" not in k},
                   os.path.join(workdir, "full_state.pt"))
    return out


def sampling_and_stop(model, vocab: int, prompts, max_new: int = 10):
    """Seeded sampling reproducibility, log-probs of sampled tokens vs the full forward, stop ids."""
    from megatron_align.rollout import SamplingParams
    from megatron_align.rollout.megatron_engine import MegatronGenerationEngine

    engine = MegatronGenerationEngine(model, max_seq_length=SEQ, max_requests=4)  # fewer slots than prompts
    sample = SamplingParams(temperature=0.9, top_k=0, max_new_tokens=max_new, seed=5)
    a = engine.generate(prompts, sample)
    b = engine.generate(prompts, sample)
    c = engine.generate(prompts, SamplingParams(temperature=0.9, max_new_tokens=max_new, seed=6))
    top_p = engine.generate(prompts, SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=max_new, seed=5))
    greedy = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=max_new))
    # stop ids: the 4th greedy token of prompt 0 and the 3rd of prompt 2
    stops = (greedy[0].token_ids[3], greedy[2].token_ids[2])
    stopped = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=max_new, stop_ids=stops))
    tf = [teacher_forced_log_probs(model, p, g.token_ids) for p, g in zip(prompts, a)]
    return {"a": [g.token_ids for g in a], "b": [g.token_ids for g in b], "c": [g.token_ids for g in c],
            "a_lp": [g.log_probs for g in a], "tf_lp": tf, "top_p": [g.token_ids for g in top_p],
            "greedy": [g.token_ids for g in greedy], "stops": list(stops),
            "stopped": [g.token_ids for g in stopped], "stopped_lp": [g.log_probs for g in stopped],
            "greedy_lp": [g.log_probs for g in greedy],
            "stopped_finish": [g.finish_reason.value for g in stopped], "vocab": vocab}


def run_refit(tp: int, workdir: str, max_new: int = 12, pp: int = 1):
    """A TP=tp x PP=pp policy (loaded from the shared weights) refits a TP=1 replica on the same ranks."""
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    from megatron_align.config import ModelConfig
    from megatron_align.rollout import SamplingParams
    from megatron_align.rollout.megatron_engine import MegatronGenerationEngine, generation_mode
    from megatron_align.rollout.refit import Refitter, build_replica

    built = build(tp, pp, workdir, False)
    policy = built.chunks[0]
    replica = build_replica(ModelConfig(name=MODEL, precision="fp32"), built, tp=1)
    refitter = Refitter(built.chunks, replica)
    first = refitter.refit()
    full = torch.load(os.path.join(workdir, "full_state.pt"))
    got = {k: v for k, v in replica.state_dict().items() if "_extra_state" not in k}
    out = {"missing": sorted(set(full) ^ set(got)),
           "max_diff_1": max((got[k] - full[k]).abs().max().item() for k in full if k in got),
           "first_s": first.seconds}
    prompts = make_prompts(built.arch.vocab_size)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=max_new)
    engine_r = MegatronGenerationEngine(replica, max_seq_length=SEQ, pg_collection=replica.pg_collection)
    out["tokens_1"] = [g.token_ids for g in engine_r.generate(prompts, greedy)]
    # an "optimizer step" on the policy (same perturbation on every rank), then refit with the cached plan
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in sorted(policy.named_parameters()):
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    second = refitter.refit()
    out["second_s"] = second.seconds
    if pp == 1:  # logits of one full forward (a pipeline needs the schedule: compared by tokens only)
        x = torch.tensor([prompts[3] + prompts[1]])
        pos = torch.arange(x.shape[1])[None]
        with torch.no_grad(), generation_mode(policy), generation_mode(replica):
            lp = gather_from_tensor_model_parallel_region(policy(x, pos, None))
            lr = replica(x, pos, None)
        out["logit_diff_2"] = (lp - lr).abs().max().item()
        out["logit_scale"] = lp.abs().max().item()
    engine_p = MegatronGenerationEngine(policy, max_seq_length=SEQ)
    out["tokens_2_policy"] = [g.token_ids for g in engine_p.generate(prompts, greedy)]
    out["tokens_2_replica"] = [g.token_ids for g in engine_r.generate(prompts, greedy)]
    return out
