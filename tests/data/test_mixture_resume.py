"""A mixture trains, resumes mid-mixture exactly (stopped by Slurm's signal, requeued), and evaluates per dataset."""

import json
import os

import pytest

from helpers.dist import run_distributed
from helpers.sft_runs import sft, sft_signal_after

pytestmark = [pytest.mark.distributed]

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "megatron_align", "assets", "tiny")


def _records(run_dir, kind):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r.get("kind", "train") == kind]


def test_mixture_resume_is_exact_and_eval_is_per_dataset(tmp_path):
    short = tmp_path / "short.jsonl"  # a small second dataset, upsampled well past its size
    with open(os.path.join(TINY, "chat_eval.jsonl")) as f:
        short.write_text("".join(f.readlines()[:6]))
    mix = (f"data.path=[{{path: {TINY}/chat_train.jsonl, weight: 0.6, name: demo}}, "
           f"{{path: {short}, weight: 0.4}}]")
    evals = f"data.eval_path=[{{path: {TINY}/chat_eval.jsonl, name: held_out}}, {short}]"
    common = [mix, evals, "train.max_steps=4", "train.micro_batch_size=2", "data.seed=3"]
    straight, resumed = str(tmp_path / "a"), str(tmp_path / "b")
    run_distributed(sft, 1, common + [f"output_dir={straight}"])
    (out,) = run_distributed(sft_signal_after, 1, common + [f"output_dir={resumed}"], 2)
    assert out["stopped_by_signal"] and out["step"] == 2
    run_distributed(sft, 1, common + [f"output_dir={resumed}"])  # requeued: resumes mid-mixture
    a = [(r["step"], r["loss"]) for r in _records(straight, "train")]
    b = [(r["step"], r["loss"]) for r in _records(resumed, "train")]
    assert [s for s, _ in b] == [1, 2, 3, 4] and a == b, (a, b)  # bitwise: the same draws in the same order
    ev = _records(straight, "eval")[-1]
    per_ds = {k: v for k, v in ev.items() if k.startswith("eval_loss/dataset=")}
    assert set(per_ds) == {"eval_loss/dataset=held_out", "eval_loss/dataset=short"}
    assert all(v > 0 for v in per_ds.values()) and any(k.startswith("eval_loss/") and "=" not in k for k in ev)
