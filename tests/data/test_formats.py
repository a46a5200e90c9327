"""Record formats: every format becomes the same Conversation (same ids, same trained tokens), detection per file,
the errors of a record that matches no format, per-turn loss flags, records with nothing to train, tool calls on
the training path. Trained tokens are checked by decoding the loss mask."""

import json

import numpy as np
import pytest
from chat_fixtures import write_jsonl

from megatron_align.config.base import ConfigError
from megatron_align.data.config import FORMAT_CHOICES, DataConfig
from megatron_align.data.errors import DataError
from megatron_align.data.formats import FORMATS, RecordReader, format_names
from megatron_align.data.jsonl import JsonlChatDataset, iter_conversations
from megatron_align.data.schema import Message, ToolCall
from megatron_align.data.templates import build_template


def trained_text(tmpl, ids, mask):
    return tmpl.tok.decode([i for i, m in zip(ids, mask) if m])


def dataset(tmp_path, records, name="llama3", tok=None, **kw):
    path = write_jsonl(tmp_path / "d.jsonl", records)
    tmpl = build_template(name, tok)
    return tmpl, JsonlChatDataset(path, tmpl, **kw)


# the same two-turn conversation with a system prompt, written in every chat format
MESSAGES = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Add 2 3"},
                         {"role": "assistant", "content": "5"}], "category": "math"}
SAME_CONVERSATION = {
    "messages": MESSAGES,
    "messages_parts": {"messages": [
        {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}], "name": "ann"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Add 2 3"},
        {"role": "assistant", "content": [{"type": "text", "text": "5"}], "weight": 1}], "category": "math"},
    "sharegpt": {"system": "Be brief.", "category": "math", "conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "Add 2 3"},
        {"from": "gpt", "value": "5"}]},
    "sharegpt_roles": {"conversations": [{"role": "system", "content": "Be brief."}] + MESSAGES["messages"][1:],
                       "category": "math"},
    "alpaca": {"instruction": "Add", "input": "2 3", "output": "5", "system": "Be brief.",
               "history": [["Hi", "Hello!"]], "category": "math"},
    "prompt_completion": {"prompt": MESSAGES["messages"][:4], "completion": [MESSAGES["messages"][4]],
                          "category": "math"},
    "query_response": {"query": "Add 2 3", "response": "5", "system": "Be brief.", "history": [["Hi", "Hello!"]],
                       "category": "math"},
}
ALPACA_PROMPT = "Add\n2 3"  # instruction + "\n" + input


@pytest.mark.parametrize("key", list(SAME_CONVERSATION))
def test_every_chat_format_is_the_same_conversation(tmp_path, tok, key):
    record = SAME_CONVERSATION[key]
    if key == "alpaca":
        want = json.loads(json.dumps(MESSAGES).replace('"Add 2 3"', json.dumps(ALPACA_PROMPT)))
    else:
        want = MESSAGES
    (tmp_path / "ref").mkdir()
    _, ref = dataset(tmp_path / "ref", [want], tok=tok)
    tmpl, ds = dataset(tmp_path, [record, record], tok=tok)
    assert len(ds) == 2 and ds.stats.n_samples == 2
    a, b = ds[0], ref[0]
    assert a.input_ids.tolist() == b.input_ids.tolist() and a.target_mask.tolist() == b.target_mask.tolist()
    assert a.category == "math"
    assert trained_text(tmpl, a.input_ids, a.target_mask) == "Hello!<|eot_id|>5<|eot_id|>"
    assert tmpl.tok.decode(a.input_ids).startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                                                   "Be brief.<|eot_id|>")


def test_string_prompt_completion_and_text(tmp_path, tok):
    tmpl, ds = dataset(tmp_path, [{"prompt": "Add 2 3", "completion": "5"}], tok=tok)
    assert tok.decode(ds[0].input_ids) == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nAdd 2 3"
                                           "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n5<|eot_id|>")
    assert trained_text(tmpl, ds[0].input_ids, ds[0].target_mask) == "5<|eot_id|>"
    # raw text: [BOS] text EOS, every token but the BOS trained (llama3: <|begin_of_text|> / <|end_of_text|>)
    doc = "Raw text, <|eot_id|> typed in it stays text.\nSecond line."
    for name, bos, eos in (("llama3", "<|begin_of_text|>", "<|end_of_text|>"), ("chatml", None, "<|endoftext|>")):
        (tmp_path / name).mkdir()
        tmpl, ds = dataset(tmp_path / name, [{"text": doc}, {"text": "b", "category": "web"}], name, tok)
        ids, mask = ds[0].input_ids, ds[0].target_mask
        want = ([tok.special_id(bos)] if bos else []) + tok.encode(doc) + [tok.special_id(eos)]
        assert ids.tolist() == want
        assert mask.tolist() == [0] * bool(bos) + [1] * (len(want) - bool(bos))
        assert ds[1].category == "web"


