"""Run megatron-core on CPU over gloo.

megatron-core assumes CUDA in a handful of places that are orthogonal to the math:
``torch.cuda.current_device()`` used as a device, factory calls with ``device="cuda"``,
``Tensor.cuda()``, stream/synchronize calls, and the CUDA RNG tracker of
``tensor_parallel.random``. :func:`install` redirects exactly those to the CPU so that
GPTModel, the tensor-parallel layers, the pipeline schedules and dist-checkpointing run
unchanged. It is idempotent, is only ever installed when CUDA is absent, and changes nothing
numerically: the same modules compute the same things, just on the CPU.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_INSTALLED = False
_CPU = torch.device("cpu")


def _is_cuda(dev: Any) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    return False


def _map_device(dev: Any) -> Any:
    return _CPU if _is_cuda(dev) else dev


class _CudaToCpuMode(TorchFunctionMode):
    """Maps ``device='cuda...'`` in any torch function call (factories, ``.to``) to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs = dict(kwargs, device=_CPU)
        if func in (torch.Tensor.to,) and args:
            args = tuple(_map_device(a) for a in args)
        return func(*args, **kwargs)


class CpuRNGStatesTracker:
    """Drop-in for megatron's CudaRNGStatesTracker that keeps named CPU generator states.

    ``fork(name)`` swaps the global CPU RNG state for the named one and back, which is what
    the CUDA tracker does with the CUDA generator: tensor-parallel ranks draw different
    dropout masks and initialisations inside a fork and identical ones outside it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.reset()

    def is_initialized(self) -> bool:
        return self._is_initialized

    def reset(self) -> None:
        self._is_initialized = False
        self.states_: dict = {}
        self.seeds_: set = set()

    def get_states(self) -> dict:
        return dict(self.states_)

    def set_states(self, states: dict) -> None:
        self._is_initialized = True
        self.states_ = dict(states)

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        self.seeds_.add(seed)
        gen = torch.Generator()
        gen.manual_seed(seed)
        self.states_[name] = gen.get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng"):
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        orig = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)


def _noop():
    # A distinct function object per patched attribute: torch._dynamo keys its rules by object.
    return lambda *args, **kwargs: None


class _NullStream:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, *args: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def record_event(self, *args: Any) -> None:
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def install() -> None:
    """Redirect megatron-core's CUDA assumptions to the CPU (no-op when CUDA is available)."""
    global _INSTALLED
    if _INSTALLED or torch.cuda.is_available():
        return
    torch.cuda.current_device = lambda: _CPU  # type: ignore[assignment]
    torch.cuda.synchronize = _noop()  # type: ignore[assignment]
    torch.cuda.set_device = _noop()  # type: ignore[assignment]
    torch.cuda.manual_seed = _noop()  # type: ignore[assignment]
    torch.cuda.manual_seed_all = _noop()  # type: ignore[assignment]
    torch.cuda.empty_cache = _noop()  # type: ignore[assignment]
    torch.cuda.current_stream = lambda *a, **k: _NullStream()  # type: ignore[assignment]
    torch.cuda.default_stream = lambda *a, **k: _NullStream()  # type: ignore[assignment]
    torch.cuda.Stream = _NullStream  # type: ignore[assignment,misc]
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()  # type: ignore[assignment]
    torch.cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()  # type: ignore[assignment]
    torch.cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)  # type: ignore[assignment]
    torch.cuda.memory_allocated = lambda *a, **k: 0  # type: ignore[assignment]
    torch.cuda.max_memory_allocated = lambda *a, **k: 0  # type: ignore[assignment]

    orig_cuda = torch.Tensor.cuda

    @functools.wraps(orig_cuda)
    def _tensor_cuda(self, *args: Any, **kwargs: Any):
        return self

    torch.Tensor.cuda = _tensor_cuda  # type: ignore[assignment]

    # megatron's optimizers check parameter types by name ('torch.cuda.FloatTensor'): report CPU
    # tensors under their CUDA names, and map casts to CUDA type names back to the CPU ones.
    orig_type = torch.Tensor.type

    @functools.wraps(orig_type)
    def _tensor_type(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs:
            name = orig_type(self)
            return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
        if isinstance(dtype, str) and dtype.startswith("torch.cuda."):
            dtype = dtype.replace("torch.cuda.", "torch.", 1)
        return orig_type(self, dtype, non_blocking, **kwargs)

    torch.Tensor.type = _tensor_type  # type: ignore[assignment]
    torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[assignment]

    from megatron.core.tensor_parallel import random as mrandom

    # Activation checkpointing saves/restores "the CUDA RNG state": on CPU that is the CPU one.
    mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    mrandom._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    mrandom.initialize_rng_tracker = _keep_cpu_tracker(mrandom.initialize_rng_tracker)

    mode = _CudaToCpuMode()
    mode.__enter__()  # stays active for the life of the process
    _INSTALLED = True


def _keep_cpu_tracker(orig):
    @functools.wraps(orig)
    def initialize_rng_tracker(*args: Any, force_reset: bool = False, **kwargs: Any) -> None:
        from megatron.core.tensor_parallel import random as mrandom

        if force_reset or mrandom._CUDA_RNG_STATE_TRACKER is None:
            mrandom._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
        mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True

    return initialize_rng_tracker

