"""The demo (`make demo` = `megatron-align demo`) end to end: TP=2 SFT on CPU, checkpoint, metrics, PNG."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow]


def test_demo_runs_and_loss_falls(tmp_path):
    out_dir = tmp_path / "demo"
    # Fewer steps than the real demo keep CI short; the config, launcher and outputs are the same.
    cmd = [sys.executable, "-m", "megatron_align", "demo", "--output-dir", str(out_dir),
           "train.max_steps=12", "train.eval_interval=6"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads(res.stdout[res.stdout.rindex("{"):])
    assert summary["steps"] == 12 and summary["last_loss"] < summary["first_loss"] - 0.5
    assert os.path.isfile(os.path.join(summary["checkpoint"], "COMPLETE"))
    assert os.path.getsize(summary["plot"]) > 10_000
    with open(summary["metrics"]) as f:
        records = [json.loads(line) for line in f]
    train = [r for r in records if r.get("kind", "train") == "train"]
    for key in ("step", "loss", "lr", "grad_norm", "tokens", "token_utilization", "tokens_per_sec"):
        assert key in train[0], key
    evals = [r for r in records if r.get("kind") == "eval"]
    assert evals and any(k.startswith("eval_loss/") for k in evals[-1]), "per-category eval loss"
    assert os.path.isdir(out_dir / "tensorboard") and os.listdir(out_dir / "tensorboard")
