"""Every file type a user brings reads as the same records, with errors naming the file and the line (or row)."""

import gzip
import json
import sys

import pytest
from chat_fixtures import conv, write_jsonl

from megatron_align.data import sources
from megatron_align.data.errors import DataError
from megatron_align.data.jsonl import iter_conversations, iter_records
from megatron_align.data.sources import Location, iter_source, strip_data_suffix

RECORDS = [conv("Grüße, 1 + 1?", "2 — zwei.", category="math"),
           conv("Reverse 'abc'", "cba", system="Be brief.", category="reverse"),
           conv("中文?", "是的。"),
           conv("Count to 3", "1 2 3", category="count")]


def _jsonl_bytes(records):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def _zstd(data):
    zstandard = pytest.importorskip("zstandard")
    return zstandard.ZstdCompressor().compress(data)


def _table(records):
    pa = pytest.importorskip("pyarrow")
    return pa.Table.from_struct_array(pa.array(records))  # the schema of every row (from_pylist: the first's)


def write(tmp_path, name, records=RECORDS):
    """``records`` written as the file type its name says."""
    path = tmp_path / name
    low = name.lower()
    if low.endswith(".parquet"):
        import pyarrow.parquet as pq

        pq.write_table(_table(records), str(path), row_group_size=2)  # several row groups
    elif low.endswith((".arrow", ".feather")):
        import pyarrow as pa

        table = _table(records)
        opener = pa.ipc.new_stream if "stream" in low else pa.ipc.new_file
        with pa.OSFile(str(path), "wb") as sink, opener(sink, table.schema) as w:
            for batch in table.to_batches(max_chunksize=3):
                w.write_batch(batch)
    elif low.endswith(".json"):
        path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    else:
        data = _jsonl_bytes(records)
        if low.endswith(".gz"):
            data = gzip.compress(data)
        elif low.endswith(".zst"):
            data = _zstd(data)
        path.write_bytes(data)
    return str(path)


def _read(path):
    return [obj for _, obj in iter_source(path)]


def _convs(path):
    return [c for _, c in iter_conversations(path)]


@pytest.mark.parametrize("name", ["t.jsonl", "t.jsonl.gz", "t.jsonl.zst", "t.json", "t.parquet", "t.arrow",
                                  "t_stream.arrow", "t.feather"])
def test_every_file_type_reads_the_same_records(tmp_path, name):
    path = write(tmp_path, name)
    assert _read(path) == RECORDS
    assert _convs(path) == _convs(write(tmp_path, "ref.jsonl"))


