"""The ``rl`` config section: YAML + dotted overrides, validation naming the key, and the objects it builds
(sampling parameters for the engine, the combined reward)."""

from dataclasses import dataclass

import pytest

from megatron_align.config.base import ConfigError, describe, help_field, load_config
from megatron_align.config.rl import RLConfig
from megatron_align.rewards import build_reward
from megatron_align.rollout import SamplingParams


@dataclass
class Job:
    rl: RLConfig = help_field(default_factory=RLConfig, help="RL section.")


YAML = """
rl:
  prompts: prompts.jsonl
  num_generations: 3
  prompts_per_step: 4
  steps_per_rollout: 2
  loss_type: dr_grpo
  epsilon_high: 0.28
  rollout: {temperature: 0.8, top_p: 0.95, max_new_tokens: 32, stop_tokens: ["<|im_end|>"]}
  kl: {beta: 0.05, estimator: topk, top_k: 500}
  kl_sft: {gamma: 0.1, data: sft.jsonl}
  category_weights: {math: 2, writing: 0.5}
  rewards:
    - {type: exact_match, weight: 1.0, params: {extractor: boxed}}
    - {name: fmt, type: format, weight: 0.2, fallback: -1, params: {pattern: ".*boxed.*"}}
"""


def _load(tmp_path, text=YAML, overrides=()):
    p = tmp_path / "rl.yaml"
    p.write_text(text)
    return load_config(Job, str(p), overrides).rl


def test_defaults_are_the_reports_choices():
    rl = RLConfig()
    assert rl.num_generations == 3 and rl.kl.estimator == "topk" and rl.kl.top_k == 500
    assert rl.eps_high == rl.epsilon_low == 0.2 and rl.kl_sft.gamma == 0.0


def test_yaml_overrides_and_built_objects(tmp_path):
    rl = _load(tmp_path, overrides=["rl.kl.beta=0.1", "rl.num_generations=4", "rl.rollout.seed=9"])
    assert rl.kl.beta == 0.1 and rl.num_generations == 4 and rl.eps_high == 0.28
    assert rl.kl_sft.gamma == 0.1 and rl.kl_sft.data == "sft.jsonl"
    assert rl.category_weights == {"math": 2, "writing": 0.5}
    assert [r.name or r.type for r in rl.rewards] == ["exact_match", "fmt"]
    sp = rl.rollout.sampling_params([7, 9], step=3)
    assert sp == SamplingParams(temperature=0.8, top_p=0.95, top_k=0, max_new_tokens=32, stop_ids=(7, 9), seed=12)
    reward = build_reward(rl.rewards)
    res = reward(["p"], [r"\boxed{4}"], [{"answer": "4"}])
    assert res.total == [pytest.approx(1.2)] and res.components == {"exact_match": [1.0], "fmt": [1.0]}
    keys = {row[0] for row in describe(Job)}
    assert {"rl.num_generations", "rl.kl.beta", "rl.kl.top_k", "rl.kl_sft.gamma", "rl.kl_sft.data",
            "rl.category_weights", "rl.rollout.temperature"} <= keys


@pytest.mark.parametrize("override,msg", [
    ("rl.kl.betta=0.1", "unknown key rl.kl.betta"),
    ("rl.kl.estimator=k2", r"rl.kl.estimator: 'k2' is not one of"),
    ("rl.rollout.top_k=20", "rl.rollout.top_k and rl.rollout.top_p cannot both be set"),
    ("rl.kl_sft.data=null", "rl.kl_sft.data: required when rl.kl_sft.gamma > 0"),
    ("rl.category_weights={math: -1}", r"rl.category_weights.math: must be a finite number >= 0"),
    ("rl.num_generations=1", "group-normalised advantages need >= 2"),
    ("rl.steps_per_rollout=3", r"rl.steps_per_rollout=3 must divide rl.prompts_per_step=4"),
    ("rl.loss_type=seq_mean", r"rl.loss_type: 'seq_mean' is not one of"),
    ("rl.rollout.temperature=-1", "rl.rollout.temperature: must be a finite number >= 0"),
])
def test_errors_name_the_key(tmp_path, override, msg):
    with pytest.raises(ConfigError, match=msg):
        _load(tmp_path, overrides=[override])


def test_reward_list_errors(tmp_path):
    bad = YAML.replace("name: fmt, type: format", "type: exact_match")
    with pytest.raises(ConfigError, match="component name 'exact_match' is used twice"):
        _load(tmp_path, bad)
    missing_type = YAML.replace("{type: exact_match, weight: 1.0,", "{weight: 1.0,")
    with pytest.raises(ConfigError, match="has no `type`"):
        _load(tmp_path, missing_type)
