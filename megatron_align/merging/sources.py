"""Merge inputs, read one tensor at a time by its Hugging Face name.

Both kinds present the same face (``arch``, ``meta(name)``, ``get(name)``) over the names of
:func:`megatron_align.convert.mapping.expected_hf_names`, so mixed inputs merge tensor by tensor:

- :class:`HFSource`: an HF model directory (safetensors shards or ``pytorch_model*.bin``), read lazily by
  :class:`~megatron_align.convert.hf_io.HFReader`.
- :class:`McoreSource`: a megatron_align checkpoint (run directory with ``latest``, a ``step_*`` or
  ``release`` directory), read in its sharded form: the block of one mapping rule and one layer is read
  from the dist-checkpoint (whatever TP/PP it was saved at) and split into its HF tensors by the rule's
  inverse transform; the parts of the last block are kept until handed out, so ``q``/``k``/``v`` of one layer cost one read.
"""

from __future__ import annotations

import abc

import os
from typing import Dict, List, Optional, Tuple

import torch

from megatron_align.convert import mapping
from megatron_align.convert.errors import ConvertError
from megatron_align.models.arch import ArchSpec


class TensorSource(abc.ABC):
    path: str
    kind: str  # "hf" | "mcore"
    arch: ArchSpec
    tokenizer_dir: str  # where its tokenizer files are
    hf_code_dir: str  # where its remote-code files are (may not exist)

    @abc.abstractmethod
    def meta(self, name: str) -> torch.Tensor:
        """Shape and dtype of tensor ``name`` (HF naming), as a meta tensor, without reading it."""

    @abc.abstractmethod
    def get(self, name: str) -> torch.Tensor:
        """Tensor ``name`` (HF naming), read now."""

    def close(self) -> None:
        pass


class HFSource(TensorSource):
    kind = "hf"

    def __init__(self, path: str) -> None:
        from megatron_align.convert.hf_config import arch_from_hf
        from megatron_align.convert.hf_io import HFReader, read_config
        from megatron_align.convert.hf_to_mcore import _check_shape, check_tensor_names

        self.path = self.tokenizer_dir = self.hf_code_dir = path
        self.arch = arch_from_hf(read_config(path), os.path.join(path, "config.json"))
        self.reader = HFReader(path)
        check_tensor_names(self.reader.names(), self.arch, path)
        for rule in mapping.rules_for(self.arch):
            for i in (range(self.arch.num_layers) if rule.per_layer else [-1]):
                for name, sym in zip(rule.hf_names(i), rule.shapes):
                    _check_shape(name, self.reader.meta(name), sym, self.arch)

    def meta(self, name: str) -> torch.Tensor:
        return self.reader.meta(name)

    def get(self, name: str) -> torch.Tensor:
        return self.reader.get(name)


class McoreSource(TensorSource):
    kind = "mcore"

    def __init__(self, path: str) -> None:
        from megatron_align.checkpoint import layout
        from megatron_align.convert.dcp_io import DistCheckpointReader
        from megatron_align.convert.hf_to_mcore import HF_CODE_DIR
        from megatron_align.convert.mcore_to_hf import check_checkpoint_keys

        self.path = path
        try:
            self.ckpt = layout.resolve(path)
            self.arch = layout.read_arch(self.ckpt)
        except layout.CheckpointError as e:
            raise ConvertError(str(e)) from None
        if self.arch.family not in mapping.MAPPINGS:
            raise ConvertError(f"{self.ckpt}/arch.json: unknown architecture family {self.arch.family!r}")
        self.tokenizer_dir = os.path.join(self.ckpt, layout.TOKENIZER_DIR)
        self.hf_code_dir = os.path.join(self.ckpt, HF_CODE_DIR)
        self.reader = DistCheckpointReader(os.path.join(self.ckpt, layout.MODEL_DIR))
        check_checkpoint_keys(self.reader, self.arch)
        self.padded_vocab = self.reader.shape("embedding.word_embeddings.weight")[0]
        self.dims = mapping.dims(self.arch, self.padded_vocab)
        self._where: Dict[str, Tuple[mapping.Rule, int, int]] = {}
        for rule in mapping.rules_for(self.arch):
            for i in (range(self.arch.num_layers) if rule.per_layer else [-1]):
                for k, name in enumerate(rule.hf_names(i)):
                    self._where[name] = (rule, i, k)
        self._block: Optional[Tuple[str, int]] = None
        self._tensors: List[Optional[torch.Tensor]] = []
        self._metas: Dict[str, torch.Tensor] = {}

    def _locate(self, name: str) -> Tuple[mapping.Rule, int, int]:
        if name not in self._where:
            raise ConvertError(f"{self.ckpt}: tensor {name!r} is missing")
        return self._where[name]

    def meta(self, name: str) -> torch.Tensor:
        if name not in self._metas:
            rule, layer, k = self._locate(name)
            shape = self.reader.shape(rule.mcore)[1:] if rule.per_layer else self.reader.shape(rule.mcore)
            block = torch.empty(shape, dtype=self.reader.dtype(rule.mcore), device="meta")
            for n, t in zip(rule.hf_names(layer), rule.transform.to_hf(block, self.dims)):
                self._metas[n] = t
        return self._metas[name]

    def get(self, name: str) -> torch.Tensor:
        from megatron_align.convert.hf_to_mcore import _check_shape

        rule, layer, k = self._locate(name)
        if self._block != (rule.mcore, layer) or self._tensors[k] is None:
            self._tensors = []  # drop the previous block before reading the next
            block = self.reader.read_layer(rule.mcore, layer) if rule.per_layer else self.reader.read(rule.mcore)
            self._tensors = rule.transform.to_hf(block, self.dims)
            for n, t, sym in zip(rule.hf_names(layer), self._tensors, rule.shapes):
                _check_shape(n, t, sym, self.arch)
            self._block = (rule.mcore, layer)
        t, self._tensors[k] = self._tensors[k], None  # handed over: the block's memory goes as its parts do
        return t

    def close(self) -> None:
        self._tensors, self._block = [], None


def open_source(path: str) -> TensorSource:
    """An HF directory or a megatron_align checkpoint; anything else is a one-line error."""
    from megatron_align.convert.api import detect_direction

    return McoreSource(path) if detect_direction(path) == "hf" else HFSource(path)
