"""The generate loop with scripted teachers (plain objects with the Teacher interface): every path of the
teacher/critic rounds and its counts, resume after a stop, a kill mid-write and a failing endpoint."""

import json

import pytest

from megatron_align.config.base import load_config
from megatron_align.pas.config import PasGenerateConfig
from megatron_align.pas.generate import run_generate
from megatron_align.pas.openai_http import EndpointError

from pas.conftest import read_jsonl, write_jsonl

OK = json.dumps({"reason": "fine", "ok": "yes", "complement": ""})


def no(rewrite=""):
    return json.dumps({"reason": "it answers the prompt", "ok": "no", "complement": rewrite})


class Scripted:
    """Replies by the prompt named in the request: ``script[prompt]`` is the list of successive replies (the
    last repeats). Records how often each prompt was asked."""

    def __init__(self, script, fail_on_call=None):
        self.script, self.calls, self.asked, self.name = script, 0, {}, "scripted"
        self.fail_on_call = fail_on_call

    def complete(self, batch, sampling=None, round_index=0):
        self.calls += 1
        if self.fail_on_call == self.calls:
            raise EndpointError("http://x/v1/chat/completions: connection failed (refused), after 3 attempts")
        out = []
        for msgs in batch:
            text = msgs[-1]["content"]
            key = text.split("User prompt:\n", 1)[1].split("\n\n", 1)[0]
            n = self.asked.get(key, 0)
            self.asked[key] = n + 1
            replies = self.script[key]
            out.append(replies[min(n, len(replies) - 1)])
        return out


def config(tmp_path, n, **over):
    prompts = write_jsonl(tmp_path / "in.jsonl", [{"id": f"q{i}", "prompt": f"P{i}", "category": "c", "keep": i}
                                                  for i in range(n)])
    args = [f"input={prompts}", f"output={tmp_path / 'out.jsonl'}", "teacher.kind=openai",
            "teacher.base_url=http://x/v1", "teacher.model=m", "max_words=6"] + \
           [f"{k}={v}" for k, v in over.items()]
    return load_config(PasGenerateConfig, None, args)


def test_every_round_outcome_is_counted(tmp_path):
    teacher = Scripted({
        "P0": ["Answer in steps."],                                  # approved at once
        "P1": ["way too long a reply for the limit here", "Be brief."],  # bad reply, regenerated
        "P2": ["Use a table."],                                      # rejected, the critic's rewrite replaces it
        "P3": ["Say it twice."],                                     # critic unparsable once, then approved
        "P4": [""],                                                  # empty every time: dropped after 3 tries
        "P5": ["Cite sources."],                                     # rejected, the rewrite is too long: regen
    })
    critic = Scripted({
        "P0": [OK], "P1": [OK], "P2": [no("Use a short list.")], "P3": ["Looks good to me!", OK],
        "P5": [no("this rewrite is much too long to be used"), OK],
    })
    cfg = config(tmp_path, 6, batch_size=4)
    s = run_generate(cfg, teacher, critic, log=lambda *_: None)
    assert s["accepted"] == 5 and s["dropped"] == 1 and s["attempted"] == 6
    assert s["counts"] == {"approved": 4, "bad_reply.empty": 3, "bad_reply.too_long": 1, "critic_unparsable": 1,
                           "rejected": 2, "rewritten": 1, "bad_rewrite.too_long": 1}
    assert s["drop_reasons"] == {"bad_reply.empty": 1}
    assert s["regenerated"] == 1 + 2 + 1  # P1 once, P4 twice, P5 once
    assert s["teacher_calls"] == 6 + 4 and s["critic_calls"] == 5 + 2
    out = {r["id"]: r for r in read_jsonl(cfg.output)}
    assert {k: r["complement"] for k, r in out.items()} == {
        "q0": "Answer in steps.", "q1": "Be brief.", "q2": "Use a short list.", "q3": "Say it twice.",
        "q5": "Cite sources."}
    assert out["q2"]["pas"]["rewritten"] and out["q2"]["pas"]["critic_reason"] == "it answers the prompt"
    assert out["q1"]["pas"]["teacher_tries"] == 2 and out["q3"]["pas"]["critic_tries"] == 2
    assert out["q0"]["keep"] == 0 and out["q0"]["category"] == "c" and out["q0"]["prompt"] == "P0"
    assert out["q0"]["messages"][1] == {"role": "assistant", "content": "Answer in steps."}
    assert read_jsonl(cfg.output + ".dropped.jsonl") == [{"id": "q4", "reason": "bad_reply.empty",
                                                          "where": f"{cfg.input}:5"}]
    assert json.load(open(cfg.output + ".stats.json"))["accepted"] == 5


