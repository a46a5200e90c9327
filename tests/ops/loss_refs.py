"""float64 references of the megatron_align.ops losses, in plain PyTorch, and comparison helpers."""

from __future__ import annotations

import torch


def ce(x, labels, ignore_index=-100, label_smoothing=0.0):
    """megatron-core semantics: s = ε·V/(V-1); loss = (1-s)·nll + s·mean_v(-log p_v); 0 where ignored."""
    V = x.shape[-1]
    lp = torch.log_softmax(x.double(), dim=-1)
    valid = labels != ignore_index
    nll = -lp.gather(-1, torch.where(valid, labels, 0)[..., None]).squeeze(-1)
    if label_smoothing > 0:
        s = label_smoothing * V / (V - 1)
        nll = (1 - s) * nll + s * (-lp.mean(dim=-1))
    return torch.where(valid, nll, torch.zeros_like(nll))


def logprobs(x, labels, ignore_index=-100):
    lp = torch.log_softmax(x.double(), dim=-1)
    valid = labels != ignore_index
    out = lp.gather(-1, torch.where(valid, labels, 0)[..., None]).squeeze(-1)
    return torch.where(valid, out, torch.zeros_like(out))


def packed(x, labels, cu, loss_mask=None, average=False):
    lp = logprobs(x, labels)
    w = torch.ones_like(lp) if loss_mask is None else loss_mask.double()
    w = torch.where(labels == -100, torch.zeros_like(w), w)
    out = []
    for i in range(len(cu) - 1):
        a, b = int(cu[i]), int(cu[i + 1])
        tot = (w[a:b] * lp[a:b]).sum()
        if average:
            d = w[a:b].sum()
            tot = tot / d if d != 0 else tot * 0
        out.append(tot)
    return torch.stack(out) if out else lp.new_zeros(0)


def topk_kl(p, r, k):
    k = min(k, p.shape[-1])
    # documented tie rule: value descending, then the lower vocab id (a stable descending sort)
    idx = torch.sort(r.double(), dim=-1, descending=True, stable=True).indices[..., :k]
    lp = torch.log_softmax(p.double().gather(-1, idx), dim=-1)
    lq = torch.log_softmax(r.double().gather(-1, idx), dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1)


def grad_of(fn, x, *args, **kw):
    """(value, d sum(value * w) / dx) with a fixed random weight w, in float64 for float64 x."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, *args, **kw)
    w = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * w).sum().backward()
    return out.detach(), x.grad.detach()


def err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
