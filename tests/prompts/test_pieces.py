"""The stages of prompt selection against brute-force references: MinHash LSH + Jaccard, cosine pairs (faiss
exact / IVF / numpy), greedy dedup, spherical k-means (faiss vs numpy), water-filling, the quality heuristic,
the embedders (sentence-transformers vs plain transformers), the bundled asset."""

import itertools
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from megatron_align.prompts.dedup import fold_counts, greedy_dedup, priority_order
from megatron_align.prompts.kmeans import canonical, hierarchical
from megatron_align.prompts.neighbors import cosine_pairs
from megatron_align.prompts.quality import heuristic_quality
from megatron_align.prompts.sample import select_with_quotas, spread_select, water_fill

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _planted_vectors(rng, n, d, n_pairs, noise):
    x = rng.normal(size=(n, d))
    src = rng.choice(n, size=n_pairs, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(n), src), size=n_pairs, replace=False)
    x[dst] = x[src] + noise * rng.normal(size=(n_pairs, d))
    return _unit(x)


def _brute_pairs(x, thr):
    s = x.astype(np.float64) @ x.astype(np.float64).T
    i, j = np.nonzero(np.triu(s >= thr, k=1))
    return {(int(a), int(b)) for a, b in zip(i, j)}


def test_minhash_finds_every_pair_above_the_jaccard_threshold():
    from megatron_align.prompts.minhash import BandHasher, candidate_pairs, confirm_pairs, jaccard, shingles

    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(300)]
    texts = [" ".join(rng.choice(vocab) for _ in range(30)) for _ in range(120)]
    for k in range(40):  # edited copies: a few words changed, J from ~0.5 to 1
        words = texts[k].split()
        for _ in range(k % 8):
            words[rng.randrange(len(words))] = rng.choice(vocab)
        texts.append(" ".join(words))
    h = BandHasher(128, 0.6, 5)
    cand = candidate_pairs(h.keys(texts))
    got = {tuple(p) for p in confirm_pairs(cand, enumerate(texts), 5, 0.8).tolist()}
    sets = [shingles(t, 5) for t in texts]
    want = {(i, j) for i, j in itertools.combinations(range(len(texts)), 2) if jaccard(sets[i], sets[j]) >= 0.8}
    assert len(want) >= 15 and got == want
    assert (h.bands, h.rows) == (21, 6)


def test_minhash_estimates_jaccard_like_datasketch():
    """Our signatures' agreement rate estimates the exact Jaccard as well as datasketch's MinHash does."""
    datasketch = pytest.importorskip("datasketch")
    from megatron_align.prompts.minhash import BandHasher, jaccard, shingles

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(200)]
    pairs = []
    for _ in range(300):
        words = [rng.choice(vocab) for _ in range(20)]
        edited = list(words)
        for _ in range(rng.randrange(8)):
            edited[rng.randrange(20)] = rng.choice(vocab)
        pairs.append((" ".join(words), " ".join(edited)))
    texts = [t for p in pairs for t in p]
    exact = np.array([jaccard(shingles(a, 5), shingles(b, 5)) for a, b in pairs])
    sig = BandHasher(128, 0.6, 5).signatures(texts)
    ours = (sig[0::2] == sig[1::2]).mean(axis=1)
    mh = datasketch.MinHash.bulk([[s.encode() for s in shingles(t, 5)] for t in texts], num_perm=128)
    ref = np.array([mh[2 * i].jaccard(mh[2 * i + 1]) for i in range(len(pairs))])
    assert 0.3 < exact.mean() < 0.9 and exact.std() > 0.1
    ref_err, our_err = np.abs(ref - exact).mean(), np.abs(ours - exact).mean()
    assert ref_err < 0.04 and our_err < 1.3 * ref_err
    assert abs((ours - exact).mean()) < 0.01  # unbiased
    assert sig.dtype == np.uint64 and int(sig.max()) < 2**32


def test_cosine_pairs_backends_match_brute_force():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    x = _planted_vectors(rng, 3000, 32, 60, 0.15)
    want = _brute_pairs(x, 0.95)
    assert len(want) >= 50
    for backend, index in (("numpy", "exact"), ("faiss", "exact"), ("faiss", "ivf")):
        got = {tuple(p) for p in cosine_pairs(x.astype(np.float16), 0.95, backend=backend, index=index).tolist()}
        exact16 = _brute_pairs(x.astype(np.float16).astype(np.float32), 0.95)
        assert got == exact16, (backend, index)
    assert exact16 == want


