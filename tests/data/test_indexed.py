"""preprocess -> IndexedChatDataset round trip (imports megatron-core: the slowest data test)."""

import argparse
import json

import pytest
from chat_fixtures import assert_same_samples as assert_same
from chat_fixtures import conv, write_jsonl

from megatron_align.data.config import DEFAULT_TOKENIZER, DataConfig
from megatron_align.data.errors import DataError
from megatron_align.data.indexed import IndexedChatDataset, preprocess
from megatron_align.data.jsonl import JsonlChatDataset
from megatron_align.data.builder import build_data
from megatron_align.data.templates import build_template


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("idx")
    long_answer = " ".join(["river"] * 80)
    records = [conv("What is 2 + 2?", "2 + 2 = 4.", category="math"),
               conv("Hi", "Hello!", "Bye", "Goodbye!", system="Be brief.", category="chat"),
               "{broken",
               conv("Repeat", long_answer, category="repeat"),
               conv("Count to 3", "1, 2, 3.")]
    return d, write_jsonl(d / "train.jsonl", records)


def test_round_trip_equals_the_jsonl_path(corpus, tok):
    d, path = corpus
    tmpl = build_template("chatml", tok, None)  # preprocess below inserts no system prompt either
    stats = preprocess(path, str(d / "out" / "train"), DEFAULT_TOKENIZER, "chatml", on_bad_line="skip")
    assert (stats.n_samples, stats.n_skipped_bad) == (4, 1)
    ref = JsonlChatDataset(path, tmpl, on_bad_line="skip")
    got = IndexedChatDataset(str(d / "out" / "train"))
    assert_same(got, ref)
    assert got[3].category is None and got[0].category == "math"
    assert got.stats.n_skipped_bad == 1
    # a shorter run re-applies the over-long policy on read, like the JSONL path does
    for policy in ("truncate", "drop"):
        ref = JsonlChatDataset(path, tmpl, 40, policy, on_bad_line="skip")
        got = IndexedChatDataset(str(d / "out" / "train"), 40, policy)
        assert_same(got, ref)
        assert (got.stats.n_truncated, got.stats.n_dropped) == (ref.stats.n_truncated, ref.stats.n_dropped)
    assert (got.stats.n_truncated, got.stats.n_dropped) == (0, 1)


def test_cli_and_build_data_on_an_indexed_prefix(corpus, capsys, tok):
    from megatron_align.commands import preprocess as cmd

    d, path = corpus
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    prefix = str(d / "cli" / "data")
    args = parser.parse_args(["--input", path, "--output-prefix", prefix, "--family", "llama",
                              "--seq-length", "40", "--overlong", "truncate", "--on-bad-line", "skip"])
    assert cmd.run(args) == 0
    out = json.loads(capsys.readouterr().out)
    ref = JsonlChatDataset(path, build_template("llama3", tok), 40, "truncate", on_bad_line="skip").stats
    assert out["template"] == "llama3" and out["n_samples"] == 4 and out["n_skipped_bad"] == 1
    assert out["n_truncated"] == ref.n_truncated == 2 and out["n_dropped"] == ref.n_dropped == 0
    meta = json.load(open(prefix + ".meta.json"))
    assert meta["categories"] == [None, "math", "chat", "repeat"] and meta["seq_length"] == 40

    bundle = build_data(DataConfig(path=prefix, eval_path=path, seq_length=40, on_bad_line="skip"), family="llama")
    assert isinstance(bundle.train, IndexedChatDataset) and len(bundle.train) == 4
    assert_same(bundle.train, bundle.eval)
    with pytest.raises(DataError, match="built with template 'llama3'"):
        build_data(DataConfig(path=prefix, eval_path=None, template="chatml", seq_length=40))

    from megatron_align.cli import main

    assert main(["preprocess", "--input", path, "--output-prefix", str(d / "cli" / "bad"), "--template", "chatml"]) == 2
    assert "train.jsonl:3: malformed JSON" in capsys.readouterr().err
    assert not (d / "cli" / "bad.bin").exists() and not (d / "cli" / "bad.tmp.bin").exists()
    with pytest.raises(DataError, match="no indexed chat dataset"):
        IndexedChatDataset(str(d / "nothing"))
