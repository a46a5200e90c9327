"""Per-GPU memory of one parallel layout: weights, gradients, optimizer states, activations, logits.

Static memory is exact for megatron-core 0.16 with :func:`megatron_align.engine.wrap.wrap_ddp`
(see :mod:`megatron_align.plan.params`); dtypes are parameters (:class:`Dtypes`) so the CPU fp32
case can be checked exactly and the GPU bf16 case predicted:

- weights: params dtype; with the distributed optimizer params live in DDP's padded param buffer;
- gradients: DDP ``main_grad`` buffer, fp32 (``grad_reduce_in_fp32=True``), padded, never sharded
  (the distributed optimizer is ZeRO-1: it reduce-scatters into a full buffer);
- optimizer: Adam ``exp_avg`` + ``exp_avg_sq`` (fp32) and an fp32 master copy when params are not
  fp32, for the rank's 1/(DP·CP) slice of each bucket (distributed optimizer) or for all its params.

Activations follow :mod:`megatron_align.plan.activations`. Peak of a rank =
static + in-flight micro-batches × retained activations + max(recompute working set + a layer's
backward workspace, last-stage logits/loss and the loss backend's transient) (logits are freed by the
output layer's backward before the layers' recompute begins).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Dict, List, Optional

from megatron_align.models.arch import ArchSpec, padded_vocab_size
from megatron_align.plan import activations as act
from megatron_align.plan.params import SCALAR_HEAD, buffer_layout, rank_parameters, shard_elements

GiB = 1024 ** 3
FP32_BYTES = 4
RECOMPUTE_MODES = ("none", "selective", "full", "kblock")


@dataclass(frozen=True)
class Dtypes:
    """Bytes per element of each kind of state."""

    params: int = 2  # bf16 weights
    grads: int = 4  # megatron DDP main_grad with grad_reduce_in_fp32
    main_params: int = 4  # optimizer's fp32 master copy; 0 when params are fp32 already
    optim_state: int = 4  # each of Adam's exp_avg and exp_avg_sq
    activations: int = 2

    @staticmethod
    def for_precision(precision: str) -> "Dtypes":
        if precision == "fp32":
            return Dtypes(params=4, grads=4, main_params=0, optim_state=4, activations=4)
        if precision in ("bf16", "fp16"):
            return Dtypes()
        raise ValueError(f"precision must be fp32, bf16 or fp16; got {precision!r}")


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    cp: int = 1
    dp: int = 1
    vpp: Optional[int] = None
    sp: bool = True  # sequence parallelism (only meaningful with tp > 1)
    distributed_optimizer: bool = True

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.cp * self.dp

    @property
    def seq_parallel(self) -> bool:
        return self.sp and self.tp > 1

    def label(self) -> str:
        v = f" vpp{self.vpp}" if (self.vpp or 1) > 1 else ""
        return f"tp{self.tp} pp{self.pp}{v} cp{self.cp} dp{self.dp}"


@dataclass(frozen=True)
class Workload:
    seq_length: int
    micro_batch_size: int = 1
    recompute: str = "none"
    recompute_k: int = 1
    num_microbatches: int = 0  # 0: at least the pipeline warm-up (the usual case)
    vocab_divisible_by: int = 128
    options: act.ActivationOptions = field(default_factory=act.ActivationOptions)


@dataclass(frozen=True)
class StaticMemory:
    param_elements: int  # real parameters on the rank
    weights: int
    grads: int
    optimizer: int
    optimizer_elements: int  # elements the optimizer keeps state for (largest DP shard)


@lru_cache(maxsize=4096)
def static_memory(arch: ArchSpec, tp: int, pp: int, pp_rank: int, vpp: Optional[int], dp_cp: int,
                  distributed_optimizer: bool, dtypes: Dtypes, vocab_divisible_by: int = 128,
                  dp_rank: Optional[int] = None, head: str = "lm") -> StaticMemory:
    """Exact bytes of weights, gradient buffer and optimizer states on one rank.

    ``dp_rank``: that data-parallel (x CP) rank's optimizer shard; None: the largest shard.
    ``head`` reward / value: the scalar head is an fp32 parameter; with bf16 params megatron's DDP puts it
    in a buffer of its own (one per dtype): fp32 weight and grad, Adam states without a master copy."""
    n_params = buf = 0
    shard = [0] * dp_cp
    head_params = []
    for chunk in rank_parameters(arch, tp, pp, pp_rank, vpp, vocab_divisible_by, head):
        if dtypes.params != FP32_BYTES:
            head_params += [p for p in chunk if p.name == SCALAR_HEAD]
            chunk = [p for p in chunk if p.name != SCALAR_HEAD]
        layout = buffer_layout(chunk, dp_cp, distributed_optimizer)
        real = sum(p.numel for p in chunk)
        n_params += real
        buf += layout.numel
        if distributed_optimizer:
            shard = [a + b for a, b in zip(shard, shard_elements(layout, dp_cp))]
    if not distributed_optimizer:
        opt_elems = n_params
    else:
        opt_elems = max(shard) if dp_rank is None else shard[dp_rank]
    weights = (buf if distributed_optimizer else n_params) * dtypes.params
    per_elem = 2 * dtypes.optim_state + dtypes.main_params
    grads, optimizer = buf * dtypes.grads, opt_elems * per_elem
    if head_params:  # the fp32 scalar head's own buffer
        layout = buffer_layout(head_params, dp_cp, distributed_optimizer)
        real = sum(p.numel for p in head_params)
        n_params += real
        own = (max(shard_elements(layout, dp_cp)) if dp_rank is None else shard_elements(layout, dp_cp)[dp_rank]) \
            if distributed_optimizer else real
        weights += (layout.numel if distributed_optimizer else real) * FP32_BYTES
        grads += layout.numel * FP32_BYTES
        optimizer += own * 2 * dtypes.optim_state
        opt_elems += own
    return StaticMemory(n_params, weights, grads, optimizer, opt_elems)


@dataclass
class RankMemory:
    pp_rank: int
    weights: float
    grads: float
    optimizer: float
    activations: float  # in-flight micro-batches x retained
    recompute_working: float  # one block rebuilt (full / k-block) + a layer's backward workspace
    logits_and_loss: float  # last stage only: final norm / output-layer inputs, logits, loss, CE transient
    inflight: int

    @property
    def total(self) -> float:
        return (self.weights + self.grads + self.optimizer + self.activations
                + max(self.recompute_working, self.logits_and_loss))

    def to_dict(self) -> Dict[str, float]:
        d = asdict(self)
        d["total"] = self.total
        return d


def rank_memory(arch: ArchSpec, layout: Layout, work: Workload, pp_rank: int, dtypes: Dtypes) -> RankMemory:
    tp, pp, v = layout.tp, layout.pp, (layout.vpp or 1)
    sp = layout.seq_parallel
    st = static_memory(arch, tp, pp, pp_rank, layout.vpp, layout.dp * layout.cp, layout.distributed_optimizer,
                       dtypes, work.vocab_divisible_by)
    opts = act.ActivationOptions(**{**asdict(work.options), "act_bytes": dtypes.activations})
    tokens = work.seq_length * work.micro_batch_size / layout.cp
    s = work.seq_length // layout.cp  # attention-mask terms: the rank's part of a row
    chunk_layers = arch.num_layers // (pp * v)
    inflight = act.inflight_microbatches(pp, pp_rank, v, work.num_microbatches)
    per_mb = act.retained_per_chunk(arch, chunk_layers, tp, sp, work.recompute, work.recompute_k, opts, s)
    per_mb += sum(act.microbatch_terms(arch, tp, sp, work.recompute, opts, s, pp_rank == 0).values())
    working = act.recompute_transient(arch, chunk_layers, tp, sp, work.recompute, work.recompute_k, opts, s)
    working += act.layer_workspace(arch, tp, sp, opts)
    logits = 0.0
    if pp_rank == pp - 1:
        vocab = padded_vocab_size(arch.vocab_size, work.vocab_divisible_by, tp)
        logits = act.last_stage_extra(arch, vocab, tp, sp, opts, tokens, dtypes.params) * tokens
    return RankMemory(pp_rank, st.weights, st.grads, st.optimizer, inflight * per_mb * tokens,
                      working * tokens, logits, inflight)


def candidate_ranks(pp: int) -> List[int]:
    """Stage 0 (embedding, most in flight), stage 1 (most in flight without the embedding), last stage."""
    return sorted({0, min(1, pp - 1), pp - 1})


def peak_memory(arch: ArchSpec, layout: Layout, work: Workload, dtypes: Dtypes) -> RankMemory:
    """The rank with the largest total."""
    return max((rank_memory(arch, layout, work, r, dtypes) for r in candidate_ranks(layout.pp)),
               key=lambda m: m.total)


def best_k(arch: ArchSpec, layout: Layout, work: Workload, dtypes: Dtypes) -> int:
    """k in 1..layers-per-chunk minimising the peak (ties: the smaller k)."""
    layers = arch.num_layers // (layout.pp * (layout.vpp or 1))
    best, best_mem = 1, math.inf
    for k in range(1, layers + 1):
        w = Workload(**{**_shallow(work), "recompute": "kblock", "recompute_k": k})
        total = peak_memory(arch, layout, w, dtypes).total
        if total < best_mem - 1e-6:
            best, best_mem = k, total
    return best


def _shallow(work: Workload) -> dict:
    return {f: getattr(work, f) for f in work.__dataclass_fields__}
