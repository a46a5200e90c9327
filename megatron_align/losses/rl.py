"""The math of online RL (GRPO, PPO) as pure tensor functions on per-token log-prob tensors.

Shapes: ``[B, T]`` per-token tensors over the B completions of a micro-batch (T = the longest
completion), ``mask`` 1.0 on completion tokens that carry loss, 0.0 on padding. Following the objective
contract (engine/objective.py), nothing here divides by a batch count: reductions return
``(loss_sum, count, unit)`` and the trainer divides once by the global count.

Definitions follow TRL 1.16 (``trl/trainer/grpo_trainer.py``) where TRL has them:

- advantages: ``(r - mean_group) / (std_group + 1e-4)``, unbiased std, ``scale`` group / batch / none;
- ratio ``ρ = exp(logπ - logπ_old)``; per-token loss ``-min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A)``;
- KL penalty ``+β·k`` per token, k = k3 (TRL's), k1, or the report's exact top-k KL;
- reductions ``grpo`` (mean over sequences of each sequence's token mean), ``bnpo`` (token mean over the
  batch), ``dr_grpo`` (token sum / (B · max_completion_length)), ``dapo`` (token sum over the generation
  batch's token count, see :func:`dapo_scale`).

and PPO's GAE and clipped value loss (Schulman et al. 2017; the report's PPO baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

# ---------------------------------------------------------------------------------------------------
# advantages
# ---------------------------------------------------------------------------------------------------

ADV_SCALES = ("group", "batch", "none")


def _nanstd_unbiased(x: torch.Tensor, dim=None, keepdim: bool = False) -> torch.Tensor:
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    n = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    var = torch.nansum((x - mean) ** 2, dim=dim, keepdim=True) / (n - 1).clamp(min=1)
    std = var.sqrt()
    return std if keepdim else (std.squeeze(dim) if dim is not None else std.reshape(()))


def group_advantages(rewards: torch.Tensor, num_generations: int, scale: str = "group",
                     eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages of ``rewards`` [N] laid out group by group (N = groups x num_generations).

    ``scale``: ``group`` divides by each group's unbiased std + eps (GRPO), ``batch`` by the whole batch's,
    ``none`` only subtracts the group mean (Dr. GRPO). NaN rewards are left out of the statistics and
    get advantage 0 (TRL). A group whose rewards are all equal gets advantages 0."""
    if scale not in ADV_SCALES:
        raise ValueError(f"advantage scale {scale!r} is not one of {list(ADV_SCALES)}")
    if rewards.dim() != 1 or num_generations < 1 or rewards.numel() % num_generations:
        raise ValueError(f"rewards must be [groups * num_generations]; got {tuple(rewards.shape)} with "
                         f"num_generations={num_generations}")
    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    adv = grouped - mean
    if scale == "group":
        std = _nanstd_unbiased(grouped, dim=1, keepdim=True) if num_generations > 1 else torch.zeros_like(mean)
        adv = adv / (std + eps)
    elif scale == "batch":
        std = _nanstd_unbiased(rewards) if rewards.numel() > 1 else torch.zeros((), dtype=rewards.dtype)
        adv = adv / (std + eps)
    return torch.nan_to_num(adv.reshape(-1), nan=0.0)


