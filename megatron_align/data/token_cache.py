"""Tokenize a chat file once, reuse it at every launch: the tokenization cache behind ``data.path: *.jsonl``.

A JSONL (or any file the reader accepts) is tokenized once into the indexed format (:mod:`megatron_align.data.
indexed`) under ``data.cache_dir``; every later launch, and every rank, memory-maps that result, so time to the
first step and memory per rank do not grow with the corpus. The entry's key hashes everything the tokens depend on:

* the input's content, fast fingerprint: size, mtime (ns) and a BLAKE2b of 64 KiB blocks sampled at 64 evenly
  spaced offsets plus the first and last MiB (a directory or glob of shards: each file's, with its name). A full hash
  would read the whole corpus at every launch on every rank (seconds per GB), which is what the cache exists to
  avoid; a real edit changes the mtime, and a copy that resets it only costs one rebuild;
* the tokenizer: the sha256 of its file and of its ``tokenizer_config.json`` (special tokens, chat template);
* the template: its class, name (a Jinja template's name carries its sha256) and the system prompt inserted;
* ``seq_length``, ``overlong`` and ``on_bad_line`` (what is truncated, dropped or skipped);
* the code: the indexed format version and a hash of the data package's sources (a parser or template change in
  a new version invalidates old entries).

Any change gives a new entry. An entry is a directory ``<cache_dir>/<file name>-<key>/`` built under a temporary
name and renamed into place when complete (atomic); one that fails to open (partial, truncated, overwritten) is
removed and rebuilt. Under torch.distributed, global rank 0 builds while the others wait at a broadcast that
also carries rank 0's error (a bad line stops every rank with the same message); a rank that then does not see
the entry (a cache directory that is not shared between nodes) builds its own copy.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import os
import shutil
import sys
import uuid
from typing import Dict, List, Optional, Tuple

from megatron_align.data.errors import DataError
from megatron_align.data.indexed import FORMAT, IndexedChatDataset, build_index, read_meta
from megatron_align.data.templates import ChatTemplate
from megatron_align.errors import UserError

SAMPLE_BLOCKS = 64
BLOCK = 64 << 10
EDGE = 1 << 20
SMALL_INPUT = 8 << 20  # bytes: below this one process tokenizes (starting workers costs more than it saves)
ENV_CACHE_DIR = "MEGATRON_ALIGN_CACHE"


def default_cache_dir() -> str:
    """``$MEGATRON_ALIGN_CACHE``, else ``$XDG_CACHE_HOME/megatron_align/tokenized`` (``~/.cache`` by default)."""
    if os.environ.get(ENV_CACHE_DIR):
        return os.environ[ENV_CACHE_DIR]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "megatron_align", "tokenized")


def sample_offsets(size: int) -> List[Tuple[int, int]]:
    """(offset, length) of the blocks the fingerprint reads: the whole file when small, else the first and last
    MiB and ``SAMPLE_BLOCKS`` blocks evenly spaced between them."""
    if size <= 2 * EDGE + SAMPLE_BLOCKS * BLOCK:
        return [(0, size)]
    inner = [(EDGE + k * (size - 2 * EDGE - BLOCK) // (SAMPLE_BLOCKS - 1), BLOCK) for k in range(SAMPLE_BLOCKS)]
    return [(0, EDGE)] + inner + [(size - EDGE, EDGE)]


def file_fingerprint(path: str) -> str:
    """size, mtime_ns and a BLAKE2b of sampled blocks (see the module docstring)."""
    st = os.stat(path)
    h = hashlib.blake2b(f"{st.st_size}:{st.st_mtime_ns}".encode(), digest_size=16)
    with open(path, "rb") as f:
        for off, length in sample_offsets(st.st_size):
            f.seek(off)
            h.update(f.read(length))
    return h.hexdigest()


def source_files(path: str) -> List[Tuple[str, str]]:
    """(name, file) of every file behind a data path: the file itself, every file under a directory (with its
    relative path), or the files a glob matches (sorted)."""
    if os.path.isfile(path):
        return [(os.path.basename(path), path)]
    if os.path.isdir(path):
        out = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            out += [(os.path.relpath(os.path.join(root, n), path), os.path.join(root, n)) for n in sorted(files)]
        return out
    matches = sorted(p for p in glob.glob(path) if os.path.isfile(p)) if glob.has_magic(path) else []
    if not matches:
        raise DataError(path, None, "no such file")
    return [(p, p) for p in matches]


def source_fingerprint(path: str) -> str:
    """Fingerprint of a data path: its files' fingerprints with their names (see :func:`source_files`)."""
    files = source_files(path)
    if len(files) == 1 and files[0][1] == path:
        return file_fingerprint(path)
    h = hashlib.blake2b(digest_size=16)
    for name, full in files:
        h.update(f"{name}={file_fingerprint(full)};".encode())
    return h.hexdigest()


