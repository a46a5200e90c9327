"""Our GRPO loss pieces reproduce TRL 1.16's ``GRPOTrainer._compute_loss`` on the same per-token
log-probs, for every shared loss type, with and without the k3 KL term, and TRL's advantage statistics.

TRL is called through its own code on a bare trainer object (``object.__new__``) with the attributes
``_compute_loss`` reads and a stub for the forward that returns our fixed log-probs; if TRL's private
names change, the test skips with the reason (TRL is pinned to 1.16.0 as a test-only dependency)."""

import types
from collections import defaultdict

import pytest
import torch

from megatron_align.losses.rl import clipped_policy_loss, group_advantages, kl_k3, reduce_policy_loss

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer", reason="TRL (test-only dependency) is not installed")

B, T, L_MAX = 6, 9, 12


class _Accel:
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    def gather_for_metrics(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x


def _trl_loss(loss_type, logp, old, ref, adv, mask, beta, eps_low, eps_high, bias_correction):
    cls = trl_grpo.GRPOTrainer
    if not hasattr(cls, "_compute_loss"):
        pytest.skip("trl GRPOTrainer has no _compute_loss (TRL internals changed; pin trl==1.16.0)")
    tr = object.__new__(cls)
    attrs = dict(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
        beta=beta, loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False,
        vllm_importance_sampling_correction=False, current_gradient_accumulation_steps=1,
        max_completion_length=L_MAX, accelerator=_Accel(), _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        model=types.SimpleNamespace(training=True),
        args=types.SimpleNamespace(use_bias_correction_kl=bias_correction, delta=None, steps_per_generation=1),
    )
    for k, v in attrs.items():
        object.__setattr__(tr, k, v)
    object.__setattr__(tr, "_get_per_token_logps_and_entropies",
                       lambda *a, **k: (logp, torch.zeros_like(logp), None))
    inputs = {"prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
              "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}
    try:
        return tr._compute_loss(None, inputs)
    except AttributeError as e:
        pytest.skip(f"TRL GRPOTrainer internals changed ({e}); pin trl==1.16.0")


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    logp = old + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)  # ratios well outside 1±ε
    ref = old + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = torch.tensor([9, 1, 5, 7, 3, 9])
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    rewards = torch.randn(B, generator=g, dtype=torch.float64)
    return logp, old, ref, mask, rewards


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta,bias_correction", [(0.0, False), (0.04, False), (0.04, True)])
def test_grpo_loss_equals_trl(loss_type, beta, bias_correction):
    logp, old, ref, mask, rewards = _inputs(3)
    adv = group_advantages(rewards, num_generations=3)
    eps_low, eps_high = 0.2, 0.28
    want = _trl_loss(loss_type, logp, old, ref, adv, mask, beta, eps_low, eps_high, bias_correction)
    terms = clipped_policy_loss(logp, old, adv, eps_low=eps_low, eps_high=eps_high, kl=kl_k3(logp, ref),
                                beta=beta, kl_ratio_correction=bias_correction)
    loss_sum, count, unit = reduce_policy_loss(terms.per_token_loss, mask, loss_type, max_completion_length=L_MAX)
    got = loss_sum / count
    assert abs(got.item() - want.item()) <= 1e-12 * max(1.0, abs(want.item())), (got.item(), want.item())
    assert unit == ("sequence" if loss_type in ("grpo", "dr_grpo") else "token")
    assert terms.low_clipped.any() and terms.high_clipped.any(), "inputs should exercise both clip sides"


def test_gradients_equal_trl():
    logp, old, ref, mask, rewards = _inputs(5)
    adv = group_advantages(rewards, num_generations=2)
    a = logp.clone().requires_grad_(True)
    _trl_loss("grpo", a, old, ref, adv, mask, 0.04, 0.2, 0.2, False).backward()
    b = logp.clone().requires_grad_(True)
    terms = clipped_policy_loss(b, old, adv, eps_low=0.2, kl=kl_k3(b, ref), beta=0.04)
    s, c, _ = reduce_policy_loss(terms.per_token_loss, mask, "grpo")
    (s / c).backward()
    assert a.grad.abs().max() > 0
    assert torch.allclose(a.grad, b.grad, atol=1e-15, rtol=0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_use_trl_statistics(scale):
    """TRL's formula with TRL's own nanstd (unbiased): (r - group mean) / (std + 1e-4)."""
    from trl.trainer.utils import nanstd

    g = torch.Generator().manual_seed(11)
    n = 3
    r = torch.randn(4 * n, generator=g, dtype=torch.float64)
    r[3:6] = 0.7  # a group with identical rewards: advantage 0
    mean = r.view(-1, n).mean(1).repeat_interleave(n)
    std = {"group": nanstd(r.view(-1, n), dim=1).repeat_interleave(n), "batch": nanstd(r).expand_as(r),
           "none": None}[scale]
    want = (r - mean) if std is None else (r - mean) / (std + 1e-4)
    got = group_advantages(r, n, scale=scale)
    # TRL's nanstd multiplies by the Bessel factor count/(count-1) computed in float32 (12/11 is inexact):
    # ~1e-8 relative; exact for groups of 3 (3/2). Against float64 torch.std we hold 1e-12.
    assert (got - want).abs().max() <= 2e-7 * want.abs().max(), (got - want).abs().max()
    exact_std = {"group": r.view(-1, n).std(1).repeat_interleave(n), "batch": r.std().expand_as(r), "none": None}[scale]
    exact = (r - mean) if exact_std is None else (r - mean) / (exact_std + 1e-4)
    assert (got - exact).abs().max() <= 1e-12
    assert got[3:6].abs().max() < 1e-10  # equal rewards: no signal (up to the rounding of their mean)
