"""RMSNorm for our layer specs: works with sequence parallelism on any device.

Megatron's local spec wraps torch's norm, which refuses sequence parallelism. This norm marks
its weight ``sequence_parallel`` so megatron's finalize_model_grads all-reduces its gradient
over the tensor-parallel group (each SP rank saw only its slice of the sequence).
Math matches Hugging Face's LlamaRMSNorm: normalise in fp32, cast back, then scale.
"""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **unused) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", bool(config.sequence_parallel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)
