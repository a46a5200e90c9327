"""Reward-model stage on CPU (fp32): pair-level invariance across layouts, and that it learns (held-out accuracy)."""

import json
import os

import pytest

from helpers.dist import run_distributed
from helpers.stage_runs import LAYOUTS, first_step, stage

pytestmark = [pytest.mark.distributed]

# The same global batch of pairs -> the same mean-over-pairs loss (Bradley-Terry + alpha*MSE on the scored half)
# and gradient, however the pairs are laid out: chosen and rejected packed as two documents of one row or each
# pair alone in a padded row, micro-batch 1 or 2, TP=2 (the scalar head is replicated, its input gathered), PP=2,
# DP=2. Tolerances as for SFT (reduction order only; a layout bug moves both by O(1)).
LAYOUTS = dict(LAYOUTS, packed_tp2_sp=(2, ["parallel.tp=2", "parallel.sp=true"]))


@pytest.fixture(scope="module")
def start_and_reference(tmp_path_factory):
    start = str(tmp_path_factory.mktemp("start"))
    run_distributed(stage, 1, "rm", [f"output_dir={start}", "train.max_steps=2"])
    load = [f"train.load={start}", "train.finetune=true"]
    d = str(tmp_path_factory.mktemp("ref"))
    (ref,) = run_distributed(first_step, 1, "rm", [f"output_dir={d}", "train.micro_batch_size=2"] + load)
    return load, ref


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_rm_loss_and_grad_are_packing_and_layout_invariant(start_and_reference, tmp_path, name):
    load, ref = start_and_reference
    world, overrides = LAYOUTS[name]
    outs = run_distributed(first_step, world, "rm", [f"output_dir={tmp_path}"] + load + overrides)
    for out in outs:
        assert abs(out["loss"] - ref["loss"]) <= 2e-6 * ref["loss"], (name, out, ref)
        assert abs(out["grad_norm"] - ref["grad_norm"]) <= 2e-5 * ref["grad_norm"], (name, out, ref)


@pytest.mark.slow
def test_rm_learns_the_rule_held_out(tmp_path):
    """Chosen = the correct answer, rejected = a wrong one (bundled pairs): held-out accuracy >= 90%."""
    out_dir = str(tmp_path / "rm")
    (out,) = run_distributed(stage, 1, "rm", [f"output_dir={out_dir}", "model.num_layers=4", "data.seq_length=64",
                                              "train.global_batch_size=32", "train.max_steps=100",
                                              "optim.lr=3e-3", "optim.min_lr=1e-3", "optim.warmup_steps=10",
                                              "train.eval_interval=50"])
    evals = [json.loads(ln) for ln in open(os.path.join(out_dir, "metrics.jsonl")) if '"eval"' in ln]
    assert evals[-1]["eval_accuracy"] >= 0.90, evals[-1]
    assert {"eval_accuracy/fruit", "eval_accuracy/animal", "eval_accuracy/color", "eval_accuracy/object",
            "eval_accuracy/dataset=rated", "eval_accuracy/dataset=rules"} <= set(evals[-1])
