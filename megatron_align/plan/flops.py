"""Step-time cost of recompute, as extra forward FLOPs over a training step's model FLOPs.

Per token, forward: each layer's GEMMs ``2·(h·(q + kv) + q·h + 3·h·f)`` plus causal attention
``2·q·s`` (QKᵀ and AV over s/2 keys on average, full-length documents), and the output layer
``2·h·V``. A training step is ~3 forwards (backward = 2×). Full / k-block recompute re-runs every
layer's forward once (+1 forward of the recomputed layers ⇒ ≈ 33% of model FLOPs); selective
re-runs only the attention core.
"""

from __future__ import annotations

from typing import Dict, Sequence

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


def attention_core_flops(arch: ArchSpec, doc_lengths: Sequence[int]) -> float:
    """Forward FLOPs of QKᵀ and AV under causal attention within each document (packed rows: a token
    attends only to earlier tokens of its own sample): ``2·2·q·n(n+1)/2`` per layer for a document of
    n tokens. Counting the packed row length instead overstates it by up to rows/doc-length."""
    q = arch.num_attention_heads * arch.kv_channels
    return arch.num_layers * 2.0 * q * float(sum(int(n) * (int(n) + 1) for n in doc_lengths))


def step_model_flops(arch: ArchSpec, padded_vocab: int, doc_lengths: Sequence[int]) -> float:
    """Model FLOPs of one training step (forward + backward = 3 × forward) over these documents:
    the layers' GEMMs and the output layer per token, plus per-document causal attention. The
    embedding lookup is no matmul and recompute is not model work (MFU, not HFU)."""
    per_token = forward_flops_per_token(arch, 0, padded_vocab)
    tokens = float(sum(int(n) for n in doc_lengths))
    forward = tokens * (per_token["layer_gemms"] + per_token["output_layer"]) + attention_core_flops(arch, doc_lengths)
    return 3.0 * forward
