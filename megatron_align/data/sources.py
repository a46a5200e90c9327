"""Every file a user brings, as one stream of (location, decoded JSON object).

A data path is one of:

* a JSON Lines file: ``.jsonl`` / ``.ndjson`` (or any other name), compressed or not (``.gz``, ``.zst``; the
  compression is recognised by its magic bytes, whatever the name), streamed line by line;
* a ``.json`` file holding a JSON array of records (streamed element by element), JSON Lines under a ``.json``
  name, or an object whose only member is the list of records (``{"data": [...]}``, read whole);
* a Parquet file (``.parquet``) or an Arrow IPC file or stream (``.arrow``, ``.feather``), read in record
  batches with ``pyarrow``;
* a Hugging Face ``save_to_disk`` directory (``state.json`` + ``data-*.arrow``): its Arrow shards, in the order
  ``state.json`` lists them (read with ``pyarrow``; never the Hub);
* a directory of shards (the data files directly inside it, sorted by name) or a glob (``shards/*.jsonl.gz``,
  sorted): each shard read as above.

A UTF-8 byte-order mark at the start of a text file is accepted. Locations are :class:`Location`: the shard's own
path plus ``line N`` (text files, 1-based) or ``row N`` (Parquet/Arrow, 0-based as in ``dataset[N]``), so a
:class:`DataError` reads ``file:line: reason`` or ``file:row N: reason``.
"""

from __future__ import annotations

import glob
import io
import json
import os
import zlib
from typing import IO, Callable, Iterator, List, Tuple

from megatron_align.data.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PARQUET_MAGIC = b"PAR1"
ARROW_FILE_MAGIC = b"ARROW1"
UTF8_BOM = b"\xef\xbb\xbf"
COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd")
TEXT_SUFFIXES = (".jsonl", ".ndjson", ".json")
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
PARQUET_SUFFIXES = (".parquet",)
#: names a directory or glob takes as data shards (with or without a compression suffix)
SHARD_SUFFIXES = TEXT_SUFFIXES + ARROW_SUFFIXES + PARQUET_SUFFIXES
#: the suffixes `preprocess --output-prefix` strips (a prefix names .bin/.idx/.meta.json, not a data file)
DATA_FILE_SUFFIXES = tuple(s + c for s in SHARD_SUFFIXES for c in COMPRESSION_SUFFIXES) + SHARD_SUFFIXES
HF_STATE = "state.json"
HF_DICT = "dataset_dict.json"
JSON_CHUNK = 1 << 20
ARROW_BATCH = 1024


class Location(int):
    """Where a record is: an int (the line or row number, as callers always had) that also knows its file.

    ``str(DataError(any_path, loc, reason))`` reads ``<loc.path>:<n>`` for lines and ``<loc.path>:row <n>`` for
    Parquet/Arrow rows."""

    path: str
    unit: str

    def __new__(cls, n: int, path: str, unit: str = "line") -> "Location":
        self = super().__new__(cls, n)
        self.path, self.unit = path, unit
        return self

    def where(self) -> str:
        if self.unit == "line":
            return f"{self.path}:{int(self)}"
        if self.unit.endswith("[]"):
            return f"{self.path}:{self.unit[:-2]}[{int(self)}]"
        return f"{self.path}:{self.unit} {int(self)}"

    def __repr__(self) -> str:
        return f"Location({self.where()!r})"

    def __reduce__(self):
        return Location, (int(self), self.path, self.unit)


