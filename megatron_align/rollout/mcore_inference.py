"""How megatron-core's dynamic inference engine is built, per megatron-core API generation.

megatron-core 0.16 takes the KV-cache sizes as ``DynamicInferenceContext`` keyword arguments, the
wrapper sizes as an ``InferenceWrapperConfig``, and the process groups and seed per object. From 0.17
(checked on 0.19.2) ``InferenceWrapperConfig`` is gone: one ``InferenceConfig`` (cache, limits, process
groups) goes into the context, the wrapper, controller and engine read it from there, the sampling
seed is the controller's generator (seeded from ``TransformerConfig.inference_sampling_seed``), and a
process-wide ``InferenceMode`` flag, set by the engine, switches ``GPTModel`` to its inference path.

Each builder returns the same :class:`InferenceParts`; :func:`build` picks the one for the installed
version from :data:`API_GENERATIONS` (PEP 440 ranges), so the engine above it has no version branches.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, Optional

from megatron_align.engine.megatron_fixes import in_range, mcore_version


@dataclass
class InferenceSpec:
    """What the rollout engine asks of megatron-core, independent of its API generation."""

    max_seq_length: int
    max_requests: int
    buffer_size_gb: float
    block_size_tokens: int
    padded_vocab_size: int
    tp: int
    pp: int
    seed: int
    pg_collection: Any = None


@dataclass
class InferenceParts:
    context: Any
    wrapper: Any
    controller: Any
    engine: Any
    # entered around every generate: megatron-core >= 0.17 keeps a process-wide "inference is using the
    # model" flag (InferenceMode) that changes GPTModel.forward, so it must be off again for training
    active: Callable[[], ContextManager] = field(default=contextlib.nullcontext)


def _build_0_16(model, tokenizer, spec: InferenceSpec) -> InferenceParts:
    from megatron.core.inference.contexts.dynamic_context import DynamicInferenceContext
    from megatron.core.inference.engines.dynamic_engine import DynamicInferenceEngine
    from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import GPTInferenceWrapper
    from megatron.core.inference.model_inference_wrappers.inference_wrapper_config import InferenceWrapperConfig
    from megatron.core.inference.text_generation_controllers.text_generation_controller import (
        TextGenerationController,
    )

    cfg = model.config
    pg = spec.pg_collection
    wrapper_cfg = InferenceWrapperConfig(
        hidden_size=cfg.hidden_size, params_dtype=cfg.params_dtype, inference_batch_times_seqlen_threshold=-1,
        padded_vocab_size=spec.padded_vocab_size, inference_max_requests=spec.max_requests,
        inference_max_seq_length=spec.max_seq_length)
    context = DynamicInferenceContext(
        params_dtype=cfg.params_dtype, num_layers=cfg.num_layers // spec.pp, kv_channels=cfg.kv_channels,
        num_attention_heads=cfg.num_query_groups,  # the KV cache holds query groups
        max_sequence_length=spec.max_seq_length, buffer_size_gb=spec.buffer_size_gb,
        max_requests=spec.max_requests, block_size_tokens=spec.block_size_tokens,
        tensor_model_parallel_size=spec.tp, pipeline_model_parallel_size=spec.pp, pg_collection=pg,
        materialize_only_last_token_logits=True, use_cuda_graphs_for_non_decode_steps=False,
        unified_memory_level=0)
    wrapper = GPTInferenceWrapper(model, wrapper_cfg, context, pg_collection=pg)
    controller = TextGenerationController(wrapper, tokenizer, pp_group=pg.pp if pg is not None else None)
    engine = DynamicInferenceEngine(controller, context, random_seed=spec.seed, pg_collection=pg)
    return InferenceParts(context, wrapper, controller, engine)


def _build_0_17(model, tokenizer, spec: InferenceSpec) -> InferenceParts:
    from megatron.core.inference.config import InferenceConfig
    from megatron.core.inference.contexts.dynamic_context import DynamicInferenceContext
    from megatron.core.inference.engines.dynamic_engine import DynamicInferenceEngine
    from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import GPTInferenceWrapper
    from megatron.core.inference.text_generation_controllers.text_generation_controller import (
        TextGenerationController,
    )

    config = InferenceConfig(
        block_size_tokens=spec.block_size_tokens, buffer_size_gb=spec.buffer_size_gb,
        max_requests=spec.max_requests, max_sequence_length=spec.max_seq_length, pg_collection=spec.pg_collection,
        materialize_only_last_token_logits=True, use_cuda_graphs_for_non_decode_steps=False,
        unified_memory_level=0,
        # every TP rank (and DP replica) of one engine must draw the same samples, as on 0.16
        offset_sampling_seed_by_dp_rank=False)
    context = DynamicInferenceContext(model.config, config)
    wrapper = GPTInferenceWrapper(model, context)
    controller = TextGenerationController(wrapper, tokenizer)
    controller.sampling_rng.manual_seed(spec.seed)
    from megatron.core.inference.utils import InferenceMode

    engine = DynamicInferenceEngine(controller, context)
    InferenceMode.unset_active()  # the engine sets it at construction; generate sets it for its duration
    return InferenceParts(context, wrapper, controller, engine, active=InferenceMode.active)


@dataclass(frozen=True)
class ApiGeneration:
    """One megatron-core inference API generation: how to build the engine, and the extra fields its
    ``SamplingParams`` needs to behave as :class:`~megatron_align.rollout.engine.GenerationEngine` says."""

    build: Callable[[Any, Any, InferenceSpec], InferenceParts]
    sampling_kwargs: Dict[str, Any] = field(default_factory=dict)
    block_allocator: str = "block_allocator"  # the context's KV block allocator attribute


# PEP 440 range of megatron-core versions -> API generation; checked on 0.16.1 and 0.19.2.
API_GENERATIONS: Dict[str, ApiGeneration] = {
    ">=0.16,<0.17": ApiGeneration(_build_0_16),
    # >= 0.17 drops a matched stop word from the completion unless detokenize_stop_sequence; the
    # completion keeps its stop token (as on 0.16 and as truncate_at_stop does)
    ">=0.17,<0.20": ApiGeneration(_build_0_17, {"detokenize_stop_sequence": True}, "kv_block_allocator"),
}


def api_for(version: Optional[str] = None) -> ApiGeneration:
    """The API generation of ``version`` (default: the installed megatron-core)."""
    version = version or mcore_version()
    if version is None:
        raise ImportError("the rollout engine needs megatron-core (not installed)")
    for versions, api in API_GENERATIONS.items():
        if in_range(versions, version):
            return api
    raise RuntimeError(f"the rollout engine does not support megatron-core {version}; "
                       f"supported: {', '.join(API_GENERATIONS)}")


def build(model, tokenizer, spec: InferenceSpec) -> InferenceParts:
    return api_for().build(model, tokenizer, spec)
