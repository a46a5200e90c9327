"""Merge methods: one function per method, applied to one tensor (by its HF name) at a time.

Every function receives the same tensor of each model ``θ_1..θ_k`` (the ``--models``), the base ``θ_0``
(``--base``) where the method uses one, and :class:`MergeParams`; it returns the merged tensor in the
compute dtype (float32, float64 for float64 inputs). Task vectors are ``δ_i = θ_i − θ_0``. The
definitions are mergekit 0.1.5's (``mergekit.merge_methods``), checked against it in tests/merging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class MergeParams:
    weights: Sequence[float]  # w_i, one per model (not the base)
    lam: float = 1.0  # λ, scales the combined task vector
    normalize: bool = False  # divide by Σ w_i (the method's default when not given on the command line)
    density: float = 1.0  # fraction of each task vector kept (TIES, DARE)
    filter_wise: bool = False  # Model Stock: one ratio per output row instead of per tensor


MergeFn = Callable[[List[Tensor], Optional[Tensor], MergeParams, Optional[torch.Generator]], Tensor]


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: MergeFn
    needs_base: bool
    min_models: int  # models besides the base
    default_normalize: bool
    takes_weights: bool = True
    takes_lambda: bool = False
    takes_density: bool = False
    random: bool = False  # uses the per-tensor generator (DARE)
    reference: str = ""


def _weights(p: MergeParams, like: Tensor) -> Tensor:
    return torch.tensor(list(p.weights), dtype=like.dtype)


def linear(models: List[Tensor], base: Optional[Tensor], p: MergeParams, rng=None) -> Tensor:
    """``θ = Σ w_i θ_i / Σ w_i`` (``normalize``, the default), or ``Σ w_i θ_i`` without it.
    Wortsman et al., Model soups, arXiv 2203.05482."""
    w = _weights(p, models[0])
    out = torch.zeros_like(models[0])
    for t, wi in zip(models, w):
        out.add_(t, alpha=float(wi))
    return out / w.sum() if p.normalize else out


def _combine(deltas: List[Tensor], base: Tensor, p: MergeParams, consensus: bool) -> Tensor:
    """``θ_0 + λ · Σ_i w_i δ_i [· m_i] / D`` with, under ``consensus`` (TIES sign election), ``m_i`` the entries
    whose sign agrees with ``sign(Σ_j w_j δ_j)`` (zero counts as +) and ``D = Σ_i w_i m_i`` per entry (0 → 1);
    without it ``D = Σ_i w_i`` (|D| < 1e-8 → 1). ``D`` divides only under ``normalize``."""
    w = _weights(p, base)
    weighted = torch.stack([d * wi for d, wi in zip(deltas, w)])
    wshape = (len(deltas),) + (1,) * base.dim()
    if consensus:
        majority = (weighted.sum(dim=0) >= 0).to(base.dtype) * 2 - 1
        mask = (weighted.sign() == majority).to(base.dtype)
        mixed = (weighted * mask).sum(dim=0)
        divisor = (w.reshape(wshape) * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(dim=0)
        divisor = w.sum()
        if divisor.abs() < 1e-8:
            divisor = torch.ones_like(divisor)
    if p.normalize:
        mixed = mixed / divisor
    return base + p.lam * mixed


def task_arithmetic(models: List[Tensor], base: Optional[Tensor], p: MergeParams, rng=None) -> Tensor:
    """``θ = θ_0 + λ Σ w_i (θ_i − θ_0)`` (divided by ``Σ w_i`` under ``--normalize``; off by default).
    Ilharco et al., Editing models with task arithmetic, arXiv 2212.04089."""
    return _combine([t - base for t in models], base, p, consensus=False)


def magnitude_prune(delta: Tensor, density: float) -> Tensor:
    """Keep the ``k = max(1, ⌊density · n⌋)`` entries of largest ``|δ|`` over the whole tensor, zero the rest."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)
    mask[torch.topk(delta.abs().reshape(-1), k).indices] = 1
    return delta * mask.reshape(delta.shape)


def random_drop_rescale(delta: Tensor, density: float, rng: Optional[torch.Generator]) -> Tensor:
    """DARE: ``m ~ Bernoulli(density)`` per entry, ``δ' = (m ⊙ δ) · ‖δ‖₁ / ‖m ⊙ δ‖₁`` (the L1 ratio, as mergekit;
    no rescale when either norm is below 1e-7)."""
    if density >= 1:
        return delta
    mask = torch.bernoulli(torch.full_like(delta, density), generator=rng)
    masked = delta * mask
    before, after = delta.abs().sum(), masked.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return masked
    return masked * (before / after)


