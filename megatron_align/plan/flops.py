"""Step-time cost of recompute, as extra forward FLOPs over a training step's model FLOPs.

Per token, forward: each layer's GEMMs ``2·(h·(q + kv) + q·h + 3·h·f)`` plus causal attention
``2·q·s`` (QKᵀ and AV over s/2 keys on average, full-length documents), and the output layer
``2·h·V``. A training step is ~3 forwards (backward = 2×). Full / k-block recompute re-runs every
layer's forward once (+1 forward of the recomputed layers ⇒ ≈ 33% of model FLOPs); selective
re-runs only the attention core.
"""

from __future__ import annotations

from typing import Dict

from megatron_align.models.arch import ArchSpec


def forward_flops_per_token(arch: ArchSpec, seq_length: int, padded_vocab: int) -> Dict[str, float]:
    h, f, d = arch.hidden_size, arch.ffn_hidden_size, arch.kv_channels
    q, kv = arch.num_attention_heads * d, 2 * arch.num_query_groups * d
    L = arch.num_layers
    return {
        "layer_gemms": L * 2.0 * (h * (q + kv) + q * h + 3 * h * f),
        "attention_core": L * 2.0 * q * seq_length,
        "output_layer": 2.0 * h * padded_vocab,
    }


def recompute_overhead(arch: ArchSpec, seq_length: int, padded_vocab: int, recompute: str) -> float:
    """Extra FLOPs of recompute as a fraction of the step's model FLOPs (3 × forward)."""
    fl = forward_flops_per_token(arch, seq_length, padded_vocab)
    step = 3.0 * sum(fl.values())
    if recompute in ("full", "kblock"):
        return (fl["layer_gemms"] + fl["attention_core"]) / step
    if recompute == "selective":
        return fl["attention_core"] / step
    if recompute == "none":
        return 0.0
    raise ValueError(f"unknown recompute {recompute!r}")
