"""megatron_align checkpoint -> Hugging Face model directory, streamed layer by layer.

Each rule's megatron key is read one layer block at a time from the dist-checkpoint (DCP partial
reads), turned back into HF tensors by the rule's inverse transform, and appended to a safetensors
shard that is flushed at ``max_shard_size``. Peak memory: one layer plus one shard.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import torch

from megatron_align.convert import mapping
from megatron_align.convert.dcp_io import DistCheckpointReader
from megatron_align.convert.errors import ConvertError
from megatron_align.convert.hf_config import hf_config_from_arch
from megatron_align.convert.hf_io import (HF_CODE_PATTERNS, TOKENIZER_PATTERNS, ShardedSafetensorsWriter,
                                          copy_matching, torch_dtype_name)
from megatron_align.convert.hf_to_mcore import HF_CODE_DIR, _check_shape, _names_preview
from megatron_align.models.arch import ArchSpec

# HF checkpoints list the embedding first, then the layers, then the final norm and the heads.
_TOP_FIRST = ("embedding.word_embeddings.weight",)


def check_checkpoint_keys(reader: DistCheckpointReader, arch: ArchSpec) -> None:
    expected = {r.mcore for r in mapping.rules_for(arch)}
    present = set(reader.keys())
    missing = sorted(expected - present)
    extra = sorted(present - expected)
    if missing or extra:
        parts = ([f"missing tensors: {_names_preview(missing)}"] if missing else []) + \
                ([f"unexpected tensors: {_names_preview(extra)}"] if extra else [])
        raise ConvertError(f"{reader.directory} does not match its arch.json ({arch.family}, tie_embeddings="
                           f"{arch.tie_embeddings}, reward_head={mapping.reward_head(arch) is not None}): "
                           + "; ".join(parts))
    for rule in mapping.rules_for(arch):
        if rule.per_layer and reader.shape(rule.mcore)[0] != arch.num_layers:
            raise ConvertError(f"{reader.directory}: {rule.mcore} stacks {reader.shape(rule.mcore)[0]} layers, "
                               f"arch.json says num_layers={arch.num_layers}")


def mcore_to_hf(src: str, dst: str, *, family: Optional[str] = None, dtype: Optional[torch.dtype] = None,
                max_shard_size: int = 5 * 10**9) -> str:
    from megatron_align.checkpoint import layout

    try:
        ckpt = layout.resolve(src)
        arch = layout.read_arch(ckpt)
    except layout.CheckpointError as e:
        raise ConvertError(str(e)) from None
    if arch.family not in mapping.MAPPINGS:
        raise ConvertError(f"{ckpt}/arch.json: unknown architecture family {arch.family!r}; "
                           f"supported: {', '.join(mapping.MAPPINGS)}")
    if family is not None and family != arch.family:
        raise ConvertError(f"{ckpt}: this checkpoint is a {arch.family} model (arch.json), not {family}")
    reader = DistCheckpointReader(os.path.join(ckpt, layout.MODEL_DIR))
    check_checkpoint_keys(reader, arch)
    d = mapping.dims(arch, reader.shape("embedding.word_embeddings.weight")[0])
    rules = mapping.rules_for(arch)
    order = ([r for r in rules if r.mcore in _TOP_FIRST] + [r for r in rules if r.per_layer]
             + [r for r in rules if not r.per_layer and r.mcore not in _TOP_FIRST])
    writer = ShardedSafetensorsWriter(dst, max_shard_size)
    out_dtype = dtype

    def emit(rule: mapping.Rule, layer: int, t: torch.Tensor) -> None:
        nonlocal out_dtype
        for name, hf_t, sym in zip(rule.hf_names(layer), rule.transform.to_hf(t, d), rule.shapes):
            _check_shape(name, hf_t, sym, arch)
            hf_t = hf_t if dtype is None else hf_t.to(dtype)
            out_dtype = out_dtype or hf_t.dtype
            writer.add(name, hf_t)

    for rule in order:
        if rule.per_layer:
            for i in range(arch.num_layers):
                emit(rule, i, reader.read_layer(rule.mcore, i))
        else:
            emit(rule, -1, reader.read(rule.mcore))
    writer.close()
    write_hf_files(dst, arch, out_dtype, os.path.join(ckpt, layout.TOKENIZER_DIR), os.path.join(ckpt, HF_CODE_DIR))
    return dst


def write_hf_files(dst: str, arch: ArchSpec, dtype: Optional[torch.dtype], tokenizer_src: str,
                   hf_code_src: str) -> None:
    """Everything of an HF model directory but the weights: config.json, tokenizer and remote-code files."""
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(hf_config_from_arch(arch, torch_dtype_name(dtype)), f, indent=2)
    copy_matching(tokenizer_src, dst, TOKENIZER_PATTERNS)
    copy_matching(hf_code_src, dst, HF_CODE_PATTERNS)
