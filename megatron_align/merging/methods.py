"""Merge methods: one function per method, applied to one tensor (by its HF name) at a time.

Every function receives the same tensor of each model ``θ_1..θ_k`` (the ``--models``), the base ``θ_0``
(``--base``) where the method uses one, and :class:`MergeParams`; it returns the merged tensor in the
compute dtype (float32, float64 for float64 inputs). Task vectors are ``δ_i = θ_i − θ_0``. The
definitions are mergekit 0.1.5's (``mergekit.merge_methods``), checked against it in tests/merging.

``models`` may be lazy (each ``models[i]`` reads the tensor from disk): the functions index each model once
and keep only what the formula needs (an accumulator, or the task vectors), never modify the inputs, so
the peak is about 2 (linear), 4 (task arithmetic) or k + 2 (Model Stock) tensors, not 2k.
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


def linear(models: Sequence[Tensor], base: Optional[Tensor], p: MergeParams, rng=None) -> Tensor:
    """``θ = Σ w_i θ_i / Σ w_i`` (``normalize``, the default), or ``Σ w_i θ_i`` without it.
    Wortsman et al., Model soups, arXiv 2203.05482."""
    out: Optional[Tensor] = None
    for i, w in enumerate(p.weights):
        t = models[i]
        out = torch.zeros_like(t) if out is None else out
        out.add_(t, alpha=float(w))
        del t
    return out.div_(float(sum(p.weights))) if p.normalize else out


def _finish(mixed: Tensor, divisor, base: Tensor, p: MergeParams) -> Tensor:
    if p.normalize:
        mixed.div_(divisor)
    if p.lam != 1:
        mixed.mul_(p.lam)
    return mixed.add_(base)


def _combine_linear(delta: Callable[[int], Tensor], base: Tensor, p: MergeParams) -> Tensor:
    """``θ_0 + λ Σ_i w_i δ_i / D``, ``D = Σ_i w_i`` (|D| < 1e-8 → 1) dividing only under ``normalize``;
    ``delta(i)`` makes one task vector at a time."""
    mixed = torch.zeros_like(base)
    for i, w in enumerate(p.weights):
        mixed.add_(delta(i), alpha=float(w))
    divisor = float(sum(p.weights))
    return _finish(mixed, 1.0 if abs(divisor) < 1e-8 else divisor, base, p)


def _combine_consensus(deltas: List[Tensor], base: Tensor, p: MergeParams) -> Tensor:
    """TIES sign election: ``θ_0 + λ Σ_i w_i δ_i m_i / D`` with ``m_i`` the entries whose sign agrees with
    ``sign(Σ_j w_j δ_j)`` (zero counts as +) and ``D = Σ_i w_i m_i`` per entry (0 → 1), dividing only under
    ``normalize``."""
    w = torch.tensor(list(p.weights), dtype=base.dtype)
    weighted = torch.stack([d * wi for d, wi in zip(deltas, w)])
    del deltas[:]
    majority = (weighted.sum(dim=0) >= 0).to(base.dtype) * 2 - 1
    mask = (weighted.sign() == majority).to(base.dtype)
    mixed = (weighted * mask).sum(dim=0)
    divisor = (w.reshape((len(w),) + (1,) * base.dim()) * mask).sum(dim=0)
    divisor[divisor == 0] = 1
    return _finish(mixed, divisor, base, p)


def task_arithmetic(models: Sequence[Tensor], base: Optional[Tensor], p: MergeParams, rng=None) -> Tensor:
    """``θ = θ_0 + λ Σ w_i (θ_i − θ_0)`` (divided by ``Σ w_i`` under ``--normalize``; off by default).
    Ilharco et al., Editing models with task arithmetic, arXiv 2212.04089."""
    return _combine_linear(lambda i: models[i] - base, base, p)


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


def ties(models: Sequence[Tensor], base: Optional[Tensor], p: MergeParams, rng=None) -> Tensor:
    """TIES: ``δ_i`` trimmed to its top ``density`` fraction by magnitude, scaled by ``w_i``, sign elected by the
    sum, ``θ = θ_0 + λ Σ_i w_i δ_i m_i / Σ_i w_i m_i`` (``normalize`` on by default). Yadav et al., arXiv 2306.01708."""
    return _combine_consensus([magnitude_prune(models[i] - base, p.density) for i in range(len(p.weights))], base, p)


def dare_linear(models: Sequence[Tensor], base: Optional[Tensor], p: MergeParams, rng=None) -> Tensor:
    """DARE + task arithmetic: ``θ = θ_0 + λ Σ w_i DARE(δ_i)`` (see :func:`random_drop_rescale`).
    Yu et al., Language models are Super Mario, arXiv 2311.03099."""
    return _combine_linear(lambda i: random_drop_rescale(models[i] - base, p.density, rng), base, p)


def dare_ties(models: Sequence[Tensor], base: Optional[Tensor], p: MergeParams, rng=None) -> Tensor:
    """DARE + TIES sign election: ``θ = θ_0 + λ Σ_i w_i DARE(δ_i) m_i`` (``normalize`` off by default)."""
    return _combine_consensus([random_drop_rescale(models[i] - base, p.density, rng)
                               for i in range(len(p.weights))], base, p)


def model_stock(models: Sequence[Tensor], base: Optional[Tensor], p: MergeParams, rng=None) -> Tensor:
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
    k = len(p.weights)
    deltas = [flat(models[i]) - w0 for i in range(k)]
    cos = []
    for i in range(k):
        for j in range(i + 1, k):
            norms = torch.norm(deltas[i], dim=-1) * torch.norm(deltas[j], dim=-1)
            cos.append(((deltas[i] * deltas[j]).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    c = torch.stack(cos).mean(dim=0).unsqueeze(-1)
    denom = 1 + (k - 1) * c
    singular = denom.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(c), k * c / torch.where(singular, torch.ones_like(denom), denom))
    average = deltas.pop(0)  # mean θ_i = θ_0 + mean δ_i, accumulated in place of the task vectors
    while deltas:
        average.add_(deltas.pop())
    average.div_(k).add_(w0)
    return average.mul_(t).add_(w0 * (1 - t)).reshape(shape)


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
