"""PAS texts, reply parsing, prompt records, the append-only output, backoff and rate limit (no model)."""

import json

import pytest

from megatron_align.data.errors import DataError
from megatron_align.data.schema import parse_record
from megatron_align.pas import formats
from megatron_align.pas.generate import few_shot_for, read_golden
from megatron_align.pas.openai_http import RateLimiter, backoff_delay
from megatron_align.pas.records import AppendLog, PasInputError, prompt_id, read_prompts, unique_by_id


@pytest.mark.parametrize("reply,ok,comp", [
    ('{"reason": "fine", "ok": "yes", "complement": "c1"}', True, "c1"),
    ('Sure.\n```json\n{"reason": "answers it", "ok": "No", "complement": "better"}\n```', False, "better"),
    ('{"ok": true}', True, ""),
    ('{"a": {"b": 1}} then {"reason": "r", "ok": "no", "complement": "x"}', False, "x"),
])
def test_parse_verdict(reply, ok, comp):
    v = formats.parse_verdict(reply)
    assert v is not None and v.ok is ok and v.complement == comp


@pytest.mark.parametrize("reply", ["The complement looks fine.", '{"reason": "r", "complement": "c"}',
                                   '{"ok": "maybe"}', "{broken json", ""])
def test_parse_verdict_unparsable(reply):
    assert formats.parse_verdict(reply) is None


def test_clean_and_check_complement():
    assert formats.clean_complement('  Complementary information:  "Answer   briefly,\n in English."  ') == \
        "Answer briefly, in English."
    assert formats.complement_problem("", 5) == "empty"
    assert formats.complement_problem("one two three four five six", 5) == "too_long"
    assert formats.complement_problem("one two three four five", 5) is None


def test_training_format_is_sft_ready():
    msgs = formats.training_messages("What is 2+2?", "Show the steps.")
    parse_record({"messages": msgs})  # the SFT reader's own validation
    assert [m["role"] for m in msgs] == ["user", "assistant"] and msgs[1]["content"] == "Show the steps."
    user = msgs[0]["content"]
    assert user.startswith(formats.ENHANCER_INSTRUCTION) and "What is 2+2?" in user
    assert user.endswith(formats.COMPLEMENT_SLOT)
    assert formats.append_complement("Q", "C") == "Q\n\nC" and formats.append_complement("Q", "") == "Q"


def test_generation_and_critique_messages():
    ex = [formats.GoldenPair("p1", "c1", "math"), formats.GoldenPair("p2", "c2", "math")]
    msgs = formats.generation_messages("new prompt", ex, max_words=40)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "at most 40" in msgs[0]["content"] and "never answer" in msgs[0]["content"]
    assert msgs[2]["content"] == "c1" and "new prompt" in msgs[-1]["content"]
    crit = formats.critique_messages("P", "C")
    assert crit[0]["role"] == "system" and '"ok"' in crit[0]["content"]
    assert "P" in crit[1]["content"] and "C" in crit[1]["content"]