def test_regenerate_mode_and_unparsable_critic_drop(tmp_path):
    teacher = Scripted({"P0": ["A."], "P1": ["B."]})
    critic = Scripted({"P0": [no("rewrite ignored")], "P1": ["no json at all"]})
    cfg = config(tmp_path, 2, max_tries=2, **{"critic.on_reject": "regenerate"})
    s = run_generate(cfg, teacher, critic, log=lambda *_: None)
    assert s["accepted"] == 0 and s["drop_reasons"] == {"rejected": 1, "critic_unparsable": 1}
    assert s["counts"] == {"rejected": 2, "critic_unparsable": 2}
    assert teacher.asked == {"P0": 2, "P1": 1} and critic.asked == {"P0": 2, "P1": 2}


def test_no_critic_and_duplicate_ids(tmp_path):
    prompts = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "P0"}, {"prompt": "P1"}, {"prompt": "P0"}])
    cfg = load_config(PasGenerateConfig, None, [f"input={prompts}", f"output={tmp_path / 'o.jsonl'}",
                                                "teacher.kind=openai", "teacher.base_url=http://x/v1",
                                                "teacher.model=m", "critic.mode=none"])
    teacher = Scripted({"P0": ["x."], "P1": ["y."]})
    s = run_generate(cfg, teacher, None, log=lambda *_: None)
    assert s["prompts_in_file"] == 3 and s["duplicate_ids"] == 1 and s["accepted"] == 2
    assert teacher.asked == {"P0": 1, "P1": 1}


def test_resume_gives_the_uninterrupted_set(tmp_path):
    script = {f"P{i}": ["too long a reply for six words here", f"C{i}."] if i % 3 == 0 else [f"C{i}."]
              for i in range(11)}
    crit = {f"P{i}": [OK] for i in range(11)}
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    full_dir.mkdir()
    part_dir.mkdir()
    full = config(full_dir, 11, batch_size=4)
    run_generate(full, Scripted(script), Scripted(crit), log=lambda *_: None)
    part = config(part_dir, 11, batch_size=4, max_prompts=5)
    teacher = Scripted(script)
    s1 = run_generate(part, teacher, Scripted(crit), log=lambda *_: None)
    assert s1["attempted"] == 5 and len(read_jsonl(part.output)) == 5
    with open(part.output, "a") as f:  # and then killed mid-write
        f.write('{"id": "q5", "prom')
    part.max_prompts = None
    s2 = run_generate(part, teacher, Scripted(crit), log=lambda *_: None)
    assert s2["already_done"] == 5 and s2["attempted"] == 6 and s2["repaired_partial_line_bytes"] == 18
    got, want = read_jsonl(part.output), read_jsonl(full.output)
    assert len(got) == 11 and len({r["id"] for r in got}) == 11
    assert sorted(got, key=lambda r: r["id"]) == sorted(want, key=lambda r: r["id"])
    # nothing was generated twice: each prompt was asked once (twice for the regenerated ones)
    assert all(n == (2 if int(k[1:]) % 3 == 0 else 1) for k, n in teacher.asked.items())
    s3 = run_generate(part, teacher, Scripted(crit), log=lambda *_: None)  # all done: nothing to do
    assert s3["attempted"] == 0 and s3["already_done"] == 11


def test_failing_endpoint_keeps_what_the_batch_finished(tmp_path):
    script = {"P0": ["A."], "P1": ["too long a reply for six words here", "B."], "P2": ["C."]}
    cfg = config(tmp_path, 3, batch_size=3, **{"critic.mode": "none"})
    with pytest.raises(EndpointError, match="after 3 attempts"):
        run_generate(cfg, Scripted(script, fail_on_call=2), None, log=lambda *_: None)
    assert sorted(r["id"] for r in read_jsonl(cfg.output)) == ["q0", "q2"]  # P1 needed the second call
    teacher = Scripted(script)
    s = run_generate(cfg, teacher, None, log=lambda *_: None)
    assert s["attempted"] == 1 and teacher.asked == {"P1": 2}
    assert sorted(r["id"] for r in read_jsonl(cfg.output)) == ["q0", "q1", "q2"]