def ties(models: List[Tensor], base: Optional[Tensor], p: MergeParams, rng=None) -> Tensor:
    """TIES: ``δ_i`` trimmed to its top ``density`` fraction by magnitude, scaled by ``w_i``, sign elected by the
    sum, ``θ = θ_0 + λ Σ_i w_i δ_i m_i / Σ_i w_i m_i`` (``normalize`` on by default). Yadav et al., arXiv 2306.01708."""
    return _combine([magnitude_prune(t - base, p.density) for t in models], base, p, consensus=True)


def dare_linear(models: List[Tensor], base: Optional[Tensor], p: MergeParams, rng=None) -> Tensor:
    """DARE + task arithmetic: ``θ = θ_0 + λ Σ w_i DARE(δ_i)`` (see :func:`random_drop_rescale`).
    Yu et al., Language models are Super Mario, arXiv 2311.03099."""
    return _combine([random_drop_rescale(t - base, p.density, rng) for t in models], base, p, consensus=False)


def dare_ties(models: List[Tensor], base: Optional[Tensor], p: MergeParams, rng=None) -> Tensor:
    """DARE + TIES sign election: ``θ = θ_0 + λ Σ_i w_i DARE(δ_i) m_i`` (``normalize`` off by default)."""
    return _combine([random_drop_rescale(t - base, p.density, rng) for t in models], base, p, consensus=True)


def model_stock(models: List[Tensor], base: Optional[Tensor], p: MergeParams, rng=None) -> Tensor:
    """Model Stock, per tensor flattened whole (1-D tensors included; per output row under ``filter_wise``):
    ``cos`` = mean over pairs i<j of ``δ_i·δ_j / max(‖δ_i‖‖δ_j‖, 1e-6)`` (each clamped to [−1, 1]),
    ``t = k·cos / (1 + (k−1)·cos)`` (t = 0 where |1 + (k−1)·cos| < 1e-6), ``θ = t · mean_i θ_i + (1 − t) · θ_0``.
    Jang et al., Model Stock, arXiv 2403.19522."""
    shape = base.shape
    if p.filter_wise:
        flat = (lambda t: t.unsqueeze(0)) if base.dim() == 1 else (lambda t: t)
    else:
        flat = (lambda t: t.reshape(-1))
    w0 = flat(base)
    ws = [flat(t) for t in models]
    deltas = [t - w0 for t in ws]
    cos = []
    for i in range(len(deltas)):
        for j in range(i + 1, len(deltas)):
            norms = torch.norm(deltas[i], dim=-1) * torch.norm(deltas[j], dim=-1)
            cos.append(((deltas[i] * deltas[j]).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    c = torch.stack(cos).mean(dim=0).unsqueeze(-1)
    k = len(ws)
    denom = 1 + (k - 1) * c
    singular = denom.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(c), k * c / torch.where(singular, torch.ones_like(denom), denom))
    return (t * (sum(ws) / k) + (1 - t) * w0).reshape(shape)


METHODS: Dict[str, MergeMethod] = {m.name: m for m in (
    MergeMethod("linear", linear, needs_base=False, min_models=2, default_normalize=True,
                reference="https://arxiv.org/abs/2203.05482"),
    MergeMethod("task_arithmetic", task_arithmetic, needs_base=True, min_models=1, default_normalize=False,
                takes_lambda=True, reference="https://arxiv.org/abs/2212.04089"),
    MergeMethod("model_stock", model_stock, needs_base=True, min_models=2, default_normalize=False,
                takes_weights=False, reference="https://arxiv.org/abs/2403.19522"),
    MergeMethod("ties", ties, needs_base=True, min_models=1, default_normalize=True, takes_lambda=True,
                takes_density=True, reference="https://arxiv.org/abs/2306.01708"),
    MergeMethod("dare_linear", dare_linear, needs_base=True, min_models=1, default_normalize=False,
                takes_lambda=True, takes_density=True, random=True, reference="https://arxiv.org/abs/2311.03099"),
    MergeMethod("dare_ties", dare_ties, needs_base=True, min_models=1, default_normalize=False,
                takes_lambda=True, takes_density=True, random=True, reference="https://arxiv.org/abs/2311.03099"),
)}
