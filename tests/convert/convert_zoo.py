"""The set of tiny HF checkpoints every converter test uses, built and converted once per session."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict

import torch

import hf_tiny_models as hm

CAUSAL = ("llama", "qwen2_tied", "qwen2_untied", "baichuan2")
SEQ_CLS = ("llama_rm", "qwen2_rm")


@dataclass
class Zoo:
    root: str
    tokens: torch.Tensor
    hf_dirs: Dict[str, str] = field(default_factory=dict)
    mcore: Dict[str, str] = field(default_factory=dict)
    ref_logits: Dict[str, torch.Tensor] = field(default_factory=dict)
    models: Dict[str, object] = field(default_factory=dict)


def build_zoo(root: str) -> Zoo:
    from megatron_align.cli import main

    g = torch.Generator().manual_seed(0)
    zoo = Zoo(root, torch.randint(0, hm.VOCAB, (2, 24), generator=g))  # 24 > original_max_position_embeddings
    d = lambda name: os.path.join(root, "hf", name)  # noqa: E731
    zoo.models["llama"] = hm.llama(d("llama"), max_shard_size="200KB")  # several shards + index
    zoo.models["qwen2_tied"] = hm.qwen2(d("qwen2_tied"), tied=True)
    zoo.models["qwen2_untied"] = hm.qwen2(d("qwen2_untied"), tied=False)
    zoo.models["baichuan2"] = hm.baichuan2(d("baichuan2"))
    zoo.models["llama_rm"] = hm.llama(d("llama_rm"), seq_cls=True)
    zoo.models["qwen2_rm"] = hm.qwen2(d("qwen2_rm"), tied=False, seq_cls=True)
    for name in CAUSAL + SEQ_CLS:
        zoo.hf_dirs[name] = d(name)
        zoo.mcore[name] = os.path.join(root, "mcore", name)
        assert main(["convert", d(name), zoo.mcore[name]]) == 0
    for name in CAUSAL:
        m = zoo.models[name]
        zoo.ref_logits[name] = (hm.baichuan2_reference_logits(m, zoo.tokens) if name == "baichuan2"
                                else hm.hf_logits(m, zoo.tokens))
    return zoo
