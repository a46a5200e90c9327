"""PPO on fixed rollouts: the advantages equal a float64 hand computation (critic values, −β·k3 KL per token plus
the reward on the last token, GAE (γ, λ), whitening over the batch; returns = GAE advantages + values), and the
policy and critic updates are the same on one process and on DP=2 (whitening over both ranks)."""

import pytest

from helpers.dist import run_distributed
from helpers.sft_runs import sft
from rl.rl_workers import ppo_advantages_vs_manual, train_fixed_rollout

pytestmark = [pytest.mark.distributed]


@pytest.fixture(scope="module")
def common(tmp_path_factory):
    """Policy start (SFT step 2) and a different reference (step 1): a non-zero KL in the token rewards."""
    start = str(tmp_path_factory.mktemp("sft"))
    run_distributed(sft, 1, [f"output_dir={start}", "train.max_steps=2", "train.save_interval=1", "output.keep_last=0",
                             "model.num_layers=2", "optim.lr=1e-2"])
    return [f"train.load={start}", "train.finetune=true", "rl.kl.beta=0.2", "rl.kl.estimator=k3",
            f"rl.reference_load={start}/step_00000001", "rl.ppo.gamma=0.9", "rl.ppo.lam=0.8"]


def test_ppo_advantages_and_returns(common, tmp_path):
    (out,) = run_distributed(ppo_advantages_vs_manual, 1, [f"output_dir={tmp_path}"] + common)
    assert out["n"] > 20 and out["adv_std"] == pytest.approx(1.0, rel=1e-3)
    assert out["kl_max"] > 1e-4  # the reference is another checkpoint than the policy's start
    assert out["adv_err"] < 1e-5 and out["ret_err"] < 1e-5, out


def test_ppo_updates_are_the_same_on_dp2(common, tmp_path):
    run = common + ["rl.steps_per_rollout=2", "rl.epsilon_high=0.28"]
    (ref,) = run_distributed(train_fixed_rollout, 1, "ppo", [f"output_dir={tmp_path / 'a'}"] + run)
    outs = run_distributed(train_fixed_rollout, 2, "ppo", [f"output_dir={tmp_path / 'b'}", "data.packing=false",
                                                           "train.micro_batch_size=1"] + run)
    assert len(ref) == 3 and ref[0]["value_loss"] > 0 and abs(ref[1]["ratio"] - 1) > 1e-6
    for records in outs:
        assert records[-1] == ref[-1]
        for got, want in zip(records[:-1], ref[:-1]):
            for key, atol in (("loss", 2e-6), ("value_loss", 1e-7), ("values_mean", 1e-7), ("returns_mean", 1e-6)):
                assert abs(got[key] - want[key]) <= 1e-5 * abs(want[key]) + atol, (key, got[key], want[key])
            for key in ("grad_norm", "value_grad_norm"):
                assert abs(got[key] - want[key]) <= 3e-5 * want[key], (key, got[key], want[key])
