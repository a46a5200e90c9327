import collections
import filecmp
import json
import os
import subprocess
import sys

from megatron_align.data.builder import build_data, rank_micro_batches
from megatron_align.data.config import TINY_ASSETS_DIR, DataConfig
from megatron_align.data.sampler import GlobalBatchSampler

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = ["tokenizer.json", "tokenizer_config.json", "chat_train.jsonl", "chat_eval.jsonl", "pairs_train.jsonl",
         "pairs_eval.jsonl"]


def test_bundled_assets_are_what_the_generator_writes(tmp_path):
    total = sum(os.path.getsize(os.path.join(TINY_ASSETS_DIR, f)) for f in FILES)
    assert total < 2_000_000
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_tiny_assets.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    for f in FILES:
        assert filecmp.cmp(tmp_path / f, os.path.join(TINY_ASSETS_DIR, f), shallow=False), f


def test_bundled_chat_data_shape(tok):
    assert 1000 <= tok.vocab_size <= 2000
    recs = [json.loads(line) for line in open(os.path.join(TINY_ASSETS_DIR, "chat_train.jsonl"))]
    assert len(recs) == 2000
    cats = collections.Counter(r["category"] for r in recs)
    assert {"math", "code", "chat", "reverse", "count"} <= set(cats)
    n_sys = sum(r["messages"][0]["role"] == "system" for r in recs)
    n_multi = sum(sum(m["role"] == "assistant" for m in r["messages"]) > 1 for r in recs)
    assert 400 < n_sys < 800 and 300 < n_multi < 1000


def test_default_config_end_to_end_step(tok):
    from megatron_align.data.config import DEFAULT_EVAL_PATH

    cfg = DataConfig(seq_length=256, eval_path=DEFAULT_EVAL_PATH)  # eval is never implied
    data = build_data(cfg, family="qwen2")
    assert data.template.name == "chatml" and len(data.train) == 2000 and len(data.eval) == 200
    lengths = data.train.lengths
    assert lengths.max() > 5 * np.median(lengths)  # long tail
    sampler = GlobalBatchSampler(len(data.train), 32, cfg.seed, cfg.shuffle, epochs=1)
    ids = next(iter(sampler))
    per_rank = [rank_micro_batches(data.train, ids, r, 2, cfg, 2, tok.pad_id) for r in range(2)]
    got = sorted(s for mbs in per_rank for mb in mbs for s in mb.sample_ids)
    assert got == sorted(ids)
    util = sum(mb.num_real_tokens for mbs in per_rank for mb in mbs) / sum(
        mb.tokens.numel() for mbs in per_rank for mb in mbs)
    assert util > 0.5


import numpy as np  # noqa: E402


def test_packing_stats_of_the_bundled_data():
    from megatron_align.data.builder import micro_batch_utilization, packing_stats

    cfg = DataConfig(seq_length=512, eval_path=None)
    data = build_data(cfg, family="llama")
    st = packing_stats(data.train, 512)
    assert st.n_samples == 2000 and st.n_skipped_bad == 0 and st.token_utilization >= 0.98
    assert st.n_bins <= int(np.ceil(data.train.lengths.sum() / 512)) + 1 and data.train.stats.n_bins is None
    ids = list(range(64))
    mbs = rank_micro_batches(data.train, ids, 0, 1, cfg, 1)
    assert micro_batch_utilization(mbs) == sum(data.train.lengths[ids]) / (len(mbs) * 512)