def test_detection_per_file_and_named_format(tmp_path, tok):
    sharegpt = SAME_CONVERSATION["sharegpt"]
    # the first valid record names the format; a record of another format in the same file is refused
    path = write_jsonl(tmp_path / "mixed.jsonl", ["{bad", sharegpt, MESSAGES, sharegpt])
    skipped = []
    assert [n for n, _ in iter_conversations(path, "skip", skipped)] == [2, 4] and skipped == [1, 3]
    with pytest.raises(DataError, match=r"mixed.jsonl:3: missing 'conversations': this file's records are "
                                        r"sharegpt \(conversations\) \(detected from the file's first valid record\); "
                                        r"this record has keys \[messages, category\]"):
        list(iter_conversations(write_jsonl(tmp_path / "mixed.jsonl", [sharegpt, sharegpt, MESSAGES])))
    # a record that matches no format: the keys found and the formats accepted
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as err:
        list(iter_conversations(path))
    assert str(err.value) == (
        f"{path}:1: unknown record format: keys [question, answer]; accepted: messages (messages), sharegpt "
        f"(conversations), alpaca (instruction, output), prompt_completion (prompt, completion), query_response "
        f"(query, response), text (text)")
    pref = write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"pref.jsonl:1: unknown record format: keys \[prompt, chosen, rejected\]; "
                                        r"accepted: .*\(this looks like a pair record, preference \(chosen, rejected\)\)"):
        list(iter_conversations(pref))
    # data.format names the format: other records are refused even when they are valid in another format
    path = write_jsonl(tmp_path / "named.jsonl", [MESSAGES])
    assert len(list(iter_conversations(path, record_format="messages"))) == 1
    with pytest.raises(DataError, match=r"named.jsonl:1: missing 'conversations': .*named by data.format"):
        list(iter_conversations(path, record_format="sharegpt"))
    with pytest.raises(ConfigError, match="data.format: 'preference' records are pair records"):
        list(iter_conversations(path, record_format="preference"))
    cfg = DataConfig(path=path, format="jsonl")
    with pytest.raises(ValueError, match="data.format: unknown record format 'jsonl'"):
        cfg.validate()
    assert FORMAT_CHOICES == format_names()
    assert all(FORMATS[n].example for n in FORMAT_CHOICES[1:])


def test_each_format_example_line_reads(tmp_path):
    for name, fmt in FORMATS.items():
        reader = RecordReader((fmt.kind,))
        reader(json.loads(fmt.example))
        assert reader.format is fmt, name


BAD = [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                   {"role": "assistant", "content": "a"}]}, "messages[0]: content[0]: only text parts"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0.5}]},
     "messages[1].weight: must be 0 or 1, got 0.5"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "loss": "no"}]},
     "messages[1].loss: must be true or false"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 1,
                                                      "training": False}]}, "messages[1]: loss flags disagree"),
    ({"messages": [{"role": "user", "content": "q", "loss": True}, {"role": "assistant", "content": "a"}]},
     "messages[0]: a loss flag can only turn training on for assistant turns"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "1"},
                   {"role": "assistant", "content": "a"}]}, "messages[1]: a tool result with no assistant tool call"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
     "messages[1].tool_calls[0].function: arguments is a string that is not valid JSON"),
    ({"messages": [{"role": "user", "content": "q", "tool_calls": [{"name": "f"}]},
                   {"role": "assistant", "content": "a"}]}, "messages[0].tool_calls: only an assistant turn"),
    ({"conversations": [{"from": "bot", "value": "q"}]}, "conversations[0].from: unknown speaker 'bot'"),
    ({"conversations": [{"from": "human", "value": "q"}]}, "conversation has no assistant turn"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{x"}]},
     "conversations[1].value: a function_call turn must hold JSON"),
    ({"instruction": "q", "output": 5}, "'output' must be a string, got int"),
    ({"instruction": "q", "output": "a", "history": [["only one"]]}, "history[0]: must be a [user, assistant] pair"),
    ({"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "user", "content": "a"}]},
     "'completion' must hold assistant (and tool) messages only"),
    ({"text": "  "}, "'text' is empty"),
    ({"query": "q"}, "missing 'response'"),
]


@pytest.mark.parametrize("record,reason", BAD, ids=[r for _, r in BAD])
def test_bad_records_name_line_and_field(tmp_path, record, reason):
    path = write_jsonl(tmp_path / "t.jsonl", [record])
    with pytest.raises(DataError) as err:
        list(iter_conversations(path))
    assert str(err.value).startswith(f"{path}:1: ") and reason in str(err.value)


FLAGGED = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Wrong answer."},
                        {"role": "user", "content": "Again"}, {"role": "assistant", "content": "Right answer."}]}


