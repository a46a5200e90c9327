"""RL math against float64 references: KL estimators (top-k KL with k = vocab is the exact KL), GAE,
value clipping, KL-in-reward, and the sums/counts contract of the reductions (splitting a batch into
micro-batches and dividing the summed sums by the summed counts gives the whole-batch loss)."""

import pytest
import torch

from megatron_align.losses import rl


def _logits(seed, t=7, v=50, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(t, v, generator=g) * 2).to(dtype), (torch.randn(t, v, generator=g) * 2).to(dtype)


def _exact_kl(p_logits, r_logits):
    lp, lr = torch.log_softmax(p_logits.double(), -1), torch.log_softmax(r_logits.double(), -1)
    return (lp.exp() * (lp - lr)).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_topk_kl_with_k_vocab_is_exact_kl(temperature):
    pol, ref = _logits(0)
    pol.requires_grad_(True)
    got = rl.kl_topk(pol, ref, k=pol.shape[-1], temperature=temperature)
    want = _exact_kl(pol.detach() / temperature, ref / temperature)
    assert (got.double() - want).abs().max() <= 1e-6 * max(1.0, want.abs().max().item())
    # gradient against autograd of the float64 formula
    got.sum().backward()
    p64 = pol.detach().double().requires_grad_(True)
    _exact_kl(p64 / temperature, ref / temperature).sum().backward()
    assert (pol.grad.double() - p64.grad).abs().max() <= 2e-6


def test_topk_kl_renormalises_over_reference_topk():
    pol, ref = _logits(1)
    k = 5
    got = rl.kl_topk(pol, ref, k=k)
    ids = ref.double().topk(k, dim=-1).indices
    lp = torch.log_softmax(pol.double().gather(1, ids), -1)
    lr = torch.log_softmax(ref.double().gather(1, ids), -1)
    want = (lp.exp() * (lp - lr)).sum(-1)
    assert (got.double() - want).abs().max() <= 1e-6
    assert (got.double() - _exact_kl(pol, ref)).abs().max() > 1e-3, "top-5 of 50 should differ from the full KL"


def test_k1_k3():
    g = torch.Generator().manual_seed(2)
    lp, ref = -torch.rand(4, 6, generator=g, dtype=torch.float64), -torch.rand(4, 6, generator=g, dtype=torch.float64)
    assert torch.equal(rl.KL_ESTIMATORS["k1"](lp, ref), lp - ref)
    r = torch.exp(ref - lp)
    assert torch.allclose(rl.KL_ESTIMATORS["k3"](lp, ref), r - torch.log(r) - 1, atol=1e-15)
    assert (rl.kl_k3(lp, ref) >= 0).all()
    # both estimate KL(π‖π_ref) = E_π[log π - log π_ref]: on samples from π the means agree with the exact KL
    pol, rf = _logits(3, t=1, v=20, dtype=torch.float64)
    p = torch.softmax(pol[0], -1)
    x = torch.multinomial(p, 200000, replacement=True, generator=torch.Generator().manual_seed(4))
    lpx, lrx = torch.log_softmax(pol[0], -1)[x], torch.log_softmax(rf[0], -1)[x]
    exact = _exact_kl(pol, rf)[0].item()
    for est in ("k1", "k3"):
        assert abs(rl.KL_ESTIMATORS[est](lpx, lrx).mean().item() - exact) < 0.02 * max(1.0, exact), est


def _ragged(seed, B=5, T=8):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([8, 3, 1, 6, 5])[:B]
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    return g, mask, lengths


