import json

import pytest
from chat_fixtures import conv, write_jsonl

from megatron_align.data.errors import DataError
from megatron_align.data.jsonl import JsonlChatDataset, iter_conversations
from megatron_align.data.templates import build_template

GOOD = conv("What is 1 + 1?", "1 + 1 = 2.", category="math")
BAD_LINES = [
    ('{"messages": [', "malformed JSON"),
    ('[1, 2, 3]', "record must be a JSON object, got list"),
    ('{"category": "math"}', "missing 'messages'"),
    ('{"messages": []}', "'messages' is empty"),
    ('{"messages": "hi"}', "'messages' must be a list"),
    (json.dumps({"messages": [{"role": "bot", "content": "x"}]}),
     "messages[0]: unknown role 'bot' (expected system, user, assistant, tool"),
    (json.dumps({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}),
     "messages[0]: content must be a string or a list of text parts, got int"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "no assistant turn"),
    (json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                              {"role": "assistant", "content": "c"}]}), "system message may only be the first"),
    (json.dumps({"messages": ["hi"]}), "messages[0] must be an object"),
    (json.dumps({**GOOD, "category": 3}), "'category' must be a string"),
]


@pytest.mark.parametrize("line,reason", BAD_LINES, ids=[r for _, r in BAD_LINES])
def test_bad_line_names_file_and_line(tmp_path, line, reason):
    path = write_jsonl(tmp_path / "train.jsonl", [GOOD, "", GOOD, line, GOOD])
    with pytest.raises(DataError) as err:
        list(iter_conversations(path))
    assert str(err.value).startswith(f"{path}:4: ")
    assert reason in str(err.value)
    assert err.value.line == 4 and err.value.path == path


def test_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"messages": "\xff"}\n')
    with pytest.raises(DataError, match=r"t.jsonl:2: not valid UTF-8"):
        list(iter_conversations(str(path)))


def test_skip_mode_counts_every_bad_line(tmp_path, tok):
    lines = [GOOD] + [line for line, _ in BAD_LINES] + [GOOD]
    path = write_jsonl(tmp_path / "train.jsonl", lines)
    skipped = []
    good = list(iter_conversations(path, "skip", skipped))
    assert [n for n, _ in good] == [1, len(lines)]
    assert skipped == list(range(2, len(lines)))
    ds = JsonlChatDataset(path, build_template("llama3", tok), on_bad_line="skip")
    assert ds.stats.n_skipped_bad == len(BAD_LINES) and ds.stats.n_samples == 2 and len(ds) == 2


def test_empty_missing_and_all_bad_files(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(DataError, match=r"empty.jsonl: file is empty"):
        list(iter_conversations(empty))
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n")
    with pytest.raises(DataError, match="file is empty"):
        list(iter_conversations(str(blank)))
    with pytest.raises(DataError, match=r"missing.jsonl: no such file"):
        list(iter_conversations(str(tmp_path / "missing.jsonl")))
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{", "[]"])
    with pytest.raises(DataError, match=r"bad.jsonl: no valid record: all 2 records were bad"):
        list(iter_conversations(bad, "skip"))
    with pytest.raises(ValueError, match="on_bad_line"):
        list(iter_conversations(bad, "ignore"))
