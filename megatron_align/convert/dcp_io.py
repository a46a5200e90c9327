"""Megatron ``torch_dist`` dist-checkpoints written and read without building the model.

A megatron-core ``torch_dist`` checkpoint is a torch DCP checkpoint (``.metadata`` + ``__0_*.distcp``)
whose keys are megatron's *sharded keys* (layers stacked on a leading axis: ``decoder.layers.*`` has
global shape ``[L, ...]``), plus ``metadata.json`` (``sharded_backend: torch_dist``) and ``common.pt``
(the non-sharded state; empty for a model). ``ShardedObject`` s (``_extra_state``) are byte blobs keyed
``<key>/shard_<offset>_<shape>``. DCP loads any chunking of a stored tensor, so megatron resharding
(TP/PP/VPP on load) works whatever chunks the writer chose.

- :func:`write_dist_checkpoint` plans the checkpoint from shapes (:class:`Chunk` s: key, global shape,
  offsets, sizes, dtype) and calls each chunk's ``produce()`` only when the file writer reaches it, so peak
  memory is one chunk (one layer's tensor), not the model.
- :class:`DistCheckpointReader` reads any sub-block of a stored tensor (e.g. layer ``i`` of a stacked key).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from megatron_align.convert.errors import ConvertError

MCORE_METADATA = {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                  "common_backend": "torch", "common_backend_version": 1}


@dataclass
class Chunk:
    key: str
    global_shape: Tuple[int, ...]
    offsets: Tuple[int, ...]
    sizes: Tuple[int, ...]
    dtype: torch.dtype
    produce: Callable[[], torch.Tensor]  # -> tensor of shape ``sizes``


def extra_state_key(key: str, layer: int, num_layers: int) -> str:
    """Megatron's unique key of a per-layer ``ShardedObject`` (``ShardedObject.unique_key``)."""
    return f"{key}/shard_{layer}_{num_layers}"


def serialized_object(value) -> bytes:
    """What megatron stores for a ShardedObject: ``torch.save([data])``."""
    buf = io.BytesIO()
    torch.save([value], buf)
    return buf.getvalue()


def _planner(chunks: Sequence[Chunk], objects: Dict[str, bytes]):
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
    from torch.distributed.checkpoint.planner import SavePlan, TensorWriteData, WriteItem, WriteItemType

    class StreamingSavePlanner(DefaultSavePlanner):
        """Plans from :class:`Chunk` shapes; produces each tensor when the writer asks for it."""

        def __init__(self) -> None:
            super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
            self.by_index = {(c.key, tuple(c.offsets)): c for c in chunks}

        def set_up_planner(self, state_dict, storage_meta=None, is_coordinator=False) -> None:
            self.state_dict, self.is_coordinator = {}, is_coordinator

        def create_local_plan(self) -> SavePlan:
            items = [WriteItem(index=MetadataIndex(c.key, torch.Size(c.offsets)), type=WriteItemType.SHARD,
                               tensor_data=TensorWriteData(
                                   chunk=ChunkStorageMetadata(offsets=torch.Size(c.offsets), sizes=torch.Size(c.sizes)),
                                   properties=TensorProperties(dtype=c.dtype), size=torch.Size(c.global_shape)))
                     for c in chunks]
            items += [WriteItem(index=MetadataIndex(k), type=WriteItemType.BYTE_IO) for k in objects]
            self.plan = SavePlan(items)
            return self.plan

        def resolve_data(self, write_item):
            if write_item.type == WriteItemType.BYTE_IO:
                return io.BytesIO(objects[write_item.index.fqn])
            c = self.by_index[(write_item.index.fqn, tuple(write_item.index.offset))]
            t = c.produce()
            if tuple(t.shape) != tuple(c.sizes) or t.dtype != c.dtype:
                raise ConvertError(f"{c.key} at {tuple(c.offsets)}: produced {tuple(t.shape)} {t.dtype}, "
                                   f"planned {tuple(c.sizes)} {c.dtype}")
            return t.contiguous()

    return StreamingSavePlanner()