@pytest.mark.parametrize("flag", [{"weight": 0}, {"loss": False}, {"training": False}])
@pytest.mark.parametrize("name,end", [("llama3", "<|eot_id|>"), ("chatml", "<|im_end|>"), ("baichuan", "</s>")])
def test_per_turn_loss_flags(tmp_path, tok, flag, name, end):
    rec = json.loads(json.dumps(FLAGGED))
    rec["messages"][1].update(flag)
    tmpl, ds = dataset(tmp_path, [FLAGGED, rec], name, tok)
    both, first_off = ds[0], ds[1]
    assert both.input_ids.tolist() == first_off.input_ids.tolist()
    assert trained_text(tmpl, both.input_ids, both.target_mask) == (
        f"Wrong answer.{end if name != 'baichuan' else ''}Right answer.{end}")
    assert trained_text(tmpl, first_off.input_ids, first_off.target_mask) == f"Right answer.{end}"
    # sharegpt turns take the same flags
    sg = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Wrong answer.", **flag},
                            {"from": "human", "value": "Again"}, {"from": "gpt", "value": "Right answer."}]}
    (tmp_path / "sg").mkdir()
    _, ds2 = dataset(tmp_path / "sg", [sg], name, tok)
    assert ds2[0].target_mask.tolist() == first_off.target_mask.tolist()


def test_nothing_to_train_is_counted_and_skipped(tmp_path, tok):
    off = json.loads(json.dumps(FLAGGED))
    for m in off["messages"][1::2]:
        m["loss"] = False
    empty = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]}
    half_empty = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""},
                               {"role": "user", "content": "Again"}, {"role": "assistant", "content": "Yes."}]}
    tmpl, ds = dataset(tmp_path, [FLAGGED, off, empty, half_empty], tok=tok)
    assert len(ds) == 2 and ds.stats.n_samples == 2 and ds.stats.n_nothing_to_train == 2
    # an empty answer is never trained (not even its end-of-turn token)
    assert trained_text(tmpl, ds[1].input_ids, ds[1].target_mask) == "Yes.<|eot_id|>"


TOOL_RECORD = {"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}],
    "messages": [{"role": "user", "content": "Weather in Paris?"},
                 {"role": "assistant", "content": "", "tool_calls": [
                     {"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                                  "arguments": "{\"city\": \"Paris\"}"}}]},
                 {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
                 {"role": "assistant", "content": "18 C in Paris."}]}


def test_tool_calls_are_trained_not_dropped(tmp_path, tok):
    tmpl, ds = dataset(tmp_path, [TOOL_RECORD], "chatml", tok)
    s = ds[0]
    assert trained_text(tmpl, s.input_ids, s.target_mask) == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
        "18 C in Paris.<|im_end|>")
    text = tok.decode(s.input_ids)
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in text
    assert "<|im_start|>user\n<tool_response>\n18 C\n</tool_response><|im_end|>" in text
    # ShareGPT's function_call / observation turns and a JSON-string `tools` (LLaMA-Factory) read the same
    sg = {"tools": json.dumps(TOOL_RECORD["tools"]), "conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": "18 C"}, {"from": "gpt", "value": "18 C in Paris."}]}
    (tmp_path / "sg").mkdir()
    _, ds2 = dataset(tmp_path / "sg", [sg], "chatml", tok)
    assert ds2[0].input_ids.tolist() == s.input_ids.tolist()
    assert ds2[0].target_mask.tolist() == s.target_mask.tolist()


def test_tool_records_for_a_family_without_tools_name_line_and_field(tmp_path, tok):
    path = write_jsonl(tmp_path / "t.jsonl", [MESSAGES, TOOL_RECORD])
    with pytest.raises(DataError, match=r"t.jsonl:2: tools: chat template 'llama3' \(Llama-3\) has no tool-call "
                                        r"format"):
        JsonlChatDataset(path, build_template("llama3", tok))
    ds = JsonlChatDataset(path, build_template("llama3", tok), on_bad_line="skip")
    assert len(ds) == 1 and ds.stats.n_skipped_bad == 1


