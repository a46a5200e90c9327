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



# ---------------------------------------------------------------------------------------------------
# Inference on CPU: megatron-core's dynamic inference engine (paged KV cache) over gloo.
# Each shim names the megatron-core versions it was checked against; install_inference() applies them.
# ---------------------------------------------------------------------------------------------------

_INFERENCE_INSTALLED = False


class CpuTimingEvent:
    """``torch.cuda.Event`` stand-in that times with ``perf_counter`` (megatron-core 0.16.1:
    ``TextGenerationController`` and ``DynamicInferenceEngine`` time their steps with CUDA events,
    which are dummies without CUDA)."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False) -> None:
        self.t: float = 0.0

    def record(self, stream: Any = None) -> None:
        import time

        self.t = time.perf_counter()

    def elapsed_time(self, end: "CpuTimingEvent") -> float:
        return (end.t - self.t) * 1000.0  # milliseconds, as CUDA events report

    def synchronize(self) -> None:
        return None

    def query(self) -> bool:
        return True

    def wait(self, stream: Any = None) -> None:
        return None


def _inference_events_0_16() -> None:
    """megatron-core 0.16.1: CPU timing events in place of ``torch.cuda.Event``."""
    torch.cuda.Event = CpuTimingEvent  # type: ignore[assignment,misc]


class _DropPinMemoryMode(TorchFunctionMode):
    """Drops ``pin_memory=True`` from torch calls: pinning needs a CUDA runtime."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if kwargs.get("pin_memory"):
            kwargs = dict(kwargs, pin_memory=False)
        return func(*args, **kwargs)


_PIN_MEMORY_DROPPED = False


def _drop_pin_memory() -> None:
    global _PIN_MEMORY_DROPPED
    if not _PIN_MEMORY_DROPPED:
        _DropPinMemoryMode().__enter__()  # stays active for the life of the process, like _CudaToCpuMode
        _PIN_MEMORY_DROPPED = True


def _inference_pin_memory_0_16() -> None:
    """megatron-core 0.16.1: ``TextGenerationController._init_dynamic_sampling_tensors`` allocates
    ``torch.empty_like(..., pin_memory=True)``."""
    _drop_pin_memory()


def install_refit() -> None:
    """Make megatron-core's weight refit (``resharding.swap_model_weights`` over gloo) run on the CPU
    (no-op with CUDA): from 0.17 (checked on 0.19.2) ``GlooCopyService`` stages every transfer in
    ``torch.empty(..., pin_memory=True)`` buffers; pinning needs a CUDA runtime, so it is dropped."""
    if torch.cuda.is_available():
        return
    install()
    _drop_pin_memory()


def _inference_nvtx_0_16() -> None:
    """megatron-core 0.16.1: ``dynamic_engine`` imports ``range_push`` / ``range_pop`` from
    ``torch.cuda.nvtx`` at module load; NVTX needs CUDA."""
    from megatron.core.inference.engines import dynamic_engine

    dynamic_engine.range_push = _noop()
    dynamic_engine.range_pop = _noop()


def _inference_memory_stats_0_16() -> None:
    """megatron-core 0.16.1: ``torch.cuda.memory_stats()`` is ``{}`` without CUDA, but the engine
    reads counters from it (CUDA-graph creation, suspend/resume)."""
    from collections import defaultdict

    torch.cuda.memory_stats = lambda *a, **k: defaultdict(int)  # type: ignore[assignment]


def _inference_pipeline_comm_0_16() -> None:
    """megatron-core 0.16.1 (to 0.19.2): ``communication_utils._is_cuda`` asserts ``tensor.is_cuda``
    before the pipeline-stage send/recv/broadcast of generation; accept CPU tensors."""
    from megatron.core.inference import communication_utils

    def _is_cpu_or_cuda(tensor):
        assert tensor is not None

    communication_utils._is_cuda = _is_cpu_or_cuda


