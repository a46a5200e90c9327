"""The device the CUDA kernels run on: a real GPU, or the host emulation of tools/cudaemu.

``kdev`` is parametrised: "cuda" (marked gpu: skipped without a device or without CUDA kernels in
megatron_align._C) and "emulated" (CPU tensors through torch.ops.megatron_align_emu, the .cu kernels
compiled as host code; runs when CUDAEMU_LIB names the built library, which
tests/ops/test_cuda_emulation.py does in a subprocess, under AddressSanitizer + UBSan too).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from megatron_align.ops import _backend, use_backend

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "ops"))  # loss_refs


@dataclass
class KernelDevice:
    name: str  # "cuda" or "emulated"
    device: str  # where the tensors live
    kernels: Callable[[], contextlib.AbstractContextManager]  # context in which ops run the device kernels

    def to(self, t):
        return t.to(self.device) if torch.is_tensor(t) else t


def _emulated() -> KernelDevice:
    lib = os.environ.get("CUDAEMU_LIB")
    if not lib:
        pytest.skip("emulated CUDA kernels run from tests/ops/test_cuda_emulation.py (CUDAEMU_LIB unset)")
    if not hasattr(torch.ops, "megatron_align_emu") or not hasattr(torch.ops.megatron_align_emu, "ce_row_stats"):
        torch.ops.load_library(lib)
    return KernelDevice("emulated", "cpu", lambda: _backend.device_kernels_on_cpu(torch.ops.megatron_align_emu))


@pytest.fixture(params=[pytest.param("cuda", marks=pytest.mark.gpu), "emulated"])
def kdev(request):
    if request.param == "emulated":
        yield _emulated()
        return
    if not _backend._has_cuda_kernels():
        pytest.skip("megatron_align._C was built without CUDA kernels")
    yield KernelDevice("cuda", "cuda", lambda: use_backend("cuda"))


@pytest.fixture
def twin():
    """Context in which CPU tensors run the CPU twin (the extension's CPU kernels when built)."""
    return lambda: use_backend(None)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """tests/conftest.py skips everything under tests/gpu/ (the directory name is a keyword) on a
    machine without CUDA; the emulated parametrisation needs no GPU, so it keeps running."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("kdev") == "emulated":
            item.own_markers[:] = [m for m in item.own_markers
                                   if not (m.name == "skip" and "CUDA device" in str(m.kwargs.get("reason", "")))]