def test_compression_is_recognised_by_its_magic_bytes(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(gzip.compress(_jsonl_bytes(RECORDS)))  # gzip under a plain name
    (tmp_path / "b.data").write_bytes(_zstd(_jsonl_bytes(RECORDS)))
    assert _read(str(tmp_path / "a.jsonl")) == RECORDS and _read(str(tmp_path / "b.data")) == RECORDS


def test_regression_gzip_was_not_valid_utf8(tmp_path):
    """main: `t.jsonl.gz:1: not valid UTF-8`."""
    assert len(_convs(write(tmp_path, "t.jsonl.gz"))) == len(RECORDS)


@pytest.mark.parametrize("name", ["bom.jsonl", "bom.json", "bom.jsonl.gz"])
def test_regression_utf8_bom_is_accepted(tmp_path, name):
    """main: `bom.jsonl:1: malformed JSON: Unexpected UTF-8 BOM`."""
    path = tmp_path / name
    body = (json.dumps(RECORDS, ensure_ascii=False) if name.endswith(".json") else _jsonl_bytes(RECORDS).decode())
    data = sources.UTF8_BOM + body.encode("utf-8")
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    assert _read(str(path)) == RECORDS


def test_regression_json_array_was_malformed_json(tmp_path):
    """main: `t.json:1: malformed JSON` (a JSON array read as JSON Lines)."""
    path = write(tmp_path, "t.json")
    locs = [loc for loc, _ in iter_conversations(path)]
    text = open(path, encoding="utf-8").read().splitlines()
    assert [text[n - 1] for n in locs] == ["  {"] * len(RECORDS)  # each record's own first line
    assert len(_convs(path)) == len(RECORDS)


def test_json_array_streams_across_chunk_boundaries(tmp_path, monkeypatch):
    values = [12345678, "a,]b", {"k": [1, {"x": "}]"}]}, -1.5e3, None, True, "é" * 7] + RECORDS
    path = tmp_path / "v.json"
    path.write_text(" \n[\n" + ",\n ".join(json.dumps(v, ensure_ascii=False) for v in values) + "\n]\n",
                    encoding="utf-8")
    for chunk in (1, 2, 3, 7, 64):
        monkeypatch.setattr(sources, "JSON_CHUNK", chunk)
        got = list(iter_source(str(path)))
        assert [v for _, v in got] == values, chunk
        assert [int(loc) for loc, _ in got] == list(range(3, 3 + len(values)))


def test_json_object_holding_the_records_and_json_lines_named_json(tmp_path):
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": RECORDS}, indent=1))
    assert _read(str(tmp_path / "wrapped.json")) == RECORDS
    (tmp_path / "lines.json").write_bytes(_jsonl_bytes(RECORDS))
    assert _read(str(tmp_path / "lines.json")) == RECORDS
    (tmp_path / "meta.json").write_text(json.dumps({"version": 1, "data": RECORDS}, indent=1))
    with pytest.raises(DataError, match=r"meta.json: a JSON object with keys 'version', 'data'"):
        _read(str(tmp_path / "meta.json"))
    with pytest.raises(DataError, match=r"wrapped.json:data\[1\]: 'messages' is empty"):
        (tmp_path / "wrapped.json").write_text(json.dumps({"data": [RECORDS[0], {"messages": []}]}, indent=1))
        _convs(str(tmp_path / "wrapped.json"))


@pytest.mark.parametrize("text,line,reason", [
    ('[\n {"messages": []},\n  {"a": 1}\n  {"b": 2}\n]', 4, "expected ',' or ']' after an element"),
    ('[\n {"a": 1},\n {"a": tru}\n]', 3, "malformed JSON: Expecting value"),
    ('[\n {"a": 1},\n {"a": 2}\n', 4, "the array is not closed"),
    ('[\n {"a": 1}\n] x', 3, "extra data after the closing"),
    ('[\n {"a": 1},\n]', 3, "malformed JSON"),
])
def test_malformed_json_array_names_the_line(tmp_path, monkeypatch, text, line, reason):
    path = tmp_path / "bad.json"
    path.write_text(text)
    for chunk in (2, 1 << 20):
        monkeypatch.setattr(sources, "JSON_CHUNK", chunk)
        with pytest.raises(DataError) as err:
            _read(str(path))
        assert str(err.value).startswith(f"{path}:{line}: ") and reason in str(err.value), (chunk, str(err.value))


def test_bad_record_names_row_of_parquet_and_line_of_a_shard(tmp_path):
    bad = RECORDS[:2] + [{"messages": [{"role": "user", "content": "hi"}]}] + RECORDS[2:]
    pq = write(tmp_path, "t.parquet", bad)
    with pytest.raises(DataError, match=r"t.parquet:row 2: conversation has no assistant turn"):
        _convs(pq)
    skipped = []
    assert len(list(iter_conversations(pq, "skip", skipped))) == len(RECORDS)
    assert skipped == [2] and skipped[0].where() == f"{pq}:row 2"
    shards = tmp_path / "shards"
    shards.mkdir()
    write(shards, "part-0.jsonl")
    write(shards, "part-1.jsonl.gz", bad)
    with pytest.raises(DataError) as err:
        _convs(str(shards))
    assert str(err.value).startswith(f"{shards / 'part-1.jsonl.gz'}:3: ")
    assert err.value.path == str(shards / "part-1.jsonl.gz") and err.value.line == 3


def test_parquet_struct_nulls_read_as_absent_keys(tmp_path):
    """Arrow unifies the struct of every row: a key one message has reads as null in the others."""
    recs = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]},
            {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]}]
    assert _read(write(tmp_path, "w.parquet", recs)) == recs


