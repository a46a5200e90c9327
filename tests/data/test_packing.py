import numpy as np
import pytest
import torch
from chat_fixtures import conv, write_jsonl

from megatron_align.data.batch import (attention_mask, empty_micro_batch, make_micro_batches, pad_micro_batches,
                                       segment_ids)
from megatron_align.data.jsonl import JsonlChatDataset
from megatron_align.data.packing import IGNORE_INDEX, build_row, pack_lengths, token_utilization
from megatron_align.data.samples import Sample
from megatron_align.data.templates import build_template


def make_sample(sid, n, rng, category=None):
    ids = rng.integers(13, 1000, size=n)
    mask = (rng.random(n) < 0.5).astype(np.uint8)
    return Sample(sid, ids.astype(np.int64), mask, category)


def lognormal_lengths(n, seq, seed=0, median=300):
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(median), 1.0, size=n).astype(int), 2, seq)


def test_best_fit_decreasing_utilisation_and_placement():
    seq = 4096
    lens = lognormal_lengths(5000, seq)
    bins = pack_lengths(lens, seq)
    placed = sorted(i for b in bins for i in b)
    assert placed == list(range(len(lens)))  # each sample exactly once
    assert max(sum(lens[i] for i in b) for b in bins) <= seq
    util = token_utilization(lens, len(bins), seq)
    assert util >= 0.95
    assert len(bins) == int(np.ceil(lens.sum() / seq)) or util >= 0.99  # near the lower bound
    assert pack_lengths(lens, seq) == bins  # deterministic
    with pytest.raises(ValueError, match="exceeds the bin capacity"):
        pack_lengths([5, 9], 8)


def test_best_fit_prefers_the_fullest_bin():
    # 6 -> bin0 (free 4), 5 -> bin1 (free 5), 4 -> bin0 (best fit: free 4, not 5), 3 -> bin1
    assert pack_lengths([6, 5, 4, 3], 10) == [[0, 2], [1, 3]]


def test_row_labels_positions_cu_seqlens():
    a = Sample(0, np.array([1, 2, 3, 4]), np.array([0, 0, 1, 1], dtype=np.uint8))
    b = Sample(1, np.array([5, 6, 7]), np.array([0, 1, 1], dtype=np.uint8))
    row = build_row([a, b], 10, pad_id=0)
    assert row.tokens.tolist() == [1, 2, 3, 4, 5, 6, 7, 0, 0, 0]
    assert row.labels.tolist() == [2, 3, 4, IGNORE_INDEX, 6, 7, IGNORE_INDEX] + [IGNORE_INDEX] * 3
    assert row.loss_mask.tolist() == [0, 1, 1, 0, 1, 1, 0, 0, 0, 0]
    assert row.position_ids.tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2]
    assert row.cu_seqlens.tolist() == [0, 4, 7] and row.cu_seqlens.dtype == np.int32
    assert row.sample_index.tolist() == [0, 0, 0, 0, 1, 1, 1, -1, -1, -1]


def triples(mbs):
    """sample id -> multiset of (token, label, mask) over its positions."""
    out = {}
    for mb in mbs:
        for r in range(mb.tokens.shape[0]):
            for k in range(mb.tokens.shape[1]):
                si = int(mb.sample_index[r, k])
                if si >= 0:
                    out.setdefault(mb.sample_ids[si], []).append(
                        (int(mb.tokens[r, k]), int(mb.labels[r, k]), float(mb.loss_mask[r, k])))
    return {k: sorted(v) for k, v in out.items()}


def test_packed_and_unpacked_micro_batches_hold_the_same_triples():
    rng = np.random.default_rng(1)
    samples = [make_sample(100 + i, int(n), rng, category=f"c{i % 3}") for i, n in
               enumerate(lognormal_lengths(40, 64, seed=3, median=12))]
    packed = make_micro_batches(samples, 64, 2, packing=True)
    unpacked = make_micro_batches(samples, 64, 2, packing=False)
    assert len(unpacked) == 20 and len(packed) < len(unpacked)
    assert triples(packed) == triples(unpacked)
    assert sorted(sid for mb in packed for sid in mb.sample_ids) == [s.sample_id for s in samples]
    for mbs in (packed, unpacked):
        assert sum(mb.num_loss_tokens for mb in mbs) == sum(int(s.target_mask[1:].sum()) for s in samples)
        assert sum(mb.num_real_tokens for mb in mbs) == sum(len(s) for s in samples)
    for mb in packed + unpacked:
        assert mb.tokens.shape == mb.labels.shape == mb.loss_mask.shape == mb.position_ids.shape == (2, 64)
        assert mb.loss_mask.dtype == torch.float32 and mb.cu_seqlens.dtype == torch.int32
        cu = mb.cu_seqlens.tolist()
        assert cu[0] == 0 and cu[-1] == 2 * 64 and all(b > a for a, b in zip(cu, cu[1:]))
        assert mb.max_seqlen == max(b - a for a, b in zip(cu, cu[1:]))
        starts = set(cu[:-1])
        flat_pos = mb.position_ids.reshape(-1).tolist()
        assert {k for k, p in enumerate(flat_pos) if p == 0} == starts  # positions restart per segment
        for k, sid in enumerate(mb.sample_ids):  # every sample is exactly one segment of its own length
            n = int((mb.sample_index == k).sum())
            assert n == len(next(s for s in samples if s.sample_id == sid))
        assert mb.categories == [f"c{(sid - 100) % 3}" for sid in mb.sample_ids]
    assert not unpacked[0].packed and len(unpacked[0].sample_ids) == 2


