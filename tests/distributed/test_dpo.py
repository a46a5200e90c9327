"""DPO-family stage on CPU (fp32): pair-level invariance across layouts (with RPO's per-token NLL term), the
cached reference gives the online reference's loss, it learns (held-out implicit-reward accuracy), bad input."""

import json
import os

import pytest

from helpers.dist import run_distributed
from helpers.sft_runs import sft
from helpers.stage_runs import LAYOUTS, first_step, stage

pytestmark = [pytest.mark.distributed]

LAYOUTS = dict(LAYOUTS, fused_linear_tp2=(2, ["parallel.tp=2", "model.loss_backend=fused_linear",
                                                 "model.loss_chunk_size=48"]))


@pytest.fixture(scope="module")
def starts(tmp_path_factory):
    """Policy start (SFT step 2) and a different reference (SFT step 1): a non-trivial Δ at the first step."""
    ref = str(tmp_path_factory.mktemp("ref"))
    run_distributed(sft, 1, [f"output_dir={ref}", "train.max_steps=1", "model.num_layers=2"])
    pol = str(tmp_path_factory.mktemp("pol"))
    run_distributed(sft, 1, [f"output_dir={pol}", "train.max_steps=3", "model.num_layers=2", "optim.lr=1e-2"])
    common = [f"train.load={pol}", f"dpo.reference_load={ref}", "dpo.loss_type=rpo", "dpo.rpo_alpha=0.5",
              "dpo.beta=0.5"]
    d = str(tmp_path_factory.mktemp("dpo_ref"))
    (out,) = run_distributed(first_step, 1, "dpo", [f"output_dir={d}", "train.micro_batch_size=2"] + common)
    return common, out


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_dpo_loss_and_grad_are_packing_and_layout_invariant(starts, tmp_path, name):
    common, ref = starts
    assert abs(ref["loss"] - 0.6931) > 1e-3 and ref["nll_loss"] > 0  # not the trivial log 2 of policy == reference
    world, overrides = LAYOUTS[name]
    outs = run_distributed(first_step, world, "dpo", [f"output_dir={tmp_path}"] + common + overrides)
    for out in outs:
        # loss and log-prob sums to fp32 reduction order; the margin is a difference of sums ~25 in size, so its
        # rounding is absolute (~beta * 25 * 1e-7)
        for key, atol in (("loss", 0.0), ("nll_loss", 0.0), ("logps/chosen", 0.0), ("rewards/margins", 2e-6)):
            assert abs(out[key] - ref[key]) <= 2e-6 * abs(ref[key]) + atol, (name, key, out[key], ref[key])
        assert abs(out["grad_norm"] - ref["grad_norm"]) <= 2e-5 * ref["grad_norm"], (name, out, ref)


def test_cached_reference_gives_the_online_loss_and_stale_cache_is_refused(starts, tmp_path):
    common, ref = starts
    cache = str(tmp_path / "ref.jsonl")
    run_distributed(stage, 2, "dpo", [f"output_dir={tmp_path / 'pre'}", f"dpo.reference_cache={cache}",
                                      "parallel.tp=2", "--precompute-reference"] + common)
    run = [f"dpo.reference_cache={cache}", "dpo.reference=cache", "train.micro_batch_size=2"]
    (out,) = run_distributed(first_step, 1, "dpo", [f"output_dir={tmp_path / 'run'}"] + common + run)
    for key in ("loss", "rewards/chosen", "rewards/rejected", "grad_norm"):
        assert abs(out[key] - ref[key]) <= 1e-5 * abs(ref[key]) + 1e-6, (key, out[key], ref[key])
    with pytest.raises(RuntimeError, match="stale reference cache: seq_length"):
        run_distributed(first_step, 1, "dpo", [f"output_dir={tmp_path / 'stale'}", "data.seq_length=96"]
                        + common + run)


def test_reference_with_another_architecture_is_refused(starts, tmp_path):
    common, _ = starts
    other = str(tmp_path / "other")
    run_distributed(sft, 1, [f"output_dir={other}", "train.max_steps=1", "model.num_layers=3"])
    with pytest.raises(RuntimeError, match=r"architecture differs from the policy's \(num_layers: 3 vs 2\)"):
        run_distributed(first_step, 1, "dpo", [f"output_dir={tmp_path / 'x'}"] + common
                        + [f"dpo.reference_load={other}"])


@pytest.mark.slow
def test_dpo_raises_held_out_preference_accuracy(tmp_path):
    start = str(tmp_path / "start")
    run_distributed(sft, 1, [f"output_dir={start}", "train.max_steps=1", "model.num_layers=4"])
    run = str(tmp_path / "dpo")
    run_distributed(stage, 1, "dpo", [f"output_dir={run}", f"train.load={start}", "model.num_layers=4",
                                      "train.max_steps=60", "train.global_batch_size=32", "train.eval_interval=30",
                                      "optim.lr=2e-3", "dpo.beta=0.5"])
    evals = [json.loads(ln) for ln in open(os.path.join(run, "metrics.jsonl")) if '"eval"' in ln]
    first, last = evals[0], evals[-1]
    assert last["eval_rewards/accuracies"] >= 0.85, last
    assert last["eval_rewards/margins"] > first["eval_rewards/margins"] > 0
    assert {"eval_rewards/accuracies/fruit", "eval_logps/chosen", "eval_logps/rejected"} <= set(last)
