"""A frozen reward model scoring rollouts in-process: the scorer behind ``type: model`` rewards.

The stage builds the reward model from ``rl.reward_model.load`` (a checkpoint with a reward head, at the policy's
layout) and registers it with :func:`megatron_align.rewards.register_scorer` under the names the rewards use
(``params.scorer``, default ``rm``). Each data-parallel replica scores its own completions: the prompt record's
messages + the response as the assistant turn, rendered with the chat template, packed like training rows, one
forward-only pass; the reward is the head's value at each sequence's last token (as ``megatron-align score``).
Collective over the model's tensor / pipeline group (every rank of the replica calls it with the same arguments).
"""

from __future__ import annotations

from typing import Any, List, Mapping, Sequence

import numpy as np


class RewardModelScorer:
    def __init__(self, session, template, *, seq_length: int, micro_batch_size: int, pad_id: int, device) -> None:
        self.session, self.template = session, template
        self.seq_length, self.micro_batch_size, self.pad_id, self.device = seq_length, micro_batch_size, pad_id, device
        self.truncated = 0  # sequences cut to seq_length (their last token scored), counted

    def encode(self, response: str, sample: Mapping[str, Any]) -> np.ndarray:
        from megatron_align.stages.rl_prompts import parse_prompt

        msgs, _ = parse_prompt(dict(sample))
        ids = np.asarray(self.template.encode(list(msgs) + [("assistant", response)]).ids, dtype=np.int64)
        if len(ids) > self.seq_length:
            self.truncated += 1
            ids = ids[:self.seq_length]
        return ids

    def score(self, prompts: Sequence[str], responses: Sequence[str], samples: Sequence[Mapping[str, Any]]
              ) -> List[float]:
        import torch.distributed as dist
        from megatron.core import parallel_state

        from megatron_align.data.batch import make_micro_batches
        from megatron_align.data.samples import Sample
        from megatron_align.engine.collect import PerDocument
        from megatron_align.engine.inputs import ModelInputs

        docs = []
        for i, (resp, sample) in enumerate(zip(responses, samples)):
            ids = self.encode(resp, sample)
            docs.append(Sample(i, ids, np.ones(len(ids), np.uint8)))
        mbs = make_micro_batches(docs, self.seq_length, self.micro_batch_size, packing=True, pad_id=self.pad_id)
        inputs = [ModelInputs.from_micro_batch(mb).to(self.device) for mb in mbs]

        def rewards(x, values):
            return dict(zip(x.docs.sample_ids, values.reshape(-1).float()[x.docs.last].tolist()))

        collector = PerDocument(rewards)
        self.session.run(inputs, collector, forward_only=True)
        results = [collector.results]
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:  # the last stage has them
            dist.broadcast_object_list(results, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                                       group=parallel_state.get_pipeline_model_parallel_group())
        return [float(results[0][i]) for i in range(len(docs))]


def build_scorer(cfg, template, tokenizer, device) -> RewardModelScorer:
    """The reward model of ``rl.reward_model.load`` (its architecture from the checkpoint), frozen."""
    from megatron_align.checkpoint import layout
    from megatron_align.config.base import ConfigError
    from megatron_align.engine.session import frozen_from_checkpoint

    load = cfg.rl.reward_model.load
    if not load:
        raise ConfigError("rl.reward_model.load: a `type: model` reward needs the reward-model checkpoint")
    ckpt = layout.resolve(load)
    arch = layout.read_arch(ckpt)
    if not (arch.extra or {}).get("reward_head"):
        raise ConfigError(f"rl.reward_model.load: {ckpt} has a language-model head, not a reward head (train one with "
                          f"`megatron-align rm`)")
    if tokenizer.vocab_size > arch.vocab_size:
        raise ConfigError(f"rl.reward_model.load: {ckpt} has a vocabulary of {arch.vocab_size} tokens, fewer than the "
                          f"tokenizer's {tokenizer.vocab_size}; score with a reward model of the policy's tokenizer")
    session = frozen_from_checkpoint(ckpt, cfg.model, cfg.parallel, seq_length=cfg.data.seq_length,
                                     micro_batch_size=cfg.train.micro_batch_size)
    return RewardModelScorer(session, template, seq_length=cfg.data.seq_length,
                             micro_batch_size=cfg.train.micro_batch_size, pad_id=tokenizer.pad_id, device=device)
