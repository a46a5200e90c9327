"""The OpenAI-compatible client against our REAL server (`pas serve`, started in a subprocess): retries on
injected 503/429, a non-retried 400, the rate limit, a closed port (one-line error, exit 2, progress kept) and
the worked example on the bundled tiny data with its exact counts."""

import json
import time
import urllib.request

import pytest

from megatron_align.data.schema import parse_record
from megatron_align.pas import formats
from megatron_align.pas.openai_http import ChatClient, EndpointError, EndpointSettings

from pas.conftest import PROMPTS, REPLAY, ROOT, last_json, read_jsonl, write_jsonl

CONFIG = f"{ROOT}/examples/configs/pas_generate_tiny_cpu.yaml"
GEN_MSG = [{"role": "user", "content": "User prompt:\nHello!\n\nWrite the complement."}]


def run_cli(capsys, *args):
    """The CLI in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from megatron_align.cli import main

    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def client(url, **kw):
    return ChatClient(EndpointSettings(base_url=url, model="replay", backoff_s=0.01, max_backoff_s=0.05, **kw))


@pytest.mark.parametrize("status", [503, 429])
def test_retries_injected_failures(start_server, status):
    srv = start_server("--replies", REPLAY, "--fail-first", 3, "--fail-status", status)
    with urllib.request.urlopen(srv.url + "/models", timeout=10) as r:
        assert json.load(r)["data"][0]["id"] == "replay"
    c = client(srv.url, max_retries=3)
    assert c.complete_one(GEN_MSG, {"temperature": 0}) == \
        "Reply in a friendly, concise tone, introduce yourself briefly as an assistant, and offer help without " \
        "making assumptions about the user."
    assert (c.stats.requests, c.stats.retries) == (4, 3)


def test_gives_up_after_the_retries_and_does_not_retry_400(start_server):
    srv = start_server("--replies", REPLAY, "--fail-first", 5)
    c = client(srv.url, max_retries=2)
    with pytest.raises(EndpointError, match=r"HTTP 503: injected failure .*after 3 attempts"):
        c.complete_one(GEN_MSG, {})
    c = client(srv.url, max_retries=5)
    c.complete_one(GEN_MSG, {})  # the 4th and 5th injected failures, then the reply
    assert c.stats.retries == 2
    c = client(srv.url, max_retries=5)
    with pytest.raises(EndpointError, match=r"HTTP 400: no canned reply matches this request \(not retried\)"):
        c.complete_one([{"role": "user", "content": "unknown"}], {})
    assert c.stats.requests == 1
    with pytest.raises(EndpointError, match=r"HTTP 400: only n=1"):
        c.complete_one(GEN_MSG, {"n": 2})


def test_rate_limit_and_concurrency(start_server):
    srv = start_server("--replies", REPLAY)
    c = client(srv.url, concurrency=4, rate_limit_rps=20)
    t0 = time.perf_counter()
    out = c.complete([GEN_MSG] * 12, {})
    elapsed = time.perf_counter() - t0
    assert len(out) == 12 and len(set(out)) == 1
    assert elapsed >= 11 / 20 - 0.01, elapsed  # 12 starts evenly spaced at 20/s


def test_worked_example_counts_resume_and_unreachable_endpoint(start_server, tmp_path, capsys):
    out = tmp_path / "pas_sft.jsonl"
    srv = start_server("--replies", REPLAY)
    base = ["pas", "generate", "--config", CONFIG, "--out", out, f"teacher.base_url={srv.url}"]
    rc, _, err = run_cli(capsys, *base, "--max-prompts", 10)  # a first, partial run
    assert rc == 0, err
    assert len(read_jsonl(out)) == 10
    srv.stop()
    rc, _, stderr = run_cli(capsys, *base, "teacher.max_retries=2")  # the endpoint is gone
    assert rc == 2
    err = stderr.strip().splitlines()
    assert len(err) == 1 and "connection failed" in err[0] and "after 3 attempts" in err[0], stderr
    assert err[0].startswith("megatron-align pas: error: http://127.0.0.1:")
    assert len(read_jsonl(out)) == 10, "progress is kept"
    srv = start_server("--replies", REPLAY)
    rc, stdout, err = run_cli(capsys, *base[:-1], f"teacher.base_url={srv.url}")
    assert rc == 0, err
    s = last_json(stdout)
    assert s["already_done"] == 10 and s["attempted"] == 31 and s["total_in_output"] == 41
    rows = read_jsonl(out)
    prompts = read_jsonl(PROMPTS)
    assert sorted(r["id"] for r in rows) == sorted(p["id"] for p in prompts), "none lost, none twice"
    # the replay file plans: 5 over-long first replies, 6 critic replies without JSON, 9 rejections rewritten
    fresh = tmp_path / "fresh.jsonl"
    srv = start_server("--replies", REPLAY)  # the replay server remembers what it was asked: a new one
    s = last_json(run_cli(capsys, "pas", "generate", "--config", CONFIG, "--out", fresh,
                          f"teacher.base_url={srv.url}")[1])
    assert (s["accepted"], s["dropped"], s["regenerated"]) == (41, 0, 5)
    assert s["counts"] == {"approved": 32, "bad_reply.too_long": 5, "critic_unparsable": 6, "rejected": 9,
                           "rewritten": 9}
    assert s["teacher_calls"] == 46 and s["critic_calls"] == 47
    assert sorted(map(json.dumps, read_jsonl(fresh))) == sorted(map(json.dumps, rows)), "resumed == uninterrupted"
    by_cat = {p["id"]: p for p in prompts}
    for r in rows:
        parse_record(r)
        user, asst = r["messages"]
        assert user["content"] == formats.enhancer_user_turn(by_cat[r["id"]]["prompt"])
        assert asst["content"] == r["complement"] and r["category"] == by_cat[r["id"]]["category"]
    rewritten = [r for r in rows if r["pas"]["rewritten"]]
    assert len(rewritten) == 9 and all(r["category"] in ("math", "code", "chat") for r in rewritten)


def test_regenerate_mode_drops_persistent_rejections(start_server, tmp_path, capsys):
    srv = start_server("--replies", REPLAY)
    s = last_json(run_cli(capsys, "pas", "generate", "--config", CONFIG, "--out", tmp_path / "o.jsonl",
                          f"teacher.base_url={srv.url}", "critic.on_reject=regenerate", "max_tries=2")[1])
    # the canned critic rejects the same 9 complements every time: regenerated once, then dropped
    assert (s["accepted"], s["dropped"], s["drop_reasons"]) == (32, 9, {"rejected": 9})
    # 17 rejections, not 18: one of the 9 spent its first try on an over-long reply, so it is dropped after one
    assert s["counts"]["rejected"] == 17 and s["counts"]["bad_reply.too_long"] == 5
    assert len(read_jsonl(tmp_path / "o.jsonl.dropped.jsonl")) == 9


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    def run(*args):
        rc, _, err = run_cli(capsys, "pas", "generate", "--config", CONFIG, "--out", tmp_path / "o.jsonl", *args)
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        return err.strip()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": ["x"]}\n')
    assert run("--input", bad) == (f"megatron-align pas: error: {bad}:2: field `prompt` must be a non-empty "
                                   "string or a non-empty list of {role, content} strings")
    assert "teacher.kind=openai needs base_url and model" in run("teacher.base_url=")
    assert "NO_SUCH_VAR_X is not set" in run("teacher.api_key_env=NO_SUCH_VAR_X")
    write_jsonl(tmp_path / "g.jsonl", [{"prompt": "x"}])
    assert f"{tmp_path}/g.jsonl:1: field `complement`" in run(f"few_shot={tmp_path}/g.jsonl")
    assert "unknown key teacher.bogus" in run("teacher.bogus=1")
    assert "top_k and top_p cannot be combined" in run("teacher.kind=checkpoint", "teacher.load=x",
                                                       "teacher.sampling.top_k=5", "teacher.sampling.top_p=0.9")
    assert not (tmp_path / "o.jsonl").exists()
