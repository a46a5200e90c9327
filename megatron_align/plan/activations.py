"""Activation memory: what megatron-core 0.16 + this project's layer specs keep for backward, term by term.

Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models" (2022), count
``s·b·h·(34 + 5·a·s/h)`` bytes per GPT layer; this module counts what *this* code keeps instead,
checked against a build of the model on CPU (``megatron-align plan --measure``: autograd's saved
tensors and the allocator peak, :mod:`megatron_align.plan.measure`). Symbols: a = heads, g = query
groups, d = head dim, q = a·d, kv = 2·g·d, f = SwiGLU width, β = activation bytes, t = TP, t_sp = t with
sequence parallelism else 1; bytes per token of one micro-batch on one rank (tokens = s·b/CP).

Per layer (:func:`layer_terms`; docs/planner.md names the code line behind each)::

    norm_inputs     2·βh/t_sp        RMSNorm inputs (TE fused norm); local torch RMSNorm: fp32 copy + normalised
                                     tensor, 2·(4+β)h/t_sp
    norm_rstd       2·4/t_sp         1/rms per token, fp32
    linear_inputs   2·βh/t_sp        QKV and fc1 inputs (the norm outputs; sharded with SP, re-gathered in backward)
    qkv_buffer      β(q+kv)/t        linear_qkv's output: V is a view of it, so the whole pre-RoPE buffer stays
    qk_rope         β(q+kv/2)/t      Q and K after RoPE (new tensors), saved by the attention kernel
    rope_cos_sin    4·β·d            cos and sin of the frequencies, computed and saved for Q and for K in every
                                     layer (megatron's unfused RoPE); replicated over TP, full sequence under SP
    attention_out   βq/t             attention output O (saved by the kernel; also linear_proj's input)
    attention_lse   4a/t             softmax log-sum-exp, fp32 (flash-style kernels keep no s² probabilities)
    swiglu          5βf/t            fc1 output [2f], silu output [f], the linear half + glu offset [f] (a new
                                     tensor), the product [f] = fc2's input; 3βf/t with megatron's fused bias-swiglu
    attention_mask  s/1024 (flex)    BlockMask int32 indices built in every layer: 4·(s/128)² per row

Per micro-batch on a chunk (:func:`microbatch_terms`): the token ids the embedding keeps (8, stage 0); with
``--attention sdpa`` one additive ``[b,1,s,s]`` document mask shared by all layers (β·s per token, no
recompute only: recompute rebuilds it per block); with full / k-block recompute the fp32 RoPE
frequencies saved as a checkpoint argument (4d). Recompute (megatron ``uniform``; uneven last block,
:mod:`megatron_align.models.kblock`): full / k-block keep each block's input βh/t_sp, and rebuild one
block's k layers during its backward; selective (core attention) drops the LSE only.

Backward workspace (:func:`layer_workspace`), on top of what is kept, while a layer's MLP runs
backward: the gradient of the layer output βh/t_sp and the two f-wide gradients of the SwiGLU product
2βf/t. The last stage (:func:`output_terms`, :func:`output_peak_terms`): final norm and output-layer
inputs, the ``[tokens, V/t]`` logits as each loss backend keeps them, and the backend's transient.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Dict, Tuple

from megatron_align.models.arch import ArchSpec

FP32 = 4


LOSS_BACKENDS = ("fused", "megatron", "te", "fused_linear")
ATTENTION_BACKENDS = ("te", "flex", "sdpa")


@dataclass(frozen=True)
class ActivationOptions:
    act_bytes: int = 2  # bf16 activations
    norm: str = "fused"  # "fused" (TE: input + rstd) or "local" (our torch RMSNorm: fp32 copy + output)
    fused_swiglu: bool = False  # megatron's bias_swiglu_impl: fc1 output + fc2 input
    loss_backend: str = "fused"  # model.loss_backend: fused | megatron | te | fused_linear (provisional)
    attention: str = "te"  # packed rows: te (THD, cu_seqlens), flex (BlockMask per layer), sdpa (one s² mask)
    loss_chunk_size: int = 4096  # fused_linear: tokens per logits chunk

    def __post_init__(self) -> None:
        if self.loss_backend not in LOSS_BACKENDS:
            raise ValueError(f"loss backend {self.loss_backend!r}: choose from {', '.join(LOSS_BACKENDS)}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention backend {self.attention!r}: choose from {', '.join(ATTENTION_BACKENDS)}")
        if self.norm not in ("fused", "local"):
            raise ValueError(f"norm {self.norm!r}: choose fused or local")


def _norm_bytes(h: int, opts: ActivationOptions) -> float:
    """One RMSNorm's kept input: TE keeps its input; ours keeps an fp32 copy and the normalised tensor
    (in fp32 the copy is the input itself: 8h)."""
    return opts.act_bytes * h if opts.norm == "fused" else (FP32 + opts.act_bytes) * h


def layer_terms(arch: ArchSpec, tp: int, sp: bool, opts: ActivationOptions, seq_length: int = 0
                ) -> Dict[str, float]:
    """Bytes per token that one layer keeps for backward, by term (see the module docstring)."""
    h, f, d = arch.hidden_size, arch.ffn_hidden_size, arch.kv_channels
    q, kv = arch.num_attention_heads * d, 2 * arch.num_query_groups * d
    b = opts.act_bytes
    tsp = tp if sp else 1
    terms = {
        "norm_inputs": 2 * _norm_bytes(h, opts) / tsp,
        "norm_rstd": 2 * FP32 / tsp,
        "linear_inputs": 2 * b * h / tsp,
        "qkv_buffer": b * (q + kv) / tp,
        "qk_rope": b * (q + kv / 2) / tp,
        "rope_cos_sin": 4 * b * d,
        "attention_out": b * q / tp,
        "attention_lse": FP32 * arch.num_attention_heads / tp,
        "swiglu": b * (3 if opts.fused_swiglu else 5) * f / tp,
    }
    if opts.attention == "flex":
        terms["attention_mask"] = 16 * math.ceil(seq_length / 128) ** 2 / max(seq_length, 1)
    return terms


def layer_bytes_per_token(arch: ArchSpec, tp: int, sp: bool, opts: ActivationOptions, seq_length: int = 0) -> float:
    return sum(layer_terms(arch, tp, sp, opts, seq_length).values())


def microbatch_terms(arch: ArchSpec, tp: int, sp: bool, recompute: str, opts: ActivationOptions,
                     seq_length: int, first_stage: bool) -> Dict[str, float]:
    """Bytes per token a chunk keeps once per micro-batch (not per layer)."""
    terms: Dict[str, float] = {}
    if first_stage:
        terms["token_ids"] = 8.0  # the embedding lookup keeps its int64 indices
    if opts.attention == "sdpa" and recompute == "none":
        terms["attention_mask"] = float(opts.act_bytes * seq_length)  # one shared [b,1,s,s] additive mask
    if recompute in ("full", "kblock"):
        terms["rope_freqs"] = float(FP32 * arch.kv_channels)  # checkpoint argument, fp32 [s,b,1,d]
    return terms


def sp_buffers(arch: ArchSpec, sp: bool, opts: ActivationOptions) -> float:
    """With sequence parallelism, one full-sequence [s, b, h] buffer lives next to everything else in
    backward: the all-gathered input of a column-parallel linear for its weight gradient (or the
    full-sequence input gradient before its reduce-scatter)."""
    return float(opts.act_bytes * arch.hidden_size) if sp else 0.0


def layer_workspace(arch: ArchSpec, tp: int, sp: bool, opts: ActivationOptions) -> float:
    """Bytes per token a layer's backward allocates on top of what is kept, at its largest (the MLP):
    the layer-output gradient and the two f-wide gradients of the SwiGLU product (+ the SP buffers)."""
    tsp = tp if sp else 1
    return opts.act_bytes * (arch.hidden_size / tsp + 2 * arch.ffn_hidden_size / tp) + sp_buffers(arch, sp, opts)


def checkpoint_bytes_per_token(arch: ArchSpec, tp: int, sp: bool, opts: ActivationOptions) -> float:
    """A checkpointed block keeps its input hidden state (sequence-sharded with SP)."""
    return opts.act_bytes * arch.hidden_size / (tp if sp else 1)


def retained_per_chunk(arch: ArchSpec, layers: int, tp: int, sp: bool, recompute: str, k: int,
                       opts: ActivationOptions, seq_length: int = 0) -> float:
    """Bytes per token one micro-batch leaves on a chunk of ``layers`` layers until its backward
    (the layers or their checkpoints; :func:`microbatch_terms` adds the per-micro-batch ones)."""
    if recompute == "none":
        return layers * layer_bytes_per_token(arch, tp, sp, opts, seq_length)
    if recompute == "selective":
        terms = layer_terms(arch, tp, sp, opts, seq_length)
        return layers * (sum(terms.values()) - terms["attention_lse"])
    if recompute in ("full", "kblock"):
        kk = 1 if recompute == "full" else k
        return -(-layers // kk) * checkpoint_bytes_per_token(arch, tp, sp, opts)
    raise ValueError(f"recompute must be none, selective, full or kblock; got {recompute!r}")


def recompute_transient(arch: ArchSpec, layers: int, tp: int, sp: bool, recompute: str, k: int,
                        opts: ActivationOptions, seq_length: int = 0) -> float:
    """Bytes per token rebuilt at once while the largest block is recomputed in backward (its k layers,
    and the SDPA mask that the rebuild makes again)."""
    if recompute in ("full", "kblock"):
        kk = 1 if recompute == "full" else min(k, layers)
        mask = opts.act_bytes * seq_length if opts.attention == "sdpa" else 0.0
        return kk * layer_bytes_per_token(arch, tp, sp, opts, seq_length) + mask
    if recompute == "selective" and opts.attention == "sdpa":
        return float(opts.act_bytes * seq_length)  # the core-attention rebuild makes the mask again
    return 0.0


# bytes per logit each loss backend keeps until its backward, and allocates on top in forward/backward
# (``model.loss_backend``; fused_linear never builds the full logits, see output_peak_terms)
def _logit_bytes(opts: ActivationOptions) -> Tuple[float, float]:
    b = opts.act_bytes
    return {
        # ops/cross_entropy.py saves the logits; backward writes softmax_grad into a new buffer
        "fused": (b, b),
        # megatron-core: .float() copy exponentiated in place and saved (fp32); backward makes the gradient
        # in that buffer, which autograd casts to the logits dtype (a new buffer when β != 4);
        # the forward holds the β logits and the fp32 copy at once
        "megatron": (FP32, b if b != FP32 else 0.0),
        # Transformer Engine's parallel_cross_entropy computes the gradient in the forward, into the
        # logits buffer, and scales it in place in backward
        "te": (b, 0.0),
        "fused_linear": (0.0, 0.0),
    }[opts.loss_backend]


# per-token loss buffers (labels, row statistics, per-token loss, masks): fused and megatron measured on CPU,
# te and fused_linear estimated (int64 labels and fp32 row statistics)
_LOSS_BUFFERS = {"fused": 29.0, "megatron": 11.0, "te": 16.0, "fused_linear": 29.0}


def output_terms(arch: ArchSpec, padded_vocab: int, tp: int, sp: bool, opts: ActivationOptions) -> Dict[str, float]:
    """Bytes per token the last stage keeps for backward: final norm and output-layer inputs, logits, loss."""
    h, tsp = arch.hidden_size, (tp if sp else 1)
    kept, _ = _logit_bytes(opts)
    return {"final_norm_input": (_norm_bytes(h, opts) + FP32) / tsp, "output_layer_input": opts.act_bytes * h / tsp,
            "logits": kept * (padded_vocab // tp), "loss_buffers": _LOSS_BUFFERS[opts.loss_backend]}


def output_peak_terms(arch: ArchSpec, padded_vocab: int, tp: int, opts: ActivationOptions, tokens: float
                      ) -> Dict[str, float]:
    """Bytes per token allocated on top of what is kept while the loss runs forward or backward."""
    v = padded_vocab // tp
    _, extra = _logit_bytes(opts)
    if opts.loss_backend == "fused_linear":  # one fp32 [chunk, V/t] logits chunk and its gradient (provisional)
        chunk = min(opts.loss_chunk_size, tokens)
        return {"logits_chunks": 2 * chunk * v * FP32 / tokens}
    return {"logits_transient": extra * v}


def last_stage_extra(arch: ArchSpec, padded_vocab: int, tp: int, sp: bool, opts: ActivationOptions, tokens: float,
                     param_bytes: int) -> float:
    """Bytes per token the last stage holds on top of its layers' activations at its peak: its kept terms
    (:func:`output_terms`) plus the larger of the loss backend's transient and the output layer's backward
    (the logits gradient, the input gradient βh for the whole sequence, and one [V/t, h] weight gradient
    before it is added into the gradient buffer)."""
    kept = output_terms(arch, padded_vocab, tp, sp, opts)
    head = kept["final_norm_input"] + kept["output_layer_input"]
    loss_phase = kept["logits"] + kept["loss_buffers"] + sum(output_peak_terms(arch, padded_vocab, tp, opts,
                                                                                tokens).values())
    h, v = arch.hidden_size, padded_vocab // tp
    if opts.loss_backend == "fused_linear":
        out_bwd = 0.0  # the chunks' gradients go straight into the input and weight gradients (provisional)
    else:
        out_bwd = opts.act_bytes * (v + h) + v * h * param_bytes / tokens
    return head + max(loss_phase, out_bwd) + sp_buffers(arch, sp, opts)


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
