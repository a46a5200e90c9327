"""RoPE frequencies: one HF-exact source for the local path and megatron's RotaryEmbedding (THD / TE path).

Issue 16 item 2: the THD forward used megatron's own, unscaled frequencies, so Llama-3.1 presets trained
with plain RoPE on GPU. Every preset is compared with transformers' rotary embedding; megatron's table,
gathered per packed sample the way the THD kernels index it, must equal the local path's frequencies.
"""

import pytest
import torch
from transformers import LlamaConfig, Qwen2Config
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

from megatron_align.models.families import FAMILIES, arch_to_hf_config, preset
from megatron_align.models.rope import rope_freqs_from_positions, rope_inv_freq, share_inv_freq

PRESETS = sorted(p for fam in FAMILIES.values() for p in fam.presets)
# Baichuan2 is not in transformers; its remote code uses the plain Llama rotary embedding.
HF_ROPE = {"llama": (LlamaConfig, LlamaRotaryEmbedding), "qwen2": (Qwen2Config, Qwen2RotaryEmbedding),
           "baichuan2": (LlamaConfig, LlamaRotaryEmbedding)}


def _hf_inv_freq(arch):
    cfg_cls, rope_cls = HF_ROPE[arch.family]
    hf = arch_to_hf_config(arch)
    hf.setdefault("rope_theta", arch.rope_theta)
    cfg = cfg_cls(**{k: v for k, v in hf.items() if k not in ("architectures", "model_type", "auto_map")})
    return rope_cls(cfg).inv_freq


def _megatron_rotary(arch):
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    return RotaryEmbedding(arch.kv_channels, rotary_percent=1.0, rotary_base=arch.rope_theta,
                           use_cpu_initialization=True)


def test_scaled_presets_exist():
    scaled = [p for p in PRESETS if preset(p).rope_scaling is not None]
    assert {"llama3.1-8b", "llama3.1-70b", "tiny-llama"} <= set(scaled)


@pytest.mark.parametrize("name", PRESETS)
def test_frequencies_equal_transformers(name):
    arch = preset(name)
    ours = rope_inv_freq(arch.kv_channels, arch.rope_theta, arch.rope_scaling)
    torch.testing.assert_close(ours, _hf_inv_freq(arch), rtol=0, atol=0)
    rot = _megatron_rotary(arch)
    share_inv_freq(rot, ours)
    torch.testing.assert_close(rot.inv_freq, _hf_inv_freq(arch), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["llama3.1-8b", "tiny-llama", "qwen2-7b"])
def test_thd_table_matches_local_path_per_sample(name):
    """THD: one table over positions 0..max_seqlen, indexed from each sample's start (cu_seqlens)."""
    arch = preset(name)
    inv = rope_inv_freq(arch.kv_channels, arch.rope_theta, arch.rope_scaling)
    rot = _megatron_rotary(arch)
    unscaled = rot.inv_freq.clone()
    share_inv_freq(rot, inv)
    lengths = [5, 9, 3]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]  # one packed row, restarts per sample
    local = rope_freqs_from_positions(inv, positions)[:, 0, 0]  # [s, dim]
    table = torch.cat([rot.get_freqs_non_repeated(max(lengths))] * 2, dim=-1)  # megatron's emb layout
    thd = torch.cat([table[:n] for n in lengths])
    torch.testing.assert_close(thd, local, rtol=0, atol=0)
    if arch.rope_scaling is not None:  # the defect: megatron's own table differs for scaled presets
        assert not torch.equal(unscaled, inv)


def test_shape_mismatch_is_refused():
    arch = preset("tiny-llama")
    rot = _megatron_rotary(arch)
    with pytest.raises(ValueError, match="RoPE"):
        share_inv_freq(rot, torch.ones(3))


def _te_importable():
    try:
        import transformer_engine  # noqa: F401

        return torch.cuda.is_available()
    except Exception:
        return False


def test_te_path_uses_fused_rope_local_path_does_not():
    """Item 6: megatron's unfused THD RoPE syncs with the host in every layer; the TE spec asks for TE's
    fused kernel (megatron refuses the flag when TE's kernel is absent, as on this CPU machine)."""
    from megatron_align.config.model import ModelConfig
    from megatron_align.config.parallel import ParallelConfig
    from megatron_align.models.builder import transformer_config

    arch, model, par = preset("tiny-llama"), ModelConfig(name="tiny-llama", precision="fp32"), ParallelConfig()
    assert transformer_config(arch, model, par, "local").apply_rope_fusion is False
    if _te_importable():
        assert transformer_config(arch, model, par, "te").apply_rope_fusion is True
    else:
        with pytest.raises(ValueError, match="apply_rope_fusion"):
            transformer_config(arch, model, par, "te")
