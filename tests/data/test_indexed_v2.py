"""Indexed format v2: the mask as bits, per-document first loss position and category (opening reads no token
data), preprocess on several workers writing byte-identical files, the v1 format refused clearly."""

import json
import os

import numpy as np
import pytest
from chat_fixtures import write_jsonl
from test_cache import assert_same, random_corpus

from megatron_align.data.config import DEFAULT_TOKENIZER
from megatron_align.data.errors import DataError
from megatron_align.data.indexed import (IndexedChatDataset, first_target, pack_mask, packed_length, preprocess)
from megatron_align.data.templates import build_template
from megatron_align.data.tokenized import JsonlChatDataset


SUFFIXES = (".bin", ".idx", ".docs.npy", ".meta.json")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("v2")
    return d, random_corpus(d / "train.jsonl", 600, seed=3)  # > 2 chunks of the worker pool


def test_workers_write_byte_identical_files(corpus):
    d, path = corpus
    for w in (1, 2):
        stats = preprocess(path, str(d / f"w{w}" / "data"), DEFAULT_TOKENIZER, "llama3", seq_length=48, workers=w)
        assert stats.n_samples + stats.n_dropped == 600 and stats.n_truncated > 0
    for ext in SUFFIXES:
        a, b = (open(d / f"w{w}" / f"data{ext}", "rb").read() for w in (1, 2))
        assert a == b, ext


def test_mask_bits_and_first_target():
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 15, 16, 17, 300):
        mask = (rng.random(n) < 0.4).astype(np.uint8)
        for dtype in (np.uint16, np.int32):
            packed = pack_mask(mask, dtype)
            assert packed.dtype == dtype and len(packed) == packed_length(n, dtype)
            np.testing.assert_array_equal(np.unpackbits(packed.view(np.uint8), count=n), mask)
        ref = next((i for i in range(1, n) if mask[i]), n)
        assert first_target(mask) == ref


def test_open_reads_no_token_data_and_matches_jsonl(corpus, tok, monkeypatch):
    from megatron.core.datasets import indexed_dataset

    d, path = corpus
    prefix = str(d / "full" / "data")
    preprocess(path, prefix, DEFAULT_TOKENIZER, "chatml", system_prompt=None)
    tmpl = build_template("chatml", tok, None)
    full = JsonlChatDataset(path, tmpl)
    n_tokens = int(full.lengths.sum())
    # ids in uint16, the mask in bits: the .bin holds ~2 bytes + 1 bit per token (v1: 4 bytes)
    assert os.path.getsize(prefix + ".bin") <= 2 * n_tokens + 2 * sum(packed_length(int(n), np.uint16)
                                                                        for n in full.lengths)
    for seq in (None, 9, 16, 31, 64):
        for policy in ("truncate", "drop"):
            real_get = indexed_dataset.IndexedDataset.get
            monkeypatch.setattr(indexed_dataset.IndexedDataset, "get",
                                lambda *a, **k: pytest.fail("opening read token data"))
            got = IndexedChatDataset(prefix, seq, policy)
            monkeypatch.setattr(indexed_dataset.IndexedDataset, "get", real_get)
            ref = JsonlChatDataset(path, tmpl, seq, policy)
            assert_same(got, ref)
            assert got.category_names() == ref.category_names()


def test_v1_files_and_bad_arguments_are_refused(corpus, capsys):
    from megatron_align.cli import main

    d, path = corpus
    prefix = str(d / "old" / "data")
    preprocess(path, prefix, DEFAULT_TOKENIZER, "llama3")
    meta = json.load(open(prefix + ".meta.json"))
    json.dump(dict(meta, format="megatron_align.chat.v1"), open(prefix + ".meta.json", "w"))
    with pytest.raises(DataError, match=r"older format megatron_align.chat.v1 .*re-run `megatron-align preprocess`"):
        IndexedChatDataset(prefix)
    assert main(["preprocess", "--input", path, "--output-prefix", prefix, "--template", "llama3",
                 "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err


def test_a_worker_error_stops_preprocess_with_file_line(tmp_path):

    recs = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}] * 300
    path = write_jsonl(tmp_path / "t.jsonl", recs + ["{bad"] + recs)
    with pytest.raises(DataError, match="t.jsonl:301: malformed JSON"):
        preprocess(path, str(tmp_path / "o" / "data"), DEFAULT_TOKENIZER, "llama3", workers=2)
    assert not os.path.exists(tmp_path / "o") or not os.listdir(tmp_path / "o")
