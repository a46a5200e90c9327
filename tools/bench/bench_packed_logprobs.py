#!/usr/bin/env python3
"""Packed-sequence log-probs fwd+bwd (DPO building block): fused packed_sequence_logprobs vs plain PyTorch
(log_softmax + gather + index_add) and its torch.compile.   python tools/bench/bench_packed_logprobs.py [--quick]"""

import torch

import common as C


def make_inputs(T, V, dev):
    g = torch.Generator(device=dev).manual_seed(0)
    labels = torch.randint(0, V, (T,), device=dev, generator=g)
    n = max(1, T // 512)  # sequences of ~512 tokens, the first half of each masked as prompt
    cu = torch.linspace(0, T, n + 1, device=dev).long()
    mask = (torch.arange(T, device=dev) - cu[:-1].repeat_interleave(cu.diff())) >= cu.diff().repeat_interleave(
        cu.diff()) // 2
    return {"labels": labels, "cu": cu, "mask": mask,
            "make_logits": lambda: torch.randn(T, V, device=dev, generator=g).to(C.dtype_for(dev))}


def plain(x, y, cu, mask):
    lp = torch.log_softmax(x.float(), dim=-1).gather(-1, y[:, None]).squeeze(-1) * mask
    seg = torch.searchsorted(cu, torch.arange(x.shape[0], device=x.device), right=True) - 1
    return lp.new_zeros(cu.numel() - 1).index_add(0, seg, lp)


def build_variants(inputs, dev):
    from megatron_align.ops import packed_sequence_logprobs

    y, cu, m = inputs["labels"], inputs["cu"], inputs["mask"]
    comp = C.compiled(plain)
    return {"fused": lambda x: packed_sequence_logprobs(x, y, cu, loss_mask=m),
            "torch": lambda x: plain(x, y, cu, m),
            "torch_compile": (lambda x: comp(x, y, cu, m)) if comp else None}


if __name__ == "__main__":
    C.main_for("packed_logprobs", build_variants, make_inputs)
