"""A family-independent description of a decoder-only transformer (what a checkpoint *is*).

Presets, Hugging Face config.json files, the converter and the planner all speak ArchSpec;
the builder turns it into a megatron-core TransformerConfig and GPTModel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3.1 style frequency scaling (HF ``rope_scaling`` with ``rope_type: llama3``)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ArchSpec:
    family: str
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    norm_eps: float
    qkv_bias: bool = False
    tie_embeddings: bool = False
    norm_head: bool = False
    rope_scaling: Optional[RopeScaling] = None
    head_dim: Optional[int] = None  # None: hidden_size // num_attention_heads
    extra: Dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def kv_channels(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def replace(self, **changes: Any) -> "ArchSpec":
        d = asdict(self)
        d.update(changes)
        if isinstance(d.get("rope_scaling"), dict):
            d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
        return ArchSpec(**d)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Dict[str, Any]) -> "ArchSpec":
        d = dict(d)
        if isinstance(d.get("rope_scaling"), dict):
            d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
        return ArchSpec(**d)

    def num_parameters(self, padded_vocab: Optional[int] = None) -> int:
        """Exact parameter count of the Megatron model (with vocab padding when given)."""
        v = padded_vocab or self.vocab_size
        h, f, kv = self.hidden_size, self.ffn_hidden_size, self.kv_channels
        q_out = self.num_attention_heads * kv
        kv_out = 2 * self.num_query_groups * kv
        attn = h * (q_out + kv_out) + q_out * h + ((q_out + kv_out) if self.qkv_bias else 0)
        mlp = h * 2 * f + f * h
        norms = 2 * h
        per_layer = attn + mlp + norms
        emb = v * h * (1 if self.tie_embeddings else 2)
        return self.num_layers * per_layer + emb + h  # + final norm


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Megatron's rule: pad to a multiple of ``divisible_by * tp``."""
    multiple = divisible_by * tp
    return ((vocab_size + multiple - 1) // multiple) * multiple
