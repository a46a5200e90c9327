"""PPO's advantages on a fixed rollout equal a float64 hand computation: critic values, −β·k3 KL per token plus the
reward on the last token, GAE (γ, λ), whitening over the batch; returns = GAE advantages + values."""

import pytest

from helpers.dist import run_distributed
from rl.rl_workers import ppo_advantages_vs_manual

pytestmark = [pytest.mark.distributed]


def test_ppo_advantages_and_returns(tmp_path):
    from helpers.sft_runs import sft

    start = str(tmp_path / "sft")
    run_distributed(sft, 1, [f"output_dir={start}", "train.max_steps=2", "train.save_interval=1", "output.keep_last=0",
                             "model.num_layers=2", "optim.lr=1e-2"])
    (out,) = run_distributed(ppo_advantages_vs_manual, 1, [
        f"output_dir={tmp_path / 'ppo'}", f"train.load={start}", "train.finetune=true", "rl.kl.beta=0.2",
        "rl.kl.estimator=k3", f"rl.reference_load={start}/step_00000001", "rl.ppo.gamma=0.9", "rl.ppo.lam=0.8"])
    assert out["n"] > 20 and out["adv_std"] == pytest.approx(1.0, rel=1e-3)
    assert out["kl_max"] > 1e-4  # the reference is another checkpoint than the policy's start
    assert out["adv_err"] < 1e-5 and out["ret_err"] < 1e-5, out
