"""Rollouts from megatron-core's dynamic inference engine, on the policy's own weights and layout.

The engine wraps this rank's model chunk (any TP / PP layout without interleaving; no copy of the
weights), with a paged KV cache sized by ``max_requests`` x ``max_seq_length``. ``generate`` is a
collective over the model's TP and PP groups: every rank passes the same prompts and gets the same
completions (TP ranks draw identical samples from identically seeded generators; the last pipeline
stage's tokens are broadcast by megatron).

Around each ``generate`` the model is put in eval mode with sequence parallelism off (megatron-core
0.16.1 cannot generate with SP) and restored afterwards, so training can continue directly.

Sampling follows megatron-core (0.16.1 and 0.19.2 alike): ``top_k`` and ``top_p`` cannot be combined
(checked here, before any work); returned log-probs are of the raw distribution (temperature 1, unfiltered).

Runs on megatron-core 0.16.x and 0.17-0.19.x: what differs between their inference APIs is in
:mod:`megatron_align.rollout.mcore_inference`, one builder per API generation.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Sequence

import torch

from megatron_align.rollout.engine import Generation, SamplingParams, truncate_at_stop
from megatron_align.rollout.tokenizer import IdsOnlyTokenizer


def _has_flash_attn() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        try:
            import flash_attn_3  # noqa: F401
        except ImportError:
            return False
    return True


def unwrap_model(model) -> torch.nn.Module:
    """This rank's single model chunk, without DDP/Float16 wrappers."""
    if isinstance(model, (list, tuple)):
        if len(model) != 1:
            raise ValueError(f"generation needs one model chunk per rank (no interleaved pipeline); got {len(model)}")
        model = model[0]
    while hasattr(model, "module") and not hasattr(model, "decoder"):
        model = model.module
    return model