def test_messages_normalise_to_the_conversation(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [TOOL_RECORD, SAME_CONVERSATION["messages_parts"]])
    (_, a), (_, b) = list(iter_conversations(path))
    assert a.tools == tuple(TOOL_RECORD["tools"])
    assert a.messages[1] == Message("assistant", "", None, (ToolCall("get_weather", {"city": "Paris"}, "c1"),))
    assert a.messages[2] == Message("tool", "18 C", tool_call_id="c1")
    assert [m.trained for m in a.messages] == [False, True, False, True]
    assert b.messages[0] == Message("system", "Be brief.", written_role="developer") and b.messages[1].name == "ann"
    assert b.messages[-1] == Message("assistant", "5", True)


def test_preprocess_reads_every_format(tmp_path, tok):
    from megatron_align.data.config import DEFAULT_TOKENIZER
    from megatron_align.data.indexed import IndexedChatDataset, preprocess

    path = write_jsonl(tmp_path / "sg.jsonl", [SAME_CONVERSATION["sharegpt"], {"conversations": [
        {"from": "human", "value": "x"}, {"from": "gpt", "value": "y", "weight": 0}]}])
    stats = preprocess(path, str(tmp_path / "out"), DEFAULT_TOKENIZER, "llama3")
    assert stats.n_samples == 1 and stats.n_nothing_to_train == 1
    idx = IndexedChatDataset(str(tmp_path / "out"))
    _, ref = dataset(tmp_path, [MESSAGES], tok=tok)
    assert np.array_equal(idx[0].input_ids, ref[0].input_ids)
    assert np.array_equal(idx[0].target_mask, ref[0].target_mask)


def test_flags_with_a_checkpoints_jinja_template(tmp_path):
    """`auto`: the growing-prefix mask and {% generation %} blocks both leave flagged-off turns untrained, and the
    ids do not change with the flags."""
    from official_templates import QWEN2
    from test_templates_official import GEN_TEMPLATE
    from tiny_real_tokenizers import make_bpe_dir

    from megatron_align.data.schema import parse_messages
    from megatron_align.data.tokenizer import ChatTokenizer

    off = json.loads(json.dumps(FLAGGED))
    off["messages"][1]["weight"] = 0
    for jinja in (QWEN2, GEN_TEMPLATE):
        tok = ChatTokenizer(make_bpe_dir(str(tmp_path / str(len(jinja))), "qwen2", jinja))
        t = build_template("auto", tok)
        a, b = (t.encode(parse_messages(r["messages"], "messages")) for r in (FLAGGED, off))
        assert a.ids == b.ids
        assert trained_text(t, a.ids, a.target_mask) == "Wrong answer.<|im_end|>Right answer.<|im_end|>"
        assert trained_text(t, b.ids, b.target_mask) == "Right answer.<|im_end|>"


def test_data_command_reads_formats_and_reports_counts(tmp_path, capsys):
    """The `sft` data path through the CLI (`megatron-align data preview`): a named format, the trained spans of a
    tool conversation, the nothing-to-train count, and a family without tools refusing the record (exit 2)."""
    from megatron_align.cli import main

    sg = {"tools": TOOL_RECORD["tools"], "conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": "18 C"}, {"from": "gpt", "value": "18 C in Paris."}]}
    off = {"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y", "loss": False}]}
    data = write_jsonl(tmp_path / "sg.jsonl", [sg, off])
    base = ["data", "preview", f"data.path={data}", "model.name=tiny-llama"]
    assert main(base + ["data.template=chatml", "data.format=sharegpt"]) == 0
    out = capsys.readouterr().out
    assert ('<|im_start|>assistant\n[[<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            '</tool_call><|im_end|>]]\n<|im_start|>user\n<tool_response>\n18 C\n</tool_response><|im_end|>') in out
    assert "summary: 1 units," in out and "nothing to train 1" in out
    assert main(base + ["data.format=alpaca"]) == 2
    assert f"{data}:1: missing 'instruction', 'output': this file's records are alpaca" in capsys.readouterr().err
    assert main(base) == 2  # llama3: no tool format
    assert f"{data}:1: tools: chat template 'llama3' (Llama-3) has no tool-call format" in capsys.readouterr().err


