"""The HF <-> megatron tensor mapping of each family, as data.

A :class:`Rule` says: these HF tensors (``{i}`` = layer index) become this megatron dist-checkpoint
key through this transform, when this condition on the architecture holds; and what shape each
HF tensor must have (symbols resolved from the ArchSpec). Per-layer rules are stacked on a leading
layer axis in the checkpoint, exactly like megatron's own sharded keys (``decoder.layers.*``), so
the result loads at any TP/PP/VPP.

Scalar (reward / value) heads follow HF's ``*ForSequenceClassification`` layout: ``score.weight``
``[num_labels, h]`` is stored as ``reward_head.weight`` and the checkpoint has no ``output_layer``;
``arch.json`` records ``extra.reward_head = {"num_labels": n}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

from megatron_align.convert.transforms import GATE_UP, IDENTITY, PACKED_QKV, PAD_VOCAB, QKV, Dims, Transform
from megatron_align.models.arch import ArchSpec

REWARD_HEAD_KEY = "reward_head.weight"
LAYER_PREFIX = "decoder.layers."


def reward_head(arch: ArchSpec):
    """``{"num_labels": n}`` for a scalar-head (sequence classification) model, else None."""
    return (arch.extra or {}).get("reward_head")


# When a rule applies (a predicate of the architecture).
CONDITIONS: Dict[str, Callable[[ArchSpec], bool]] = {
    "always": lambda a: True,
    "qkv_bias": lambda a: a.qkv_bias,
    "lm_head": lambda a: not a.tie_embeddings and reward_head(a) is None,
    "reward_head": lambda a: reward_head(a) is not None,
}


@dataclass(frozen=True)
class Rule:
    hf: Tuple[str, ...]
    mcore: str
    transform: Transform
    shapes: Tuple[Tuple[str, ...], ...]  # symbolic shape of each HF tensor
    when: str = "always"

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf[0]

    def hf_names(self, layer: int = -1) -> List[str]:
        return [n.format(i=layer) for n in self.hf]


def shape_symbols(arch: ArchSpec) -> Dict[str, int]:
    hn = arch.kv_channels
    head = reward_head(arch)
    return {"h": arch.hidden_size, "f": arch.ffn_hidden_size, "V": arch.vocab_size,
            "q": arch.num_attention_heads * hn, "kv": arch.num_query_groups * hn,
            "qkv": (arch.num_attention_heads + 2 * arch.num_query_groups) * hn,
            "labels": int(head["num_labels"]) if head else 0}


def hf_shape(symbols: Sequence[str], arch: ArchSpec) -> Tuple[int, ...]:
    table = shape_symbols(arch)
    return tuple(table[s] for s in symbols)


def dims(arch: ArchSpec, padded_vocab_size: int) -> Dims:
    return Dims(num_query_groups=arch.num_query_groups,
                heads_per_group=arch.num_attention_heads // arch.num_query_groups,
                head_dim=arch.kv_channels, vocab_size=arch.vocab_size, padded_vocab_size=padded_vocab_size)


_L = "model.layers.{i}."
_A = LAYER_PREFIX + "self_attention."
_M = LAYER_PREFIX + "mlp."

EMBEDDINGS_AND_HEADS = (
    Rule(("model.embed_tokens.weight",), "embedding.word_embeddings.weight", PAD_VOCAB, (("V", "h"),)),
    Rule(("model.norm.weight",), "decoder.final_layernorm.weight", IDENTITY, (("h",),)),
    Rule(("lm_head.weight",), "output_layer.weight", PAD_VOCAB, (("V", "h"),), when="lm_head"),
    Rule(("score.weight",), REWARD_HEAD_KEY, IDENTITY, (("labels", "h"),), when="reward_head"),
)

SEPARATE_QKV = (
    Rule((_L + "self_attn.q_proj.weight", _L + "self_attn.k_proj.weight", _L + "self_attn.v_proj.weight"),
         _A + "linear_qkv.weight", QKV, (("q", "h"), ("kv", "h"), ("kv", "h"))),
    Rule((_L + "self_attn.q_proj.bias", _L + "self_attn.k_proj.bias", _L + "self_attn.v_proj.bias"),
         _A + "linear_qkv.bias", QKV, (("q",), ("kv",), ("kv",)), when="qkv_bias"),
)

PACKED_W = (
    Rule((_L + "self_attn.W_pack.weight",), _A + "linear_qkv.weight", PACKED_QKV, (("qkv", "h"),)),
)

LAYER_REST = (
    Rule((_L + "input_layernorm.weight",), _A + "linear_qkv.layer_norm_weight", IDENTITY, (("h",),)),
    Rule((_L + "self_attn.o_proj.weight",), _A + "linear_proj.weight", IDENTITY, (("h", "q"),)),
    Rule((_L + "post_attention_layernorm.weight",), _M + "linear_fc1.layer_norm_weight", IDENTITY, (("h",),)),
    Rule((_L + "mlp.gate_proj.weight", _L + "mlp.up_proj.weight"), _M + "linear_fc1.weight", GATE_UP,
         (("f", "h"), ("f", "h"))),
    Rule((_L + "mlp.down_proj.weight",), _M + "linear_fc2.weight", IDENTITY, (("h", "f"),)),
)

MAPPINGS: Dict[str, Tuple[Rule, ...]] = {
    "llama": EMBEDDINGS_AND_HEADS + SEPARATE_QKV + LAYER_REST,
    "qwen2": EMBEDDINGS_AND_HEADS + SEPARATE_QKV + LAYER_REST,
    # NormHead normalises lm_head rows at forward time in both implementations: raw weights are stored.
    "baichuan2": EMBEDDINGS_AND_HEADS + PACKED_W + LAYER_REST,
}

# HF tensors that carry no weights (buffers saved by old transformers versions).
IGNORED_HF = (re.compile(r"\.rotary_emb\.inv_freq$"),)
# Tied models sometimes also save lm_head.weight (a copy of the embedding): dropped.
IGNORED_WHEN_TIED = ("lm_head.weight",)

# megatron ``_extra_state`` objects per layer (None for our local spec; TE names included so a
# checkpoint also loads into the TE spec, whose modules request them).
EXTRA_STATE_MODULES = ("self_attention.linear_qkv", "self_attention.linear_proj", "self_attention.core_attention",
                       "mlp.linear_fc1", "mlp.linear_fc2")


def rules_for(arch: ArchSpec) -> List[Rule]:
    return [r for r in MAPPINGS[arch.family] if CONDITIONS[r.when](arch)]


def is_ignored(name: str, arch: ArchSpec) -> bool:
    return any(p.search(name) for p in IGNORED_HF) or (arch.tie_embeddings and name in IGNORED_WHEN_TIED)


def expected_hf_names(arch: ArchSpec) -> List[str]:
    out = []
    for rule in rules_for(arch):
        layers = range(arch.num_layers) if rule.per_layer else [-1]
        for i in layers:
            out.extend(rule.hf_names(i))
    return out


def guess_family(names: Sequence[str]) -> str:
    """The family whose layer-0 tensor names best match ``names`` (for error messages)."""
    present = set(names)
    best, best_score = "", -1
    for fam, rules in MAPPINGS.items():
        wanted = {n for r in rules if r.per_layer and r.when == "always" for n in r.hf_names(0)}
        score = len(wanted & present) - len(wanted - present)
        if score > best_score:
            best, best_score = fam, score
    return best
