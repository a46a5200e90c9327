"""`logprobs` reads its input with the training reader: the same formats, the same refusals, the same messages
(regressions: a traceback on content parts and tool messages, a system turn in the middle or an unknown role
accepted, an empty file)."""

import json
import os
import sys

import pytest
from chat_fixtures import write_jsonl

from megatron_align.cli import main
from megatron_align.commands.logprobs import read_sequences
from megatron_align.data.errors import DataError
from megatron_align.data.jsonl import JsonlChatDataset
from megatron_align.data.schema import parse_record
from megatron_align.data.templates import build_template

PARTS = {"messages": [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                      {"role": "user", "content": [{"type": "text", "text": "Weather"}, {"type": "text", "text": "?"}]},
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
                      {"role": "tool", "content": "3 C"}, {"role": "assistant", "content": "3 C."}],
         "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]}
MID_SYSTEM = {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                           {"role": "assistant", "content": "c"}]}
UNKNOWN_ROLE = {"messages": [{"role": "bot", "content": "a"}, {"role": "assistant", "content": "c"}]}
MESSAGES_OK = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
SHAREGPT = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}


def _sft_error(path, tmpl):
    with pytest.raises(DataError) as err:
        JsonlChatDataset(path, tmpl)
    return str(err.value)


def test_logprobs_reads_what_sft_reads(tmp_path, tok):
    tmpl = build_template("chatml", tok)
    path = write_jsonl(tmp_path / "ok.jsonl", [PARTS, PARTS])
    seqs = read_sequences(path, 4096, tmpl)
    assert seqs[0] == JsonlChatDataset(path, tmpl)[0].input_ids.tolist() == tmpl.encode_conversation(
        parse_record(PARTS)).ids
    assert '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}' in tok.decode(seqs[0])
    assert read_sequences(write_jsonl(tmp_path / "sg.jsonl", [SHAREGPT]), 4096, tmpl)[0] == \
        tmpl.encode([("user", "Hi"), ("assistant", "Hello")]).ids
    # pre-tokenized lines may sit anywhere (as before); chat lines keep one format per file
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"input_ids": [5, 6]}, MESSAGES_OK, {"input_ids": [7]}])
    assert read_sequences(mixed, 4096, tmpl) == [[5, 6], tmpl.encode([("user", "Hi"), ("assistant", "Hello")]).ids,
                                                 [7]]
    for name, record in (("mid", MID_SYSTEM), ("role", UNKNOWN_ROLE), ("tools_llama3", PARTS)):
        path = write_jsonl(tmp_path / f"{name}.jsonl", [SHAREGPT if name != "tools_llama3" else MESSAGES_OK,
                                                        record])
        t = build_template("llama3", tok) if name == "tools_llama3" else tmpl
        with pytest.raises(DataError) as err:
            read_sequences(path, 4096, t)
        assert str(err.value) == _sft_error(path, t)
        assert str(err.value).startswith(f"{path}:2: ")
    for lines, why in (([], "file is empty"), (["", " "], "file is empty")):
        with pytest.raises(DataError, match=why):
            read_sequences(write_jsonl(tmp_path / "e.jsonl", lines), 4096, tmpl)
    (tmp_path / "empty_dir").mkdir()  # a directory: a one-line error (no IsADirectoryError traceback)
    with pytest.raises(DataError, match="empty_dir: .*director"):
        read_sequences(str(tmp_path / "empty_dir"), 4096, tmpl)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "convert"))
    import hf_tiny_models as hm

    root = tmp_path_factory.mktemp("lp")
    hm.llama(str(root / "hf"))
    assert main(["convert", str(root / "hf"), str(root / "mcore")]) == 0
    return str(root / "mcore")


def _run(ckpt, tmp_path, lines, *extra):
    data = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    rc = main(["logprobs", "--load", ckpt, "--data", data, "--out", str(out), "--seq-length", "512", *extra])
    return rc, data, out


def test_logprobs_command_same_records_same_errors(ckpt, tmp_path, capsys, tok):
    rc, data, out = _run(ckpt, tmp_path, [PARTS, SHAREGPT], "--template", "chatml")
    assert rc == 2  # one format per file: the sharegpt line is refused with the reader's message
    assert f"{data}:2: missing 'messages'" in capsys.readouterr().err
    rc, data, out = _run(ckpt, tmp_path, [PARTS, PARTS], "--template", "chatml")
    assert rc == 0, capsys.readouterr().err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 2 and rows[0] == rows[1] and all(v <= 0 for v in rows[0]["token_logprobs"])
    # the checkpoint carries the bundled tiny tokenizer: one log-prob per token after the first
    assert len(rows[0]["token_logprobs"]) == len(build_template("chatml", tok).encode_conversation(
        parse_record(PARTS)).ids) - 1
    for record, why in ((MID_SYSTEM, "messages[1]: a system message may only be the first message"),
                        (UNKNOWN_ROLE, "messages[0]: unknown role 'bot'")):
        rc, data, _ = _run(ckpt, tmp_path, [MESSAGES_OK, record])
        assert rc == 2 and f"{data}:2: {why}" in capsys.readouterr().err
    rc, data, _ = _run(ckpt, tmp_path, [])
    assert rc == 2 and f"{data}: file is empty" in capsys.readouterr().err
