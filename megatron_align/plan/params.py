"""Which parameters each rank holds, and how megatron's DDP buffers and distributed optimizer lay them out.

Everything here is exact (no approximation), so the planner's weight, gradient and optimizer bytes can
be checked element for element against a real model on CPU (tests/plan):

- :func:`rank_parameters` lists a rank's parameters per model chunk, in ``named_parameters()`` order,
  with their TP-sharded sizes (megatron's GPTModel: embedding on the first stage, final norm + output
  layer on the last; with tied embeddings and PP > 1 the last stage keeps its own copy of the table,
  flagged ``shared_embedding`` like megatron does).
- :func:`buffer_layout` replays ``_ParamAndGradBuffer.__init__`` of megatron-core 0.16 for one chunk
  (params in reverse order; with the distributed optimizer each param starts at a multiple of 64 and a
  bucket ends at a multiple of lcm(DP, 128); a shared embedding gets its own bucket; one bucket
  otherwise because ``overlap_grad_reduce`` is off in :func:`megatron_align.engine.wrap.wrap_ddp`).
- :func:`shard_elements` counts the real (non-padding) parameter elements in each DP rank's
  contiguous 1/DP slice of every bucket: what the distributed optimizer keeps state for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from megatron_align.models.arch import ArchSpec, padded_vocab_size


SCALAR_HEAD = "reward_head.weight"


@dataclass(frozen=True)
class Param:
    name: str
    numel: int
    shared_embedding: bool = False


def _layer_params(arch: ArchSpec, tp: int, index: int) -> List[Param]:
    h, f, d = arch.hidden_size, arch.ffn_hidden_size, arch.kv_channels
    q_out, kv_out = arch.num_attention_heads * d, 2 * arch.num_query_groups * d
    p = f"decoder.layers.{index}."
    out = [Param(p + "input_layernorm.weight", h),
           Param(p + "self_attention.linear_proj.weight", q_out * h // tp),
           Param(p + "self_attention.linear_qkv.weight", (q_out + kv_out) * h // tp)]
    if arch.qkv_bias:
        out.append(Param(p + "self_attention.linear_qkv.bias", (q_out + kv_out) // tp))
    out += [Param(p + "pre_mlp_layernorm.weight", h),
            Param(p + "mlp.linear_fc1.weight", 2 * f * h // tp),
            Param(p + "mlp.linear_fc2.weight", f * h // tp)]
    return out


def check_layout(arch: ArchSpec, tp: int, pp: int, vpp: Optional[int] = None) -> None:
    """The builder's rules: TP divides heads and query groups, PP x VPP divides the layers."""
    if arch.num_attention_heads % tp or arch.num_query_groups % tp:
        raise ValueError(f"tp={tp} must divide num_attention_heads={arch.num_attention_heads} and "
                         f"num_query_groups={arch.num_query_groups}")
    if arch.num_layers % (pp * (vpp or 1)):
        raise ValueError(f"pp={pp} x vpp={vpp or 1} must divide num_layers={arch.num_layers}")


def rank_parameters(arch: ArchSpec, tp: int, pp: int, pp_rank: int, vpp: Optional[int] = None,
                    vocab_divisible_by: int = 128, head: str = "lm") -> List[List[Param]]:
    """One list per model chunk (VPP) of the parameters a (tp, pp_rank) rank holds, module order.

    ``head`` reward / value (:mod:`megatron_align.models.heads`): the last stage holds the replicated
    ``[1, h]`` ``reward_head.weight`` instead of the output layer (fp32 in the model; callers that count
    bytes price it with :data:`SCALAR_HEAD`)."""
    check_layout(arch, tp, pp, vpp)
    v = vpp or 1
    per_chunk = arch.num_layers // (pp * v)
    vocab = padded_vocab_size(arch.vocab_size, vocab_divisible_by, tp)
    table = vocab * arch.hidden_size // tp
    chunks = []
    for vs in range(v):
        first = pp_rank == 0 and vs == 0
        last = pp_rank == pp - 1 and vs == v - 1
        params: List[Param] = []
        if first:
            params.append(Param("embedding.word_embeddings.weight", table,
                                shared_embedding=arch.tie_embeddings and head == "lm" and not last))
        # megatron numbers layers within a chunk from 0 (global offset = (vs * pp + pp_rank) * per_chunk)
        for i in range(per_chunk):
            params += _layer_params(arch, tp, i)
        if last:
            params.append(Param("decoder.final_layernorm.weight", arch.hidden_size))
            if head != "lm":
                params.append(Param(SCALAR_HEAD, arch.hidden_size))
            elif not (arch.tie_embeddings and first):
                params.append(Param("output_layer.weight", table, shared_embedding=arch.tie_embeddings))
        chunks.append(params)
    return chunks


@dataclass(frozen=True)
class BufferLayout:
    numel: int  # elements of the grad (and, with the distributed optimizer, param) buffer incl. padding
    buckets: Tuple[Tuple[int, int], ...]  # (start, end) of each bucket
    ranges: Tuple[Tuple[int, int], ...]  # (start, end) of each parameter, in buffer order


def _ceil_to(x: int, m: int) -> int:
    return -(-x // m) * m


def buffer_layout(params: Sequence[Param], dp: int, distributed_optimizer: bool) -> BufferLayout:
    """Replays megatron-core 0.16 ``_ParamAndGradBuffer`` sizing for one chunk's params (one dtype)."""
    pad_end = (lambda i: _ceil_to(i, _lcm(dp, 128))) if distributed_optimizer else (lambda i: i)
    pad_start = (lambda i: _ceil_to(i, 64)) if distributed_optimizer else (lambda i: i)
    buckets: List[Tuple[int, int]] = []
    ranges: List[Tuple[int, int]] = []
    start = bucket_start = 0
    in_bucket = 0
    end = 0
    for p in reversed(params):
        start = pad_start(start)
        own_bucket = p.shared_embedding and distributed_optimizer
        if own_bucket and in_bucket:
            start = pad_end(start)
            buckets.append((bucket_start, start))
            bucket_start, in_bucket = start, 0
        end = start + p.numel
        ranges.append((start, end))
        in_bucket += 1
        if own_bucket:
            start = pad_end(end)
            buckets.append((bucket_start, start))
            bucket_start, in_bucket = start, 0
        else:
            start = end
    if in_bucket:
        buckets.append((bucket_start, pad_end(end)))
    return BufferLayout(numel=buckets[-1][1] if buckets else 0, buckets=tuple(buckets), ranges=tuple(ranges))


def _lcm(a: int, b: int) -> int:
    from math import gcd

    return a * b // gcd(a, b)


def shard_elements(layout: BufferLayout, dp: int) -> List[int]:
    """Real parameter elements inside each DP rank's slice of every bucket (distributed optimizer)."""
    counts = [0] * dp
    for b_start, b_end in layout.buckets:
        size = (b_end - b_start) // dp
        for p_start, p_end in layout.ranges:
            lo, hi = max(p_start, b_start), min(p_end, b_end)
            if lo >= hi:
                continue
            first, last = (lo - b_start) // size, (hi - 1 - b_start) // size
            for r in range(first, last + 1):
                s0 = b_start + r * size
                counts[r] += min(hi, s0 + size) - max(lo, s0)
    return counts
