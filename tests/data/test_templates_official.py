"""Built-in templates and ``auto`` (the checkpoint's Jinja template) against the official templates rendered by
``transformers``' ``apply_chat_template`` (strings and ids), with tiny tokenizers that split like the real ones.
Sources of the expectations: tests/data/official_templates.py."""

import pytest

from megatron_align.data.chat_jinja import JinjaTemplate, TemplateError
from megatron_align.data.templates import build_template
from megatron_align.data.tokenizer import ChatTokenizer

from official_templates import (LLAMA3, LLAMA31, QWEN2, QWEN25, baichuan2_build_chat_input,
                                baichuan2_finetune_sample)
from tiny_real_tokenizers import make_bpe_dir, make_sentencepiece_dir

U, A, S = "user", "assistant", "system"
CONVERSATIONS = {
    "single": [(U, "What is 2 + 3?"), (A, "The answer is 5.")],
    "system": [(S, "You are a math tutor."), (U, "What is 2 + 3?"), (A, "5")],
    "empty_system": [(S, ""), (U, "Hello there!"), (A, "How are you today?")],
    "three_turns": [(U, "Hello"), (A, "Hi!"), (U, "Reverse: apple river"), (A, "river apple"), (U, "Thanks"),
                    (A, "You are welcome.")],
    "unicode": [(U, "Grüße aus München – 你好，世界 🙂"), (A, "你好 🙂")],
    "whitespace": [(S, "  Be brief.\n"), (U, "\n  spaces   and\ttabs  \n"), (A, "\n\nSure.\n"), (U, " ok "),
                   (A, "  done  \n\n")],
}
CASES = [("llama3", "llama3", LLAMA3), ("llama3.1", "llama3", LLAMA31), ("chatml", "qwen2", QWEN2)]
END = {"llama3": "<|eot_id|>", "llama3.1": "<|eot_id|>", "chatml": "<|im_end|>"}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {name: make_bpe_dir(str(root / name), kind, jinja) for name, kind, jinja in CASES}


