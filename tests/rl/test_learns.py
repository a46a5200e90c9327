"""Proof it learns (CPU, the tiny model from scratch, the bundled example configs): the mean reward on held-out
prompts (greedy completions of phrasings never trained on) rises clearly, for GRPO and for PPO."""

import pytest

from helpers.dist import run_distributed
from rl.rl_workers import learn

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

QUICK = ["model.num_layers=2", "rl.rollout.max_new_tokens=4", "train.eval_interval=0", "output.tensorboard=false"]


@pytest.mark.parametrize("name,steps", [("grpo", 40), ("ppo", 40)])
def test_held_out_reward_rises(tmp_path, name, steps):
    (out,) = run_distributed(learn, 1, name, QUICK + [f"train.max_steps={steps}", f"output_dir={tmp_path}"])
    before, after = out["before"]["eval_reward"], out["after"]["eval_reward"]
    print(name, "held-out reward", before, "->", after, "train reward", out["last"]["reward"])
    assert after >= before + 0.2 and after >= 0.6, (before, after)
    cats = [k for k in out["after"] if k.startswith("eval_reward/category/")]
    assert len(cats) == 3 and all(out["after"][k] > before for k in cats), out["after"]