def test_gae_matches_reference_loop():
    g, mask, lengths = _ragged(5)
    B, T = mask.shape
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64) * mask
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    gamma, lam = 0.99, 0.9
    adv, ret = rl.gae(rewards, values, mask, gamma=gamma, lam=lam)
    for b in range(B):
        n = int(lengths[b])
        a_next = 0.0
        for t in reversed(range(n)):
            v_next = values[b, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[b, t].item() + gamma * v_next - values[b, t].item()
            a_next = delta + gamma * lam * a_next
            assert abs(adv[b, t].item() - a_next) < 1e-12
            assert abs(ret[b, t].item() - (a_next + values[b, t].item())) < 1e-12
        assert torch.all(adv[b, n:] == 0) and torch.all(ret[b, n:] == 0)
    # lam = 1, gamma = 1: the advantage is the reward-to-go minus the value
    adv1, _ = rl.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    togo = rewards.flip(-1).cumsum(-1).flip(-1)
    assert torch.allclose(adv1, (togo - values) * mask, atol=1e-12)


def test_kl_in_token_rewards_and_value_clip():
    g, mask, lengths = _ragged(6)
    B, T = mask.shape
    kl = torch.rand(B, T, generator=g, dtype=torch.float64)
    scores = torch.randn(B, generator=g, dtype=torch.float64)
    r = rl.kl_penalized_rewards(scores, kl, mask, beta=0.1)
    want = -0.1 * kl * mask
    want[torch.arange(B), lengths - 1] += scores
    assert torch.allclose(r, want, atol=1e-15)
    v, old, ret = (torch.randn(B, T, generator=g, dtype=torch.float64) for _ in range(3))
    loss = rl.clipped_value_loss(v, old, ret, clip=0.2)
    vc = torch.minimum(torch.maximum(v, old - 0.2), old + 0.2)
    assert torch.allclose(loss, 0.5 * torch.maximum((v - ret) ** 2, (vc - ret) ** 2), atol=1e-15)
    assert torch.equal(rl.clipped_value_loss(v, old, ret, clip=None), 0.5 * (v - ret) ** 2)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_reduction_sums_and_counts_split_into_micro_batches(loss_type):
    g, mask, _ = _ragged(7)
    B, T = mask.shape
    ptl = torch.randn(B, T, generator=g, dtype=torch.float64)
    whole_sum, whole_count, unit = rl.reduce_policy_loss(ptl, mask, loss_type, max_completion_length=T)
    parts = [rl.reduce_policy_loss(ptl[i:j], mask[i:j], loss_type, max_completion_length=T)
             for i, j in ((0, 2), (2, 3), (3, 5))]
    s = sum(p[0] for p in parts)
    c = sum(p[1] for p in parts)
    assert torch.allclose(s / c, whole_sum / whole_count, atol=1e-14)
    m = mask
    want = {"grpo": ((ptl * m).sum(-1) / m.sum(-1)).mean(), "bnpo": (ptl * m).sum() / m.sum(),
            "dr_grpo": (ptl * m).sum() / (B * T), "dapo": (ptl * m).sum() / m.sum()}[loss_type]
    assert torch.allclose(whole_sum / whole_count, want, atol=1e-14)
    assert all(p[2] == unit for p in parts)


def test_dapo_scale_gives_trl_generation_normaliser():
    # generation batch of 100 tokens split into 2 optimizer steps of 30 and 70 tokens: TRL divides each
    # step's token sum by 100 / 2 = 50
    s = torch.tensor(12.0)
    assert rl.dapo_scale(30, 100, 2) * s / 30 == pytest.approx(12.0 / 50)
    assert rl.dapo_scale(70, 100, 2) * s / 70 == pytest.approx(12.0 / 50)


def test_bad_arguments():
    with pytest.raises(ValueError, match="not one of"):
        rl.reduce_policy_loss(torch.zeros(1, 1), torch.ones(1, 1), "seq_mean")
    with pytest.raises(ValueError, match="dr_grpo needs max_completion_length"):
        rl.reduce_policy_loss(torch.zeros(1, 1), torch.ones(1, 1), "dr_grpo")
    with pytest.raises(ValueError, match="num_generations=3"):
        rl.group_advantages(torch.zeros(4), 3)
    with pytest.raises(ValueError, match="advantage scale"):
        rl.group_advantages(torch.zeros(3), 3, scale="std")
    with pytest.raises(ValueError, match="needs a per-token kl"):
        rl.clipped_policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1), beta=0.1)


def test_whiten():
    g, mask, _ = _ragged(8)
    x = torch.randn(*mask.shape, generator=g, dtype=torch.float64) * 3 + 1
    w = rl.whiten(x, mask)
    vals = w[mask.bool()]
    assert abs(vals.mean().item()) < 1e-12 and abs(vals.std().item() - 1) < 1e-6
    assert torch.all(w[~mask.bool()] == 0)
