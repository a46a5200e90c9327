"""Model families: presets and the Hugging Face config.json <-> ArchSpec mapping, as data.

Adding a family means adding one `Family` entry: its HF architecture names, how its config
keys map onto ArchSpec, and its presets. Nothing else branches on the family name except the
pieces that are genuinely different (the converter's tensor table, NormHead in the output layer).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from megatron_align.errors import UserError
from megatron_align.models.arch import ArchSpec, RopeScaling


class ModelSpecError(UserError, ValueError):
    """An unknown preset/family or an HF config this project cannot build; names the key or file."""


@dataclass(frozen=True)
class Family:
    name: str
    hf_architectures: Tuple[str, ...]
    hf_model_types: Tuple[str, ...]
    chat_template: str
    # (ArchSpec field, HF key, default when the key is absent; None = required)
    key_map: Tuple[Tuple[str, str, Any], ...]
    fixed: Dict[str, Any] = field(default_factory=dict)
    presets: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    hf_extra: Dict[str, Any] = field(default_factory=dict)  # written back into config.json
    # config.json keys whose other values this project does not implement: (key, the one accepted value);
    # a config giving another value is refused (an absent key is fine)
    only_values: Tuple[Tuple[str, Any], ...] = ()
    # the built-in chat template of presets / configs with Llama-3.1 style rope scaling (None: chat_template)
    rope_scaled_chat_template: Optional[str] = None


_COMMON_KEYS: Tuple[Tuple[str, str, Any], ...] = (
    ("num_layers", "num_hidden_layers", None),
    ("hidden_size", "hidden_size", None),
    ("ffn_hidden_size", "intermediate_size", None),
    ("num_attention_heads", "num_attention_heads", None),
    ("vocab_size", "vocab_size", None),
    ("max_position_embeddings", "max_position_embeddings", 4096),
    ("norm_eps", "rms_norm_eps", 1e-6),
)

LLAMA = Family(
    name="llama",
    hf_architectures=("LlamaForCausalLM", "LlamaForSequenceClassification"),
    hf_model_types=("llama",),
    chat_template="llama3",
    rope_scaled_chat_template="llama3.1",
    only_values=(("hidden_act", "silu"), ("mlp_bias", False), ("pretraining_tp", 1)),
    key_map=_COMMON_KEYS + (
        ("num_query_groups", "num_key_value_heads", "=num_attention_heads"),
        ("rope_theta", "rope_theta", 10000.0),
        ("tie_embeddings", "tie_word_embeddings", False),
        ("qkv_bias", "attention_bias", False),
        ("head_dim", "head_dim", None),
    ),
    presets={
        "llama3-8b": dict(num_layers=32, hidden_size=4096, ffn_hidden_size=14336, num_attention_heads=32,
                          num_query_groups=8, vocab_size=128256, max_position_embeddings=8192,
                          rope_theta=500000.0, norm_eps=1e-5),
        "llama3.1-8b": dict(num_layers=32, hidden_size=4096, ffn_hidden_size=14336, num_attention_heads=32,
                            num_query_groups=8, vocab_size=128256, max_position_embeddings=131072,
                            rope_theta=500000.0, norm_eps=1e-5, rope_scaling=RopeScaling()),
        "llama3-70b": dict(num_layers=80, hidden_size=8192, ffn_hidden_size=28672, num_attention_heads=64,
                           num_query_groups=8, vocab_size=128256, max_position_embeddings=8192,
                           rope_theta=500000.0, norm_eps=1e-5),
        "llama3.1-70b": dict(num_layers=80, hidden_size=8192, ffn_hidden_size=28672, num_attention_heads=64,
                             num_query_groups=8, vocab_size=128256, max_position_embeddings=131072,
                             rope_theta=500000.0, norm_eps=1e-5, rope_scaling=RopeScaling()),
        "tiny-llama": dict(num_layers=4, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4,
                           num_query_groups=2, vocab_size=2048, max_position_embeddings=512,
                           rope_theta=500000.0, norm_eps=1e-5,
                           rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=64)),
    },
)

QWEN2 = Family(
    name="qwen2",
    hf_architectures=("Qwen2ForCausalLM", "Qwen2ForSequenceClassification"),
    hf_model_types=("qwen2",),
    chat_template="chatml",
    only_values=(("hidden_act", "silu"), ("use_sliding_window", False)),
    key_map=_COMMON_KEYS + (
        ("num_query_groups", "num_key_value_heads", "=num_attention_heads"),
        ("rope_theta", "rope_theta", 1000000.0),
        ("tie_embeddings", "tie_word_embeddings", False),
    ),
    fixed={"qkv_bias": True},
    presets={
        "qwen2-7b": dict(num_layers=28, hidden_size=3584, ffn_hidden_size=18944, num_attention_heads=28,
                         num_query_groups=4, vocab_size=152064, max_position_embeddings=131072,
                         rope_theta=1000000.0, norm_eps=1e-6),
        "qwen2-72b": dict(num_layers=80, hidden_size=8192, ffn_hidden_size=29568, num_attention_heads=64,
                          num_query_groups=8, vocab_size=152064, max_position_embeddings=131072,
                          rope_theta=1000000.0, norm_eps=1e-6),
        "qwen2-0.5b": dict(num_layers=24, hidden_size=896, ffn_hidden_size=4864, num_attention_heads=14,
                           num_query_groups=2, vocab_size=151936, max_position_embeddings=131072,
                           rope_theta=1000000.0, norm_eps=1e-6, tie_embeddings=True),
        "tiny-qwen2": dict(num_layers=4, hidden_size=64, ffn_hidden_size=160, num_attention_heads=4,
                           num_query_groups=2, vocab_size=2048, max_position_embeddings=512,
                           rope_theta=1000000.0, norm_eps=1e-6, tie_embeddings=True),
    },
)

BAICHUAN2 = Family(
    name="baichuan2",
    hf_architectures=("BaichuanForCausalLM",),
    hf_model_types=("baichuan",),
    chat_template="baichuan",
    # the official Baichuan2-7B modeling code always uses theta = 10000 and SiLU, whatever config.json says
    only_values=(("hidden_act", "silu"), ("rope_theta", 10000.0)),
    key_map=_COMMON_KEYS + (
        ("rope_theta", "rope_theta", 10000.0),
        ("tie_embeddings", "tie_word_embeddings", False),
    ),
    fixed={"norm_head": True, "qkv_bias": False},
    hf_extra={"auto_map": {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                           "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"}},
    presets={
        "baichuan2-7b": dict(num_layers=32, hidden_size=4096, ffn_hidden_size=11008, num_attention_heads=32,
                             num_query_groups=32, vocab_size=125696, max_position_embeddings=4096,
                             rope_theta=10000.0, norm_eps=1e-6),
        "tiny-baichuan2": dict(num_layers=4, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4,
                               num_query_groups=4, vocab_size=2048, max_position_embeddings=512,
                               rope_theta=10000.0, norm_eps=1e-6),
    },
)

FAMILIES: Dict[str, Family] = {f.name: f for f in (LLAMA, QWEN2, BAICHUAN2)}


def _preset_index() -> Dict[str, Family]:
    return {p: fam for fam in FAMILIES.values() for p in fam.presets}


def list_presets() -> List[str]:
    return sorted(_preset_index())


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ModelSpecError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def preset(name: str) -> ArchSpec:
    idx = _preset_index()
    if name not in idx:
        raise ModelSpecError(f"model.name: unknown preset {name!r}; known presets: {', '.join(list_presets())}")
    fam = idx[name]
    return ArchSpec(family=fam.name, **{**fam.fixed, **fam.presets[name]})


def _family_of_hf(cfg: Dict[str, Any], path: str, forced: Optional[str]) -> Family:
    if forced:
        return get_family(forced)
    archs = cfg.get("architectures") or []
    for fam in FAMILIES.values():
        if any(a in fam.hf_architectures for a in archs) or cfg.get("model_type") in fam.hf_model_types:
            return fam
    raise ModelSpecError(
        f"{path}: unknown architecture {archs or cfg.get('model_type')!r}; supported: "
        + ", ".join(a for fam in FAMILIES.values() for a in fam.hf_architectures))


def _rope_scaling(cfg: Dict[str, Any], path: str) -> Optional[RopeScaling]:
    rs = cfg.get("rope_scaling") or (cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else None)
    if not rs:
        return None
    kind = rs.get("rope_type", rs.get("type"))
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise ModelSpecError(f"{path}: rope_scaling type {kind!r} is not supported (supported: llama3)")
    return RopeScaling(
        factor=float(rs["factor"]), low_freq_factor=float(rs.get("low_freq_factor", 1.0)),
        high_freq_factor=float(rs.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(rs.get("original_max_position_embeddings", 8192)))


def default_chat_template(arch: ArchSpec) -> str:
    """The built-in chat template of a model: the family's, or its rope-scaled variant (Llama-3.1 presets and
    configs: llama3 rope scaling over an original context of 8192)."""
    fam = get_family(arch.family)
    rs = arch.rope_scaling
    if fam.rope_scaled_chat_template and rs is not None and rs.original_max_position_embeddings == 8192:
        return fam.rope_scaled_chat_template
    return fam.chat_template


def check_only_values(cfg: Dict[str, Any], path: str, fam: Family) -> None:
    """Refuse config keys whose value this project does not implement (one line naming the key)."""
    for key, accepted in fam.only_values:
        value = cfg.get(key)
        if value is None:
            continue
        same = value == accepted if not isinstance(accepted, float) else (
            isinstance(value, (int, float)) and not isinstance(value, bool) and float(value) == accepted)
        if not same:
            raise ModelSpecError(f"{path}: {key}={value!r} is not supported for {fam.name} models (only "
                                 f"{accepted!r} is implemented); converting would silently change the model")


def arch_from_hf_config(cfg: Dict[str, Any], path: str = "config.json", family: Optional[str] = None) -> ArchSpec:
    """An HF config.json (as a dict) -> ArchSpec; errors name the file and the key."""
    fam = _family_of_hf(cfg, path, family)
    check_only_values(cfg, path, fam)
    rope_params = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else {}
    values: Dict[str, Any] = {}
    for field_name, key, default in fam.key_map:
        if key in cfg and cfg[key] is not None:
            values[field_name] = cfg[key]
        elif key == "rope_theta" and "rope_theta" in rope_params:
            values[field_name] = rope_params["rope_theta"]
        elif isinstance(default, str) and default.startswith("="):
            values[field_name] = values[default[1:]]
        elif default is None and field_name != "head_dim":
            raise ModelSpecError(f"{path}: missing required key {key!r} for family {fam.name}")
        elif field_name != "head_dim":
            values[field_name] = default
    values.setdefault("num_query_groups", values["num_attention_heads"])
    values["rope_scaling"] = _rope_scaling(cfg, path)
    if values.get("head_dim") == values["hidden_size"] // values["num_attention_heads"]:
        values["head_dim"] = None
    values.update(fam.fixed)
    if fam.name == "baichuan2" and cfg.get("num_key_value_heads"):
        values["num_query_groups"] = cfg["num_key_value_heads"]
    arch = ArchSpec(family=fam.name, **values)
    if arch.num_attention_heads % arch.num_query_groups:
        raise ModelSpecError(
            f"{path}: num_attention_heads={arch.num_attention_heads} is not a multiple of "
            f"num_key_value_heads={arch.num_query_groups}")
    return arch


def read_hf_config(path: str) -> Dict[str, Any]:
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    try:
        with open(file) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ModelSpecError(f"model.hf_config: {file} does not exist") from None
    except json.JSONDecodeError as e:
        raise ModelSpecError(f"model.hf_config: {file} is not valid JSON: {e}") from None


def arch_to_hf_config(arch: ArchSpec, *, torch_dtype: str = "bfloat16") -> Dict[str, Any]:
    """ArchSpec -> an HF config.json dict for the family (loads with transformers for llama/qwen2)."""
    fam = get_family(arch.family)
    cfg: Dict[str, Any] = {"architectures": [fam.hf_architectures[0]], "model_type": fam.hf_model_types[0]}
    for field_name, key, _ in fam.key_map:
        value = getattr(arch, field_name)
        if field_name == "head_dim" and value is None:
            continue
        cfg[key] = value
    cfg.update({"hidden_act": "silu", "torch_dtype": torch_dtype, "attention_dropout": 0.0,
                "initializer_range": 0.02, "use_cache": True})
    if arch.family == "qwen2":
        cfg.update({"use_sliding_window": False, "sliding_window": None, "max_window_layers": arch.num_layers})
    if arch.family == "baichuan2":
        cfg.pop("rope_theta", None) if arch.rope_theta == 10000.0 else None
    if arch.rope_scaling is not None:
        rs = arch.rope_scaling
        cfg["rope_scaling"] = {"rope_type": "llama3", "factor": rs.factor, "low_freq_factor": rs.low_freq_factor,
                               "high_freq_factor": rs.high_freq_factor,
                               "original_max_position_embeddings": rs.original_max_position_embeddings}
    cfg.update(fam.hf_extra)
    return cfg


def resolve_arch(name: Optional[str], hf_config: Optional[str], family: Optional[str] = None,
                 num_layers: Optional[int] = None) -> ArchSpec:
    """model.name / model.hf_config -> ArchSpec (hf_config wins)."""
    if hf_config:
        arch = arch_from_hf_config(read_hf_config(hf_config), hf_config, family)
    elif name:
        arch = preset(name)
    else:
        raise ModelSpecError("model: set model.name (a preset) or model.hf_config (a config.json path)")
    if num_layers is not None:
        arch = arch.replace(num_layers=num_layers)
    return arch
