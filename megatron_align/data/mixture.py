"""Several datasets as one: a weighted training mixture, or an evaluation set made of several named datasets.

The mixture is an index map built by megatron-core's blending helpers (``megatron.core.datasets.helpers``, the C++
code behind its ``BlendedDataset``): position ``i`` of the mixture is draw ``k`` of dataset ``d``.

* Training (``weights`` given): ``build_blending_indices`` spreads ``size`` draws (default: the datasets' total
  size) over the datasets so that every prefix of the map follows the weights to within one draw. Draw ``k`` of
  dataset ``d`` is its sample ``perm_{d,c}[k mod n_d]`` with ``c = k div n_d``: a seeded permutation per pass, so a
  dataset drawn less than its size contributes a random subset of distinct samples and one drawn more is repeated
  pass by pass (each pass a fresh order), never a sample twice within a pass.
* Evaluation (no weights): ``build_exhaustive_blending_indices`` visits every sample of every dataset exactly once.

The map depends only on the datasets' sizes, the weights, ``size`` and ``seed`` (``data.seed``), so a resumed run
rebuilds it identically and the sampler's saved position (an index into the mixture) resumes exactly. Items are
the members' samples re-numbered by mixture position, as units whose ``dataset`` is the member's name (grouped
eval metrics ``eval_loss/dataset=<name>``).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from megatron_align.data.errors import DataError
from megatron_align.data.samples import ChatDataset, DataStats, Sample, Unit

MAX_DATASETS = np.iinfo(np.int16).max  # megatron's dataset index is int16


def _helpers():
    from megatron.core.datasets import helpers

    return helpers


def blend_indices(sizes: Sequence[int], weights: Optional[Sequence[float]], size: int, seed: int):
    """(dataset index int16 [size], dataset sample index int64 [size]): which dataset and which of its samples
    each mixture position holds (see the module docstring)."""
    n = len(sizes)
    if not 1 <= n <= MAX_DATASETS:
        raise ValueError(f"a mixture has 1..{MAX_DATASETS} datasets, got {n}")
    sizes = np.asarray(sizes, dtype=np.int64)
    h = _helpers()
    if weights is None:
        size = int(sizes.sum())
        dataset_index = np.zeros(size, dtype=np.int16)
        draw = np.zeros(size, dtype=np.int64)
        h.build_exhaustive_blending_indices(dataset_index, draw, sizes, n)
        return dataset_index, draw
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    dataset_index = np.zeros(size, dtype=np.int16)
    draw = np.zeros(size, dtype=np.int64)
    h.build_blending_indices(dataset_index, draw, w, n, size, False)
    sample = np.empty(size, dtype=np.int64)
    for d in range(n):
        at = np.flatnonzero(dataset_index == d)
        if not len(at):
            continue
        passes = -(-len(at) // int(sizes[d]))
        order = np.concatenate([np.random.default_rng([seed, d, c]).permutation(int(sizes[d]))
                                for c in range(passes)])
        sample[at] = order[draw[at]]
    return dataset_index, sample


class BlendedDataset(ChatDataset):
    """Named member datasets behind one index map (see the module docstring). ``weights=None``: every sample of
    every member once (evaluation); else ``size`` draws (default: the members' total) split by ``weights``."""

    def __init__(self, datasets: Sequence[ChatDataset], names: Sequence[str],
                 weights: Optional[Sequence[float]] = None, seed: int = 0, size: Optional[int] = None) -> None:
        if len(datasets) != len(names):
            raise ValueError(f"{len(datasets)} datasets but {len(names)} names")
        self.datasets, self.names = list(datasets), list(names)
        self.weights = None if weights is None else [float(x) for x in weights]
        self.seed = int(seed)
        for ds, name in zip(self.datasets, self.names):
            if len(ds) == 0:
                raise DataError(name, None, "no samples left in this dataset of the mixture (all dropped or skipped)")
        sizes = [len(ds) for ds in self.datasets]
        size = sum(sizes) if size is None else int(size)
        self.dataset_index, self.sample_index = blend_indices(sizes, self.weights, size, seed)
        self.lengths = np.empty(len(self.dataset_index), dtype=np.int64)
        for d, ds in enumerate(self.datasets):
            at = self.dataset_index == d
            self.lengths[at] = np.asarray(ds.lengths)[self.sample_index[at]]
        self.stats = DataStats(n_samples=len(self.lengths))
        for ds in self.datasets:
            for key in ("n_truncated", "n_dropped", "n_skipped_bad", "n_identical", "n_nothing_to_train"):
                setattr(self.stats, key, getattr(self.stats, key) + getattr(ds.stats, key))

    def __getitem__(self, idx: int) -> Sample:
        d = int(self.dataset_index[idx])
        s = self.datasets[d][int(self.sample_index[idx])]
        return Sample(int(idx), s.input_ids, s.target_mask, s.category, s.role, dict(s.values))

    def get_units(self, ids: Sequence[int]) -> List[Unit]:
        out = []
        for i in ids:
            s = self[int(i)]
            out.append(Unit(s.sample_id, [s], s.category, self.names[int(self.dataset_index[int(i)])]))
        return out

    def category_names(self) -> List[str]:
        """The union of the members' categories (each member answers without reading token data where it can)."""
        return sorted({c for ds in self.datasets for c in ds.category_names()})

    def fingerprint(self) -> dict:
        """What the index map depends on (names, weights, member sizes, seed), saved with a checkpoint so that a resume
        with another mixture is refused instead of silently changing the data order."""
        return {"names": self.names, "sizes": [len(ds) for ds in self.datasets], "size": len(self),
                "weights": None if self.weights is None else [round(w, 12) for w in self.weights], "seed": self.seed}

    def draws(self) -> np.ndarray:
        """Mixture positions per member (int64 [n_datasets])."""
        return np.bincount(self.dataset_index, minlength=len(self.datasets)).astype(np.int64)

    def trained_tokens(self) -> np.ndarray:
        """Loss tokens per member over the whole mixture (int64 [n_datasets]): what one pass trains on each."""
        out = np.zeros(len(self.datasets), dtype=np.int64)
        for d, ds in enumerate(self.datasets):
            per_sample = trained_tokens_per_sample(ds)
            at = self.sample_index[self.dataset_index == d]
            out[d] = int(per_sample[at].sum())
        return out

    def summary(self) -> str:
        """Per member: weight, samples it holds, draws per pass over the mixture (share of samples), trained tokens
        (share); members separated by `` | ``."""
        draws, trained = self.draws(), self.trained_tokens()
        n, t = max(int(draws.sum()), 1), max(int(trained.sum()), 1)
        lines = []
        for d, (ds, name) in enumerate(zip(self.datasets, self.names)):
            weight = f"weight {self.weights[d]:.3f}, " if self.weights is not None else ""
            lines.append(f"{name}: {weight}{len(ds)} samples, {int(draws[d])} drawn ({draws[d] / n:.1%} of samples"
                         f"), {int(trained[d])} trained tokens ({trained[d] / t:.1%})")
        return " | ".join(lines)


def trained_tokens_per_sample(ds: ChatDataset) -> np.ndarray:
    """Loss tokens per sample (position 0 is never a label). Uses ``ds.trained_lengths`` when the dataset keeps it,
    else reads every sample once."""
    cached = getattr(ds, "trained_lengths", None)
    if cached is not None:
        return np.asarray(cached, dtype=np.int64)
    out = np.fromiter((int(np.count_nonzero(ds[i].target_mask[1:])) for i in range(len(ds))), dtype=np.int64,
                      count=len(ds))
    ds.trained_lengths = out
    return out