@contextlib.contextmanager
def generation_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and sequence parallelism off for the duration; the previous state after."""
    from megatron.core.transformer.utils import set_model_to_sequence_parallel

    was_training = model.training
    sp = bool(model.config.sequence_parallel)
    if sp:
        set_model_to_sequence_parallel(model, set_to=False)
    model.eval()
    try:
        yield
    finally:
        if sp:
            set_model_to_sequence_parallel(model, set_to=True)
        model.train(was_training)


class MegatronGenerationEngine:
    """:class:`~megatron_align.rollout.engine.GenerationEngine` over megatron-core's
    ``DynamicInferenceEngine``.

    Args:
        model: this rank's model chunk (or a one-element list of chunks, DDP-wrapped or not).
        max_seq_length: the longest prompt + completion the KV cache holds.
        max_requests: sequences decoded concurrently (more prompts queue and run as slots free up).
        buffer_size_gb: KV-cache memory (paged in blocks of ``block_size_tokens``).
        tokenizer: anything with ``tokenize`` / ``detokenize`` / ``eod`` (see rollout.tokenizer); optional.
        pg_collection: the model's process groups when it was built with its own (a refit replica).
    """

    def __init__(self, model, *, max_seq_length: int, max_requests: int = 16, buffer_size_gb: float = 0.05,
                 block_size_tokens: int = 64, tokenizer=None, pg_collection=None, seed: int = 1234) -> None:
        from megatron_align.rollout import mcore_inference
        from megatron_align.runtime import cpu_backend

        api = mcore_inference.api_for()  # an unsupported megatron-core version fails here, before any work
        if not torch.cuda.is_available():
            cpu_backend.install_inference()
        elif not _has_flash_attn():
            cpu_backend.install_paged_attention_fallback()
        try:
            import einops  # noqa: F401 - megatron-core's inference uses it but lists it only in its dev extras
        except ImportError:
            raise ImportError("megatron-core's inference engine needs einops: pip install einops") from None
        self.model = unwrap_model(model)
        cfg = self.model.config
        self.max_seq_length = int(max_seq_length)
        if self.max_seq_length > self.model.max_sequence_length:
            raise ValueError(f"max_seq_length={max_seq_length} exceeds the model's max_sequence_length="
                             f"{self.model.max_sequence_length}")
        self.padded_vocab_size = self._padded_vocab()
        spec = mcore_inference.InferenceSpec(
            max_seq_length=self.max_seq_length, max_requests=int(max_requests), buffer_size_gb=buffer_size_gb,
            block_size_tokens=int(block_size_tokens), padded_vocab_size=self.padded_vocab_size,
            tp=pg_collection.tp.size() if pg_collection is not None else cfg.tensor_model_parallel_size,
            pp=pg_collection.pp.size() if pg_collection is not None else cfg.pipeline_model_parallel_size,
            seed=int(seed), pg_collection=pg_collection)
        self.tokenizer = tokenizer or IdsOnlyTokenizer()
        parts = api.build(self.model, self.tokenizer, spec)
        self.context, self.wrapper, self.controller, self.engine = (
            parts.context, parts.wrapper, parts.controller, parts.engine)
        self._active = parts.active
        self._block_allocator = getattr(self.context, api.block_allocator)
        self._next_id = 0

    def kv_cache(self) -> dict:
        """What the paged KV cache occupies on this rank: ``bytes`` (the buffer), ``blocks`` (one is the
        engine's dummy), ``block_bytes``."""
        buf = self.context.memory_buffer
        return {"bytes": buf.numel() * buf.element_size(), "blocks": self._block_allocator.total_count,
                "block_bytes": self.context.block_size_bytes}

    def _padded_vocab(self) -> int:
        if getattr(self.model, "post_process", False):
            return self.model.output_layer.output_size_per_partition * self.model.output_layer.tp_group.size()
        return self.model.vocab_size

    def _megatron_params(self, params: SamplingParams):
        from megatron.core.inference.sampling_params import SamplingParams as MSamplingParams

        from megatron_align.rollout.mcore_inference import api_for

        if not params.greedy and params.top_k > 0 and params.top_p < 1.0:
            raise ValueError("rollout sampling: top_k and top_p cannot be combined with the megatron engine "
                             "(megatron-core raises inside the step); set one of them off")
        return MSamplingParams(
            temperature=1.0 if params.greedy else params.temperature,
            top_k=1 if params.greedy else params.top_k,
            top_p=0.0 if params.greedy or params.top_p >= 1.0 else params.top_p,
            return_log_probs=True, skip_prompt_log_probs=True, num_tokens_to_generate=params.max_new_tokens,
            termination_id=params.stop_ids[0] if params.stop_ids else -1, **api_for().sampling_kwargs)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> List[Generation]:
        prompts = [list(map(int, p)) for p in prompts]
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
            if len(p) + params.max_new_tokens > self.max_seq_length:
                raise ValueError(f"prompt {i}: {len(p)} prompt tokens + max_new_tokens={params.max_new_tokens} "
                                 f"exceed the engine's max_seq_length={self.max_seq_length}")
        mparams = self._megatron_params(params)
        extra_stops = [[s] for s in params.stop_ids[1:]]
        with generation_mode(self.model), self._active(), torch.no_grad():
            self.engine.reset()
            self.wrapper.prep_model_for_inference()
            if params.seed is not None:
                self.controller.sampling_rng.manual_seed(int(params.seed))
            ids = []
            for p in prompts:
                rid = self._next_id
                self._next_id += 1
                ids.append(rid)
                self.engine.add_request(rid, p, mparams)
                if extra_stops:
                    self.engine.get_request(rid).stop_word_ids = extra_stops
            done = {}
            while self.engine.has_unfinished_requests():
                for record in self.engine.step_modern()["finished_request_records"]:
                    req = record.merge()
                    done[req.request_id] = req
        out = []
        for rid in ids:
            req = done[rid]
            tokens = [int(t) for t in req.generated_tokens]
            logps = [float(x) for x in (req.generated_log_probs or [])]
            out.append(truncate_at_stop(tokens, logps, params.stop_ids, params.max_new_tokens))
        return out
