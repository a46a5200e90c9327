"""examples/merge/merge_sft_runs.sh end to end (few steps): two SFT children of one parent, merged three ways,
and `megatron-align evaluate` reporting the eval loss per category of every checkpoint side by side."""

import json
import math
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _final_eval(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r.get("kind") == "eval"][-1]


def test_merge_recipe_reports_eval_loss_per_category(tmp_path):
    out = tmp_path / "recipe"
    env = dict(os.environ, OUT=str(out), STEPS="3", PYTHON=sys.executable, OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(["bash", os.path.join(ROOT, "examples", "merge", "merge_sft_runs.sh")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    names = [os.path.basename(r["checkpoint"]) for r in rows]
    assert names == ["parent", "child1", "child2", "linear", "task_arithmetic", "model_stock"]
    by = {n: r for n, r in zip(names, rows)}
    cats = {k for k in rows[0] if k.startswith("eval_loss/")}
    assert len(cats) >= 5, cats  # the bundled eval set's categories
    for r in rows:
        assert {k for k in r if k.startswith("eval_loss/")} == cats
        assert all(math.isfinite(r[k]) for k in cats | {"eval_loss"})
    # the evaluate command scores a checkpoint exactly as the run's own end-of-training evaluation did
    for child in ("child1", "child2"):
        own = _final_eval(out / child)
        for k in cats | {"eval_loss"}:
            assert by[child][k] == pytest.approx(own[k], rel=1e-5), (child, k)
    # parent + 0.5 (c1 − parent) + 0.5 (c2 − parent) is the average of the children (written as HF, scored
    # through evaluate's HF path)
    for k in cats | {"eval_loss"}:
        assert by["task_arithmetic"][k] == pytest.approx(by["linear"][k], abs=2e-4)
    # merging changed the model: neither child's losses
    for merged in ("linear", "model_stock"):
        assert by[merged]["eval_loss"] not in (by["child1"]["eval_loss"], by["child2"]["eval_loss"])
    # the side-by-side table on stderr: a row per category, a column per checkpoint
    table = [line for line in res.stderr.splitlines() if line.startswith("eval_loss")]
    assert len(table) == 1 + len(cats) and all(len(line.split()) == 1 + len(rows) for line in table)
