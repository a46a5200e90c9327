"""Text duplicates: MinHash signatures of character shingles, LSH bands, candidates confirmed by exact Jaccard.

A prompt is normalised (NFKC, case-folded, runs of non-word characters -> one space), cut into character
``shingle_size``-grams, and signed with ``num_perm`` MinHash values (numpy, checked against datasketch's
estimates in the tests). The signature is split into
``b`` bands of ``r`` rows, ``(b, r)`` chosen so that the S-curve midpoint ``(1/b)^(1/r)`` is nearest to
``lsh_threshold``; each band is hashed to one uint64, so a prompt keeps ``b * 8`` bytes. Two prompts are
candidates when a band key collides (sorting each band column; per run of equal keys: each member with the
run's first and with its predecessor) and duplicates when the exact Jaccard of their shingle sets is
``>= jaccard_threshold``. Texts of candidates only are read again to confirm.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable, List, Set, Tuple

import numpy as np

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def shingles(text: str, size: int) -> Set[str]:
    norm = normalise(text)
    if len(norm) <= size:
        return {norm}
    return {norm[i:i + size] for i in range(len(norm) - size + 1)}


def band_shape(num_perm: int, threshold: float) -> Tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm and the S-curve midpoint nearest ``threshold``."""
    best = None
    for r in range(1, num_perm + 1):
        b = num_perm // r
        mid = (1.0 / b) ** (1.0 / r)
        key = (abs(mid - threshold), -b * r)
        if best is None or key < best[0]:
            best = (key, b, r)
    return best[1], best[2]


_SUB = 64  # texts per vectorised block ([shingles, num_perm] uint64: a few MB)


def _mix64(h: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser (xor-shift-multiply) so that nearby inputs give unrelated hashes."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(33))
        h = h * np.uint64(0xFF51AFD7ED558CCD)
        h = h ^ (h >> np.uint64(33))
        h = h * np.uint64(0xC4CEB9FE1A85EC53)
        return h ^ (h >> np.uint64(33))


def shingle_hashes(text: str, size: int) -> np.ndarray:
    """uint64 [m] 32-bit hashes of the character ``size``-grams of ``normalise(text)`` (one for a shorter
    text), computed on its code points: a polynomial of the window, finalised, upper 32 bits."""
    cps = np.frombuffer(normalise(text).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(cps) < size:
        cps = np.concatenate([cps, np.zeros(size - len(cps), dtype=np.uint64)])
    win = np.lib.stride_tricks.sliding_window_view(cps, size)
    powers = np.uint64(0x100000001B3) ** np.arange(size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = (win * powers).sum(axis=1, dtype=np.uint64)
    return _mix64(h) >> np.uint64(32)


class BandHasher:
    """Texts -> uint64 band keys [n, bands] (the only per-prompt state of the text-dedup stage).

    MinHash: ``num_perm`` multiply-shift hashes ``((a h + b) mod 2^64) >> 32`` of each 32-bit shingle hash
    ``h`` (64-bit a odd, b drawn from ``seed``; a 2-universal family), the minimum over the text's shingles;
    vectorised over blocks of texts."""

    def __init__(self, num_perm: int, lsh_threshold: float, shingle_size: int, seed: int = 1) -> None:
        self.num_perm, self.shingle_size = num_perm, shingle_size
        self.bands, self.rows = band_shape(num_perm, lsh_threshold)
        rng = np.random.default_rng(seed)
        self.a = rng.integers(0, 2**64 - 1, size=num_perm, dtype=np.uint64, endpoint=True) | np.uint64(1)
        self.b = rng.integers(0, 2**64 - 1, size=num_perm, dtype=np.uint64, endpoint=True)
        self.mult = (rng.integers(1, 2**63 - 1, size=self.rows, dtype=np.int64).astype(np.uint64) << np.uint64(1)) \
            | np.uint64(1)

    def signatures(self, texts: List[str]) -> np.ndarray:
        """uint64 [n, num_perm] MinHash signatures (values < 2^32)."""
        out = np.empty((len(texts), self.num_perm), dtype=np.uint64)
        for s in range(0, len(texts), _SUB):
            hs = [shingle_hashes(t, self.shingle_size) for t in texts[s:s + _SUB]]
            starts = np.cumsum([0] + [len(h) for h in hs[:-1]])
            h = np.concatenate(hs)[:, None]
            with np.errstate(over="ignore"):
                vals = (h * self.a[None, :] + self.b[None, :]) >> np.uint64(32)
            out[s:s + len(hs)] = np.minimum.reduceat(vals, starts, axis=0)
        return out

    def keys(self, texts: List[str]) -> np.ndarray:
        sig = self.signatures(texts)[:, :self.bands * self.rows].reshape(len(texts), self.bands, self.rows)
        with np.errstate(over="ignore"):
            keys = (sig * self.mult).sum(axis=2, dtype=np.uint64)
            keys ^= keys >> np.uint64(29)
        return keys


def candidate_pairs(keys: np.ndarray) -> np.ndarray:
    """int64 [m, 2] pairs (i < j) that share a band key, unique, sorted."""
    n = len(keys)
    found = []
    for band in range(keys.shape[1]):
        col = keys[:, band]
        order = np.argsort(col, kind="stable")
        sk = col[order]
        eq = sk[1:] == sk[:-1]
        if not eq.any():
            continue
        starts = np.r_[0, np.flatnonzero(~eq) + 1]
        run_first = order[starts[np.searchsorted(starts, np.arange(n), side="right") - 1]]
        pos = np.flatnonzero(eq) + 1
        found.append(np.stack([order[pos - 1], order[pos]], axis=1))
        found.append(np.stack([run_first[pos], order[pos]], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(found).astype(np.int64)
    pairs = np.sort(pairs, axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(pairs, axis=0)


def jaccard(a: Set[str], b: Set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def confirm_pairs(pairs: np.ndarray, texts: Iterable[Tuple[int, str]], shingle_size: int,
                  threshold: float) -> np.ndarray:
    """The pairs whose exact shingle Jaccard is >= threshold; ``texts`` yields (index, text) for every index
    that occurs in ``pairs``."""
    sets = {i: shingles(t, shingle_size) for i, t in texts}
    keep = [k for k, (i, j) in enumerate(pairs.tolist()) if jaccard(sets[i], sets[j]) >= threshold]
    return pairs[keep]
