"""Layer specs: which modules make up a transformer layer, per backend.

``local``: megatron-core's own parallel linears + our RMSNorm (sequence-parallel capable) + our
packed-sequence core attention. Runs on CPU and GPU.
``te``: Transformer Engine modules (fused norm+linear, THD packed attention); GPU only.
The choice is made here, once, by building a different spec; nothing in forward branches on it.
"""

from __future__ import annotations

from typing import Dict

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from megatron_align.models.attention import attention_class
from megatron_align.models.norm import RMSNorm

# Local and TE checkpoints share keys: TE fuses the norms into the following linear.
_NORM_KEY_MAP = {
    "input_layernorm.": "self_attention.linear_qkv.layer_norm_",
    "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_",
}


def local_layer_spec(attention_backend: str = "sdpa") -> ModuleSpec:
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=RMSNorm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear,
                    core_attention=attention_class(attention_backend),
                    linear_proj=RowParallelLinear,
                    q_layernorm=IdentityOp,
                    k_layernorm=IdentityOp,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=RMSNorm,
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear,
                                                                linear_fc2=RowParallelLinear)),
            mlp_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map=dict(_NORM_KEY_MAP),
        ),
    )


def te_layer_spec(attention_backend: str = "sdpa") -> ModuleSpec:
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

    return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=False)


def local_final_norm() -> type:
    return RMSNorm


def te_final_norm() -> type:
    from megatron.core.extensions.transformer_engine import TENorm

    return TENorm


# impl -> (layer spec factory, final-norm factory)
SPECS: Dict[str, tuple] = {
    "local": (local_layer_spec, local_final_norm),
    "te": (te_layer_spec, te_final_norm),
}


def te_available() -> bool:
    try:
        import torch
        import transformer_engine  # noqa: F401

        return torch.cuda.is_available()
    except Exception:
        return False


def resolve_impl(transformer_impl: str) -> str:
    if transformer_impl == "auto":
        return "te" if te_available() else "local"
    if transformer_impl == "te" and not te_available():
        raise ValueError("model.transformer_impl=te, but transformer_engine does not import (or CUDA is absent)")
    return transformer_impl


def resolve_attention_backend(attention_backend: str) -> str:
    if attention_backend != "auto":
        return attention_backend
    import torch

    return "flex" if torch.cuda.is_available() else "sdpa"


def build_layer_spec(transformer_impl: str, attention_backend: str) -> tuple:
    layer_fn, norm_fn = SPECS[transformer_impl]
    return layer_fn(attention_backend), norm_fn()

