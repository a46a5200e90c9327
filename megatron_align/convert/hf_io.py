"""Hugging Face model directories: lazy tensor reading and sharded safetensors writing.

Reading never loads a whole checkpoint: safetensors files are read tensor by tensor (header parsed,
then a plain ``readinto`` of that tensor's bytes); ``pytorch_model*.bin`` files are loaded with ``torch.load(weights_only=True,
mmap=True)`` (memory-mapped, so only the tensors touched are paged in). Writing keeps at most one
shard in memory and flushes it when it would exceed ``max_shard_size`` bytes.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

from megatron_align.convert.errors import ConvertError

SAFE_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_PATTERNS = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt",
                      "*.tiktoken", "tokenization_*.py", "chat_template.*", "generation_config.json")
# Remote-code model files (Baichuan2): carried along as files, never imported or executed.
HF_CODE_PATTERNS = ("configuration_*.py", "modeling_*.py", "generation_utils.py", "quantizer.py")


def is_hf_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and bool(_weight_files(path))


def _weight_files(path: str) -> List[str]:
    names = sorted(os.listdir(path)) if os.path.isdir(path) else []
    safe = [n for n in names if n.endswith(".safetensors")]
    return safe or [n for n in names if n.endswith(".bin") and n.startswith("pytorch_model")]


class HFReader:
    """name -> tensor, reading one tensor at a time from the files of an HF model directory."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._handles: Dict[str, object] = {}
        self.weight_map = self._weight_map()

    def _weight_map(self) -> Dict[str, str]:
        for index in (SAFE_INDEX, BIN_INDEX):
            file = os.path.join(self.path, index)
            if os.path.isfile(file):
                with open(file) as f:
                    wm = json.load(f).get("weight_map")
                if not isinstance(wm, dict):
                    raise ConvertError(f"{file}: no 'weight_map'")
                missing = sorted({v for v in wm.values() if not os.path.isfile(os.path.join(self.path, v))})
                if missing:
                    raise ConvertError(f"{file} names shard files that do not exist: {', '.join(missing)}")
                return dict(wm)
        files = _weight_files(self.path)
        if not files:
            raise ConvertError(f"{self.path}: no *.safetensors or pytorch_model*.bin weight files")
        out: Dict[str, str] = {}
        for name in files:
            for key in self._open(name).keys():
                out[key] = name
        return out

    def _open(self, file: str):
        h = self._handles.get(file)
        if h is None:
            full = os.path.join(self.path, file)
            if file.endswith(".safetensors"):
                h = _SafetensorsFile(full)
            else:
                h = _BinFile(full)
            self._handles[file] = h
        return h

    def names(self) -> List[str]:
        return list(self.weight_map)

    def get(self, name: str) -> torch.Tensor:
        if name not in self.weight_map:
            raise ConvertError(f"{self.path}: tensor {name!r} is missing")
        return self._open(self.weight_map[name]).get_tensor(name)

    def meta(self, name: str) -> torch.Tensor:
        """A ``meta`` tensor with the stored shape and dtype (no data read)."""
        return self._open(self.weight_map[name]).meta(name)


_SAFE_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool}


class _SafetensorsFile:
    """A .safetensors file read tensor by tensor with plain reads (no mmap: pages of tensors already
    converted do not stay resident, so the process's memory is what it really holds)."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        self._start = 8 + n
        self._header = header

    def keys(self):
        return self._header.keys()

    def meta(self, name: str) -> torch.Tensor:
        h = self._header[name]
        if h["dtype"] not in _SAFE_DTYPES:
            raise ConvertError(f"{self.path}: tensor {name!r} has unsupported dtype {h['dtype']}")
        return torch.empty(h["shape"], dtype=_SAFE_DTYPES[h["dtype"]], device="meta")

    def get_tensor(self, name: str) -> torch.Tensor:
        m = self.meta(name)
        begin, end = self._header[name]["data_offsets"]
        out = torch.empty(m.shape, dtype=m.dtype)
        if end > begin:
            with open(self.path, "rb") as f:
                f.seek(self._start + begin)
                view = memoryview(out.view(torch.uint8).reshape(-1).numpy())
                if f.readinto(view) != end - begin:
                    raise ConvertError(f"{self.path}: tensor {name!r} is truncated")
        return out


class _BinFile:
    def __init__(self, path: str) -> None:
        self._sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)

    def keys(self):
        return self._sd.keys()

    def get_tensor(self, name: str) -> torch.Tensor:
        return self._sd[name]

    def meta(self, name: str) -> torch.Tensor:
        t = self._sd[name]
        return torch.empty(t.shape, dtype=t.dtype, device="meta")


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB', '1000' -> bytes (decimal units, as transformers)."""
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9,
             "tb": 10**12, "b": 1}
    s = str(text).strip().lower()
    for unit, mult in units.items():
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mult)
    return int(s)


