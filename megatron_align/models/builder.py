"""ArchSpec + configs -> megatron TransformerConfig -> model chunks (one per virtual stage)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F

from megatron_align.config.model import ModelConfig
from megatron_align.config.parallel import ParallelConfig
from megatron_align.models.arch import ArchSpec, padded_vocab_size
from megatron_align.models.families import resolve_arch

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# model.recompute -> TransformerConfig fields (k-block = megatron's uniform full recompute of k layers)
RECOMPUTE = {
    "none": lambda k: dict(recompute_granularity=None),
    "selective": lambda k: dict(recompute_granularity="selective", recompute_modules=["core_attn"]),
    "full": lambda k: dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1),
    "kblock": lambda k: dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=k),
}


# transformer_impl -> apply_rope_fusion. TE: THD RoPE through TE's fused kernel; megatron's unfused THD
# path copies cu_seqlens to the host and loops over samples in every layer (a device sync per layer).
# Local: our per-token frequencies ([s, b, 1, d], positions restart per sample) need the unfused path.
ROPE_FUSION = {"local": False, "te": True}


def compute_dtype(precision: str) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return _DTYPES[precision]


def check_arch_parallel(arch: ArchSpec, parallel: ParallelConfig) -> None:
    """TP must divide heads and query groups; PP must divide layers (per virtual stage too)."""
    if arch.num_attention_heads % parallel.tp:
        raise ValueError(f"parallel.tp={parallel.tp} does not divide num_attention_heads={arch.num_attention_heads}")
    if arch.num_query_groups % parallel.tp:
        raise ValueError(f"parallel.tp={parallel.tp} does not divide the number of query groups "
                         f"(num_key_value_heads)={arch.num_query_groups}")
    stages = parallel.pp * parallel.stages_per_rank
    if arch.num_layers % stages:
        raise ValueError(f"parallel.pp={parallel.pp} x parallel.vpp={parallel.stages_per_rank} does not divide "
                         f"num_layers={arch.num_layers}")


def transformer_config(arch: ArchSpec, model: ModelConfig, parallel: ParallelConfig, impl: str = "local"):
    from megatron.core.transformer import TransformerConfig

    check_arch_parallel(arch, parallel)
    dtype = compute_dtype(model.precision)
    on_cpu = not torch.cuda.is_available()
    k = model.recompute_k
    if model.recompute == "kblock":
        layers_per_stage = arch.num_layers // (parallel.pp * parallel.stages_per_rank)
        if k > layers_per_stage:
            raise ValueError(f"model.recompute_k={k} exceeds the {layers_per_stage} layers of a pipeline stage")
    return TransformerConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups,
        kv_channels=arch.kv_channels,
        normalization="RMSNorm",
        layernorm_epsilon=arch.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=model.init_std,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=ROPE_FUSION[impl],
        gradient_accumulation_fusion=False,
        use_cpu_initialization=on_cpu,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        pipeline_dtype=dtype,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.interleaved_vpp,
        context_parallel_size=parallel.cp,
        sequence_parallel=parallel.sp,
        # gloo matches point-to-point messages between a pair of ranks by posting order; batched
        # p2p posts sends and receives in an order that pairs a forward activation with a backward
        # gradient when pp=2 with interleaving. Megatron's unbatched path orders them by rank parity.
        batch_p2p_comm=not on_cpu,
        **RECOMPUTE[model.recompute](k),
    )


@dataclass
class BuiltModel:
    chunks: List[torch.nn.Module]
    arch: ArchSpec
    config: object  # TransformerConfig
    padded_vocab_size: int
    transformer_impl: str
    attention_backend: str


def build_model(model_cfg: ModelConfig, parallel: ParallelConfig, *, arch: Optional[ArchSpec] = None,
                seq_length: Optional[int] = None) -> BuiltModel:
    """Build this rank's model chunks (parallel_state must be initialised)."""
    from megatron.core import parallel_state

    from megatron_align.models.gpt import AlignGPTModel
    from megatron_align.models.kblock import use_uneven_kblocks
    from megatron_align.models.spec import build_layer_spec, resolve_attention_backend, resolve_impl

    arch = arch or resolve_arch(model_cfg.name, model_cfg.hf_config, model_cfg.family, model_cfg.num_layers)
    impl = resolve_impl(model_cfg.transformer_impl)
    config = transformer_config(arch, model_cfg, parallel, impl)
    attn = resolve_attention_backend(model_cfg.attention_backend)
    layer_spec, final_norm = build_layer_spec(impl, attn)
    vocab = padded_vocab_size(arch.vocab_size, model_cfg.make_vocab_size_divisible_by, parallel.tp)
    max_len = seq_length or model_cfg.seq_length or arch.max_position_embeddings

    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    vpp = parallel.interleaved_vpp
    chunks = []
    for vp_stage in range(parallel.stages_per_rank):
        stage = vp_stage if vpp else None
        n_layers = get_num_layers_to_build(config, vp_stage=stage)
        block_spec = TransformerBlockSubmodules(layer_specs=[layer_spec] * n_layers, layer_norm=final_norm)
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage)
        model = AlignGPTModel(
            config=config,
            transformer_layer_spec=block_spec,
            vocab_size=vocab,
            max_sequence_length=max_len,
            pre_process=pre,
            post_process=post,
            parallel_output=True,
            share_embeddings_and_output_weights=arch.tie_embeddings and model_cfg.head == "lm",
            position_embedding_type="rope",
            rotary_base=int(arch.rope_theta) if float(arch.rope_theta).is_integer() else arch.rope_theta,
            vp_stage=stage,
            arch=arch,
            head=model_cfg.head,
        )
        use_uneven_kblocks(model.decoder)  # k-block recompute with k not dividing the stage's layers
        if post and model_cfg.head == "lm" and model_cfg.loss_backend == "fused_linear":
            model.output_layer.lm_head_input = True  # the loss gets hidden + weight, not logits
            model.output_layer.loss_chunk_size = model_cfg.loss_chunk_size
        if torch.cuda.is_available():
            model.cuda(torch.cuda.current_device())
        chunks.append(model)
    return BuiltModel(chunks, arch, config, vocab, impl, attn)