class BadRecord:
    """Stands for a record that could not be decoded (a JSON Lines line that is not UTF-8 or not JSON): the caller
    stops or, with ``on_bad_line=skip``, counts and skips it. Damage a reader cannot step over raises instead."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


Records = Iterator[Tuple[Location, object]]


def has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def is_data_source(path: str) -> bool:
    """True when ``path`` names something :func:`iter_source` reads (an existing file or directory, or a glob that
    matches at least one file)."""
    return os.path.exists(path) or (has_glob(path) and bool(glob.glob(path)))


def strip_data_suffix(path: str) -> str:
    """``out/x.jsonl`` -> ``out/x`` (any data-file suffix, compressed or not); other paths unchanged."""
    for suffix in sorted(DATA_FILE_SUFFIXES, key=len, reverse=True):
        if path.endswith(suffix) and len(path) > len(suffix) and not path.endswith("/" + suffix):
            return path[:-len(suffix)]
    return path


def shard_paths(path: str) -> List[str]:
    """The files behind a data path: the file itself, a Hugging Face ``save_to_disk`` directory's Arrow shards, the
    data files of a directory, or the files a glob matches (sorted). Raises DataError naming the path."""
    if has_glob(path) and not os.path.exists(path):
        files = sorted(p for p in glob.glob(path) if os.path.isfile(p))
        if not files:
            raise DataError(path, None, "no file matches this pattern")
        return files
    if not os.path.exists(path):
        raise DataError(path, None, "no such file or directory")
    if not os.path.isdir(path):
        return [path]
    if os.path.isfile(os.path.join(path, HF_DICT)):
        with open(os.path.join(path, HF_DICT), encoding="utf-8") as f:
            splits = json.load(f).get("splits", [])
        raise DataError(path, None, f"a Hugging Face DatasetDict with splits {', '.join(map(str, splits))}: "
                                    f"name one split's directory (e.g. {os.path.join(path, str(splits[0]) if splits else 'train')})")
    if os.path.isfile(os.path.join(path, HF_STATE)):
        return _hf_shards(path)
    names = sorted(n for n in os.listdir(path) if not n.startswith(".") and not n.startswith("_"))
    files = [n for n in names if os.path.isfile(os.path.join(path, n))]
    data = [n for n in files if _inner_suffix(n) in SHARD_SUFFIXES]
    other = [n for n in files if n not in data]
    if other:
        raise DataError(path, None, f"holds files that are not data shards ({', '.join(other[:5])}"
                                    f"{', ...' if len(other) > 5 else ''}); shards are named "
                                    f"*{', *'.join(SHARD_SUFFIXES)} (optionally .gz/.zst): move the others out "
                                    f"or give a glob")
    if not data:
        subdirs = [n for n in names if os.path.isdir(os.path.join(path, n))]
        raise DataError(path, None, "directory holds no data shards" +
                        (f" (subdirectories: {', '.join(subdirs[:5])}; shards are read from the directory "
                         f"itself, not recursively)" if subdirs else ""))
    return [os.path.join(path, n) for n in data]


def _hf_shards(path: str) -> List[str]:
    with open(os.path.join(path, HF_STATE), encoding="utf-8") as f:
        state = json.load(f)
    files = [d.get("filename") for d in state.get("_data_files", [])]
    if not files or not all(isinstance(n, str) for n in files):
        raise DataError(os.path.join(path, HF_STATE), None, "lists no '_data_files' (not a save_to_disk directory?)")
    out = [os.path.join(path, n) for n in files]
    missing = [p for p in out if not os.path.isfile(p)]
    if missing:
        raise DataError(missing[0], None, f"listed in {HF_STATE} but missing")
    return out


def _inner_suffix(name: str) -> str:
    """The data suffix of a file name once a compression suffix is removed (``a.jsonl.gz`` -> ``.jsonl``)."""
    low = name.lower()
    for c in COMPRESSION_SUFFIXES:
        if low.endswith(c):
            low = low[:-len(c)]
            break
    return os.path.splitext(low)[1]


def iter_source(path: str) -> Records:
    """(Location, decoded JSON object) for every record behind ``path`` (see the module docstring), streamed.

    Raises DataError(location, reason) for bytes that are not UTF-8 or not JSON (these cannot be skipped: a JSON
    array cannot be resynchronised after a syntax error), and for unreadable or corrupt files."""
    for shard in shard_paths(path):
        yield from _iter_file(shard)


def _iter_file(path: str) -> Records:
    suffix = _inner_suffix(os.path.basename(path))
    try:
        with open(path, "rb") as raw:
            head = raw.read(8)
    except OSError as exc:
        raise DataError(path, None, f"cannot read ({exc.strerror or exc})") from None
    if suffix in PARQUET_SUFFIXES or head.startswith(PARQUET_MAGIC):
        return _iter_arrow_batches(path, _parquet_batches)
    if suffix in ARROW_SUFFIXES or head.startswith(ARROW_FILE_MAGIC):
        return _iter_arrow_batches(path, _ipc_batches)
    return _iter_text(path, suffix, head)


# ------------------------------------------------------------------------------------------- text (JSON/JSONL)
def _open_binary(path: str, head: bytes) -> IO[bytes]:
    """The file's bytes, decompressed when it starts with gzip or zstd magic."""
    if head.startswith(GZIP_MAGIC):
        import gzip

        return gzip.open(path, "rb")
    if head.startswith(ZSTD_MAGIC):
        try:
            import zstandard
        except ImportError:
            raise DataError(path, None, "is zstd-compressed: install the 'zstandard' package "
                                        "(pip install zstandard) to read it") from None
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True,
                                                                             closefd=True))
    return open(path, "rb")