def test_regression_directory_and_glob_of_shards(tmp_path):
    """main: a directory was `is a directory, expected a JSONL file` (logprobs: IsADirectoryError)."""
    d = tmp_path / "shards"
    d.mkdir()
    write(d, "b.parquet", RECORDS[2:])
    write(d, "a.jsonl.gz", RECORDS[:2])
    (d / ".hidden").write_text("x")
    (d / "_SUCCESS").write_text("")
    assert _read(str(d)) == RECORDS  # sorted by name: a.jsonl.gz, then b.parquet
    assert _read(str(d / "*")) == RECORDS
    assert _read(str(d / "a.*")) == RECORDS[:2]
    with pytest.raises(DataError, match=r"no file matches"):
        _read(str(d / "*.zst"))
    (d / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"holds files that are not data shards \(notes.txt\)"):
        _read(str(d))
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no data shards \(subdirectories: sub"):
        _read(str(empty))


def test_hugging_face_save_to_disk_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(RECORDS)
    ds.save_to_disk(str(tmp_path / "hf"), num_shards=2)
    assert _read(str(tmp_path / "hf")) == RECORDS
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"DatasetDict with splits train, test: name one split's directory"):
        _read(str(tmp_path / "dd"))
    assert _read(str(tmp_path / "dd" / "train")) == RECORDS


def test_missing_packages_are_named(tmp_path, monkeypatch):
    zst, pq = write(tmp_path, "t.jsonl.zst"), write(tmp_path, "t.parquet")
    monkeypatch.setitem(sys.modules, "zstandard", None)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(DataError, match=r"t.jsonl.zst: is zstd-compressed: install the 'zstandard' package"):
        _read(zst)
    with pytest.raises(DataError, match=r"t.parquet: is a Parquet/Arrow file: install the 'pyarrow' package"):
        _read(pq)


def test_corrupt_compressed_and_empty_files(tmp_path):
    data = gzip.compress(_jsonl_bytes(RECORDS))
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut.jsonl.gz: cannot read: corrupt or truncated"):
        _read(str(tmp_path / "cut.jsonl.gz"))
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # damage inside the deflate stream
    (tmp_path / "bad.jsonl.gz").write_bytes(bytes(flipped))
    with pytest.raises(DataError, match=r"bad.jsonl.gz"):  # corrupt data or CRC, or garbage bytes: one line
        _read(str(tmp_path / "bad.jsonl.gz"))
    (tmp_path / "empty.json").write_text("[ ]")
    with pytest.raises(DataError, match=r"empty.json: file is empty"):
        _convs(str(tmp_path / "empty.json"))
    (tmp_path / "x.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"x.parquet: cannot read as Parquet/Arrow"):
        _read(str(tmp_path / "x.parquet"))


def test_mixture_is_not_read_as_a_path():
    with pytest.raises(DataError, match="a mixture"):
        list(iter_records([{"path": "a.jsonl"}], dict))


def test_location_is_the_int_callers_had():
    loc = Location(7, "f.parquet", "row")
    assert loc == 7 and loc + 1 == 8 and str(DataError("other", loc, "bad")) == "f.parquet:row 7: bad"
    assert str(DataError("x.jsonl", 3, "bad")) == "x.jsonl:3: bad"
    assert [strip_data_suffix(p) for p in ("out/x.jsonl", "out/x.jsonl.gz", "out/x.parquet", "out/x", "x.bin")] \
        == ["out/x", "out/x", "out/x", "out/x", "x.bin"]


@pytest.mark.parametrize("name", ["big.json", "big.jsonl.gz", "big.jsonl.zst"])
def test_text_files_are_streamed_not_read_whole(tmp_path, monkeypatch, name):
    """Python memory while reading a ~6 MB file stays near one buffer, far below the file's size."""
    import tracemalloc

    records = [conv(f"question {k} " + "x" * 200, f"answer {k} " + "y" * 300) for k in range(10_000)]
    path = write(tmp_path, name, records)
    monkeypatch.setattr(sources, "JSON_CHUNK", 1 << 16)
    tracemalloc.start()
    n = 0
    for _, obj in iter_source(path):
        n += 1
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == len(records) and peak < 1_500_000, peak  # the text is ~6 MB
