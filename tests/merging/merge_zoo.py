"""Tiny inputs for the merge tests: a base llama, three fine-tunes of it (base + fresh noise of different
sizes per model), their megatron_align conversions, and inputs that must be refused."""

from __future__ import annotations

import copy
import os
from typing import Dict

import torch

import hf_tiny_models as tiny


def _finetune(base_model, path: str, seed: int, scale: float):
    g = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(base_model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    model.save_pretrained(path)
    tiny.write_tokenizer(path)
    return model


def build_merge_zoo(root: str) -> Dict[str, str]:
    from megatron_align.convert.api import convert

    z: Dict[str, str] = {}
    z["base"] = os.path.join(root, "base")
    base = tiny.llama(z["base"], seed=11)
    for k, (seed, scale) in enumerate([(21, 0.01), (22, 0.02), (23, 0.015)]):
        z[f"ft{k}"] = os.path.join(root, f"ft{k}")
        _finetune(base, z[f"ft{k}"], seed, scale)
    for name in ("base", "ft0", "ft1"):
        z[f"{name}_mcore"] = os.path.join(root, f"{name}_mcore")
        convert(z[name], z[f"{name}_mcore"])
    # reward models (score head) of the same trunk
    z["rm0"] = os.path.join(root, "rm0")
    tiny.llama(z["rm0"], seq_cls=True, seed=31)
    z["rm1"] = os.path.join(root, "rm1")
    tiny.llama(z["rm1"], seq_cls=True, seed=32)
    # refused: another family, another vocabulary
    z["qwen"] = os.path.join(root, "qwen")
    tiny.qwen2(z["qwen"], tied=False)
    z["vocab"] = os.path.join(root, "vocab")
    old = tiny.SMALL["vocab_size"]
    tiny.SMALL["vocab_size"] = old + 64
    try:
        tiny.llama(z["vocab"], seed=12)
    finally:
        tiny.SMALL["vocab_size"] = old
    return z
