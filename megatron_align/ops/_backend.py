"""Which implementation of the primitive ops runs: the compiled extension or the PyTorch twins.

``megatron_align._C`` is imported lazily, on the first op call. Backends, best first:
``"cuda"`` (extension with CUDA kernels, for CUDA tensors), ``"cpp"`` (extension CPU kernels),
``"torch"`` (``_reference``, always there). ``use_backend("torch")`` or the environment variable
``MEGATRON_ALIGN_OPS_BACKEND=torch`` force the fallback (tests use it to cover both paths).
"""

from __future__ import annotations

import contextlib
import os
from types import SimpleNamespace
from typing import Iterator, List, Optional

import torch

from megatron_align.ops import _reference

_OP_NAMES = ("ce_row_stats", "softmax_grad", "softmax_grad_", "packed_seq_reduce", "topk_kl_forward", "topk_kl_backward")
_state = {"loaded": None, "forced": None}
_TORCH_KERNELS = SimpleNamespace(**{n: getattr(_reference, n) for n in _OP_NAMES})


def _register_fakes() -> None:
    """Meta/fake kernels so torch.compile and FakeTensor tracing see output shapes."""
    lib = "megatron_align::"

    @torch.library.register_fake(lib + "ce_row_stats")
    def _(logits, labels, weights, vocab_start, vocab_size, ignore_index):
        return logits.new_empty((4, logits.shape[0]), dtype=torch.float32)

    @torch.library.register_fake(lib + "softmax_grad")
    def _(logits, labels, row_max, row_logsum, scale, target_coef, uniform_coef, vocab_start):
        return torch.empty_like(logits, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + "softmax_grad_")
    def _(logits, labels, row_max, row_logsum, scale, target_coef, uniform_coef, vocab_start):
        return None

    @torch.library.register_fake(lib + "packed_seq_reduce")
    def _(stats, weights, cu_seqlens):
        return stats.new_empty((cu_seqlens.shape[0] - 1,))

    @torch.library.register_fake(lib + "topk_kl_forward")
    def _(policy_topk, ref_topk):
        return policy_topk.new_empty((policy_topk.shape[0],))

    @torch.library.register_fake(lib + "topk_kl_backward")
    def _(grad_kl, policy_topk, ref_topk, kl):
        return torch.empty_like(policy_topk, memory_format=torch.contiguous_format)


def extension_loaded() -> bool:
    """Import megatron_align._C once; True when its ops are registered."""
    if _state["loaded"] is None:
        try:
            import megatron_align._C  # noqa: F401  (registers torch.ops.megatron_align.*)

            _register_fakes()
            _state["loaded"] = True
        except ImportError:
            _state["loaded"] = False
    return bool(_state["loaded"])


def _has_cuda_kernels() -> bool:
    return extension_loaded() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "megatron_align::ce_row_stats", "CUDA"
    )


def available_backends() -> List[str]:
    """Backends usable in this process, best first: a subset of ["cuda", "cpp", "torch"]."""
    out = []
    if _has_cuda_kernels() and torch.cuda.is_available():
        out.append("cuda")
    if extension_loaded():
        out.append("cpp")
    out.append("torch")
    return out


def _forced() -> Optional[str]:
    return _state["forced"] or os.environ.get("MEGATRON_ALIGN_OPS_BACKEND") or None


def active_backend(device: torch.device | str = "cpu") -> str:
    """The backend an op on a tensor of this device uses now: "cuda", "cpp" or "torch"."""
    device = torch.device(device)
    forced = _forced()
    if forced == "torch":
        return "torch"
    if forced not in (None, "cuda", "cpp"):
        raise ValueError(f"MEGATRON_ALIGN_OPS_BACKEND / use_backend: unknown backend {forced!r}")
    if device.type == "cuda" and _has_cuda_kernels():
        return "cuda"
    if device.type == "cpu" and extension_loaded():
        return "cpp"
    return "torch"


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Force "torch" (the fallback) or None (automatic) inside the block."""
    if name not in (None, "torch", "cpp", "cuda"):
        raise ValueError(f"use_backend: unknown backend {name!r}; expected 'torch', 'cpp', 'cuda' or None")
    old = _state["forced"]
    _state["forced"] = name
    try:
        yield
    finally:
        _state["forced"] = old


def kernels_for(device: torch.device, dtype: torch.dtype = torch.float32) -> SimpleNamespace:
    """Namespace with the six primitive ops for tensors on ``device`` (fp64 always takes the torch
    twins: the kernels take bf16/fp16/fp32)."""
    if dtype == torch.float64 or active_backend(device) == "torch":
        return _TORCH_KERNELS
    return SimpleNamespace(**{n: getattr(torch.ops.megatron_align, n) for n in _OP_NAMES})