# ---------------------------------------------------------------------------------------------------
# KL estimators (per token; policy log-probs carry the gradient)
# ---------------------------------------------------------------------------------------------------


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log π - log π_ref (unbiased, high variance, can be negative)."""
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = e^(ref - logπ) - (ref - logπ) - 1 (Schulman's; TRL's GRPO KL), >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def kl_topk(policy_logits: torch.Tensor, ref_logits: torch.Tensor, *, k: int = 500, temperature: float = 1.0,
            tp_group=None) -> torch.Tensor:
    """The report's exact KL(π‖π_ref) over the reference's top-k tokens, both distributions renormalised
    there (``megatron_align.ops.topk_kl``). Logits ``[..., V/TP]`` (vocab-parallel over ``tp_group``),
    divided by ``temperature`` as the sampling distribution; returns fp32 ``[...]``, differentiable
    w.r.t. the policy logits. ``k`` >= the vocabulary gives the exact full KL."""
    from megatron_align.ops.topk_kl import topk_kl

    if temperature != 1.0:
        policy_logits, ref_logits = policy_logits / temperature, ref_logits / temperature
    return topk_kl(policy_logits, ref_logits, k=k, tp_group=tp_group)


KL_ESTIMATORS: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"k1": kl_k1, "k3": kl_k3}


# ---------------------------------------------------------------------------------------------------
# the clipped policy objective
# ---------------------------------------------------------------------------------------------------


@dataclass
class PolicyLossTerms:
    per_token_loss: torch.Tensor  # [B, T], not masked
    ratio: torch.Tensor  # [B, T] ρ
    low_clipped: torch.Tensor  # bool [B, T]: ρ < 1-ε_low with A < 0 (clip active)
    high_clipped: torch.Tensor  # bool [B, T]: ρ > 1+ε_high with A > 0


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, *,
                        eps_low: float = 0.2, eps_high: Optional[float] = None, delta: Optional[float] = None,
                        kl: Optional[torch.Tensor] = None, beta: float = 0.0,
                        kl_ratio_correction: bool = False) -> PolicyLossTerms:
    """Per-token PPO/GRPO surrogate ``-min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A) + β·kl``.

    ``advantages`` [B] (one per sequence) or [B, T]; ``eps_high`` defaults to ``eps_low`` (DAPO's
    clip-higher sets it larger); ``delta`` caps ρ in the unclipped branch (two-sided clipping);
    ``kl`` a per-token KL estimate to add with weight ``beta``; ``kl_ratio_correction`` multiplies it by
    ρ (TRL's ``use_bias_correction_kl``)."""
    eps_high = eps_low if eps_high is None else eps_high
    adv = advantages.unsqueeze(-1) if advantages.dim() == logp.dim() - 1 else advantages
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    unclipped = ratio if delta is None else torch.clamp(ratio, max=delta)
    loss = -torch.min(unclipped * adv, clipped * adv)
    if beta != 0.0:
        if kl is None:
            raise ValueError("beta != 0 needs a per-token kl")
        loss = loss + beta * (kl * ratio if kl_ratio_correction else kl)
    with torch.no_grad():
        low = (ratio < 1 - eps_low) & (adv < 0)
        high = (ratio > 1 + eps_high) & (adv > 0)
    return PolicyLossTerms(loss, ratio, low, high)


# ---------------------------------------------------------------------------------------------------
# reductions: (loss_sum, count, unit), never divided by a batch count
# ---------------------------------------------------------------------------------------------------

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def reduce_policy_loss(per_token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str, *,
                       max_completion_length: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor, str]:
    """Per-token losses [B, T] -> ``(loss_sum, count, unit)`` whose global Σloss_sum / Σcount is TRL's loss:

    - ``grpo``: Σ_seq (Σ_t ℓ·m / max(Σ_t m, 1)), count = sequences (SEQUENCE): the mean over sequences of
      each sequence's token mean;
    - ``bnpo``: Σ ℓ·m, count = tokens (TOKEN): the token mean over the batch;
    - ``dr_grpo``: Σ ℓ·m / max_completion_length, count = sequences (SEQUENCE): Σℓm / (B · L_max);
    - ``dapo``: as ``bnpo`` (TOKEN); TRL normalises by the generation batch's token count per optimizer
      step, which the stage applies with :func:`dapo_scale` when one rollout batch feeds several steps.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss type {loss_type!r} is not one of {list(LOSS_TYPES)}")
    m = mask.to(per_token_loss.dtype)
    masked = per_token_loss * m
    if loss_type == "grpo":
        per_seq = masked.sum(-1) / m.sum(-1).clamp(min=1.0)
        return per_seq.sum(), torch.tensor(float(per_token_loss.shape[0]), device=m.device), "sequence"
    if loss_type == "dr_grpo":
        if not max_completion_length:
            raise ValueError("dr_grpo needs max_completion_length (the rollout's max new tokens)")
        return (masked.sum() / float(max_completion_length),
                torch.tensor(float(per_token_loss.shape[0]), device=m.device), "sequence")
    return masked.sum(), m.sum(), "token"


def dapo_scale(step_tokens: float, generation_tokens: float, steps_per_generation: int) -> float:
    """Factor on a ``dapo`` loss_sum so that the trainer's division by this step's global token count
    yields TRL's normaliser, the generation batch's tokens / steps_per_generation."""
    return float(step_tokens) * steps_per_generation / max(float(generation_tokens), 1.0)


def masked_sum_count(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[Σ x·m, Σ m]`` (fp64) for a token-mean metric (KL, entropy, clip fractions)."""
    m = mask.to(torch.float64)
    return torch.stack([(x.detach().to(torch.float64) * m).sum(), m.sum()])


# ---------------------------------------------------------------------------------------------------
# PPO: rewards with the KL in them, GAE, clipped value loss
# ---------------------------------------------------------------------------------------------------


def kl_penalized_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Token-level rewards [B, T]: ``-β·kl_t`` on every completion token and the sequence score added
    on its last one (the report keeps the KL in the token-level reward)."""
    m = mask.to(kl.dtype)
    rewards = -beta * kl * m
    n = m.sum(-1).long()
    if (n == 0).any():
        raise ValueError("a completion without tokens cannot carry its score")
    last = n - 1  # masks are right-padded: completion tokens first
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0,
        lam: float = 0.95) -> Tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded completions [B, T].

    ``δ_t = r_t + γ·V_{t+1}·m_{t+1} - V_t``, ``A_t = δ_t + γλ·m_{t+1}·A_{t+1}``; the value after the last
    token is 0 (the episode ends). Returns ``(advantages, returns = A + V)``, zero on padding."""
    m = mask.to(values.dtype)
    B, T = values.shape
    adv = torch.zeros_like(values)
    next_adv = torch.zeros(B, dtype=values.dtype, device=values.device)
    next_val = torch.zeros_like(next_adv)
    next_m = torch.zeros_like(next_adv)
    for t in range(T - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_val * next_m - values[:, t]
        a = delta + gamma * lam * next_m * next_adv
        adv[:, t] = a * m[:, t]
        next_adv, next_val, next_m = a, values[:, t], m[:, t]
    returns = (adv + values) * m
    return adv, returns


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip: Optional[float] = 0.2) -> torch.Tensor:
    """Per-token PPO value loss ``0.5·max((V - R)², (clip(V, V_old ± c) - R)²)`` (no clip: ``clip=None``).
    Reduce with ``reduce_policy_loss(..., "bnpo")`` (token mean)."""
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * unclipped
    v_clip = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * torch.max(unclipped, (v_clip - returns) ** 2)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` over the masked tokens to unit variance (and zero mean), as PPO does with GAE
    advantages. The statistics are over this tensor; a stage with DP computes them over the global batch."""
    m = mask.to(x.dtype)
    n = m.sum().clamp(min=1.0)
    mean = (x * m).sum() / n
    var = (((x - mean) * m) ** 2).sum() / (n - 1).clamp(min=1.0)
    out = (x - mean) * torch.rsqrt(var + eps)
    return (out if shift_mean else out + mean) * m