def _corrupt(path: str, exc: Exception) -> DataError:
    return DataError(path, None, f"cannot read: corrupt or truncated ({type(exc).__name__}: {exc})")


def _iter_text(path: str, suffix: str, head: bytes) -> Records:
    with _open_binary(path, head) as f:
        try:
            first = f.peek(4096)[:4096]
            if first.startswith(UTF8_BOM):
                f.read(len(UTF8_BOM))
                first = first[len(UTF8_BOM):]
            lead = first.lstrip()[:1]
            if lead == b"[":
                yield from _iter_json_array(path, f)
            elif suffix == ".json" and lead == b"{" and not _first_line_is_value(path, head):
                yield from _iter_json_document(path, f)
            else:
                yield from _iter_jsonl(path, f)
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError, a cut gzip an EOFError
            raise _corrupt(path, exc) from None
        except DataError:
            raise
        except Exception as exc:  # zstandard.ZstdError
            if type(exc).__module__.startswith("zstandard"):
                raise _corrupt(path, exc) from None
            raise


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _iter_jsonl(path: str, f: IO[bytes]) -> Records:
    for lineno, raw in enumerate(f, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(_decode(raw))
        except json.JSONDecodeError as exc:
            obj = BadRecord(f"malformed JSON: {exc.msg} (column {exc.colno})")
        except ValueError as exc:
            obj = BadRecord(str(exc))
        yield Location(lineno, path), obj


def _first_line_is_value(path: str, head: bytes) -> bool:
    """A ``.json`` file that starts with ``{``: JSON Lines when its first line is a whole JSON value."""
    with _open_binary(path, head) as f:
        line = f.readline()
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


def _iter_json_document(path: str, f: IO[bytes]) -> Records:
    """A whole JSON object whose single member is the list of records (read whole: it has no streaming form)."""
    try:
        doc = json.loads(_decode(f.read()))
        if not isinstance(doc, dict):
            raise ValueError(f"expected an object, got {type(doc).__name__}")
    except json.JSONDecodeError as exc:
        raise DataError(path, Location(exc.lineno, path), f"malformed JSON: {exc.msg} (column {exc.colno})") from None
    except ValueError as exc:
        raise DataError(path, None, str(exc)) from None
    lists = [k for k, v in doc.items() if isinstance(v, list)]
    if len(doc) != 1 or len(lists) != 1:
        raise DataError(path, None, f"a JSON object with keys {', '.join(map(repr, doc))}: expected JSON Lines, a "
                                    f"JSON array of records, or an object whose only member is that array")
    for k, obj in enumerate(doc[lists[0]]):
        yield Location(k, path, f"{lists[0]}[]"), obj


class _JsonArrayReader:
    """Streams the elements of a top-level JSON array from a byte stream (constant memory apart from the largest
    element), tracking the line each element starts on."""

    def __init__(self, path: str, f: IO[bytes]) -> None:
        self.path = path
        self.reader = io.TextIOWrapper(f, encoding="utf-8", errors="strict", newline="")
        self.buf = ""
        self.pos = 0
        self.line = 1  # line number of buf[pos]
        self.eof = False
        self.decoder = json.JSONDecoder()

    def _more(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = self.reader.read(JSON_CHUNK)
        except UnicodeDecodeError as exc:
            raise DataError(self.path, Location(self.line + self.buf.count("\n", self.pos), self.path),
                            f"not valid UTF-8 ({exc.reason})") from None
        if not chunk:
            self.eof = True
            return False
        if self.pos > len(self.buf) // 2:
            self.buf = self.buf[self.pos:]
            self.pos = 0
        self.buf += chunk
        return True

    def _advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def _skip_ws(self) -> str:
        """The next non-whitespace character (consumed up to it, not past it); '' at EOF."""
        while True:
            n = len(self.buf)
            k = self.pos
            while k < n and self.buf[k] in " \t\r\n":
                k += 1
            self._advance(k)
            if k < n:
                return self.buf[k]
            if not self._more():
                return ""

    def _error(self, at: int, reason: str) -> DataError:
        return DataError(self.path, Location(self.line + self.buf.count("\n", self.pos, at), self.path), reason)

    def __iter__(self) -> Records:
        if self._skip_ws() != "[":
            raise self._error(self.pos, "malformed JSON: expected '[' to open the array of records")
        self._advance(self.pos + 1)
        expect_value = True
        first = True
        while True:
            c = self._skip_ws()
            if c == "":
                raise self._error(self.pos, "malformed JSON: the array is not closed with ']'")
            if c == "]" and (first or not expect_value):
                self._advance(self.pos + 1)
                break
            if not expect_value:
                if c != ",":
                    raise self._error(self.pos, f"malformed JSON: expected ',' or ']' after an element, got {c!r}")
                self._advance(self.pos + 1)
                expect_value = True
                continue
            loc = Location(self.line, self.path)
            obj = self._decode_value()
            yield loc, obj
            expect_value, first = False, False
        if self._skip_ws() != "":
            raise self._error(self.pos, "malformed JSON: extra data after the closing ']'")

    def _decode_value(self) -> object:
        """Decode the element at ``pos``; when the buffer ends inside it, read more and decode again."""
        while True:
            try:
                obj, end = self.decoder.raw_decode(self.buf, self.pos)
                number = isinstance(obj, (int, float)) and not isinstance(obj, bool)
                # a number that reaches the buffer's end (or a '.', 'e' still being read) may go on: read more
                if not (number and not self.buf[end:].strip("0123456789.eE+-")) or not self._more():
                    self._advance(end)
                    return obj
            except json.JSONDecodeError as exc:
                # the buffer ends inside the element (an error at its very end, or a string that runs to it)
                cut = exc.pos >= len(self.buf) - 6 or exc.msg.startswith("Unterminated string")
                if not (cut and self._more()):
                    raise self._error(exc.pos, f"malformed JSON: {exc.msg}") from None


def _iter_json_array(path: str, f: IO[bytes]) -> Records:
    return iter(_JsonArrayReader(path, f))


# ------------------------------------------------------------------------------------------- Parquet / Arrow
def _pyarrow(path: str):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise DataError(path, None, "is a Parquet/Arrow file: install the 'pyarrow' package (pip install pyarrow) "
                                    "to read it") from None
    return pyarrow


def _parquet_batches(path: str):
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    yield from pf.iter_batches(batch_size=ARROW_BATCH)


def _ipc_batches(path: str):
    import pyarrow as pa

    source = pa.memory_map(path, "r")
    try:
        reader = pa.ipc.open_file(source)
        for k in range(reader.num_record_batches):
            yield reader.get_batch(k)
    except pa.ArrowInvalid:  # not the file format: the stream format (what save_to_disk writes)
        source.seek(0)
        yield from pa.ipc.open_stream(source)


def _drop_nulls(value):
    """Arrow has no absent keys: a struct field missing from a row reads as null. Drop null members so that a
    record reads as it would from JSON Lines without the key."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _iter_arrow_batches(path: str, batches: Callable[[str], Iterator]) -> Records:
    pa = _pyarrow(path)
    row = 0
    try:
        for batch in batches(path):
            for rec in batch.to_pylist():
                yield Location(row, path, "row"), _drop_nulls(rec)
                row += 1
    except (pa.ArrowException, OSError) as exc:
        raise DataError(path, None, f"cannot read as Parquet/Arrow ({type(exc).__name__}: {exc})") from None


def source_label(path: str) -> str:
    """A short name for a data path: the file or directory name without data suffixes (``a/b.jsonl.gz`` -> ``b``)."""
    base = os.path.basename(os.path.normpath(path)) if not has_glob(path) else os.path.basename(os.path.dirname(path))
    return strip_data_suffix(base) or base

