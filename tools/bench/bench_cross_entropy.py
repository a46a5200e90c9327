#!/usr/bin/env python3
"""Cross-entropy fwd+bwd: fused vocab_parallel_cross_entropy vs plain PyTorch, torch.compile, megatron-core,
TE / Liger when importable.   python tools/bench/bench_cross_entropy.py [--quick] [--reps N]"""

import torch

import common as C


def make_inputs(T, V, dev):
    g = torch.Generator(device=dev).manual_seed(0)
    labels = torch.randint(0, V, (T,), device=dev, generator=g)
    return {"labels": labels,
            "make_logits": lambda: torch.randn(T, V, device=dev, generator=g).to(C.dtype_for(dev))}


def plain(x, y):
    return -torch.log_softmax(x.float(), dim=-1).gather(-1, y[:, None]).squeeze(-1)


def build_variants(inputs, dev):
    from megatron_align.ops import vocab_parallel_cross_entropy

    y = inputs["labels"]
    v = {"fused": lambda x: vocab_parallel_cross_entropy(x, y),
         "fused_inplace": lambda x: vocab_parallel_cross_entropy(x * 1, y, inplace_backward=True),
         "torch": lambda x: plain(x, y)}
    comp = C.compiled(plain)
    v["torch_compile"] = (lambda x: comp(x, y)) if comp else None
    if C.init_megatron_tp1():
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy as megatron_ce

        v["megatron"] = lambda x: megatron_ce(x[:, None], y[:, None]).squeeze(1)
    for name, fn in C.optional_baselines().items():
        v[name] = lambda x, fn=fn: fn(x, y)
    return v


if __name__ == "__main__":
    C.main_for("cross_entropy", build_variants, make_inputs)
