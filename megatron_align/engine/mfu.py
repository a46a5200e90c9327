"""Model FLOPs utilisation of a training step: the planner's FLOPs model (per-document causal attention,
no embedding FLOPs, see :mod:`megatron_align.plan.flops`) over the peak of the exact GPU model.

Peaks are dense (no sparsity) bf16/fp16 tensor-core TFLOPS per GPU from NVIDIA's datasheets, keyed by the
exact ``torch.cuda.get_device_name()``: an H100 PCIe (756) is not an H100 SXM (989). Unknown devices get no
MFU unless ``MEGATRON_ALIGN_PEAK_TFLOPS`` gives the peak.
"""

from __future__ import annotations

import functools
import os
from typing import Optional, Sequence

from megatron_align.models.arch import ArchSpec, padded_vocab_size
from megatron_align.plan.flops import step_model_flops

PEAK_ENV = "MEGATRON_ALIGN_PEAK_TFLOPS"

# torch.cuda.get_device_name() -> dense bf16 TFLOPS per GPU
PEAK_BF16_TFLOPS = {
    "NVIDIA H100 80GB HBM3": 989.4,  # H100 SXM5
    "NVIDIA H100 PCIe": 756.5,
    "NVIDIA H100 NVL": 835.5,
    "NVIDIA H200": 989.4,  # H200 SXM (141 GB)
    "NVIDIA H200 NVL": 835.5,
    "NVIDIA GH200 480GB": 989.4,
    "NVIDIA H800": 989.4,
    "NVIDIA H800 PCIe": 756.5,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
    "NVIDIA A800-SXM4-80GB": 312.0,
    "NVIDIA A800 80GB PCIe": 312.0,
}


def peak_flops_per_gpu(device_name: Optional[str], env: Optional[str] = None) -> Optional[float]:
    """Peak FLOP/s of one GPU: ``env`` (TFLOPS) wins, else the exact device name's entry, else None."""
    if env:
        return float(env) * 1e12
    tflops = PEAK_BF16_TFLOPS.get((device_name or "").strip())
    return None if tflops is None else tflops * 1e12


@functools.lru_cache(maxsize=None)
def _this_device_peak() -> Optional[float]:
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return peak_flops_per_gpu(name, os.environ.get(PEAK_ENV))


def step_mfu(arch: ArchSpec, doc_lengths: Sequence[int], seconds: float, world_size: int, *,
             seq_length: Optional[int] = None, padded_vocab: Optional[int] = None,
             peak: Optional[float] = None) -> Optional[float]:
    """MFU of one step over the global batch's documents (their token counts, cut at ``seq_length``),
    or None when the peak of this device is unknown."""
    peak = _this_device_peak() if peak is None else peak
    if not peak or seconds <= 0:
        return None
    if seq_length:
        doc_lengths = [min(int(n), seq_length) for n in doc_lengths]
    vocab = padded_vocab or padded_vocab_size(arch.vocab_size, 128, 1)
    return step_model_flops(arch, vocab, doc_lengths) / seconds / (peak * world_size)
