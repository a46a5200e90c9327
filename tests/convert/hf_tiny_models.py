"""Tiny random Hugging Face checkpoints for the converter tests, and a plain Baichuan2 reference.

Llama: GQA (4 heads, 2 groups) + Llama-3.1 rope scaling with original_max_position_embeddings=16, so
positions >= 16 exercise the scaled frequencies. Qwen2: QKV biases, tied and untied. Baichuan2: its HF
code is remote, so the checkpoint is written by hand in its layout (W_pack, NormHead lm_head) and
checked against :func:`baichuan2_reference_logits`, a plain torch forward from those tensors.
Vocab 1600 is not a multiple of 128 or 256, so megatron's padding differs between TP=1 (1664) and TP=2 (1792);
it is larger than the bundled tiny tokenizer (1536 ids), copied in so `messages` inputs can be tokenized.
"""

from __future__ import annotations

import json
import os
from typing import Dict

import torch
import torch.nn.functional as F

VOCAB = 1600
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=256)


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def llama(path: str, *, seq_cls: bool = False, max_shard_size=None, seed: int = 1):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    cfg = LlamaConfig(**SMALL, num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=False,
                      rope_theta=500000.0, num_labels=1, pad_token_id=0,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    cls = LlamaForSequenceClassification if seq_cls else LlamaForCausalLM
    model = _randomise(cls(cfg), seed)
    model.save_pretrained(path, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    write_tokenizer(path)
    return model


def qwen2(path: str, *, tied: bool, seq_cls: bool = False, seed: int = 2):
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification

    cfg = Qwen2Config(**SMALL, num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=tied,
                      rope_theta=1000000.0, num_labels=1, pad_token_id=0, use_sliding_window=False)
    cls = Qwen2ForSequenceClassification if seq_cls else Qwen2ForCausalLM
    model = _randomise(cls(cfg), seed)
    model.save_pretrained(path)
    write_tokenizer(path)
    return model


def baichuan2(path: str, seed: int = 3) -> Dict[str, torch.Tensor]:
    from safetensors.torch import save_file

    h, f, n, layers = SMALL["hidden_size"], SMALL["intermediate_size"], SMALL["num_attention_heads"], SMALL["num_hidden_layers"]
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: 0.05 * torch.randn(*shape, generator=g)  # noqa: E731
    sd = {"model.embed_tokens.weight": r(VOCAB, h), "model.norm.weight": 1 + 2 * r(h), "lm_head.weight": r(VOCAB, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        sd.update({p + "self_attn.W_pack.weight": r(3 * h, h), p + "self_attn.o_proj.weight": r(h, h),
                   p + "mlp.gate_proj.weight": r(f, h), p + "mlp.up_proj.weight": r(f, h),
                   p + "mlp.down_proj.weight": r(h, f), p + "input_layernorm.weight": 1 + 2 * r(h),
                   p + "post_attention_layernorm.weight": 1 + 2 * r(h)})
    os.makedirs(path, exist_ok=True)
    save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    cfg = {"architectures": ["BaichuanForCausalLM"], "model_type": "baichuan", "hidden_size": h,
           "intermediate_size": f, "num_attention_heads": n, "num_hidden_layers": layers, "vocab_size": VOCAB,
           "max_position_embeddings": SMALL["max_position_embeddings"], "rms_norm_eps": 1e-6, "hidden_act": "silu",
           "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
           "auto_map": {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                        "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"}}
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    with open(os.path.join(path, "modeling_baichuan.py"), "w") as fh:
        fh.write("# stand-in for the remote modeling file (copied, never imported)\n")
    return sd


def write_tokenizer(path: str) -> None:
    """The bundled tiny tokenizer.json plus two small files whose bytes the round trip must preserve."""
    import shutil

    import megatron_align

    shutil.copy(os.path.join(os.path.dirname(megatron_align.__file__), "assets", "tiny", "tokenizer.json"), path)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 256, "marker": "keep-me"}, f)
    with open(os.path.join(path, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<s>"}, f)


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def baichuan2_reference_logits(sd: Dict[str, torch.Tensor], tokens: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Baichuan2-7B forward written plainly: RMSNorm, W_pack attention with RoPE (theta 1e4), SwiGLU, NormHead."""
    h, n = SMALL["hidden_size"], SMALL["num_attention_heads"]
    hn = h // n
    b, s = tokens.shape
    x = sd["model.embed_tokens.weight"][tokens]
    inv = 1.0 / (10000.0 ** (torch.arange(0, hn, 2, dtype=torch.float32) / hn))
    ang = torch.outer(torch.arange(s, dtype=torch.float32), inv)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    for i in range(SMALL["num_hidden_layers"]):
        p = f"model.layers.{i}."
        y = _rms(x, sd[p + "input_layernorm.weight"], eps)
        q, k, v = (y @ sd[p + "self_attn.W_pack.weight"].T).split(h, dim=-1)
        q, k, v = (t.view(b, s, n, hn).transpose(1, 2) for t in (q, k, v))
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + att.transpose(1, 2).reshape(b, s, h) @ sd[p + "self_attn.o_proj.weight"].T
        y = _rms(x, sd[p + "post_attention_layernorm.weight"], eps)
        x = x + (F.silu(y @ sd[p + "mlp.gate_proj.weight"].T) * (y @ sd[p + "mlp.up_proj.weight"].T)) \
            @ sd[p + "mlp.down_proj.weight"].T
    x = _rms(x, sd["model.norm.weight"], eps)
    return x @ F.normalize(sd["lm_head.weight"], dim=-1).T


def hf_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits.float()


def hf_token_logprobs(model, ids) -> torch.Tensor:
    t = torch.tensor([ids])
    logp = torch.log_softmax(hf_logits(model, t)[0].double(), -1)
    return logp[:-1].gather(-1, t[0, 1:, None])[:, 0]
