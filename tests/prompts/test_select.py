"""`prompts select` end to end on the bundled prompt set: counts, planted duplicates, topics, determinism."""

import os
import sys

import numpy as np
import pytest
from helpers.prompt_select import make_config, read_jsonl

from megatron_align.prompts.select import select_prompts


def _purity(labels, truth):
    return sum(np.bincount(truth[labels == c]).max() for c in np.unique(labels)) / len(labels)


def test_minilm_end_to_end_counts_and_planted(tmp_path, tiny_path, tiny_records, minilm):
    """The real model path (sentence-transformers when installed): every planted duplicate and junk line goes,
    each original carries its duplicate, the five topics are the five coarse clusters."""
    out = tmp_path / "sel.jsonl"
    s = select_prompts(tiny_path, str(out), make_config(cluster={"levels": [5, 0]}))
    assert (s.read, s.malformed, s.low_quality, s.exact_dups, s.near_dups, s.candidates, s.selected) == \
        (55, 0, 5, 5, 5, 40, 40)
    rows = read_jsonl(out)
    assert [r["planted"] for r in rows] == ["distinct"] * 40
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)  # input order
    planted_of = {r["of"] for r in tiny_records if r["planted"] in ("exact_dup", "paraphrase")}
    assert {r["id"]: r["dup_count"] for r in rows if r["dup_count"]} == {i: 1 for i in planted_of}
    topics = sorted({r["category"] for r in rows})
    truth = np.array([topics.index(r["category"]) for r in rows])
    coarse = np.array([r["cluster"][0] for r in rows])
    assert _purity(coarse, truth) == 1.0 and len(set(coarse)) == 5
    fine = np.array([r["cluster"][1] for r in rows])
    for c in set(coarse):  # fine clusters nest inside their coarse cluster
        assert not set(fine[coarse == c]) & set(fine[coarse != c])
    assert all(0.5 <= r["quality"] <= 1.0 for r in rows)


def test_target_spreads_over_topics_and_is_deterministic(tmp_path, tiny_path, tiny_embeddings):
    cfg = make_config(tiny_embeddings, cluster={"levels": [5, 2]}, selection={"target": 10})
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    sa = select_prompts(tiny_path, str(a), cfg)
    sb = select_prompts(tiny_path, str(b), cfg)
    assert sa.selected == sb.selected == 10
    assert a.read_bytes() == b.read_bytes()
    cats = [r["category"] for r in read_jsonl(a)]
    assert sorted(cats.count(c) for c in set(cats)) == [2, 2, 2, 2, 2]
    assert all(len({r["cluster"][1] for r in read_jsonl(a) if r["cluster"][0] == c}) == 2
               for c in {r["cluster"][0] for r in read_jsonl(a)})  # 2 per topic = one per fine cluster


def test_fraction_and_quotas(tmp_path, tiny_path, tiny_embeddings):
    out = tmp_path / "q.jsonl"
    cfg = make_config(tiny_embeddings, cluster={"levels": [5]}, selection={"target": 12, "quotas": {"python": 6}})
    s = select_prompts(tiny_path, str(out), cfg)
    cats = [r["category"] for r in read_jsonl(out)]
    assert s.selected == 12 and cats.count("python") == 6
    assert sorted(cats.count(c) for c in set(cats) - {"python"}) == [1, 1, 2, 2]  # 6 over 4 topics
    s = select_prompts(tiny_path, str(out), make_config(tiny_embeddings, selection={"fraction": 0.25}))
    assert s.selected == 10 and s.candidates == 40


