"""Hugging Face model directory -> megatron_align checkpoint root (``release/``), streamed.

The megatron model is never built: the family's mapping table is turned into one dist-checkpoint
chunk per (rule, layer), planned from tensor shapes, and each chunk is read, transformed and
written when the DCP file writer reaches it.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Protocol

import torch

from megatron_align.convert import mapping
from megatron_align.convert.dcp_io import Chunk, extra_state_key, serialized_object, write_dist_checkpoint
from megatron_align.convert.errors import ConvertError
from megatron_align.convert.hf_config import arch_from_hf
from megatron_align.convert.hf_io import HF_CODE_PATTERNS, TOKENIZER_PATTERNS, HFReader, copy_matching, read_config
from megatron_align.models.arch import ArchSpec, padded_vocab_size

HF_CODE_DIR = "hf_code"


class TensorsByHFName(Protocol):
    """What the writers read from: :class:`HFReader`, or any view (e.g. a merge) with the same two methods."""

    def meta(self, name: str) -> torch.Tensor: ...  # shape + dtype, no data

    def get(self, name: str) -> torch.Tensor: ...


def _names_preview(names: List[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def check_tensor_names(present: List[str], arch: ArchSpec, where: str) -> None:
    """Missing or unexpected tensors -> ConvertError naming them (and the family they look like)."""
    expected = mapping.expected_hf_names(arch)
    have = set(present)
    missing = [n for n in expected if n not in have]
    wanted = set(expected)
    extra = sorted(n for n in present if n not in wanted and not mapping.is_ignored(n, arch))
    if not missing and not extra:
        return
    parts = []
    if missing:
        parts.append(f"missing tensors: {_names_preview(missing)}")
    if extra:
        parts.append(f"unexpected tensors: {_names_preview(extra)}")
    guess = mapping.guess_family(present)
    hint = f"; the tensor names look like a {guess} checkpoint" if guess and guess != arch.family else ""
    raise ConvertError(f"{where} (config: {arch.family}, {arch.num_layers} layers): " + "; ".join(parts) + hint)


def _check_shape(name: str, t: torch.Tensor, symbols, arch: ArchSpec) -> None:
    want = mapping.hf_shape(symbols, arch)
    if tuple(t.shape) == want:
        return
    if "V" in symbols:
        raise ConvertError(f"vocabulary mismatch: {name} has shape {tuple(t.shape)} but config vocab_size="
                           f"{arch.vocab_size} (expected {want})")
    raise ConvertError(f"shape mismatch: {name} has shape {tuple(t.shape)}, expected {want} from the config")


def plan_chunks(reader: TensorsByHFName, arch: ArchSpec, padded_vocab: int, dtype: Optional[torch.dtype]) -> List[Chunk]:
    d = mapping.dims(arch, padded_vocab)
    chunks: List[Chunk] = []
    for rule in mapping.rules_for(arch):
        for layer in (range(arch.num_layers) if rule.per_layer else [None]):
            names = rule.hf_names(-1 if layer is None else layer)
            metas = [reader.meta(n) for n in names]
            for n, m, sym in zip(names, metas, rule.shapes):
                _check_shape(n, m, sym, arch)
            out_dtype = dtype or metas[0].dtype
            shape = tuple(rule.transform.to_mcore([m.to(out_dtype) for m in metas], d).shape)
            if layer is None:
                gshape, offsets, sizes = shape, (0,) * len(shape), shape
            else:
                gshape, offsets, sizes = (arch.num_layers,) + shape, (layer,) + (0,) * len(shape), (1,) + shape
            chunks.append(Chunk(rule.mcore, gshape, offsets, sizes, out_dtype,
                                _producer(reader, rule, names, d, out_dtype, layer is not None)))
    return chunks


def _producer(reader: TensorsByHFName, rule: mapping.Rule, names: List[str], d, dtype, stacked: bool) -> Callable:
    def produce() -> torch.Tensor:
        t = rule.transform.to_mcore([reader.get(n).to(dtype) for n in names], d)
        return t.unsqueeze(0) if stacked else t

    return produce


def extra_state_objects(arch: ArchSpec) -> Dict[str, bytes]:
    blob = serialized_object(None)
    return {extra_state_key(f"{mapping.LAYER_PREFIX}{m}._extra_state", i, arch.num_layers): blob
            for m in mapping.EXTRA_STATE_MODULES for i in range(arch.num_layers)}


def hf_to_mcore(src: str, dst: str, *, family: Optional[str] = None, dtype: Optional[torch.dtype] = None,
                make_vocab_size_divisible_by: int = 128) -> str:
    """Convert; returns the written checkpoint directory (``dst/release``)."""
    arch = arch_from_hf(read_config(src), os.path.join(src, "config.json"), family)
    reader = HFReader(src)
    check_tensor_names(reader.names(), arch, src)
    # Stored like a TP=1 megatron save; loading at another TP re-pads (megatron reads the overlap).
    padded = padded_vocab_size(arch.vocab_size, make_vocab_size_divisible_by, 1)
    return write_release(reader, arch, dst, padded_vocab=padded, dtype=dtype, tokenizer_src=src, hf_code_src=src)


def write_release(reader: TensorsByHFName, arch: ArchSpec, dst: str, *, padded_vocab: int,
                  dtype: Optional[torch.dtype], tokenizer_src: str, hf_code_src: str) -> str:
    """Stream the HF-named tensors of ``reader`` into ``dst/release`` (dist-checkpoint + arch.json + tokenizer),
    committed atomically with ``dst/latest``; returns ``dst/release``."""
    from megatron_align.checkpoint import layout

    chunks = plan_chunks(reader, arch, padded_vocab, dtype)
    tmp = layout.begin(dst, layout.RELEASE)
    write_dist_checkpoint(os.path.join(tmp, layout.MODEL_DIR), chunks, extra_state_objects(arch))
    layout.write_arch(tmp, arch)
    copy_matching(tokenizer_src, os.path.join(tmp, layout.TOKENIZER_DIR), TOKENIZER_PATTERNS)
    copy_matching(hf_code_src, os.path.join(tmp, HF_CODE_DIR), HF_CODE_PATTERNS)
    return layout.commit(dst, tmp, layout.RELEASE)