def test_few_shot_selection(tmp_path):
    path = tmp_path / "g.jsonl"
    rows = [{"prompt": f"m{i}", "complement": "c", "category": "math"} for i in range(3)] + \
           [{"prompt": "u", "complement": "c"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    golden = read_golden(str(path))
    assert [g.prompt for g in few_shot_for(golden, "math", 2)] == ["m0", "m1"]
    assert [g.prompt for g in few_shot_for(golden, "code", 5)] == ["u"]  # no code pairs: uncategorised ones
    assert [g.prompt for g in few_shot_for(golden, None, 5)] == ["u"]
    path.write_text('{"prompt": "p"}\n')
    with pytest.raises(DataError, match=r"g\.jsonl:1: field `complement`"):
        read_golden(str(path))


def test_read_prompts_ids_and_fields(tmp_path):
    path = tmp_path / "in.jsonl"
    rows = [{"id": 7, "prompt": "a", "category": "math", "extra": [1]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                          {"role": "user", "content": "b"}]},
            {"prompt": "c"}, {"prompt": "c", "other": 1}, {"text": "d", "cluster": [0, 3]},
            {"prompt": [{"role": "user", "content": "e"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    recs = read_prompts(str(path))
    assert [r.prompt for r in recs] == ["a", "b", "c", "c", "d", "e"]  # `prompts select` output reads too
    assert recs[0].id == "7" and recs[0].category == "math" and recs[0].raw["extra"] == [1]
    assert recs[2].id == prompt_id("c") == recs[3].id  # the same prompt text: the same id
    assert recs[1].id == prompt_id(rows[1]["messages"]) != prompt_id("b")
    assert len(prompt_id("c")) == 16 and prompt_id("c") == prompt_id("c")
    kept, dups = unique_by_id(recs)
    assert dups == 1 and [r.where.rsplit(":", 1)[1] for r in kept] == ["1", "2", "3", "5", "6"]


@pytest.mark.parametrize("line,msg", [
    ("{not json", r"in\.jsonl:2: malformed JSON"),
    ('{"prompt": 3}', r"in\.jsonl:2: field `prompt` must be a non-empty string or a non-empty list"),
    ('{"prompt": "  "}', r"in\.jsonl:2: field `prompt` must not be empty"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
     r"in\.jsonl:2: field `messages` must end with a non-empty user turn"),
    ('{"messages": [{"role": "user"}]}', r"in\.jsonl:2: field `messages` must be"),
    ('{"txt": "x"}', r"in\.jsonl:2: expected an object with `prompt`, `messages` or `text`"),
    ('{"text": ["x"]}', r"in\.jsonl:2: field `text` must be a non-empty string"),
    ('{"prompt": [{"role": "assistant", "content": "a"}]}', r"in\.jsonl:2: field `prompt` must end with a non-empty"),
    ('{"id": true, "prompt": "x"}', r"in\.jsonl:2: field `id`"),
    ("[1, 2]", r"in\.jsonl:2: expected a JSON object"),
])
def test_read_prompts_errors_name_file_and_line(tmp_path, line, msg):
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(DataError, match=msg):
        read_prompts(str(path))


def test_append_log_repairs_a_partial_last_line(tmp_path):
    path = tmp_path / "out.jsonl"
    log = AppendLog(str(path))
    log.append([{"id": "a", "x": 1}, {"id": "b", "x": 2}])
    with open(path, "a") as f:
        f.write('{"id": "c", "x"')  # killed mid-write
    ro = AppendLog(str(path), writable=False)  # another rank: reads, leaves the file alone
    assert ro.done == {"a", "b"} and ro.repaired_bytes == 15 and path.read_text().endswith('"x"')
    log2 = AppendLog(str(path))
    assert log2.done == {"a", "b"} and log2.repaired_bytes == 15
    log2.append([{"id": "c", "x": 3}])
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["a", "b", "c"]
    path.write_text('{"no_id": 1}\n')
    with pytest.raises(PasInputError, match=r"out\.jsonl:1: not a record of this tool"):
        AppendLog(str(path))


def test_backoff_and_rate_limit():
    for attempt, lo, hi in [(1, 0.375, 0.5), (2, 0.75, 1.0), (3, 1.5, 2.0), (6, 6.0, 8.0)]:
        for _ in range(20):
            assert lo <= backoff_delay(attempt, 0.5, 8.0) <= hi
    assert backoff_delay(1, 0.5, 8.0, retry_after=3.0) == 3.0
    assert backoff_delay(1, 0.5, 8.0, retry_after=100.0) == 8.0
    now, slept = [10.0], []

    def sleep(s):
        slept.append(s)
        now[0] += s

    lim = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        lim.wait()
    assert slept == pytest.approx([0.25, 0.25, 0.25, 0.25])  # 5 starts at 4/s: 1 s from the first to the last
    now[0] += 10.0  # idle: no burst credit beyond one start
    lim.wait()
    assert len(slept) == 4
    lim.wait()
    assert slept[-1] == pytest.approx(0.25)


def test_server_request_parsing_and_replay_rules(tmp_path):
    from megatron_align.pas.config import SamplingSection
    from megatron_align.pas.server import BadRequest, ChatRequest, ReplayBackend, parse_request

    d = SamplingSection(temperature=1.0, max_new_tokens=50)
    req = parse_request(json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                               {"type": "text", "text": "b"}]}],
                                    "temperature": 0, "max_tokens": 7, "seed": 3}).encode(), d)
    assert req.messages == [{"role": "user", "content": "ab"}]
    assert (req.sampling.temperature, req.sampling.max_new_tokens, req.sampling.seed, req.sampling.top_p) == \
        (0.0, 7, 3, 1.0)
    for body, msg in [(b"nope", "not JSON"), (b'{"messages": []}', "non-empty"),
                      (b'{"messages": [{"role": "bot", "content": "x"}]}', "role"),
                      (b'{"messages": [{"role": "user", "content": "x"}], "stream": true}', "stream"),
                      (b'{"messages": [{"role": "user", "content": "x"}], "top_p": 2}', "top_p"),
                      (b'{"messages": [{"role": "user", "content": "x"}], "top_p": 0.9, "top_k": 5}',
                       "cannot be combined")]:
        with pytest.raises(BadRequest, match=msg):
            parse_request(body, d)
    rules = tmp_path / "r.jsonl"
    rules.write_text('{"match": "^a", "replies": ["one", "two"]}\n{"match": ".", "replies": ["any"]}\n')
    rb = ReplayBackend(str(rules))
    ask = lambda text: rb.answer([ChatRequest([{"role": "user", "content": text}], d)])[0].text  # noqa: E731
    assert [ask("ab"), ask("ab"), ask("ab"), ask("ac"), ask("z")] == ["one", "two", "two", "one", "any"]
    assert rb.answer([ChatRequest([{"role": "user", "content": ""}], d)])[0].finish_reason == "no_rule"
    rules.write_text('{"match": "(", "replies": ["x"]}\n')
    with pytest.raises(DataError, match=r"r\.jsonl:1: field `match` is not a regular expression"):
        ReplayBackend(str(rules))
    rules.write_text('{"match": "a", "replies": []}\n')
    with pytest.raises(DataError, match=r"r\.jsonl:1: expected"):
        ReplayBackend(str(rules))
