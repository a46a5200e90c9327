"""Bad input of the RL stages: empty and over-long prompts counted, a reward file that does not exist or lacks the
function (one line, exit 2, before any model or rollout), NaN / raising rewards counted with their fallback (and the
same gathered rollout on 1 or 2 data-parallel replicas), a reference with another vocabulary refused clearly."""

import json
import os
import subprocess
import sys

import pytest

from helpers.dist import run_distributed
from rl.rl_workers import CONFIGS, ROOT, roll_with_fake_engine

HERE = os.path.dirname(os.path.abspath(__file__))


def test_empty_and_overlong_prompts_are_counted(tmp_path):
    from megatron_align.data.builder import tokenizer_and_template
    from megatron_align.data.config import DataConfig
    from megatron_align.data.errors import DataError
    from megatron_align.stages.rl_prompts import PromptDataset

    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "Say a vowel word."}, {"prompt": ""}, {"prompt": "   "}, {"prompt": "long " * 200},
            {"messages": [{"role": "user", "content": "Type aaa."}], "category": "x"}, {"prompt": "bad", "category": 3}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    _, template = tokenizer_and_template(DataConfig(), "llama")
    with pytest.raises(DataError, match=r"p.jsonl:6: 'category' must be a string"):
        PromptDataset(str(path), template, 64)
    ds = PromptDataset(str(path), template, 64, on_bad_line="skip")
    assert (len(ds), ds.stats.empty, ds.stats.too_long, ds.stats.skipped_bad) == (2, 2, 1, 1)
    assert ds.stats.summary() == "2 prompts (skipped: 2 empty, 1 over max_prompt_length, 1 bad lines)"
    assert ds[1].text == "Type aaa." and ds[1].category == "x" and ds.categories == ["x"]


def _cli(args):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "megatron_align", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_missing_reward_file_is_one_line_exit_2(tmp_path):
    p = _cli(["grpo", "--config", CONFIGS["grpo"], f"output_dir={tmp_path}",
              "rl.rewards=[{type: function, params: {path: nowhere/rewards.py:score}}]"])
    assert p.returncode == 2, p.stderr[-2000:]
    err = [line for line in p.stderr.splitlines() if "megatron-align" in line or "error" in line.lower()]
    assert len(err) == 1 and "nowhere/rewards.py does not exist" in err[0] and "rl.rewards[0]" in err[0], p.stderr
    assert "Traceback" not in p.stderr and not os.path.exists(os.path.join(tmp_path, "config.yaml"))


def test_reward_file_without_the_function_is_a_config_error():
    from megatron_align.config.base import ConfigError, load_config
    from megatron_align.config.rl_job import GRPOJobConfig
    from megatron_align.stages.grpo import GRPOStage

    cfg = load_config(GRPOJobConfig, CONFIGS["grpo"],
                      [f"rl.rewards=[{{type: function, params: {{path: {HERE}/nan_reward.py:nope}}}}]"])
    with pytest.raises(ConfigError, match=r"rl.rewards\[0\]: .*nan_reward.py defines no 'nope'"):
        GRPOStage(cfg).build_reward()


def test_nan_and_raising_rewards_are_counted_and_dp_gathers_the_same_rollout():
    path = f"{HERE}/nan_reward.py:score"
    (one,) = run_distributed(roll_with_fake_engine, 1, path, True)
    two = run_distributed(roll_with_fake_engine, 2, path, True)
    for out in two:
        assert out["rewards"] == one["rewards"] and out["completions"] == one["completions"]
        assert out["failures"] == one["failures"]
    n = sum(len(r) for r in one["rewards"])
    assert n == 18 and one["failures"]["len"] == 0
    # every completion is "aeiou" (reward 1), "xyz bcd" (NaN -> fallback 0) or "oo<eot>" (raises -> fallback 0)
    bad = [t for t in one["texts"] if "z" in t or "oo" in t]
    assert 0 < len(bad) < n and one["failures"]["nanny"] == len(bad) == one["metrics"]["reward_failures/nanny"]
    assert one["metrics"]["reward/nanny"] == pytest.approx((n - len(bad)) / n)
    assert [r for g in one["rewards"] for r in g] == [0.5 * (len(t) <= 8) + (t == "aeiou") for t in one["texts"]]
    assert 0 < one["metrics"]["truncated_rate"] < 1.0  # the end-of-turn id stopped the "oo" completions
    assert set(k for k in one["metrics"] if k.startswith("reward/category/")) == {
        "reward/category/line", "reward/category/name", "reward/category/word"} & set(one["metrics"])


def test_reference_with_another_vocabulary_is_refused(tmp_path):
    from megatron_align.checkpoint import layout
    from megatron_align.config.base import ConfigError
    from megatron_align.models.families import resolve_arch
    from megatron_align.stages.rl import _vocab_check

    arch = resolve_arch("tiny-llama", None, None, None)
    ckpt = tmp_path / "ref"
    ckpt.mkdir()
    layout.write_arch(str(ckpt), arch.replace(vocab_size=4096))
    (ckpt / layout.COMPLETE).write_text("ok\n")
    with pytest.raises(ConfigError, match=r"rl.reference_load: checkpoint .* has a vocabulary of 4096 tokens but the "
                                          r"policy's is 2048"):
        _vocab_check(str(ckpt), arch, "rl.reference_load")
    assert _vocab_check(str(ckpt), arch.replace(vocab_size=4096), "rl.reference_load") == str(ckpt)
