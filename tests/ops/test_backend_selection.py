"""use_backend / MEGATRON_ALIGN_OPS_BACKEND force a backend or refuse; the backend in use is logged once."""

import logging

import pytest
import torch

from megatron_align import ops
from megatron_align.ops import _backend


@pytest.fixture(autouse=True)
def _fresh_log_state(monkeypatch):
    monkeypatch.setitem(_backend._state, "logged", set())


def test_forcing_cuda_on_cpu_tensors_is_refused():
    x, y = torch.randn(3, 5), torch.tensor([0, 1, 2])
    with ops.use_backend("cuda"):
        with pytest.raises(RuntimeError, match="backend 'cuda' is forced but cannot run: the tensors are on cpu"):
            ops.vocab_parallel_cross_entropy(x, y)


def test_forcing_cpp_without_extension_is_refused(monkeypatch):
    monkeypatch.setitem(_backend._state, "loaded", False)
    with ops.use_backend("cpp"):
        with pytest.raises(RuntimeError, match="backend 'cpp' is forced but cannot run: megatron_align._C is not built"):
            ops.token_logprobs(torch.randn(2, 4), torch.tensor([1, 3]))


def test_env_variable_forces_too(monkeypatch):
    monkeypatch.setenv("MEGATRON_ALIGN_OPS_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="forced but cannot run"):
        ops.active_backend("cpu")
    monkeypatch.setenv("MEGATRON_ALIGN_OPS_BACKEND", "torch")
    assert ops.active_backend("cpu") == "torch"


def test_cuda_tensors_falling_back_are_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(_backend, "_has_cuda_kernels", lambda: False)
    with caplog.at_level(logging.INFO, logger="megatron_align.ops"):
        for _ in range(3):
            assert _backend.kernels_for(torch.device("cuda")) is _backend._TORCH_KERNELS
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "built without CUDA kernels" in warnings[0].getMessage()


def test_cpu_backend_is_logged_once(caplog):
    with caplog.at_level(logging.INFO, logger="megatron_align.ops"):
        for _ in range(2):
            ops.token_logprobs(torch.randn(2, 4), torch.tensor([1, 3]))
    msgs = [r.getMessage() for r in caplog.records if "tensors use the" in r.getMessage()]
    assert msgs == [f"megatron_align.ops: cpu tensors use the {ops.active_backend('cpu')!r} backend"]


def test_describe_backends_for_info():
    line = ops.describe_backends()  # the "ops backend" row of `megatron-align info`
    assert f"cpu tensors -> {ops.active_backend('cpu')}" in line
    with ops.use_backend("cuda"):
        assert "cpu tensors -> error: megatron_align.ops: backend 'cuda' is forced" in ops.describe_backends()
