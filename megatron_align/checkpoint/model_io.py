"""Model weights <-> a dist-checkpoint directory, for any number of (virtual pipeline) chunks.

The sharded keys stored in the checkpoint are megatron's global ones (layers stacked on a
leading axis with global layer numbers), so a checkpoint written at one TP/PP/VPP loads at any
other. Chunk dictionaries are only prefixed in memory to keep their entries apart.
"""

from __future__ import annotations

import os
from typing import Dict, List, Sequence

import torch


def unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


def model_sharded_state_dict(chunks: List[torch.nn.Module]) -> Dict:
    models = [unwrap(c) for c in chunks]
    if len(models) == 1:
        return models[0].sharded_state_dict()
    sd: Dict = {}
    for i, m in enumerate(models):
        sd.update({f"chunk{i}.{k}": v for k, v in m.sharded_state_dict().items()})
    return sd


def save_model(chunks: List[torch.nn.Module], directory: str) -> None:
    from megatron.core import dist_checkpointing

    os.makedirs(directory, exist_ok=True)
    dist_checkpointing.save(model_sharded_state_dict(chunks), directory)


def load_model(chunks: List[torch.nn.Module], directory: str, strict: bool = True,
               skip_prefixes: Sequence[str] = ()) -> None:
    """Load ``directory`` into ``chunks``; parameters whose key starts with one of ``skip_prefixes`` are not
    read and keep their current values (e.g. a fresh reward head on an LM checkpoint)."""
    from megatron.core import dist_checkpointing

    if not os.path.isdir(directory):
        raise FileNotFoundError(f"model checkpoint directory {directory} does not exist")

    def skipped(key: str) -> bool:
        bare = key.split(".", 1)[1] if key.startswith("chunk") and len(chunks) > 1 else key
        return any(bare.startswith(p) for p in skip_prefixes)

    request = {k: v for k, v in model_sharded_state_dict(chunks).items() if not skipped(k)}
    loaded = dist_checkpointing.load(request, directory)
    models = [unwrap(c) for c in chunks]
    if skip_prefixes:  # keep the skipped parameters' current values
        current = {}
        for i, m in enumerate(models):
            pre = f"chunk{i}." if len(models) > 1 else ""
            current.update({pre + k: v for k, v in m.state_dict().items() if skipped(pre + k)})
        loaded = dict(loaded, **current)
    if len(models) == 1:
        models[0].load_state_dict(loaded, strict=strict)
        return
    for i, m in enumerate(models):
        pre = f"chunk{i}."
        m.load_state_dict({k[len(pre):]: v for k, v in loaded.items() if k.startswith(pre)}, strict=strict)
