"""Our DPO-family pair losses (losses/dpo.py) equal TRL 1.16's on the same log-probs (fresh random inputs)."""

import types

import pytest
import torch

from megatron_align.losses.dpo import PAIR_LOSSES, Side, orpo_log_odds

from trl_reference import cpo_trl, dpo_trl, orpo_trl  # noqa: E402  (skips without TRL 1.16)


def _batch(seed=0, B=6, L=12):
    g = torch.Generator().manual_seed(seed)
    per_token = -torch.rand(2 * B, L - 1, generator=g, dtype=torch.float64) * 3
    mask = torch.zeros(2 * B, L)
    for i in range(2 * B):
        start = int(torch.randint(2, 6, (1,), generator=g))
        end = int(torch.randint(start + 1, L + 1, (1,), generator=g))
        mask[i, start:end] = 1
    per_token = per_token * mask[:, 1:]
    sums = per_token.sum(1)
    n = mask[:, 1:].sum(1).double()
    ref = sums + torch.randn(2 * B, generator=g, dtype=torch.float64) * 0.7
    return per_token, mask, sums, n, ref


def _cfg(**kw):
    base = dict(beta=0.1, label_smoothing=0.0, smoothing="conservative", simpo_gamma=0.5, rpo_alpha=1.0)
    base.update(kw)
    return types.SimpleNamespace(**base)


def _sides(sums, n, ref):
    B = sums.shape[0] // 2
    return Side(sums[:B], ref[:B], n[:B]), Side(sums[B:], ref[B:], n[B:])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("ours,trl_types,kw", [
    ("dpo", ["sigmoid"], {}),
    ("ipo", ["ipo"], {}),
    ("dpo", ["robust"], {"label_smoothing": 0.2, "smoothing": "robust"}),
])
def test_dpo_family_equals_trl(seed, ours, trl_types, kw):
    per_token, mask, sums, n, ref = _batch(seed)
    B = sums.shape[0] // 2
    cfg = _cfg(beta=0.3, **kw)
    c, r = _sides(sums, n, ref)
    got = PAIR_LOSSES[ours](c, r, cfg).mean().item()
    want = dpo_trl(per_token.float(), mask, ref[:B].float(), ref[B:].float(), beta=cfg.beta, loss_types=trl_types,
                   label_smoothing=cfg.label_smoothing)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_rpo_is_trl_sigmoid_plus_weighted_sft():
    per_token, mask, sums, n, ref = _batch(3)
    B = sums.shape[0] // 2
    alpha = 0.7
    c, r = _sides(sums, n, ref)
    nll = -c.logp.sum() / c.n.sum()  # token mean over every chosen completion token of the batch
    got = PAIR_LOSSES["rpo"](c, r, _cfg(beta=0.2)).mean().item() + alpha * nll.item()
    want = dpo_trl(per_token.float(), mask, ref[:B].float(), ref[B:].float(), beta=0.2, loss_types=["sigmoid", "sft"],
                   loss_weights=[1.0, alpha])
    assert got == pytest.approx(want, rel=1e-5)


def test_conservative_dpo_equals_trl_cpo_sigmoid_on_log_ratios():
    _, _, sums, n, ref = _batch(4)
    B = sums.shape[0] // 2
    c, r = _sides(sums, n, ref)
    got = PAIR_LOSSES["dpo"](c, r, _cfg(beta=0.5, label_smoothing=0.1))
    want = cpo_trl((sums - ref)[:B], (sums - ref)[B:], loss_type="sigmoid", beta=0.5, label_smoothing=0.1)
    assert torch.allclose(got, want.double(), rtol=1e-6, atol=1e-7)


def test_simpo_and_orpo_equal_trl():
    _, _, sums, n, ref = _batch(5)
    B = sums.shape[0] // 2
    c, r = _sides(sums, n, ref)
    got = PAIR_LOSSES["simpo"](c, r, _cfg(beta=2.0, simpo_gamma=0.6, label_smoothing=0.05))
    want = cpo_trl((sums / n)[:B], (sums / n)[B:], loss_type="simpo", beta=2.0, label_smoothing=0.05, simpo_gamma=0.6)
    assert torch.allclose(got, want.double(), rtol=1e-6, atol=1e-7)
    # ORPO: TRL's odds_ratio_loss returns beta * log sigmoid(log_odds) (the trainer subtracts its mean)
    got = PAIR_LOSSES["orpo"](c, r, _cfg(beta=0.25))
    want = -orpo_trl((sums / n)[:B].float(), (sums / n)[B:].float(), beta=0.25)
    assert torch.allclose(got.float(), want, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(orpo_log_odds(c, r)).all()