def _hf(path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(path)


def _hf_ids(hf, msgs, gen):
    out = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _dicts(conv):
    return [{"role": r, "content": c} for r, c in conv]


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_builtin_and_auto_equal_the_official_template(dirs, name):
    hf = _hf(dirs[name])
    tok = ChatTokenizer(dirs[name])
    builtin = build_template(name, tok)
    auto = build_template("auto", tok)
    assert isinstance(auto, JinjaTemplate) and not isinstance(builtin, JinjaTemplate)
    end = tok.special_id(END[name])
    for key, conv in CONVERSATIONS.items():
        for gen, msgs in ((False, conv), (True, conv[:-1])):
            want = hf.apply_chat_template(_dicts(msgs), tokenize=False, add_generation_prompt=gen)
            want_ids = _hf_ids(hf, _dicts(msgs), gen)
            for t in (builtin, auto):
                assert t.render_text(msgs, gen) == want, (name, key, gen, t.name)
                if name == "chatml" and key == "whitespace":
                    # the one documented difference (encode_pieces): "assistant\n" and content "\n\nSure." are
                    # tokenized apart ("\n" + "\n\n"), where the whole string gives one "\n\n\n"
                    assert t.encode(msgs, gen).ids != want_ids
                    assert t.tok.decode(t.encode(msgs, gen).ids) == want
                    continue
                assert t.encode(msgs, gen).ids == want_ids, (name, key, gen, t.name)
        # masks: built-in and auto train the same tokens: each assistant turn's content ids + its end token
        b, a = builtin.encode(conv), auto.encode(conv)
        assert b.target_mask == a.target_mask, (name, key)
        trained = [i for i, m in zip(b.ids, b.target_mask) if m]
        strip = (lambda s: s.strip()) if name.startswith("llama") else (lambda s: s)
        assert tok.decode(trained) == "".join(strip(c) + END[name] for r, c in conv if r == A), (name, key)
        assert trained.count(end) == sum(r == A for r, _ in conv)


def test_chatml_default_system_prompt_is_configurable(dirs):
    tok = ChatTokenizer(dirs["chatml"])
    conv = CONVERSATIONS["single"]
    assert build_template("chatml", tok).render_text(conv).startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert build_template("chatml", tok, None).render_text(conv).startswith("<|im_start|>user\n")
    assert build_template("chatml", tok, "Be terse.").render_text(conv).startswith(
        "<|im_start|>system\nBe terse.<|im_end|>\n")


def test_baichuan_equals_build_chat_input_and_finetune_sample(tmp_path):
    tok = ChatTokenizer(make_sentencepiece_dir(str(tmp_path / "sp")))
    assert tok.kind == "sentencepiece"
    user, asst, eos = (tok.special_id(t) for t in ("<reserved_106>", "<reserved_107>", "</s>"))
    t = build_template("baichuan", tok)
    for key, conv in CONVERSATIONS.items():
        if key == "empty_system":
            continue
        prompt = conv[:-1]
        assert t.encode(prompt, add_generation_prompt=True).ids == baichuan2_build_chat_input(
            tok.encode, _dicts(prompt), user, asst), key
        assert t.encode(conv[:-2] + conv[-2:]).ids[:-1] == baichuan2_build_chat_input(
            tok.encode, _dicts(conv), user, asst), key  # history: no </s> between turns
        if conv[0][0] == S:
            continue  # fine-tune.py has no system message
        ids, labels = baichuan2_finetune_sample(tok.encode, _dicts(conv), user, asst, eos)
        enc = t.encode(conv)
        assert enc.ids == ids, key
        # trained: the assistant content and the final </s>, as fine-tune.py; its </s> label at the position of a
        # later user token (stop after an intermediate turn) is the one target the ids + mask cannot carry
        later_users = {k for k, i in enumerate(ids) if i == user and k > 0}
        want = [int(lab != -100 and k > 0 and k not in later_users) for k, lab in enumerate(labels)]
        assert enc.target_mask == want, key


def test_sentencepiece_directory_encodes_like_sentencepiece(tmp_path):
    import sentencepiece as spm

    d = make_sentencepiece_dir(str(tmp_path / "sp"))
    sp = spm.SentencePieceProcessor(model_file=d + "/tokenizer.model")
    tok = ChatTokenizer(d)
    for text in ["Hello there!", "Grüße 你好 🙂 ∮", "  spaces\t\n"]:
        assert tok.encode(text) == sp.encode(text)
        assert tok.decode(tok.encode(text)) == sp.decode(sp.encode(text)) == text
    assert tok.vocab_size == sp.get_piece_size()
    for piece in ("<reserved_106>", "<reserved_107>", "</s>", "<s>"):
        assert tok.special_id(piece) == sp.piece_to_id(piece)
        assert tok.decode([tok.special_id(piece)]) == piece
    assert tok.token_id("<reserved_999>") is None


GEN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}{% generation %}"
                "{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
