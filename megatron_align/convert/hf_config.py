"""HF config.json <-> ArchSpec for conversion: family checks, scalar heads, and pass-through keys.

Keys of config.json that the ArchSpec does not model (token ids, labels, ...) are kept in
``arch.extra["hf_config"]`` and written back on the way out, so a round trip keeps the config.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from megatron_align.convert.errors import ConvertError
from megatron_align.models.arch import ArchSpec
from megatron_align.models.families import FAMILIES, ModelSpecError, arch_from_hf_config, arch_to_hf_config

SEQ_CLS_SUFFIX = "ForSequenceClassification"
# Keys derived from the ArchSpec on the way out (never passed through from the source config).
_DERIVED = {"rope_scaling", "rope_parameters", "rope_theta", "model_type", "torch_dtype", "dtype",
            "transformers_version", "auto_map"}


def _derived_keys(family: str):
    return _DERIVED | {hf_key for _, hf_key, _ in FAMILIES[family].key_map}


def arch_from_hf(cfg: Dict[str, Any], path: str, family: Optional[str] = None) -> ArchSpec:
    """config.json -> ArchSpec (with the scalar head and pass-through keys in ``extra``)."""
    try:
        arch = arch_from_hf_config(cfg, path)
    except ModelSpecError as e:
        if family is None or "unknown architecture" not in str(e):
            raise ConvertError(str(e)) from None
        try:
            arch = arch_from_hf_config(cfg, path, family)
        except ModelSpecError as e2:
            raise ConvertError(str(e2)) from None
    if family is not None and family != arch.family:
        raise ConvertError(f"{path}: this checkpoint is a {arch.family} model "
                           f"({', '.join(cfg.get('architectures') or [str(cfg.get('model_type'))])}), not {family}")
    extra: Dict[str, Any] = {"hf_config": {k: v for k, v in cfg.items() if k not in _derived_keys(arch.family)}}
    archs = cfg.get("architectures") or []
    if any(a.endswith(SEQ_CLS_SUFFIX) for a in archs):
        n = cfg.get("num_labels") or len(cfg.get("id2label") or {}) or 2
        extra["reward_head"] = {"num_labels": int(n)}
    return arch.replace(extra=extra)


def hf_config_from_arch(arch: ArchSpec, torch_dtype: str) -> Dict[str, Any]:
    """ArchSpec (+ its pass-through keys) -> config.json."""
    cfg = arch_to_hf_config(arch, torch_dtype=torch_dtype)
    passthrough = dict((arch.extra or {}).get("hf_config") or {})
    derived = _derived_keys(arch.family)
    for k, v in passthrough.items():
        if k not in derived:
            cfg[k] = v
    head = (arch.extra or {}).get("reward_head")
    if head is not None:
        if not any(a.endswith(SEQ_CLS_SUFFIX) for a in cfg.get("architectures") or []):
            cfg["architectures"] = [FAMILIES[arch.family].hf_architectures[0].replace("ForCausalLM", SEQ_CLS_SUFFIX)]
        if len(cfg.get("id2label") or {}) != head["num_labels"]:  # transformers derives num_labels from id2label
            cfg["num_labels"] = head["num_labels"]
            cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(head["num_labels"])}
            cfg["label2id"] = {f"LABEL_{i}": i for i in range(head["num_labels"])}
    return cfg