def test_keep_quality_picks_the_better_duplicate(tmp_path, tiny_embeddings):
    """keep=quality: the representative of an identical pair is the higher-quality line (shouting scores 0.8)."""
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "WHY DO STARS TWINKLE BUT PLANETS USUALLY DO NOT?", "id": 0}\n'
                   '{"prompt": "Why do stars twinkle but planets usually do not?", "id": 1}\n'
                   '{"prompt": "Explain compound interest on savings with a numeric example.", "id": 2}\n')
    emb = tmp_path / "e.npy"
    np.save(emb, np.eye(3, 8, dtype=np.float32))
    for keep, kept in (("first", 0), ("quality", 1)):
        out = tmp_path / f"{keep}.jsonl"
        s = select_prompts(str(src), str(out), make_config(str(emb), dedup={"keep": keep}))
        rows = read_jsonl(out)
        assert s.exact_dups == 1 and [r["id"] for r in rows] == [kept, 2] and rows[0]["dup_count"] == 1


def test_no_faiss_gives_the_same_selection(tmp_path, tiny_path, tiny_embeddings, monkeypatch):
    pytest.importorskip("faiss")
    cfg = make_config(tiny_embeddings, cluster={"levels": [5, 0]}, selection={"target": 15})
    with_faiss, without = tmp_path / "f.jsonl", tmp_path / "n.jsonl"
    select_prompts(tiny_path, str(with_faiss), cfg)
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError: the numpy paths
    from megatron_align.prompts.neighbors import have_faiss

    assert not have_faiss()
    s = select_prompts(tiny_path, str(without), cfg)
    assert s.near_dups == 5 and s.selected == 15
    assert with_faiss.read_bytes() == without.read_bytes()


def test_hashing_embedder_runs_without_a_model(tmp_path, tiny_path):
    """Lexical embedder: the text duplicates still go (MinHash), paraphrases mostly stay (no semantics)."""
    out = tmp_path / "h.jsonl"
    s = select_prompts(tiny_path, str(out), make_config(embedding={"backend": "hashing"}))
    assert (s.low_quality, s.exact_dups) == (5, 5) and s.embedder == "hashing"
    assert s.candidates == 45 - s.near_dups and s.near_dups < 5


def test_quality_function_and_cut(tmp_path, tiny_path, tiny_embeddings):
    fn = tmp_path / "score.py"
    fn.write_text("def score(text, record):\n    return 0.0 if record.get('category') == 'baking' else 1.0\n")
    out = tmp_path / "qf.jsonl"
    s = select_prompts(tiny_path, str(out), make_config(tiny_embeddings, quality={"function": f"{fn}:score",
                                                                                   "mode": "min"}))
    rows = read_jsonl(out)
    assert s.low_quality == 5 + 10 and "baking" not in {r["category"] for r in rows}  # 8 + 2 planted variants
    assert s.exact_dups + s.near_dups == 8 and s.candidates == 32


def test_embedding_row_count_mismatch_is_a_user_error(tmp_path, tiny_path):
    from megatron_align.errors import UserError

    emb = tmp_path / "short.npy"
    np.save(emb, np.ones((10, 4), dtype=np.float32))
    with pytest.raises(UserError, match="10 rows"):
        select_prompts(tiny_path, str(tmp_path / "o.jsonl"), make_config(str(emb)))
    assert not os.path.exists(tmp_path / "o.jsonl")


def test_streamed_chunks_do_not_change_the_result(tmp_path, tiny_path, tiny_embeddings):
    """Chunks of 7 prompts (8 embedding blocks, rows gathered across them) = one chunk; the store grows."""
    from megatron_align.prompts.select import _Store

    base = make_config(tiny_embeddings, cluster={"levels": [5, 2]}, selection={"target": 12})
    small = make_config(tiny_embeddings, cluster={"levels": [5, 2]}, selection={"target": 12},
                        embedding={"embeddings": tiny_embeddings, "chunk_size": 7})
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    select_prompts(tiny_path, str(a), base)
    select_prompts(tiny_path, str(b), small)
    assert a.read_bytes() == b.read_bytes()
    store = _Store(bands=3, cap=2)
    for k in range(5):
        i = store.append()
        store.record[i], store.keys[i] = 10 + k, k
    store.trim()
    assert store.record.tolist() == [10, 11, 12, 13, 14] and store.category.tolist() == [-1] * 5
    assert store.keys[:, 0].tolist() == [0, 1, 2, 3, 4]
