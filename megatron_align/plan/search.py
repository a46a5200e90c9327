"""Grid over TP / PP / CP / DP (and k) for the smallest GPU count that fits, per recompute mode.

A layout is valid when TP ∈ the TP grid, TP ≤ GPUs per node (TP stays inside a node), TP divides the
heads and query groups, PP (× VPP) divides the layers, CP ∈ the CP grid with the sequence divisible by
2·CP (load-balanced causal CP), and DP = GPUs / (TP·PP·CP) is a whole number. Total GPU counts tried:
1, 2, 4, … below one node, then multiples of the node size up to ``max_gpus``. Micro-batch size and
the rest of the workload are fixed by :class:`~megatron_align.plan.memory.Workload`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from megatron_align.models.arch import ArchSpec, padded_vocab_size
from megatron_align.plan.flops import recompute_overhead
from megatron_align.plan.memory import (RECOMPUTE_MODES, Dtypes, Layout, RankMemory, Workload, best_k,
                                        peak_memory)


@dataclass(frozen=True)
class SearchSpace:
    gpus_per_node: int = 8
    max_gpus: int = 512
    tp: Tuple[int, ...] = (1, 2, 4, 8)
    cp: Tuple[int, ...] = (1, 2, 4, 8)
    vpp: Optional[int] = None
    sp: bool = True
    distributed_optimizer: bool = True

    def gpu_counts(self) -> List[int]:
        small = [n for n in (1, 2, 4, 8, 16, 32) if n < self.gpus_per_node]
        return small + list(range(self.gpus_per_node, self.max_gpus + 1, self.gpus_per_node))


@dataclass
class Candidate:
    layout: Layout
    recompute: str
    k: int
    memory: RankMemory  # the peak rank
    overhead: float  # recompute FLOPs / step FLOPs

    def sort_key(self) -> tuple:
        return (self.layout.gpus, self.overhead, self.memory.total)


def layouts(arch: ArchSpec, seq_length: int, gpus: int, space: SearchSpace) -> Iterator[Layout]:
    v = space.vpp or 1
    for tp in space.tp:
        if tp > space.gpus_per_node or arch.num_attention_heads % tp or arch.num_query_groups % tp:
            continue
        for cp in space.cp:
            if cp > 1 and seq_length % (2 * cp):
                continue
            for pp in range(1, arch.num_layers + 1):
                if arch.num_layers % (pp * v) or (v > 1 and pp < 2):
                    continue
                mp = tp * pp * cp
                if gpus % mp:
                    continue
                yield Layout(tp=tp, pp=pp, cp=cp, dp=gpus // mp, vpp=space.vpp, sp=space.sp,
                             distributed_optimizer=space.distributed_optimizer)


def evaluate(arch: ArchSpec, layout: Layout, work: Workload, dtypes: Dtypes, recompute: str) -> Candidate:
    k = best_k(arch, layout, work, dtypes) if recompute == "kblock" else (1 if recompute == "full" else 0)
    w = replace(work, recompute=recompute, recompute_k=max(k, 1))
    vocab = padded_vocab_size(arch.vocab_size, work.vocab_divisible_by, layout.tp)
    return Candidate(layout, recompute, k, peak_memory(arch, layout, w, dtypes),
                     recompute_overhead(arch, work.seq_length, vocab, recompute))


@dataclass
class SearchResult:
    min_gpus: Dict[str, Optional[int]]  # recompute mode -> smallest GPU count that fits (None: none found)
    best: Dict[str, Optional[Candidate]]  # the preferred layout at that count
    feasible: List[Candidate]  # every feasible (layout, mode) up to the largest minimum, sorted


Evaluator = Callable[[Layout, str], Optional[Candidate]]


def search(arch: ArchSpec, work: Workload, dtypes: Dtypes, space: SearchSpace, budget_bytes: float,
           modes: Sequence[str] = RECOMPUTE_MODES, evaluator: Optional[Evaluator] = None) -> SearchResult:
    """``evaluator(layout, mode)``: the candidate (None: the layout cannot run); default the training job
    of :func:`evaluate` (the RL case passes its own, :mod:`megatron_align.plan.rl`)."""
    ev = evaluator or (lambda layout, mode: evaluate(arch, layout, work, dtypes, mode))
    for m in modes:
        if m not in RECOMPUTE_MODES:
            raise ValueError(f"recompute mode {m!r}: choose from {', '.join(RECOMPUTE_MODES)}")
    min_gpus: Dict[str, Optional[int]] = {m: None for m in modes}
    best: Dict[str, Optional[Candidate]] = {m: None for m in modes}
    feasible: List[Candidate] = []
    for gpus in space.gpu_counts():
        pending = [m for m in modes if min_gpus[m] is None]
        if not pending:
            break
        for layout in layouts(arch, work.seq_length, gpus, space):
            for mode in modes:
                cand = ev(layout, mode)
                if cand is not None and cand.memory.total <= budget_bytes:
                    feasible.append(cand)
        for mode in pending:
            fits = sorted((c for c in feasible if c.recompute == mode and c.layout.gpus == gpus),
                          key=Candidate.sort_key)
            if fits:
                min_gpus[mode], best[mode] = gpus, fits[0]
    feasible.sort(key=Candidate.sort_key)
    return SearchResult(min_gpus, best, feasible)
