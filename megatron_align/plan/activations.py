"""Activation memory: Korthikanti et al. 2022 adapted to GQA + SwiGLU + RMSNorm + flash attention.

Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models" (2022), count the
bytes a GPT layer keeps for backward: ``s·b·h·(34 + 5·a·s/h)`` (fp16, dropout masks, materialised
softmax), ``s·b·h·(10 + 24/t + 5·a·s/(h·t))`` with TP, ``s·b·h·34/t`` with TP + SP + selective recompute,
``2·s·b·h/t`` per layer with full recompute. Adapted to this architecture (a = heads, g = query groups,
d = head dim, q = a·d, kv = 2·g·d, f = SwiGLU width, β = activation bytes (2 for bf16), t = TP,
t_sp = t with sequence parallelism else 1, tokens = s·b/cp per rank with context parallelism):

    per layer, per token, bytes =
        β·2h/t_sp        inputs of the two RMSNorms (layer input, attention residual)   [norm="fused"]
      + β·2h/t_sp        inputs of the QKV and fc1 linears (norm outputs; with SP the sharded input
                         is kept and all-gathered again in backward)
      + β·(2q + kv)/t    flash attention: Q, K, V after RoPE, and O (O is also linear_proj's input)
      + 4·a/t            softmax log-sum-exp (fp32); no s² terms: flash attention keeps no probabilities
      + β·4f/t           SwiGLU unfused (the builder's bias_activation_fusion=False): fc1 output [2f]
                         kept by silu and the gate product, silu output [f], fc2 input [f]; 3f when fused
      + 2·4/t_sp         RMSNorm 1/rms per token (fp32)

No dropout masks (hidden and attention dropout are 0; torch returns its input for p=0), no bias terms,
RoPE keeps only the shared cos/sin tables. For llama3-70b (q = h, kv = h/4, f = 3.5h) with TP + SP
this is β·s·b·h·20.25/t (+ fp32 LSE/rstd), versus Korthikanti's 34/t for a GPT layer. ``norm="local"``
(our unfused torch RMSNorm) keeps an fp32 copy and the bf16 normalised tensor instead: (4 + β)·h per norm.

Recompute (megatron uniform method): ``full`` / ``kblock`` keep only each block's input,
β·h/t_sp per token per block of k layers, and rebuild one block's k layers during its backward
(k·one layer's activations at once); ``selective`` (core attention) keeps the same Q, K, V, O
(checkpoint inputs and output) and drops only the LSE: with flash attention it saves almost nothing.

Last pipeline stage: the final norm and output-layer inputs, the [tokens, V/t] logits and the loss
buffers. Our fused CE keeps the bf16 logits once and writes the gradient in place: β bytes per logit.
megatron-core's ``vocab_parallel_cross_entropy`` makes an fp32 copy (``.float()``) kept as softmax for
backward while the bf16 logits are still alive, and its backward casts the fp32 gradient back to bf16:
peak (4 + β) bytes per logit, plus int64/fp32 per-token buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

from megatron_align.models.arch import ArchSpec

FP32 = 4


@dataclass(frozen=True)
class ActivationOptions:
    act_bytes: int = 2  # bf16 activations
    norm: str = "fused"  # "fused" (TE / apex style: input + rstd) or "local" (our torch RMSNorm)
    fused_swiglu: bool = False  # megatron's bias_swiglu_impl keeps only the fc1 output
    fused_ce: bool = True  # our fused CE (bf16 logits once, in-place backward) vs megatron-core's


def layer_terms(arch: ArchSpec, tp: int, sp: bool, opts: ActivationOptions) -> Dict[str, float]:
    """Bytes per token that one layer keeps for backward, by term (see the module docstring)."""
    h, f, d = arch.hidden_size, arch.ffn_hidden_size, arch.kv_channels
    q, kv = arch.num_attention_heads * d, 2 * arch.num_query_groups * d
    b = opts.act_bytes
    tsp = tp if sp else 1
    norm_bytes = b * h if opts.norm == "fused" else (FP32 + b) * h
    return {
        "norm_inputs": 2 * norm_bytes / tsp,
        "linear_inputs": 2 * b * h / tsp,
        "attention_qkvo": b * (2 * q + kv) / tp,
        "attention_lse": FP32 * arch.num_attention_heads / tp,
        "swiglu_mlp": b * (3 if opts.fused_swiglu else 4) * f / tp,
        "norm_rstd": 2 * FP32 / tsp,
    }


def layer_bytes_per_token(arch: ArchSpec, tp: int, sp: bool, opts: ActivationOptions) -> float:
    return sum(layer_terms(arch, tp, sp, opts).values())


def checkpoint_bytes_per_token(arch: ArchSpec, tp: int, sp: bool, opts: ActivationOptions) -> float:
    """A checkpointed block keeps its input hidden state (sequence-sharded with SP)."""
    return opts.act_bytes * arch.hidden_size / (tp if sp else 1)


def retained_per_chunk(arch: ArchSpec, layers: int, tp: int, sp: bool, recompute: str, k: int,
                       opts: ActivationOptions) -> float:
    """Bytes per token one micro-batch leaves on a chunk of ``layers`` layers until its backward."""
    if recompute == "none":
        return layers * layer_bytes_per_token(arch, tp, sp, opts)
    if recompute == "selective":
        terms = layer_terms(arch, tp, sp, opts)
        return layers * (sum(terms.values()) - terms["attention_lse"])
    if recompute in ("full", "kblock"):
        kk = 1 if recompute == "full" else k
        return -(-layers // kk) * checkpoint_bytes_per_token(arch, tp, sp, opts)
    raise ValueError(f"recompute must be none, selective, full or kblock; got {recompute!r}")


def recompute_transient(arch: ArchSpec, layers: int, tp: int, sp: bool, recompute: str, k: int,
                        opts: ActivationOptions) -> float:
    """Bytes per token rebuilt at once while one block is recomputed in backward."""
    if recompute in ("full", "kblock"):
        kk = 1 if recompute == "full" else min(k, layers)
        return kk * layer_bytes_per_token(arch, tp, sp, opts)
    return 0.0


def output_terms(arch: ArchSpec, padded_vocab: int, tp: int, sp: bool, opts: ActivationOptions) -> Dict[str, float]:
    """Bytes per token on the last stage: final norm + output layer inputs, logits, loss buffers."""
    b, h, tsp = opts.act_bytes, arch.hidden_size, (tp if sp else 1)
    norm_bytes = b * h if opts.norm == "fused" else (FP32 + b) * h
    v_local = padded_vocab // tp
    if opts.fused_ce:
        logits = b * v_local  # kept once in bf16, gradient written in place
        loss = FP32 * 3 + 1  # loss, row max, log-sum (fp32), valid mask
    else:
        logits = (FP32 + b) * v_local  # fp32 softmax copy + the bf16 logits / bf16 gradient cast
        loss = FP32 * 5 + 8 + 1  # max, predicted, sum-exp, loss, update (fp32), masked target int64, mask
    return {"final_norm_input": (norm_bytes + FP32) / tsp, "output_layer_input": b * h / tsp,
            "logits": float(logits), "loss_buffers": float(loss)}


def inflight_microbatches(pp: int, pp_rank: int, vpp: int = 1, num_microbatches: int = 0) -> int:
    """Chunk-micro-batches a rank holds at the peak of megatron's 1F1B / interleaved schedule.

    1F1B: warm-up ``pp - rank - 1`` forwards plus the steady-state one (stage 0 holds pp).
    Interleaved: ``(pp - rank - 1)·2 + (vpp - 1)·pp`` warm-up chunk forwards plus one, i.e. stage 0
    holds pp·vpp + pp - 1 chunks of L/(pp·vpp) layers = L·(1 + (pp-1)/(pp·vpp)) layers' worth.
    ``num_microbatches`` > 0 caps it (fewer micro-batches than the warm-up)."""
    if vpp > 1:
        n = (pp - pp_rank - 1) * 2 + (vpp - 1) * pp + 1
        cap = num_microbatches * vpp
    else:
        n = pp - pp_rank
        cap = num_microbatches
    return min(n, cap) if num_microbatches > 0 else n
