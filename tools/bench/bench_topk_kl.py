#!/usr/bin/env python3
"""Exact top-500 KL fwd+bwd (GRPO): fused topk_kl vs plain PyTorch (topk + gather + log_softmax) and its
torch.compile.   python tools/bench/bench_topk_kl.py [--quick]"""

import torch

import common as C

K = 500


def make_inputs(T, V, dev):
    g = torch.Generator(device=dev).manual_seed(0)
    ref = torch.randn(T, V, device=dev, generator=g).to(C.dtype_for(dev))
    return {"ref": ref, "make_logits": lambda: torch.randn(T, V, device=dev, generator=g).to(C.dtype_for(dev))}


def plain(x, ref):
    idx = torch.topk(ref, min(K, ref.shape[-1]), dim=-1).indices
    lp = torch.log_softmax(x.gather(-1, idx).float(), -1)
    lq = torch.log_softmax(ref.gather(-1, idx).float(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def build_variants(inputs, dev):
    from megatron_align.ops import topk_kl

    ref = inputs["ref"]
    comp = C.compiled(plain)
    return {"fused": lambda x: topk_kl(x, ref, k=K),
            "torch": lambda x: plain(x, ref),
            "torch_compile": (lambda x: comp(x, ref)) if comp else None}


if __name__ == "__main__":
    C.main_for("topk_kl", build_variants, make_inputs)