def _sha256_files(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def code_fingerprint() -> str:
    """A hash of the data package's sources (parsing, templates, tokenization, the format) and the format version."""
    pkg = os.path.dirname(os.path.abspath(__file__))
    files = sorted(os.path.join(root, n) for root, _, names in os.walk(pkg) for n in names if n.endswith(".py"))
    return FORMAT + ":" + _sha256_files(files)[:16]


def key_parts(path: str, template: ChatTemplate, seq_length: Optional[int], overlong: str,
              on_bad_line: str, record_format: str = "auto") -> Dict[str, object]:
    """Everything the cached tokens depend on (see the module docstring)."""
    tok = template.tok
    cfg = os.path.join(tok.dir, "tokenizer_config.json")
    return {"source": source_fingerprint(path),
            "tokenizer": _sha256_files([tok.file] + ([cfg] if os.path.isfile(cfg) else [])),
            "template": [type(template).__module__ + "." + type(template).__qualname__, template.name,
                         template.system_text],
            "seq_length": seq_length, "overlong": overlong, "on_bad_line": on_bad_line, "format": record_format,
            "code": code_fingerprint()}


def entry_dir(cache_dir: str, path: str, parts: Dict[str, object]) -> str:
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(os.path.normpath(path))).strip("_") or "data"
    return os.path.join(cache_dir, f"{name}-{key}")


def _valid(entry: str, parts: Dict[str, object]) -> bool:
    prefix = os.path.join(entry, "data")
    try:
        meta = read_meta(prefix)
        IndexedChatDataset(prefix)  # checks the index against the .bin size and the per-document sidecar
    except (DataError, KeyError, TypeError):
        return False
    return meta.get("cache_key") == parts


def ensure_entry(path: str, template: ChatTemplate, seq_length: Optional[int], overlong: str, on_bad_line: str,
                 cache_dir: Optional[str] = None, workers: Optional[int] = None, record_format: str = "auto") -> str:
    """The cache entry of ``path`` (built now unless a valid one exists); returns its indexed prefix."""
    from megatron_align.data.parallel import default_workers

    cache_dir = cache_dir or default_cache_dir()
    parts = key_parts(path, template, seq_length, overlong, on_bad_line, record_format)
    entry = entry_dir(cache_dir, path, parts)
    prefix = os.path.join(entry, "data")
    if _valid(entry, parts):
        return prefix
    if os.path.exists(entry):
        print(f"[megatron-align data] {entry}: incomplete or corrupt cache entry, rebuilding", file=sys.stderr)
        shutil.rmtree(entry, ignore_errors=True)
    if workers is None:
        size = os.path.getsize(path) if os.path.isfile(path) else SMALL_INPUT
        workers = default_workers() if size >= SMALL_INPUT else 1
    print(f"[megatron-align data] tokenizing {path} once into {entry} ({workers} workers)", file=sys.stderr,
          flush=True)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{entry}.tmp{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        build_index(path, os.path.join(tmp, "data"), template, seq_length, overlong, on_bad_line, workers,
                    extra_meta={"cache_key": parts}, record_format=record_format)
        try:
            os.rename(tmp, entry)
        except OSError:  # another process published the entry first
            if not _valid(entry, parts):
                shutil.rmtree(entry, ignore_errors=True)
                os.rename(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return prefix


def _distributed() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def cached_dataset(path: str, template: ChatTemplate, seq_length: Optional[int] = None, overlong: str = "truncate",
                   on_bad_line: str = "error", cache_dir: Optional[str] = None,
                   record_format: str = "auto") -> IndexedChatDataset:
    """``path`` tokenized with ``template`` (once, see the module docstring), memory-mapped. Collective under
    torch.distributed: every rank calls it with the same arguments."""
    if not _distributed():
        return IndexedChatDataset(ensure_entry(path, template, seq_length, overlong, on_bad_line, cache_dir,
                                               record_format=record_format),
                                  seq_length, overlong)
    import torch.distributed as dist

    failure = None
    if dist.get_rank() == 0:
        try:
            ensure_entry(path, template, seq_length, overlong, on_bad_line, cache_dir,
                                               record_format=record_format)
        except Exception as exc:  # noqa: BLE001 - every rank stops with it
            failure = exc
    status = [None if failure is None else (isinstance(failure, UserError), str(failure))]
    dist.broadcast_object_list(status, src=0)
    if failure is not None:
        raise failure
    if status[0] is not None:
        user_error, message = status[0]
        raise (UserError if user_error else RuntimeError)(f"rank 0 failed to tokenize {path}: {message}"
                                                          if not user_error else message)
    # a cache_dir that is not shared with rank 0's node: this rank builds its own copy
    return IndexedChatDataset(ensure_entry(path, template, seq_length, overlong, on_bad_line, cache_dir,
                                               record_format=record_format),
                              seq_length, overlong)
