"""Rotary embeddings driven by position ids, so packed samples restart at position 0.

Megatron's local path derives RoPE positions from the sequence index, which is wrong for
packed rows; here the frequencies are gathered per token from ``position_ids``. The inverse
frequencies follow Hugging Face exactly (including Llama-3.1 ``rope_scaling``), so logits
match ``transformers`` to fp32 rounding.

The same inverse frequencies drive megatron's ``RotaryEmbedding`` (the THD / Transformer Engine path
builds its table there and indexes it per sample through ``cu_seqlens``): :func:`share_inv_freq` puts
them in place, so both paths rotate by one set of frequencies.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from megatron_align.models.arch import RopeScaling


def rope_inv_freq(dim: int, theta: float, scaling: Optional[RopeScaling] = None) -> torch.Tensor:
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if scaling is None:
        return inv_freq
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_freqs_from_positions(inv_freq: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """position_ids [b, s] -> megatron-layout frequencies [s, b, 1, dim] (fp32)."""
    freqs = position_ids.to(torch.float32)[..., None] * inv_freq.to(position_ids.device)[None, None, :]
    emb = torch.cat((freqs, freqs), dim=-1)  # [b, s, dim]
    return emb.transpose(0, 1).unsqueeze(2).contiguous()


def share_inv_freq(rotary_emb, inv_freq: torch.Tensor) -> None:
    """Make megatron's ``RotaryEmbedding`` use ``inv_freq`` (HF-exact, scaling included) instead of the
    unscaled ``1/base^(2i/d)`` it computed (megatron's own Llama-3 scaling is never switched on by our
    builder and hard-codes 8192/1/4, which HF configs need not match)."""
    if rotary_emb is None:
        return
    old = rotary_emb.inv_freq
    if old.shape != inv_freq.shape:
        raise ValueError(f"RoPE: megatron rotates {2 * old.numel()} channels, the model's frequencies "
                         f"cover {2 * inv_freq.numel()}")
    rotary_emb.inv_freq = inv_freq.to(device=old.device, dtype=old.dtype)