def test_greedy_dedup_never_chains():
    pairs = np.array([[0, 1], [1, 2], [3, 4]])
    rep = greedy_dedup(5, pairs, priority_order(np.ones(5, np.float32), "first"))
    assert rep.tolist() == [-1, 0, -1, -1, 3]  # 2 is similar to 1, not to 0: it stays
    rep = greedy_dedup(5, pairs, priority_order(np.array([0.1, 0.9, 0.2, 0.5, 0.5], np.float32), "quality"))
    assert rep.tolist() == [1, -1, 1, -1, 3]
    counts = np.array([2, 0, 1, 0, 0])
    fold_counts(counts, rep)
    assert counts.tolist() == [0, 5, 0, 1, 0]


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_layered_kmeans_recovers_planted_topics(backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 48))
    sub = centers[:, None, :] + 0.6 * rng.normal(size=(4, 3, 48))  # 3 subtopics per topic
    x = _unit(sub[:, :, None, :] + 0.15 * rng.normal(size=(4, 3, 40, 48))).reshape(-1, 48)
    perm = rng.permutation(len(x))
    x = x[perm]
    topic = np.repeat(np.arange(4), 120)[perm]
    subtopic = np.repeat(np.arange(12), 40)[perm]
    labels = hierarchical(x, [4, 3], seed=5, backend=backend)
    assert (canonical(labels[:, 0]) == canonical(topic)).all()
    assert (canonical(labels[:, 1]) == canonical(subtopic)).all()
    assert (labels == hierarchical(x, [4, 3], seed=5, backend="numpy")).all()


def test_water_fill_and_spread():
    assert water_fill([1, 10, 5, 3], 10).tolist() == [1, 3, 3, 3]
    assert water_fill([4, 4, 4], 7).tolist() == [3, 2, 2]
    assert water_fill([2, 3], 100).tolist() == [2, 3]
    clusters = np.array([[0, 0]] * 6 + [[1, 1]] * 2 + [[1, 2]] * 2)
    quality = np.array([0.1, 0.9, 0.5, 0.8, 0.2, 0.3, 1.0, 0.4, 0.6, 0.7])
    # 5 over coarse sizes [6, 4] -> [3, 2]; coarse 1 -> one per fine cluster; best quality inside
    assert spread_select(np.arange(10), clusters, quality, 5).tolist() == [1, 2, 3, 6, 9]
    cats = np.array([0, 0, 1, 1, 1, 1, 0, 0, 1, 1])
    # category 0 gets 3 (2 of coarse 0, 1 of coarse 1); the 1 left goes to the larger coarse cluster of the rest
    assert select_with_quotas(clusters, quality, 4, cats, {0: 3}).tolist() == [0, 1, 3, 6]


@pytest.mark.parametrize("text, lo, hi", [
    ("How do I reverse a linked list in Python?", 1.0, 1.0),
    ("Summarise this: def f(x): return [i ** 2 for i in x if i % 2]", 0.9, 1.0),
    ("请帮我写一首关于秋天的诗", 1.0, 1.0),
    ("WRITE ME AN ESSAY ABOUT DOGS RIGHT NOW PLEASE", 0.8, 0.8),
    ("asdf asdf asdf asdf asdf asdf", 0.0, 0.0),
    ("!!!!!!!!!!!!!!!!", 0.0, 0.0),
    ("hi", 0.0, 0.0),
    ("x7#k@p%2&q!z^9", 0.0, 0.4),
    ("Tell me a joke \ufffd\ufffd\ufffd\ufffd\ufffd", 0.0, 0.4),
    ("buy buy buy cheap cheap cheap now now now buy buy buy", 0.0, 0.0),
])
def test_quality_heuristic(text, lo, hi):
    assert lo <= heuristic_quality(text) <= hi


def test_transformers_embedder_equals_sentence_transformers(minilm, tiny_records, monkeypatch):
    pytest.importorskip("sentence_transformers")
    from megatron_align.prompts.config import EmbeddingConfig
    from megatron_align.prompts.embed import build_embedder
    from megatron_align.prompts.reader import prompt_text

    texts = [prompt_text(r) for r in tiny_records[:24]]
    st = build_embedder(EmbeddingConfig(backend="sentence-transformers", batch_size=7))
    a, b = st.embed(texts), minilm.embed(texts)
    assert a.shape == (24, 384) and np.abs(a - b).max() < 1e-6
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-6)
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    assert build_embedder(EmbeddingConfig()).name == "transformers"  # auto without sentence-transformers


def test_bundled_prompts_regenerate(tmp_path, tiny_path):
    out = tmp_path / "p.jsonl"
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_tiny_prompts.py"), "--out", str(out)],
                   check=True, capture_output=True)
    assert out.read_bytes() == open(tiny_path, "rb").read()
