"""Data paths through build_data and preprocess: every file type trains the same samples, and the prefix
`preprocess` writes is the path `data.path` then takes."""

import json

import numpy as np
import pytest
from chat_fixtures import conv, write_jsonl

from megatron_align.cli import main
from megatron_align.data.builder import build_data
from megatron_align.data.config import DataConfig
from megatron_align.data.errors import DataError
from megatron_align.data.indexed import IndexedChatDataset

RECORDS = [conv(f"Question {k}?", f"Answer {k} " * (1 + k % 3), category=("a", "b")[k % 2]) for k in range(10)]


def _samples(ds):
    return [(ds[i].input_ids.tolist(), ds[i].target_mask.tolist(), ds[i].category) for i in range(len(ds))]


@pytest.fixture
def jsonl(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", RECORDS)


def test_regression_directory_of_shards_trains_like_one_file(tmp_path, jsonl):
    """main: `data.path=<directory>` was "no such file, and no indexed dataset"."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "part-00.jsonl", RECORDS[:4])
    pq.write_table(pa.Table.from_struct_array(pa.array(RECORDS[4:])), str(shards / "part-01.parquet"))
    ref = build_data(DataConfig(path=jsonl, eval_path=None, seq_length=64), family="llama").train
    got = build_data(DataConfig(path=str(shards), eval_path=str(shards / "*.parquet"), seq_length=64),
                     family="llama")
    assert _samples(got.train) == _samples(ref)
    assert _samples(got.eval) == _samples(ref)[4:]


def test_regression_preprocess_output_prefix_with_a_data_suffix(tmp_path, jsonl, capsys):
    """main: `preprocess --output-prefix out/x.jsonl` wrote out/x.jsonl.{bin,idx,meta.json}, and then
    `data.path=out/x.jsonl` was "no such file"."""
    out = tmp_path / "out"
    gz = tmp_path / "train.jsonl.gz"
    import gzip

    gz.write_bytes(gzip.compress(open(jsonl, "rb").read()))
    assert main(["preprocess", "--input", str(gz), "--output-prefix", str(out / "x.jsonl"), "--family", "llama"]) == 0
    res = capsys.readouterr()
    printed = json.loads(res.out)
    assert printed["data_path"] == str(out / "x") and f"train with data.path={out / 'x'}" in res.err
    assert sorted(p.name for p in out.iterdir()) == ["x.bin", "x.docs.npy", "x.idx", "x.meta.json"]
    ref = build_data(DataConfig(path=jsonl, eval_path=None), family="llama").train
    for path in (str(out / "x"), str(out / "x.jsonl")):
        ds = build_data(DataConfig(path=path, eval_path=None), family="llama").train
        assert isinstance(ds, IndexedChatDataset) and _samples(ds) == _samples(ref)


def test_preprocess_refuses_a_directory_prefix_and_data_path_names_what_is_missing(tmp_path, jsonl, capsys):
    assert main(["preprocess", "--input", jsonl, "--output-prefix", str(tmp_path) + "/", "--family", "llama"]) == 2
    assert "not a directory" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"nothing.jsonl: no such file, directory or matching shards"):
        build_data(DataConfig(path=str(tmp_path / "nothing.jsonl"), eval_path=None), family="llama")


def test_json_array_and_parquet_train_the_same_tokens(tmp_path, jsonl):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    (tmp_path / "t.json").write_text(json.dumps(RECORDS, indent=2))
    pq.write_table(pa.Table.from_struct_array(pa.array(RECORDS)), str(tmp_path / "t.parquet"))
    ref = _samples(build_data(DataConfig(path=jsonl, eval_path=None), family="qwen2").train)
    for name in ("t.json", "t.parquet"):
        got = _samples(build_data(DataConfig(path=str(tmp_path / name), eval_path=None), family="qwen2").train)
        assert got == ref
    assert all(np.sum(m) > 0 for _, m, _ in ref)
