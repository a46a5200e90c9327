"""`type: model` rewards: the frozen reward model of rl.reward_model.load scores rollouts in-process (the same
numbers as a direct forward), and a GRPO step on 2 ranks (TP=2) uses it."""

import math

import pytest

from helpers.dist import run_distributed
from helpers.stage_runs import stage
from rl.rl_workers import rm_scores_vs_direct, run

pytestmark = [pytest.mark.distributed]


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("rm"))
    run_distributed(stage, 1, "rm", [f"output_dir={d}", "train.max_steps=1", "optim.lr=1e-2"])
    return d


def test_scorer_equals_direct_forward(rm_dir):
    (out,) = run_distributed(rm_scores_vs_direct, 1, rm_dir)
    assert all(math.isfinite(x) for x in out["got"]) and len(set(out["got"])) == 3
    assert out["got"] == pytest.approx(out["direct"], rel=1e-6, abs=1e-6)


def test_grpo_step_with_reward_model_on_tp2(rm_dir, tmp_path):
    rewards = ("rl.rewards=[{name: rm, type: model, weight: 1.0}, {name: vowels, type: function, weight: 0.5, "
               "params: {path: examples/rewards/tiny_rewards.py:vowel_share}}]")
    outs = run_distributed(run, 2, "grpo", [f"output_dir={tmp_path}", "train.max_steps=1", "parallel.tp=2",
                                            f"rl.reward_model.load={rm_dir}", rewards])
    for o in outs:
        assert math.isfinite(o["reward/rm"]) and o["reward_failures/rm"] == 0
        assert o["reward"] == pytest.approx(o["reward/rm"] + 0.5 * o["reward/vowels"])