def paged_attention_cpu(self, q, k, v, max_seqlen_q, max_seqlen_k, cu_seqlens_q, cu_seqlens_k, seqlens_k,
                        block_table, is_decode_only, softmax_offset=None):
    """Torch replacement for ``Attention.flash_decode_and_prefill`` (flash-attn kernels on a paged
    KV cache). ``q`` [T, 1, heads, d] (T query tokens of all requests, concatenated, padded at the end);
    ``k``/``v`` [blocks, block_size, groups, d]; ``block_table`` [requests, max_blocks]; ``seqlens_k``
    keys per request (cache + new). Each request's queries are the last ``len_q`` of its ``len_k``
    positions: causal attention aligned bottom-right. Padding rows of ``q`` give zeros.
    ``softmax_offset`` (attention sinks; megatron-core >= 0.17 passes it, ``None`` without sinks) is
    not implemented here."""
    if softmax_offset is not None:
        raise NotImplementedError("the torch paged-attention fallback has no attention sinks (softmax_offset)")
    from megatron_align.models.attention import ATTENTION_KERNELS

    heads, d = q.shape[-2], q.shape[-1]
    qf = q.reshape(-1, heads, d)
    out = torch.zeros_like(qf)
    scale = getattr(self, "softmax_scale", None) or d ** -0.5
    block = k.shape[1]
    cu_q = cu_seqlens_q.tolist()
    lens_k = seqlens_k.tolist()
    for r, len_k in enumerate(lens_k):
        q0, q1 = cu_q[r], cu_q[r + 1]
        if q1 == q0 or len_k == 0:
            continue
        blocks = block_table[r, : (len_k + block - 1) // block].long()
        kr = k[blocks].reshape(-1, k.shape[-2], d)[:len_k]
        vr = v[blocks].reshape(-1, v.shape[-2], d)[:len_k]
        qr = qf[q0:q1]
        o = ATTENTION_KERNELS["sdpa"](qr.transpose(0, 1)[None], kr.transpose(0, 1)[None], vr.transpose(0, 1)[None],
                                      None, 0.0, scale)
        out[q0:q1] = o[0].transpose(0, 1)
    return out.unsqueeze(1)


def _inference_paged_attention_0_16() -> None:
    """megatron-core 0.16.1 (still in 0.19.2): the dynamic engine asserts flash-attn >= 2.7.3 in
    ``Attention.forward`` and runs attention on the paged cache through flash-attn; on CPU the
    version check passes and :func:`paged_attention_cpu` computes the same attention in torch."""
    from megatron.core.transformer import attention

    real_check = attention.is_fa_min_version

    def is_fa_min_version(version, *args, **kwargs):
        return True if version == "2.7.3" else real_check(version, *args, **kwargs)

    attention.is_fa_min_version = is_fa_min_version
    attention.Attention.flash_decode_and_prefill = paged_attention_cpu


def install_paged_attention_fallback() -> None:
    """On a GPU without flash-attn (e.g. a bare CUDA torch install): the same torch paged attention.
    Slower than flash-attn's kernels, same math; megatron-core 0.16.1."""
    _inference_paged_attention_0_16()


def _inference_kv_append_0_17() -> None:
    """megatron-core 0.17+ (checked on 0.19.2): ``DynamicInferenceContext.append_key_value_cache`` writes
    the KV cache with a Triton kernel whenever triton imports (it does with a CUDA build of torch on a
    machine without a GPU) and that kernel asserts CUDA tensors; its own torch indexing path (taken when
    triton is missing) does the same write on the CPU."""
    from megatron.core.inference.contexts import dynamic_context

    dynamic_context.triton_append_key_value_cache = None


# (PEP 440 range of megatron-core versions, shim); install_inference() applies those in range.
INFERENCE_SHIMS = (
    (">=0.16", _inference_events_0_16),
    (">=0.16", _inference_pin_memory_0_16),
    (">=0.16", _inference_nvtx_0_16),
    (">=0.16", _inference_memory_stats_0_16),
    (">=0.16", _inference_pipeline_comm_0_16),
    (">=0.16", _inference_paged_attention_0_16),
    (">=0.17", _inference_kv_append_0_17),
)


def install_inference() -> None:
    """Make megatron-core's dynamic inference engine run on the CPU (no-op with CUDA). Also installs
    the training shims (:func:`install`). Sequence parallelism must be off during generation (the
    engine wrapper in megatron_align.rollout turns it off and back on)."""
    global _INFERENCE_INSTALLED
    if _INFERENCE_INSTALLED or torch.cuda.is_available():
        return
    install()
    from megatron_align.engine.megatron_fixes import in_range

    for versions, shim in INFERENCE_SHIMS:
        if in_range(versions):
            shim()
    _INFERENCE_INSTALLED = True
