"""The shared trainer core: max_steps repeats epochs, logprobs runs the training forward, user errors exit 2."""

import json
import os
import subprocess
import sys

import pytest

from helpers.dist import run_distributed
from helpers.sft_runs import sft
from helpers.stage_runs import logprobs_through_impl

pytestmark = [pytest.mark.distributed]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_max_steps_overrides_epochs(tmp_path):
    data = tmp_path / "one_batch.jsonl"
    with open(os.path.join(ROOT, "megatron_align", "assets", "tiny", "chat_train.jsonl")) as f:
        data.write_text("".join(next(f) for _ in range(8)))
    run = tmp_path / "run"
    (out,) = run_distributed(sft, 1, [f"output_dir={run}", f"data.path={data}", "data.eval_path=null",
                                      "train.global_batch_size=8", "train.max_steps=3"])
    steps = [json.loads(ln) for ln in open(run / "metrics.jsonl")]
    assert [r["step"] for r in steps] == [1, 2, 3] and [r["epoch"] for r in steps] == [0, 1, 2]
    assert out["step"] == 3


def test_logprobs_uses_the_training_forward_with_cu_seqlens(tmp_path):
    run = tmp_path / "run"
    run_distributed(sft, 1, [f"output_dir={run}", "train.max_steps=1"])
    data = tmp_path / "seqs.jsonl"
    data.write_text("".join(json.dumps({"input_ids": list(range(5 + i, 12 + 2 * i))}) + "\n" for i in range(5)))
    out = tmp_path / "lp.jsonl"
    (res,) = run_distributed(logprobs_through_impl, 1, ["logprobs", "--load", str(run), "--data", str(data),
                                                        "--out", str(out), "--seq-length", "32"])
    assert res["rc"] == 0 and res["calls"]
    assert sum(c["docs"] for c in res["calls"]) == 5
    assert all(c["cu_seqlens"] is not None and c["cu_seqlens"][-1] == 32 for c in res["calls"])
    lines = [json.loads(ln) for ln in open(out)]
    assert [len(x["token_logprobs"]) for x in lines] == [6 + i for i in range(5)]


@pytest.mark.parametrize("argv,needle", [
    (["sft", "--config", "examples/configs/tiny_cpu.yaml", "parallel.tpp=2"], "unknown key parallel.tpp"),
    (["rm", "--config", "examples/configs/rm_tiny_cpu.yaml", "data.path=/nonexistent/pairs.jsonl",
      "parallel.tp=1"], "/nonexistent/pairs.jsonl: no such file"),
    (["sft", "--config", "/nonexistent.yaml"], "config file /nonexistent.yaml does not exist"),
])
def test_user_errors_are_one_line_and_exit_2(argv, needle):
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(29000 + os.getpid() % 1000),
               PYTHONPATH=os.pathsep.join([ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    p = subprocess.run([sys.executable, "-m", "megatron_align", *argv], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert needle in p.stderr and "Traceback" not in p.stderr
    ours = [ln for ln in p.stderr.splitlines() if ln.startswith("megatron-align ")]
    assert len(ours) == 1 and ours[0].startswith(f"megatron-align {argv[0]}: error: "), p.stderr
