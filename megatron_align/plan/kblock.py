"""The report's multi-layer (k-block) gradient checkpointing model next to the detailed one.

Report (Baichuan Alignment, §SFT): per-layer checkpointing keeps h·L (every layer's input) +
h·n (one layer's activations while it is recomputed); checkpointing blocks of k layers keeps
h·L/k + k·h·n, minimised at k* = √(L/n). Here "h" is one checkpointed hidden state per token and
n = (one layer's activation bytes) / (one checkpointed input's bytes), taken from the detailed
per-layer formula. In megatron's 1F1B schedule stage 0 holds pp micro-batches of L/pp layers, so
pp·(L/pp)/k = L/k checkpoints again: the same optimum, with ⌈·⌉ because blocks hold whole layers.
"""

from __future__ import annotations

import math
from typing import List, Tuple

from megatron_align.models.arch import ArchSpec
from megatron_align.plan import activations as act


def report_units(num_layers: int, n: float, k: int) -> float:
    """Report's memory in units of h per token: L/k + k·n."""
    return num_layers / k + k * n


def report_optimal_k(num_layers: int, n: float) -> float:
    return math.sqrt(num_layers / n)


def units_per_layer(arch: ArchSpec, tp: int, sp: bool, opts: act.ActivationOptions) -> float:
    """n: one layer's activations measured in checkpointed hidden states."""
    return act.layer_bytes_per_token(arch, tp, sp, opts) / act.checkpoint_bytes_per_token(arch, tp, sp, opts)


def detailed_curve(arch: ArchSpec, tp: int, pp: int, sp: bool, opts: act.ActivationOptions,
                   max_k: int = 0) -> List[Tuple[int, float]]:
    """(k, stage-0 activation bytes per token): pp in-flight × ⌈(L/pp)/k⌉ inputs + k layers rebuilt."""
    layers = arch.num_layers // pp
    out = []
    for k in range(1, (max_k or layers) + 1):
        kept = pp * act.retained_per_chunk(arch, layers, tp, sp, "kblock", k, opts)
        out.append((k, kept + act.recompute_transient(arch, layers, tp, sp, "kblock", k, opts)
                    + act.layer_workspace(arch, tp, sp, opts)))
    return out