class ShardedSafetensorsWriter:
    """Collects tensors and writes ``model-0000k-of-0000n.safetensors`` shards plus the index."""

    def __init__(self, path: str, max_shard_size: int) -> None:
        self.path = path
        self.max_shard_size = max_shard_size
        self._buf: Dict[str, torch.Tensor] = {}
        self._buf_bytes = 0
        self._shards: List[Tuple[str, List[str]]] = []
        self.total_size = 0
        os.makedirs(path, exist_ok=True)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self._buf and self._buf_bytes + nbytes > self.max_shard_size:
            self._flush()
        self._buf[name] = tensor.contiguous()
        self._buf_bytes += nbytes
        self.total_size += nbytes

    def _flush(self) -> None:
        tmp = f"shard-{len(self._shards):05d}.tmp.safetensors"
        write_safetensors(os.path.join(self.path, tmp), self._buf)
        self._shards.append((tmp, list(self._buf)))
        self._buf, self._buf_bytes = {}, 0

    def close(self) -> List[str]:
        if self._buf or not self._shards:
            self._flush()
        n = len(self._shards)
        weight_map: Dict[str, str] = {}
        files = []
        for k, (tmp, names) in enumerate(self._shards):
            final = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
            os.replace(os.path.join(self.path, tmp), os.path.join(self.path, final))
            weight_map.update({name: final for name in names})
            files.append(final)
        with open(os.path.join(self.path, SAFE_INDEX), "w") as f:
            json.dump({"metadata": {"total_size": self.total_size}, "weight_map": weight_map}, f, indent=2)
        return files


_SAFE_NAMES = {v: k for k, v in _SAFE_DTYPES.items()}


def write_safetensors(path: str, tensors: Dict[str, torch.Tensor]) -> None:
    """The safetensors format written tensor by tensor from the tensors' own memory (``save_file`` would
    first copy the whole shard into bytes)."""
    write_safetensors_lazy(path, tensors, tensors.__getitem__)


def write_safetensors_lazy(path: str, metas: Dict[str, torch.Tensor], produce: Callable[[str], torch.Tensor]) -> None:
    """Write a safetensors file whose header comes from ``metas`` (shape + dtype, e.g. ``meta`` tensors) and
    whose tensors are produced one at a time, in order, and dropped once written: peak memory is one tensor."""
    header: Dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, t in metas.items():
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _SAFE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, m in metas.items():
            t = produce(name)
            if tuple(t.shape) != tuple(m.shape) or t.dtype != m.dtype:
                raise ConvertError(f"{path}: {name} was produced as {tuple(t.shape)} {t.dtype}, planned "
                                   f"{tuple(m.shape)} {m.dtype}")
            if t.numel():
                f.write(memoryview(t.contiguous().view(torch.uint8).reshape(-1).numpy()))
            del t


def write_sharded_safetensors_lazy(path: str, metas: Dict[str, torch.Tensor], produce: Callable[[str], torch.Tensor],
                                   max_shard_size: int) -> List[str]:
    """``model-0000k-of-0000n.safetensors`` + index, shards planned from ``metas`` (the greedy split of
    :class:`ShardedSafetensorsWriter`) and filled by ``produce(name)`` one tensor at a time."""
    shards: List[Dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, m in metas.items():
        nbytes = m.numel() * m.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = m
        size += nbytes
    os.makedirs(path, exist_ok=True)
    files, weight_map = [], {}
    for k, shard in enumerate(shards):
        final = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors_lazy(os.path.join(path, final), shard, produce)
        weight_map.update({name: final for name in shard})
        files.append(final)
    total = sum(m.numel() * m.element_size() for m in metas.values())
    with open(os.path.join(path, SAFE_INDEX), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return files


def copy_matching(src: str, dst: str, patterns: Iterable[str]) -> List[str]:
    """Copy the plain files of ``src`` whose names match ``patterns`` into ``dst``; returns their names."""
    if not os.path.isdir(src):
        return []
    names = [n for n in sorted(os.listdir(src))
             if os.path.isfile(os.path.join(src, n)) and any(fnmatch.fnmatch(n, p) for p in patterns)]
    if names:
        os.makedirs(dst, exist_ok=True)
    for n in names:
        shutil.copy2(os.path.join(src, n), os.path.join(dst, n))
    return names


def read_config(path: str) -> Dict:
    file = os.path.join(path, "config.json")
    try:
        with open(file) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConvertError(f"{path}: no config.json (not a Hugging Face model directory)") from None
    except json.JSONDecodeError as e:
        raise ConvertError(f"{file} is not valid JSON: {e}") from None


def torch_dtype_name(dtype: Optional[torch.dtype]) -> str:
    return {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(dtype, "float32")
