"""Teachers: chat models behind one small interface, ``complete(batch of message lists) -> replies``.

:class:`CheckpointTeacher` runs a megatron_align checkpoint through the generation engine at any TP/PP (every
rank of the model calls it with the same batch and gets the same replies); the chat template is ours, the stop
ids are the tokenizer's EOS and the template's end of turn. :class:`EndpointTeacher` calls an OpenAI-compatible
endpoint. A reply is None when the request cannot be made (a checkpoint prompt longer than its window).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Sequence

from megatron_align.pas.config import SamplingSection, TeacherConfig

Messages = List[Dict[str, str]]

#: single tokens that end a turn in the bundled templates / common tokenizers
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "</s>", "<|end_of_text|>", "<|endoftext|>", "<|eom_id|>")


@dataclass
class Reply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


class Teacher(Protocol):
    name: str

    def complete(self, batch: Sequence[Messages], sampling: Optional[SamplingSection] = None,
                 round_index: int = 0) -> List[Optional[str]]:
        """Replies in batch order; ``round_index`` varies the sampling seed between regeneration rounds."""


class CheckpointTeacher:
    """A megatron_align checkpoint answering chat requests (the runtime must be set up at the model's layout)."""

    def __init__(self, cfg: TeacherConfig, model_cfg, parallel) -> None:
        from megatron_align.checkpoint import layout
        from megatron_align.data.templates import build_template
        from megatron_align.data.tokenizer import ChatTokenizer
        from megatron_align.engine.session import frozen_from_checkpoint
        from megatron_align.rollout.megatron_engine import MegatronGenerationEngine

        self.cfg = cfg
        ckpt = layout.resolve(cfg.load)
        self.name = f"checkpoint:{ckpt}"
        tok_dir = os.path.join(ckpt, layout.TOKENIZER_DIR)
        if not os.path.isdir(tok_dir):
            raise layout.CheckpointError(f"{ckpt} has no tokenizer/ directory: a teacher needs the checkpoint's "
                                         f"tokenizer to apply the chat template")
        arch = layout.read_arch(ckpt)
        self.tok = ChatTokenizer(tok_dir)
        try:  # system_prompt: None inserts none, 'default' the template's own, else the text
            self.template = build_template(cfg.template, self.tok, cfg.system_prompt, family=arch)
        except ValueError as e:
            raise layout.CheckpointError(f"{ckpt}: {e}") from None
        self.session = frozen_from_checkpoint(ckpt, model_cfg, parallel, seq_length=cfg.max_seq_length,
                                              micro_batch_size=1)
        self.engine = MegatronGenerationEngine(self.session.chunks[0], max_seq_length=cfg.max_seq_length,
                                               max_requests=cfg.max_requests, buffer_size_gb=cfg.kv_cache_gb)
        self.stop_ids = stop_ids(self.tok)
        self.too_long = 0

    def encode(self, messages: Messages) -> List[int]:
        return self.template.encode([(m["role"], m["content"]) for m in messages], add_generation_prompt=True).ids

    def generate(self, batch: Sequence[Messages], sampling: Optional[SamplingSection] = None,
                 round_index: int = 0) -> List[Optional[Reply]]:
        from megatron_align.rollout import SamplingParams

        s = sampling or self.cfg.sampling
        ids = [self.encode(m) for m in batch]
        keep = [i for i, x in enumerate(ids) if len(x) + s.max_new_tokens <= self.cfg.max_seq_length]
        self.too_long += len(ids) - len(keep)
        out: List[Optional[Reply]] = [None] * len(batch)
        if not keep:
            return out
        params = SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                max_new_tokens=s.max_new_tokens, stop_ids=self.stop_ids,
                                seed=s.seed + 7919 * round_index)
        gens = self.engine.generate([ids[i] for i in keep], params)
        for i, g in zip(keep, gens):
            toks = g.token_ids[:-1] if g.finish_reason.value == "stop" else g.token_ids
            out[i] = Reply(self.tok.decode(toks, skip_special_tokens=True).strip(), len(ids[i]), len(g.token_ids),
                           g.finish_reason.value)
        return out

    def complete(self, batch, sampling=None, round_index=0):
        return [r.text if r is not None else None for r in self.generate(batch, sampling, round_index)]


def stop_ids(tok) -> tuple:
    """The tokenizer's EOS and every end-of-turn token it has as a single id."""
    names = list(END_OF_TURN_TOKENS)
    eos = tok.special_tokens_map().get("eos_token")
    if eos:
        names.insert(0, eos)
    ids = []
    for n in names:
        tid = tok.token_id(n)
        if tid is not None and tid not in ids:
            ids.append(tid)
    return tuple(ids)


class EndpointTeacher:
    """An OpenAI-compatible chat endpoint."""

    def __init__(self, cfg: TeacherConfig) -> None:
        from megatron_align.pas.openai_http import ChatClient, EndpointSettings, api_key_from_env

        self.cfg = cfg
        self.name = f"openai:{cfg.base_url}:{cfg.model}"
        self.client = ChatClient(EndpointSettings(
            base_url=cfg.base_url, model=cfg.model, api_key=api_key_from_env(cfg.api_key_env),
            timeout_s=cfg.timeout_s, max_retries=cfg.max_retries, backoff_s=cfg.backoff_s,
            max_backoff_s=cfg.max_backoff_s, concurrency=cfg.concurrency, rate_limit_rps=cfg.rate_limit_rps))

    def complete(self, batch, sampling=None, round_index=0):
        s = sampling or self.cfg.sampling
        body = {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_new_tokens,
                "seed": s.seed + 7919 * round_index}
        if s.top_k > 0:
            body["top_k"] = s.top_k  # not in OpenAI's API; vLLM / SGLang accept it
        return self.client.complete(batch, body)


def build_teacher(cfg: TeacherConfig, model_cfg=None, parallel=None) -> Teacher:
    """The teacher of ``cfg.kind`` (a registry, so another kind is one entry)."""
    return TEACHER_BUILDERS[cfg.kind](cfg, model_cfg, parallel)


TEACHER_BUILDERS = {
    "checkpoint": lambda cfg, model_cfg, parallel: CheckpointTeacher(cfg, model_cfg, parallel),
    "openai": lambda cfg, model_cfg, parallel: EndpointTeacher(cfg),
}
