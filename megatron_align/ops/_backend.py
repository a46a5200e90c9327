"""Which implementation of the primitive ops runs: the compiled extension or the PyTorch twins.

``megatron_align._C`` is imported lazily, on the first op call. Backends, best first:
``"cuda"`` (extension with CUDA kernels, for CUDA tensors), ``"cpp"`` (extension CPU kernels),
``"torch"`` (``_reference``, always there). ``use_backend("torch")`` or the environment variable
``MEGATRON_ALIGN_OPS_BACKEND=torch`` force the fallback (tests use it to cover both paths).
"""

from __future__ import annotations

import contextlib
import logging
import os
from types import SimpleNamespace
from typing import Iterator, List, Optional

import torch

from megatron_align.ops import _reference

_OP_NAMES = ("ce_row_stats", "softmax_grad", "softmax_grad_", "packed_seq_reduce", "topk_kl_forward", "topk_kl_backward")
_state = {"loaded": None, "forced": None, "logged": set(), "device_kernels": None}
_log = logging.getLogger("megatron_align.ops")
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


def _automatic(device: torch.device) -> str:
    if device.type == "cuda" and _has_cuda_kernels():
        return "cuda"
    if device.type == "cpu" and extension_loaded():
        return "cpp"
    return "torch"


def active_backend(device: torch.device | str = "cpu") -> str:
    """The backend an op on a tensor of this device uses now: "cuda", "cpp" or "torch".

    A forced backend (``use_backend`` / ``MEGATRON_ALIGN_OPS_BACKEND``) is honoured or refused:
    "cuda" needs CUDA tensors and an extension built with CUDA kernels, "cpp" needs CPU tensors and
    the extension; otherwise RuntimeError names what is missing (no silent fallback)."""
    device = torch.device(device)
    forced = _forced()
    if forced not in (None, "torch", "cuda", "cpp"):
        raise ValueError(f"MEGATRON_ALIGN_OPS_BACKEND / use_backend: unknown backend {forced!r}")
    if forced == "torch":
        return "torch"
    auto = _automatic(device)
    if forced is not None and auto != forced:
        why = {
            "cuda": "the tensors are on cuda but megatron_align._C was built without CUDA kernels"
            if device.type == "cuda" else f"the tensors are on {device.type}, not cuda",
            "cpp": "megatron_align._C is not built (or does not import)"
            if device.type == "cpu" else f"the tensors are on {device.type}; the cpp kernels take CPU tensors",
        }[forced]
        raise RuntimeError(f"megatron_align.ops: backend {forced!r} is forced but cannot run: {why}")
    return auto


def _log_once(device: torch.device, backend: str) -> None:
    key = (device.type, backend)
    if key in _state["logged"]:
        return
    _state["logged"].add(key)
    if device.type == "cuda" and backend == "torch" and _forced() != "torch":
        _log.warning("megatron_align.ops: CUDA tensors run the PyTorch fallback (fp32 upcast, one extra "
                     "[T, V] buffer): megatron_align._C was built without CUDA kernels; rebuild it with nvcc")
    else:
        _log.info("megatron_align.ops: %s tensors use the %r backend", device.type, backend)


def describe_backends() -> str:
    """One line for `info`: which backend CPU and CUDA tensors use in this process."""
    parts = []
    for dev in (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]:
        try:
            parts.append(f"{dev} tensors -> {active_backend(dev)}")
        except RuntimeError as e:
            parts.append(f"{dev} tensors -> error: {e}")
    if torch.cuda.is_available() and not _has_cuda_kernels() and _forced() != "torch":
        parts.append("WARNING: extension has no CUDA kernels, CUDA tensors fall back to PyTorch")
    return "; ".join(parts)


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Force a backend inside the block: "torch" (the fallback), "cpp" or "cuda" (refused with a
    RuntimeError at the first op that cannot honour it), or None (automatic)."""
    if name not in (None, "torch", "cpp", "cuda"):
        raise ValueError(f"use_backend: unknown backend {name!r}; expected 'torch', 'cpp', 'cuda' or None")
    old = _state["forced"]
    _state["forced"] = name
    try:
        yield
    finally:
        _state["forced"] = old


@contextlib.contextmanager
def device_kernels_on_cpu(namespace) -> Iterator[None]:
    """Test hook: inside the block CPU tensors run ``namespace``'s six primitive ops (a torch.ops
    namespace with the extension's schemas), e.g. the CUDA kernels emulated on the host by
    tools/cudaemu. fp64 still takes the torch twins."""
    old = _state["device_kernels"]
    _state["device_kernels"] = SimpleNamespace(**{n: getattr(namespace, n) for n in _OP_NAMES})
    try:
        yield
    finally:
        _state["device_kernels"] = old


def kernels_for(device: torch.device, dtype: torch.dtype = torch.float32) -> SimpleNamespace:
    """Namespace with the six primitive ops for tensors on ``device`` (fp64 always takes the torch
    twins: the kernels take bf16/fp16/fp32)."""
    if _state["device_kernels"] is not None and torch.device(device).type == "cpu" and dtype != torch.float64:
        return _state["device_kernels"]
    backend = active_backend(device)
    _log_once(device, backend)
    if dtype == torch.float64 or backend == "torch":
        return _TORCH_KERNELS
    return SimpleNamespace(**{n: getattr(torch.ops.megatron_align, n) for n in _OP_NAMES})