def test_preference_records_share_the_message_reader(tmp_path, tok):
    from megatron_align.data.preference import PreferenceDataset

    tmpl = build_template("chatml", tok)
    plain = {"prompt": "Add 2 3", "chosen": "5", "rejected": "6"}
    parts = {"prompt": [{"role": "developer", "content": "Be brief."},
                        {"role": "user", "content": [{"type": "text", "text": "Add 2 3"}]}],
             "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "5"}]}],
             "rejected": [{"role": "assistant", "content": "6"}]}
    empty = {"prompt": "Add 2 3", "chosen": "5", "rejected": " "}
    ds = PreferenceDataset(write_jsonl(tmp_path / "p.jsonl", [plain, parts, empty]), tmpl)
    assert len(ds) == 2 and ds.stats.n_nothing_to_train == 1  # an empty response is never a training target
    chosen = ds[1].docs[0]
    assert trained_text(tmpl, chosen.input_ids, chosen.target_mask) == "5<|im_end|>"
    assert tok.decode(chosen.input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    bad = write_jsonl(tmp_path / "b.jsonl", [plain, {"prompt": [{"role": "bot", "content": "x"}], "chosen": "5",
                                                      "rejected": "6"}])
    with pytest.raises(DataError, match=r"b.jsonl:2: prompt\[0\]: unknown role 'bot'"):
        PreferenceDataset(bad, tmpl)
    sft_file = write_jsonl(tmp_path / "s.jsonl", [MESSAGES])
    with pytest.raises(DataError, match=r"s.jsonl:1: unknown record format: keys \[messages, category\]; accepted: "
                                        r"preference \(chosen, rejected\) \(this looks like a chat record, messages"):
        PreferenceDataset(sft_file, tmpl)
    with pytest.raises(ConfigError, match=r"data.format: 'messages' records are chat records; this takes preference"):
        PreferenceDataset(sft_file, tmpl, record_format="messages")
    assert len(PreferenceDataset(write_jsonl(tmp_path / "n.jsonl", [plain]), tmpl, record_format="preference")) == 1


def test_conversational_prompt_completion_with_tools_equals_trl(tmp_path):
    """TRL's own rendering of a conversational prompt-completion example with tools (trl.data_utils.
    apply_chat_template over the official Qwen2.5 template): prompt + completion is our rendering, and what we
    train is the completion (up to the newline after its end-of-turn token)."""
    from official_templates import QWEN25
    from tiny_real_tokenizers import make_bpe_dir
    from transformers import PreTrainedTokenizerFast
    from trl.data_utils import apply_chat_template

    from megatron_align.data.tokenizer import ChatTokenizer

    d = make_bpe_dir(str(tmp_path / "q"), "qwen2", QWEN25)
    msgs = TOOL_RECORD["messages"]
    call = json.loads(json.dumps(msgs[1]))
    call["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}  # TRL passes the arguments as they are
    example = {"prompt": [msgs[0]], "completion": [call]}
    ref = apply_chat_template(example, PreTrainedTokenizerFast.from_pretrained(d), tools=TOOL_RECORD["tools"])
    tmpl = build_template("chatml", ChatTokenizer(d))
    record = {"prompt": [msgs[0]], "completion": [msgs[1]], "tools": TOOL_RECORD["tools"]}
    conv = RecordReader(("chat",))(record)
    enc = tmpl.encode_conversation(conv)
    assert tmpl.render_text(conv.messages, tools=conv.tools) == ref["prompt"] + ref["completion"]
    assert trained_text(tmpl, enc.ids, enc.target_mask) == ref["completion"].rstrip("\n")


def test_developer_role_is_system_unless_the_template_has_one(tmp_path):
    from tiny_real_tokenizers import make_bpe_dir

    from megatron_align.data.schema import parse_messages
    from megatron_align.data.tokenizer import ChatTokenizer

    plain = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with_dev = plain.replace("{{ m.role }}", "{{ 'dev' if m.role == 'developer' else m.role }}")
    msgs = parse_messages([{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello"}], "messages")
    for jinja, head in ((plain, "system"), (with_dev, "dev")):
        tok = ChatTokenizer(make_bpe_dir(str(tmp_path / head), "qwen2", jinja))
        assert build_template("auto", tok).render_text(msgs).startswith(f"<|im_start|>{head}\nBe brief.<|im_end|>")
    assert build_template("chatml", tok).render_text(msgs).startswith("<|im_start|>system\nBe brief.<|im_end|>")
