"""Which model to build and how to run it (backends, precision, recompute)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron_align.config.base import ConfigError, help_field


@dataclass
class ModelConfig:
    name: Optional[str] = help_field(
        None, help="A preset (e.g. llama3-8b, llama3-70b, qwen2-7b, qwen2-72b, baichuan2-7b, tiny-llama, "
                   "tiny-qwen2, tiny-baichuan2); `megatron-align info --presets` lists them.")
    hf_config: Optional[str] = help_field(
        None, help="Path to a Hugging Face config.json (or its directory); builds that exact architecture. "
                   "Overrides `name`.")
    family: Optional[str] = help_field(
        None, help="Force the family when it cannot be read from hf_config.", choices=("llama", "qwen2", "baichuan2"))
    loss_backend: str = help_field(
        "fused", help="Cross-entropy implementation in the loss path: our fused kernel, megatron-core's "
                      "vocab_parallel_cross_entropy, Transformer Engine's (when installed), or fused_linear "
                      "(the LM head fused with the loss, in chunks of loss_chunk_size tokens: the [tokens, vocab] "
                      "logits are never materialised).",
        choices=("fused", "megatron", "te", "fused_linear"))
    loss_chunk_size: int = help_field(
        4096, help="loss_backend=fused_linear: tokens per chunk (one fp32 [chunk, vocab/TP] logits buffer at a time).")
    transformer_impl: str = help_field(
        "auto", help="Layer spec: 'local' (megatron-core modules, runs on CPU), 'te' (Transformer Engine), "
                     "'auto' (te when it imports and CUDA is present, else local).",
        choices=("auto", "local", "te"))
    attention_backend: str = help_field(
        "auto", help="Attention for packed sequences in the local spec: 'sdpa' (block-diagonal causal mask, CPU/GPU), "
                     "'flex' (FlexAttention document mask, GPU), 'auto' (flex on CUDA else sdpa). The TE spec uses THD.",
        choices=("auto", "sdpa", "flex"))
    precision: str = help_field(
        "auto", help="Compute dtype: auto = bf16 on GPU, fp32 on CPU.", choices=("auto", "fp32", "bf16", "fp16"))
    recompute: str = help_field(
        "none", help="Activation recompute: none; selective (attention core); kblock (checkpoint k consecutive "
                     "layers as one unit: the report's multi-layer gradient checkpointing); full (every layer).",
        choices=("none", "selective", "kblock", "full"))
    recompute_k: int = help_field(1, help="Layers per checkpointed block when recompute=kblock.")
    make_vocab_size_divisible_by: int = help_field(
        128, help="Vocabulary padded to a multiple of this times TP (Megatron's rule); padding is masked.")
    init_std: float = help_field(0.02, help="Std of the normal initialisation for freshly built weights.")
    num_layers: Optional[int] = help_field(None, help="Override the preset's number of layers (for quick tests).")
    seq_length: Optional[int] = help_field(
        None, help="Max positions the model is built for; defaults to data.seq_length or the preset's.")
    head: str = help_field(
        "lm", help="Output head: 'lm' (vocabulary logits), 'reward' (one fp32 scalar per sequence, read at its last "
                   "token: the reward model) or 'value' (one fp32 scalar per token: the PPO critic). Scalar heads are "
                   "stored as reward_head.weight (HF *ForSequenceClassification score.weight).",
        choices=("lm", "reward", "value"))

    def validate(self) -> None:
        if self.loss_chunk_size < 1:
            raise ConfigError(f"model.loss_chunk_size: must be >= 1, got {self.loss_chunk_size}")
        if self.recompute_k < 1:
            raise ConfigError(f"model.recompute_k: must be >= 1, got {self.recompute_k}")
        if self.make_vocab_size_divisible_by < 1:
            raise ConfigError("model.make_vocab_size_divisible_by: must be >= 1")
        if self.num_layers is not None and self.num_layers < 1:
            raise ConfigError(f"model.num_layers: must be >= 1, got {self.num_layers}")
        if self.init_std <= 0:
            raise ConfigError(f"model.init_std: must be > 0, got {self.init_std}")
