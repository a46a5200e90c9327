"""A model session: one model built at the configured layout, with its own TransformerConfig.

A *trainable* session is wrapped in megatron's DDP (its config gets the schedule hooks and per-unit loss
normalisation); a *frozen* one (a reference model, the original model, a reward model scoring rollouts) is put
in eval mode with ``requires_grad=False``, is never DDP-wrapped, has no optimizer and runs forward only. Each
session builds its own ``TransformerConfig`` (``models.builder.build_model`` makes a fresh one per call), so a
frozen model never inherits the trainer's hooks.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import torch

from megatron_align.config.model import ModelConfig
from megatron_align.config.parallel import ParallelConfig
from megatron_align.engine.inputs import ModelInputs
from megatron_align.engine.objective import Objective
from megatron_align.models.arch import ArchSpec


class ModelSession:
    def __init__(self, model_cfg: ModelConfig, parallel: ParallelConfig, arch: ArchSpec, *, seq_length: int,
                 micro_batch_size: int, trainable: bool) -> None:
        from megatron_align.models.builder import build_model

        self.model_cfg, self.parallel, self.arch = model_cfg, parallel, arch
        self.seq_length, self.micro_batch_size = seq_length, micro_batch_size
        self.trainable = trainable
        built = build_model(model_cfg, parallel, arch=arch, seq_length=seq_length)
        self.config, self.impl = built.config, built.transformer_impl
        self.attention_backend = built.attention_backend
        self.padded_vocab_size = built.padded_vocab_size
        self.chunks: List[torch.nn.Module] = built.chunks
        self._wrapped = False
        if not trainable:
            for chunk in self.chunks:
                chunk.eval()
                chunk.requires_grad_(False)

    # ------------------------------------------------------------------ weights
    def load_weights(self, ckpt_dir: str) -> None:
        """Model weights from a checkpoint directory (``<ckpt>/model``). A scalar head that the checkpoint does
        not have (a reward model started from an SFT / converted LM checkpoint) keeps its fresh initialisation;
        every other missing tensor is an error."""
        from megatron_align.checkpoint import layout
        from megatron_align.checkpoint.model_io import load_model

        if self._wrapped:
            raise RuntimeError("load weights before wrapping for training")
        directory = os.path.join(ckpt_dir, layout.MODEL_DIR)
        ckpt_arch = layout.read_arch(ckpt_dir) if os.path.isfile(os.path.join(ckpt_dir, layout.ARCH_FILE)) else None
        has_head = ckpt_arch is not None and bool((ckpt_arch.extra or {}).get("reward_head"))
        if has_head and self.model_cfg.head == "lm":
            from megatron_align.checkpoint.layout import CheckpointError

            raise CheckpointError(f"{ckpt_dir} has a scalar (reward/value) head, not a language-model head; "
                                  f"set model.head=reward (or value) to load it")
        skip = () if has_head or self.model_cfg.head == "lm" else ("reward_head.",)
        load_model(self.chunks, directory, skip_prefixes=skip)

    def wrap_for_training(self, *, use_distributed_optimizer: bool) -> None:
        from megatron_align.engine.wrap import wrap_ddp

        if not self.trainable:
            raise RuntimeError("a frozen session is not trained")
        self.chunks = wrap_ddp(self.chunks, use_distributed_optimizer=use_distributed_optimizer)
        self._wrapped = True

    # ------------------------------------------------------------------ passes
    def schedule_shape(self) -> Dict[str, int]:
        """Activation shape between pipeline stages: [S, mbs] rows, or one THD row of mbs*S tokens (TE)."""
        s, b = self.seq_length, self.micro_batch_size
        return {"seq_length": s * b, "micro_batch_size": 1} if self.impl == "te" else \
            {"seq_length": s, "micro_batch_size": b}

    def run(self, inputs: Sequence[ModelInputs], objective: Objective, *, forward_only: bool = False
            ) -> Dict[str, torch.Tensor]:
        """Forward (and backward unless ``forward_only``) of every micro-batch with ``objective`` as the loss;
        the combined reports of this rank (last pipeline stage; {} elsewhere)."""
        from megatron_align.engine.forward_backward import forward_backward

        if not inputs:
            return {}
        if forward_only or not self.trainable:
            with torch.no_grad():
                return forward_backward(self.chunks, inputs, **self.schedule_shape(), forward_only=True,
                                        objective=objective, transformer_impl=self.impl)
        for chunk in self.chunks:
            chunk.zero_grad_buffer()
        return forward_backward(self.chunks, inputs, **self.schedule_shape(), objective=objective,
                                transformer_impl=self.impl)

    def train(self) -> None:
        for chunk in self.chunks:
            chunk.train()

    def eval(self) -> None:
        for chunk in self.chunks:
            chunk.eval()


def resolve_arch_for(model_cfg: ModelConfig, resume_from: Optional[str]) -> ArchSpec:
    """The architecture a stage builds: the model section, or the checkpoint's own when the section names none."""
    from megatron_align.checkpoint import layout
    from megatron_align.models.families import resolve_arch

    if model_cfg.name is None and model_cfg.hf_config is None and resume_from:
        return layout.read_arch(resume_from)
    return resolve_arch(model_cfg.name, model_cfg.hf_config, model_cfg.family, model_cfg.num_layers)


def frozen_from_checkpoint(load: str, model_cfg: ModelConfig, parallel: ParallelConfig, *, seq_length: int,
                           micro_batch_size: int) -> "ModelSession":
    """A frozen session of the checkpoint at ``load`` (a run directory's latest, a step or ``release/``) at the
    current layout; the head (lm or scalar) follows the checkpoint. The runtime must be set up."""
    import dataclasses

    from megatron_align.checkpoint import layout

    ckpt = layout.resolve(load)
    arch = layout.read_arch(ckpt)
    head = "reward" if (arch.extra or {}).get("reward_head") else "lm"
    if model_cfg.head == "value" and head == "reward":
        head = "value"
    check_layout(arch, parallel)
    cfg = dataclasses.replace(model_cfg, name=None, hf_config=None, head=head)
    session = ModelSession(cfg, parallel, arch, seq_length=seq_length, micro_batch_size=micro_batch_size,
                           trainable=False)
    session.load_weights(ckpt)
    session.checkpoint = ckpt
    return session


def check_layout(arch: ArchSpec, parallel: ParallelConfig) -> None:
    """TP must divide heads and query groups, PP the layers: a ConfigError naming the setting (call it before the
    runtime starts, so it is the first thing a wrong layout reports)."""
    from megatron_align.models.builder import check_arch_parallel

    try:
        check_arch_parallel(arch, parallel)
    except ValueError as exc:
        from megatron_align.config.base import ConfigError

        raise ConfigError(f"parallel: {exc}") from None
