"""Helpers of the prompt-selection tests (tests/prompts)."""

import json

from megatron_align.prompts.config import SelectConfig


def make_config(embeddings=None, **sections) -> SelectConfig:
    """SelectConfig with progress off, the given .npy, and per-section overrides {"dedup": {...}, ...}."""
    from megatron_align.config.base import from_dict

    data = {"progress": False, **{k: v for k, v in sections.items() if not isinstance(v, dict)}}
    for name, values in sections.items():
        if isinstance(values, dict):
            data[name] = dict(values)
    if embeddings is not None:
        data.setdefault("embedding", {})["embeddings"] = embeddings
    return from_dict(SelectConfig, data)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