REWRITES = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and not loop.last %}"
            "{{ m.content.split('</think>')[-1] }}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_generation_blocks_prefix_errors_and_forged_tokens(tmp_path):
    d = make_bpe_dir(str(tmp_path / "g"), "qwen2", GEN_TEMPLATE)
    tok, hf = ChatTokenizer(d), _hf(d)
    conv = CONVERSATIONS["three_turns"]
    enc = build_template("auto", tok).encode(conv)
    want = hf.apply_chat_template(_dicts(conv), tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert enc.ids == list(want["input_ids"]) and enc.target_mask == list(want["assistant_masks"])
    # the same template without {% generation %}: growing prefixes give the same mask
    plain = JinjaTemplate(tok, source=("inline", GEN_TEMPLATE.replace("{% generation %}", "")
                                       .replace("{% endgeneration %}", "")))
    assert plain.encode(conv).target_mask == enc.target_mask
    # control-token text typed in content stays text
    forged = plain.encode([(U, "say <|im_end|>"), (A, "<|im_start|>x")])
    assert forged.ids.count(tok.special_id("<|im_end|>")) == 2 and forged.ids.count(tok.special_id("<|im_start|>")) == 2
    # a template that rewrites earlier turns: error naming the template and the conversation
    bad = JinjaTemplate(tok, source=("my/tokenizer_config.json", REWRITES))
    bad.encode([(U, "a"), (A, "plain")])  # one turn: nothing rewritten
    with pytest.raises(TemplateError, match=r"my/tokenizer_config.json.*think.*not a prefix.*data.template"):
        bad.encode([(U, "a"), (A, "x</think>y"), (U, "b"), (A, "z")])


def test_tokenizer_files_to_carry(tmp_path, dirs):
    import os

    d = make_sentencepiece_dir(str(tmp_path / "sp"))
    (tmp_path / "sp" / "chat_template.jinja").write_text(QWEN2)
    tok = ChatTokenizer(d)
    assert [os.path.basename(f) for f in tok.files()] == ["tokenizer.model", "chat_template.jinja"]
    assert tok.chat_template == QWEN2 and build_template("auto", tok).source.endswith("chat_template.jinja")
    assert [os.path.basename(f) for f in ChatTokenizer(dirs["chatml"]).files()] == ["tokenizer.json",
                                                                                     "tokenizer_config.json"]


# -- tool calling: the built-in llama3.1 / chatml and `auto` against the official Llama-3.1 and Qwen2.5 templates --
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city (°C)",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}, "unit": {"type": "string"}},
                                               "required": ["city"]}}},
         {"type": "function", "function": {"name": "local_time", "description": "Time in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def _call(name, **args):
    return {"type": "function", "function": {"name": name, "arguments": args}}


TOOL_CONVERSATIONS = {
    "one_call": [{"role": "user", "content": "Weather in Paris?"},
                 {"role": "assistant", "content": "", "tool_calls": [_call("get_weather", city="Paris")]},
                 {"role": "tool", "content": "18 C, sunny"},
                 {"role": "assistant", "content": "It is 18 C and sunny in Paris."}],
    "system_two_rounds": [{"role": "system", "content": "You are a travel helper."},
                          {"role": "user", "content": "Weather in Zürich?"},
                          {"role": "assistant", "content": "", "tool_calls": [_call("get_weather", city="Zürich",
                                                                                     unit="C")]},
                          {"role": "tool", "content": "{\"temp\": 9}"},
                          {"role": "assistant", "content": "9 degrees."},
                          {"role": "user", "content": "And the time?"},
                          {"role": "assistant", "content": "", "tool_calls": [_call("local_time", city="Zürich")]},
                          {"role": "tool", "content": "10:42"},
                          {"role": "assistant", "content": "It is 10:42."}],
}
# Qwen2.5 also renders several calls in one turn (after the turn's text) and groups consecutive tool results
TOOL_CONVERSATIONS_QWEN = {
    "parallel": [{"role": "user", "content": "Weather and time in Rome?"},
                 {"role": "assistant", "content": "Let me check both.",
                  "tool_calls": [_call("get_weather", city="Rome"), _call("local_time", city="Rome")]},
                 {"role": "tool", "content": "21 C"}, {"role": "tool", "content": "15:00"},
                 {"role": "assistant", "content": "21 C at 15:00."}],
}
TOOL_CASES = [("llama3.1", "llama3", LLAMA31, TOOL_CONVERSATIONS),
              ("chatml", "qwen2", QWEN25, {**TOOL_CONVERSATIONS, **TOOL_CONVERSATIONS_QWEN})]


def _expected_trained(name, msgs):
    """What the trained tokens must decode to: each assistant turn as the official template writes it + its end."""
    import json

    out = []
    for m in msgs:
        if m["role"] != "assistant":
            continue
        calls = [c["function"] for c in m.get("tool_calls", [])]
        if name == "llama3.1":
            body = (json.dumps({"name": calls[0]["name"], "parameters": calls[0]["arguments"]}, ensure_ascii=False)
                    if calls else m["content"].strip())
        else:
            body = "\n".join(([m["content"]] if m["content"] else []) + [
                '<tool_call>\n{"name": "%s", "arguments": %s}\n</tool_call>'
                % (c["name"], json.dumps(c["arguments"], ensure_ascii=False)) for c in calls])
        out.append(body + END[name])
    return "".join(out)


@pytest.mark.parametrize("name,kind,jinja,convs", TOOL_CASES, ids=[c[0] for c in TOOL_CASES])
def test_tool_calls_equal_the_official_template(tmp_path, name, kind, jinja, convs):
    from megatron_align.data.schema import parse_messages

    d = make_bpe_dir(str(tmp_path / name), kind, jinja)
    hf, tok = _hf(d), ChatTokenizer(d)
    builtin, auto = build_template(name, tok), build_template("auto", tok)
    for key, conv in convs.items():
        msgs = parse_messages(conv, "messages")
        for gen, upto in ((False, len(conv)), (True, len(conv) - 1)):
            want = hf.apply_chat_template(conv[:upto], tools=TOOLS, tokenize=False, add_generation_prompt=gen)
            want_ids = list(hf.apply_chat_template(conv[:upto], tools=TOOLS, tokenize=True, return_dict=True,
                                                   add_generation_prompt=gen)["input_ids"])
            for t in (builtin, auto):
                assert t.render_text(msgs[:upto], gen, tools=TOOLS) == want, (name, key, gen, t.name)
                assert t.encode(msgs[:upto], gen, tools=TOOLS).ids == want_ids, (name, key, gen, t.name)
        b, a = builtin.encode(msgs, tools=TOOLS), auto.encode(msgs, tools=TOOLS)
        assert b.target_mask == a.target_mask, (name, key)
        trained = [i for i, m in zip(b.ids, b.target_mask) if m]
        assert tok.decode(trained) == _expected_trained(name, conv), (name, key)
        # a call flagged off (weight 0) is not trained; the answer still is
        flagged = [dict(m, weight=0) if m.get("tool_calls") else m for m in conv]
        fb, fa = (t.encode(parse_messages(flagged, "messages"), tools=TOOLS) for t in (builtin, auto))
        assert fb.ids == b.ids and fb.target_mask == fa.target_mask
        assert tok.decode([i for i, m in zip(fb.ids, fb.target_mask) if m]) == _expected_trained(
            name, [m for m in conv if not m.get("tool_calls")])


def test_families_without_a_tool_format_refuse_tools(tmp_path):
    from megatron_align.data.schema import RecordError, parse_messages

    msgs = parse_messages(TOOL_CONVERSATIONS["one_call"], "messages")
    tok = ChatTokenizer(make_bpe_dir(str(tmp_path / "l3"), "llama3", LLAMA3))
    for t in (build_template("llama3", tok), build_template("auto", tok)):
        with pytest.raises(RecordError, match=r"messages\[1\].tool_calls: .*(llama3.*Llama-3|does not render)"):
            t.encode(msgs)
        with pytest.raises(RecordError, match=r"tools: .*(Llama-3|does not render 'get_weather')"):
            t.encode(msgs[:1], tools=TOOLS)
    sp = ChatTokenizer(make_sentencepiece_dir(str(tmp_path / "sp")))
    with pytest.raises(RecordError, match=r"messages\[1\].tool_calls: chat template 'baichuan' \(Baichuan2\)"):
        build_template("baichuan", sp).encode(msgs)
    qwen2 = ChatTokenizer(make_bpe_dir(str(tmp_path / "q2"), "qwen2", QWEN2))  # Qwen2's own template: no tools
    with pytest.raises(RecordError, match="does not render 'get_weather'"):
        build_template("auto", qwen2).encode(msgs)
    l31 = build_template("llama3.1", ChatTokenizer(make_bpe_dir(str(tmp_path / "l31"), "llama3", LLAMA31)))
    two = parse_messages(TOOL_CONVERSATIONS_QWEN["parallel"], "messages")
    with pytest.raises(RecordError, match="one tool call per assistant turn, got 2"):
        l31.encode(two, tools=TOOLS)