def test_attention_mask_isolates_segments():
    a = Sample(0, np.array([1, 2, 3]), np.array([0, 1, 1], dtype=np.uint8))
    b = Sample(1, np.array([4, 5]), np.array([0, 1], dtype=np.uint8))
    mb = make_micro_batches([a, b], 6, 1, packing=True)[0]
    assert segment_ids(mb.position_ids).tolist() == [[0, 0, 0, 1, 1, 2]]
    m = attention_mask(mb.position_ids)[0, 0]  # True = masked
    allowed = (~m).int().tolist()
    assert allowed == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                       [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]]
    assert mb.cu_seqlens.tolist() == [0, 3, 5, 6]


def test_pad_micro_batches_to_common_count():
    rng = np.random.default_rng(0)
    mbs = make_micro_batches([make_sample(0, 10, rng)], 16, 2, packing=True)
    padded = pad_micro_batches(mbs, 3, 16, 2)
    assert len(padded) == 3 and padded[0] is mbs[0]
    for e in padded[1:]:
        assert e.is_padding and e.num_loss_tokens == 0 and float(e.loss_mask.sum()) == 0
        assert e.tokens.shape == (2, 16) and e.cu_seqlens.tolist() == [0, 16, 32]
        assert (e.labels == IGNORE_INDEX).all()
    assert empty_micro_batch(8, 1).sample_ids == []
    with pytest.raises(ValueError):
        pad_micro_batches(padded, 2, 16, 2)
    with pytest.raises(ValueError, match="exceed seq_length"):
        make_micro_batches([make_sample(7, 20, rng)], 16, 1)


def test_overlong_truncate_and_drop_counts(tmp_path, tok):
    long_answer = " ".join(["apple"] * 60)
    records = [conv("Hi", "Hello!"), conv("Repeat", long_answer), conv(long_answer, "ok"), conv("Hi", "Yo")]
    path = write_jsonl(tmp_path / "t.jsonl", records)
    tmpl = build_template("llama3", tok)
    lens = [len(tmpl.encode([(m["role"], m["content"]) for m in r["messages"]]).ids) for r in records]
    seq = 40
    assert lens[0] <= seq and lens[3] <= seq and lens[1] > seq and lens[2] > seq
    tr = JsonlChatDataset(path, tmpl, seq, "truncate")
    # record 2's assistant turn starts after position 40: truncation leaves no loss token -> dropped
    assert (tr.stats.n_samples, tr.stats.n_truncated, tr.stats.n_dropped) == (3, 1, 1)
    assert tr.lengths.tolist() == [lens[0], seq, lens[3]]
    assert tr[1].target_mask[1:].sum() > 0
    dr = JsonlChatDataset(path, tmpl, seq, "drop")
    assert (dr.stats.n_samples, dr.stats.n_truncated, dr.stats.n_dropped) == (2, 0, 2)
    assert [s.sample_id for s in dr.get_samples(range(len(dr)))] == [0, 1]


def test_loss_is_packing_invariant_under_the_segment_mask(tok):
    """A one-layer causal attention model fed the micro-batch tensors: same loss sum packed or unpacked."""
    from megatron_align.data.config import DataConfig
    from megatron_align.data.builder import build_data

    data = build_data(DataConfig(seq_length=160, eval_path=None), family="llama")
    samples = data.train.get_samples(range(24))
    torch.manual_seed(0)
    d, v = 16, data.tokenizer.vocab_size
    emb, pos, wq, wk, wv, out = (torch.randn(v, d), torch.randn(200, d), torch.randn(d, d), torch.randn(d, d),
                                 torch.randn(d, d), torch.randn(d, v))

    def loss_sum(mb):
        x = emb[mb.tokens] + pos[mb.position_ids]
        scores = (x @ wq) @ (x @ wk).transpose(1, 2) / d ** 0.5
        scores = scores.masked_fill(attention_mask(mb.position_ids)[:, 0], float("-inf"))
        h = torch.softmax(scores, -1) @ (x @ wv)
        ce = torch.nn.functional.cross_entropy((h @ out).reshape(-1, v), mb.labels.reshape(-1),
                                               ignore_index=IGNORE_INDEX, reduction="none")
        return (ce * mb.loss_mask.reshape(-1)).double().sum()

    packed = make_micro_batches(samples, 160, 2, packing=True, pad_id=tok.pad_id)
    unpacked = make_micro_batches(samples, 160, 3, packing=False, pad_id=tok.pad_id)
    assert len(packed) < len(unpacked)
    lp, lu = sum(map(loss_sum, packed)), sum(map(loss_sum, unpacked))
    n = sum(mb.num_loss_tokens for mb in packed)
    assert n == sum(mb.num_loss_tokens for mb in unpacked) > 100
    torch.testing.assert_close(lp / n, lu / n, rtol=1e-5, atol=0)
    assert torch.isfinite(lp)
