"""The GRPO stage objective on a packed micro-batch equals the unpacked clipped_policy_loss + reduce_policy_loss
(the functions checked against TRL in tests/losses/test_rl_trl.py), loss and gradient, for every loss type and KL
estimator; the stored top-k KL with k = vocabulary is the exact KL."""

import pytest

from helpers.dist import run_distributed
from rl.objective_workers import CASES, all_cases


def test_packed_objective_equals_unpacked_reduction():
    outs = run_distributed(all_cases, 1)
    for (loss_type, est), r in zip(CASES, outs[0]):
        assert r["count"] == r["ref_count"], (loss_type, r)
        assert abs(r["loss_sum"] - r["ref_loss_sum"]) <= 1e-5 * max(1.0, abs(r["ref_loss_sum"])), (loss_type, est, r)
        assert r["grad_err"] <= 1e-5 * r["grad_max"], (loss_type, est, r)
        assert abs(r["kl"] - r["ref_kl"]) <= 1e-5 * max(abs(r["ref_kl"]), 1e-2), (loss_type, est, r)
        assert abs(r["clip"] - r["ref_clip"]) < 1e-9 and 0 < r["clip"] < 1, (loss_type, r)
        assert r["kl"] != 0 and (r["kl"] > 0 or est == "k1")
    assert outs[0][-1]["exact_kl_err"] < 1e-5

