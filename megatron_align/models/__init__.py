"""Model families on megatron-core GPTModel (import megatron lazily: see builder.build_model)."""

from megatron_align.models.arch import ArchSpec, RopeScaling, padded_vocab_size  # noqa: F401
from megatron_align.models.families import (  # noqa: F401
    FAMILIES,
    ModelSpecError,
    arch_from_hf_config,
    arch_to_hf_config,
    list_presets,
    preset,
    resolve_arch,
)