def write_dist_checkpoint(directory: str, chunks: Sequence[Chunk], objects: Optional[Dict[str, bytes]] = None) -> None:
    """Write a megatron ``torch_dist`` checkpoint from lazily produced chunks (one process, no process group)."""
    import torch.distributed.checkpoint as dcp

    os.makedirs(directory, exist_ok=True)
    writer = dcp.FileSystemWriter(directory, single_file_per_rank=True, thread_count=1, sync_files=True)
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({}, storage_writer=writer, planner=_planner(chunks, objects or {}), no_dist=True)
    with open(os.path.join(directory, "metadata.json"), "w") as f:
        json.dump(MCORE_METADATA, f)
    torch.save({}, os.path.join(directory, "common.pt"))


class _ReadTarget:
    """DCP load-planner callbacks copying read items into one output tensor. Module level on purpose: a class
    defined per call forms a reference cycle that keeps ``out`` alive until the cyclic GC runs."""

    def __init__(self, out: torch.Tensor) -> None:
        self.out = out

    def resolve_tensor(self, item):
        from torch.distributed._shard._utils import narrow_tensor_by_index

        return narrow_tensor_by_index(self.out, item.dest_offsets, item.lengths)

    def commit_tensor(self, item, tensor) -> None:
        pass

    def load_bytes(self, item, value) -> None:  # pragma: no cover - tensors only
        raise ConvertError(f"unexpected bytes entry {item.storage_index.fqn}")


class DistCheckpointReader:
    """Partial reads of a megatron ``torch_dist`` checkpoint: a key, or a block of it."""

    def __init__(self, directory: str) -> None:
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.directory = directory
        meta_json = os.path.join(directory, "metadata.json")
        if not os.path.isfile(os.path.join(directory, ".metadata")):
            raise ConvertError(f"{directory} is not a dist-checkpoint (no .metadata)")
        if os.path.isfile(meta_json):
            with open(meta_json) as f:
                backend = json.load(f).get("sharded_backend")
            if backend != "torch_dist":
                raise ConvertError(f"{meta_json}: sharded_backend {backend!r} is not supported (torch_dist only)")
        self._reader = FileSystemReader(directory)
        self.metadata = self._reader.read_metadata()
        self._reader.set_up_storage_reader(self.metadata, True)
        self.tensors = {k: v for k, v in self.metadata.state_dict_metadata.items()
                        if isinstance(v, TensorStorageMetadata)}

    def keys(self) -> List[str]:
        return list(self.tensors)

    def shape(self, key: str) -> Tuple[int, ...]:
        return tuple(self._md(key).size)

    def dtype(self, key: str) -> torch.dtype:
        return self._md(key).properties.dtype

    def _md(self, key: str):
        if key not in self.tensors:
            raise ConvertError(f"{self.directory}: tensor {key!r} is missing from the checkpoint")
        return self.tensors[key]

    def read(self, key: str, offsets: Optional[Sequence[int]] = None, sizes: Optional[Sequence[int]] = None
             ) -> torch.Tensor:
        """The block ``[offsets, offsets + sizes)`` of ``key`` (the whole tensor by default)."""
        from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
        from torch.distributed.checkpoint.planner import LoadPlan
        from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

        md = self._md(key)
        offsets = tuple(offsets) if offsets is not None else (0,) * len(md.size)
        sizes = tuple(sizes) if sizes is not None else tuple(md.size)
        out = torch.empty(sizes, dtype=md.properties.dtype)
        items = create_read_items_for_chunk_list(
            key, md, [ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))])
        covered = sum(int(torch.Size(it.lengths).numel()) for it in items)
        if covered != out.numel():
            raise ConvertError(f"{self.directory}: the stored chunks of {key!r} cover {covered} of the "
                               f"{out.numel()} elements requested")

        self._reader.read_data(LoadPlan(items), _ReadTarget(out)).wait()
        return out

    def read_layer(self, key: str, layer: int) -> torch.Tensor:
        """Layer ``layer`` of a stacked ``decoder.layers.*`` key, without the layer axis."""
        shape = self.shape(key)
        return self.read(key, (layer,) + (0,) * (len(shape) - 1), (1,) + shape[1:])[0]
