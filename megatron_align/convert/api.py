"""``convert(src, dst)``: direction from what ``src`` is (HF directory or megatron_align checkpoint)."""

from __future__ import annotations

import os
from typing import Optional

import torch

from megatron_align.convert.errors import ConvertError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def detect_direction(src: str) -> str:
    """'mcore' for an HF model directory (convert *to* megatron), 'hf' for a megatron_align checkpoint."""
    from megatron_align.checkpoint import layout
    from megatron_align.convert.hf_io import is_hf_dir

    if not os.path.isdir(src):
        raise ConvertError(f"{src} does not exist or is not a directory")
    if layout.is_complete(src) or os.path.isfile(os.path.join(src, layout.LATEST)):
        return "hf"
    if is_hf_dir(src):
        return "mcore"
    raise ConvertError(f"{src} is neither a Hugging Face model directory (config.json + *.safetensors) nor a "
                       f"megatron_align checkpoint (a root with '{layout.LATEST}' or a directory with "
                       f"{layout.COMPLETE} + {layout.ARCH_FILE})")


def convert(src: str, dst: str, *, to: Optional[str] = None, family: Optional[str] = None,
            dtype: Optional[str] = None, max_shard_size: int = 5 * 10**9,
            make_vocab_size_divisible_by: int = 128) -> str:
    direction = to or detect_direction(src)
    torch_dtype = DTYPES[dtype] if dtype else None
    if direction == "mcore":
        from megatron_align.convert.hf_to_mcore import hf_to_mcore

        return hf_to_mcore(src, dst, family=family, dtype=torch_dtype,
                           make_vocab_size_divisible_by=make_vocab_size_divisible_by)
    if direction == "hf":
        from megatron_align.convert.mcore_to_hf import mcore_to_hf

        return mcore_to_hf(src, dst, family=family, dtype=torch_dtype, max_shard_size=max_shard_size)
    raise ConvertError(f"--to must be 'hf' or 'mcore', got {direction!r}")
