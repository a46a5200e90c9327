"""Checkpoint teachers and the PAS model through the generation engine (tiny Llama, CPU):
- greedy complements of the checkpoint teacher are the same whether it runs in-process (TP=1, and TP=2 under
  torchrun, PP=2 too) or behind `pas serve` (batched HTTP requests), and a stopped-then-resumed served run gives the same
  records as the uninterrupted in-process one;
- a teacher that ignores the critic's JSON format is counted and asked again, then dropped;
- (`prompts select` when it is there ->) generate -> `megatron-align sft` on the output -> `pas augment` with the
  trained PAS model."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from megatron_align.pas import formats

from pas.conftest import PROMPTS, REPLAY, ROOT, cli, last_json, read_jsonl, write_jsonl

pytestmark = [pytest.mark.compat]

GREEDY = ["teacher.sampling.temperature=0", "teacher.sampling.max_new_tokens=12", "teacher.max_seq_length=640",
          "max_words=200", "critic.mode=none", "batch_size=3"]


@pytest.fixture(scope="module")
def six_prompts(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("p") / "six.jsonl", read_jsonl(PROMPTS)[:6])


@pytest.fixture(scope="module")
def direct_run(tiny_ckpt, six_prompts, tmp_path_factory):
    out = tmp_path_factory.mktemp("direct") / "o.jsonl"
    res = cli("pas", "generate", "--input", six_prompts, "--out", out, f"teacher.load={tiny_ckpt}", *GREEDY)
    assert res.returncode == 0, res.stderr[-3000:]
    return last_json(res.stdout), _complements(out)


def _complements(out):
    got = {r["id"]: r["complement"] for r in read_jsonl(out)} if os.path.exists(out) else {}
    if os.path.exists(f"{out}.dropped.jsonl"):
        got.update({r["id"]: ("dropped", r["reason"]) for r in read_jsonl(f"{out}.dropped.jsonl")})
    return got


def test_served_checkpoint_resumed_equals_direct(direct_run, tiny_ckpt, six_prompts, start_server, tmp_path):
    stats, direct = direct_run
    assert stats["attempted"] == 6 and len(direct) == 6 and stats["teacher"].startswith("checkpoint:")
    assert any(isinstance(c, str) and c for c in direct.values())
    srv = start_server("--load", tiny_ckpt, "--max-seq-length", 640)
    out = tmp_path / "served.jsonl"
    http = ["teacher.kind=openai", f"teacher.base_url={srv.url}", "teacher.model=tiny", "teacher.backoff_s=0.05"]
    res = cli("pas", "generate", "--input", six_prompts, "--out", out, "--max-prompts", 4, *GREEDY, *http)
    assert res.returncode == 0, res.stderr[-2000:]
    assert last_json(res.stdout)["attempted"] == 4
    res = cli("pas", "generate", "--input", six_prompts, "--out", out, *GREEDY, *http)
    s = last_json(res.stdout)
    assert s["already_done"] == 4 and s["attempted"] == 2
    assert _complements(out) == direct, "greedy: served + resumed == in-process uninterrupted"
    # the tiny teacher as its own critic never writes the JSON verdict: counted, asked again, then dropped
    res = cli("pas", "generate", "--input", six_prompts, "--out", tmp_path / "crit.jsonl", *GREEDY, *http,
              "critic.mode=teacher", "max_tries=2")
    s = last_json(res.stdout)
    judged = sum(isinstance(c, str) for c in direct.values())
    assert s["counts"]["critic_unparsable"] == 2 * judged and s["drop_reasons"]["critic_unparsable"] == judged
    assert s["accepted"] == 0 and s["critic_calls"] == 2 * judged


@pytest.mark.distributed
@pytest.mark.parametrize("layout", ["parallel.tp=2", "parallel.pp=2"], ids=["tp2", "pp2"])
def test_parallel_teacher_equals_tp1(direct_run, tiny_ckpt, six_prompts, tmp_path, layout):
    out = tmp_path / "par.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "megatron_align", "pas", "generate", "--input", six_prompts, "--out", str(out),
           f"teacher.load={tiny_ckpt}", layout, *GREEDY]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert _complements(out) == direct_run[1]
    assert len(read_jsonl(out)) == sum(isinstance(c, str) for c in direct_run[1].values()), "rank 0 writes once"


def test_generate_sft_augment(start_server, tmp_path):
    srv = start_server("--replies", REPLAY)
    source, n = PROMPTS, 41
    if importlib.util.find_spec("megatron_align.commands.prompts") is not None:  # `prompts select` is there: chain it
        res = cli("prompts", "select", "--input", PROMPTS, "--out", tmp_path / "selected.jsonl", "--no-progress")
        assert res.returncode == 0, res.stderr[-3000:]
        source, n = tmp_path / "selected.jsonl", last_json(res.stdout)["selected"]
        assert 0 < n <= 41 and len(read_jsonl(source)) == n
    data = tmp_path / "pas_sft.jsonl"
    res = cli("pas", "generate", "--config", f"{ROOT}/examples/configs/pas_generate_tiny_cpu.yaml", "--input", source,
              "--out", data, f"teacher.base_url={srv.url}")
    assert res.returncode == 0 and last_json(res.stdout)["accepted"] == n, res.stderr[-2000:]
    run = tmp_path / "pas_model"
    res = cli("sft", "--config", f"{ROOT}/examples/configs/pas_sft_tiny_cpu.yaml", f"data.path={data}",
              f"output_dir={run}", "train.max_steps=3", "model.num_layers=2", "train.log_interval=1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{n} samples (truncated 0" in res.stdout, "every PAS conversation fits the configured rows"
    metrics = [json.loads(x) for x in open(run / "metrics.jsonl")]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]
    users = write_jsonl(tmp_path / "users.jsonl", [
        {"prompt": "Compute 4 - 9.", "source": "a"},
        {"id": "m1", "messages": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hello!"}]},
        {"prompt": " ".join(["word"] * 400), "source": "long"}])
    out = tmp_path / "aug.jsonl"
    res = cli("pas", "augment", "--load", run, "--input", users, "--out", out, "max_seq_length=256",
              "sampling.max_new_tokens=16")
    assert res.returncode == 0, res.stderr[-3000:]
    counts = last_json(res.stdout)
    assert counts["prompts"] == 3 and counts["too_long"] == 1
    assert counts["augmented"] + counts["empty_complement"] == 2
    a, m, long_ = read_jsonl(out)
    assert a["source"] == "a" and a["original_prompt"] == "Compute 4 - 9."
    assert a["prompt"] == formats.append_complement("Compute 4 - 9.", a["complement"])
    assert m["id"] == "m1" and m["messages"][0] == {"role": "system", "content": "Be nice."}
    assert m["messages"][1]["content"] == formats.append_complement("Hello!", m["complement"])
    assert long_["complement"] is None and long_["prompt"] == long_["original_prompt"] and long_["source"] == "long"
