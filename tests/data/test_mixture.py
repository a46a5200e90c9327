"""Mixtures: megatron-core's blending over our datasets (in-memory and indexed), ratios within sampling error,
deterministic from data.seed, each sample once per pass, evaluation per dataset name, and the summary's shares."""

import math

import numpy as np
import pytest
from chat_fixtures import conv, write_jsonl

from megatron_align.config.base import ConfigError, load_config
from megatron_align.config.sft import SFTConfig
from megatron_align.data.builder import build_data
from megatron_align.data.config import DataConfig
from megatron_align.data.mixture import BlendedDataset, blend_indices
from megatron_align.data.samples import ChatDataset, DataStats, Sample
from megatron_align.data.sampler import GlobalBatchSampler


class Toy(ChatDataset):
    def __init__(self, n, tag):
        self.lengths = (np.arange(n) % 7 + 2).astype(np.int64)
        self.stats = DataStats(n_samples=n)
        self.tag = tag

    def __getitem__(self, i):
        n = int(self.lengths[i])
        return Sample(i, np.full(n, self.tag * 10_000 + i, dtype=np.int64), np.ones(n, dtype=np.uint8), None)


SIZES, WEIGHTS = [300, 1000, 40], [0.5, 0.3, 0.2]


def test_ratios_follow_the_weights_within_sampling_error():
    mix = BlendedDataset([Toy(n, t) for t, n in enumerate(SIZES)], ["a", "b", "c"], WEIGHTS, seed=5, size=20_000)
    # the map itself: megatron's greedy blend keeps every prefix within one draw of the weights
    for prefix in (1, 17, 999, 20_000):
        counts = np.bincount(mix.dataset_index[:prefix], minlength=3)
        assert np.all(np.abs(counts - np.asarray(WEIGHTS) * prefix) <= 1 + 1e-9), (prefix, counts)
    # what training draws: the shuffled sampler's first 4000 samples, per dataset within 3 sigma of the weight
    sampler = GlobalBatchSampler(len(mix), 100, seed=11)
    drawn = np.concatenate([b for _, b in zip(range(40), sampler)])
    names = [u.dataset for u in mix.get_units(drawn)]
    for name, w in zip("abc", WEIGHTS):
        n = len(drawn)
        assert abs(names.count(name) - w * n) <= 3 * math.sqrt(n * w * (1 - w)), (name, names.count(name))
    # the lengths the DP balancer and packer see are the members' own
    tags = [int(mix[i].input_ids[0]) for i in range(50)]
    assert mix.lengths[:50].tolist() == [len(mix[i]) for i in range(50)]
    assert all(mix.datasets[t // 10_000][t % 10_000].input_ids.shape[0] == mix.lengths[i] for i, t in enumerate(tags))


def test_each_sample_once_per_pass_and_deterministic_from_the_seed():
    sizes = [30, 200]
    d, s = blend_indices(sizes, [0.8, 0.2], 500, seed=1)
    up, down = s[d == 0], s[d == 1]  # 400 draws of 30 samples; 100 draws of 200
    assert len(up) == 400 and len(down) == 100
    for k in range(0, 390, 30):  # pass by pass: all 30 samples, in a fresh order each pass
        assert sorted(up[k:k + 30]) == list(range(30))
    assert not np.array_equal(up[:30], up[30:60])
    assert len(set(down.tolist())) == 100  # a subset, no repeats
    d2, s2 = blend_indices(sizes, [0.8, 0.2], 500, seed=1)
    assert np.array_equal(d, d2) and np.array_equal(s, s2)
    _, s3 = blend_indices(sizes, [0.8, 0.2], 500, seed=2)
    assert not np.array_equal(s, s3)
    de, se = blend_indices([3, 2], None, 0, seed=0)  # evaluation: every sample of every dataset, once
    assert sorted(zip(de.tolist(), se.tolist())) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mix")
    math_recs = [conv(f"{k} + {k}?", f"{2 * k}", category="math") for k in range(12)]
    chat_recs = [conv(f"Hello {k}", "Hi there, friend! " * (1 + k % 3), category="chat") for k in range(5)]
    return d, write_jsonl(d / "math.jsonl", math_recs), write_jsonl(d / "chat.jsonl", chat_recs)


def test_mixture_through_build_data_with_an_indexed_member(files, capsys):
    from megatron_align.cli import main
    from megatron_align.data.indexed import IndexedChatDataset
    from megatron_align.stages.sft import data_summary

    d, math_path, chat_path = files
    assert main(["preprocess", "--input", chat_path, "--output-prefix", str(d / "chat_idx"), "--family", "llama"]) == 0
    capsys.readouterr()
    path = [{"path": math_path, "weight": 3}, {"path": str(d / "chat_idx"), "weight": 1, "name": "chat"}]
    cfg = DataConfig(path=path, eval_path=[math_path, chat_path], seed=7)
    data = build_data(cfg, family="llama")
    mix = data.train
    assert isinstance(mix.datasets[1], IndexedChatDataset) and mix.names == ["math", "chat"]
    assert len(mix) == 17 and mix.draws().tolist() == [13, 4]  # 17 draws split 3:1 (megatron's rounding)
    units = mix.get_units(range(len(mix)))
    assert {u.dataset for u in units} == {"math", "chat"}
    assert all((u.category == "math") == (u.dataset == "math") for u in units)
    # trained tokens per dataset: the loss-mask sums of exactly the samples drawn
    want = [sum(int(u.docs[0].target_mask[1:].sum()) for u in units if u.dataset == n) for n in ("math", "chat")]
    assert mix.trained_tokens().tolist() == want
    line = data_summary(mix)
    share = want[0] / sum(want)
    assert f"math: weight 0.750, 12 samples, 13 drawn (76.5% of samples), {want[0]} trained tokens ({share:.1%})" \
        in line and "| chat: weight 0.250, 5 samples, 4 drawn" in line
    ev = data.eval  # evaluation: every sample of both files once, named by file stem
    assert ev.names == ["math", "chat"] and len(ev) == 17 and ev.draws().tolist() == [12, 5]
    assert sorted(zip(ev.dataset_index.tolist(), ev.sample_index.tolist())) == \
        [(0, k) for k in range(12)] + [(1, k) for k in range(5)]


def test_mixture_config_errors_name_the_entry(files):
    _, math_path, chat_path = files
    for path, msg in [([{"path": math_path}, {"path": math_path}], r"data.path\[1\].name: dataset name 'math' is "
                                                                   r"used twice"),
                      ([{"path": math_path, "weight": "x"}], r"data.path\[0\].weight: must be a number > 0"),
                      ([{"file": math_path}], r"data.path\[0\].file: unknown key")]:
        with pytest.raises(ConfigError, match=msg):
            load_config(SFTConfig, None, [f"data.path={path}"])
    with pytest.raises(ConfigError, match=r"data.eval_path\[0\].weight: evaluation sets are evaluated whole"):
        load_config(SFTConfig, None, [f"data.eval_path=[{{path: {math_path}, weight: 1}}]"])
    cfg = load_config(SFTConfig, None, [f"data.path=[{math_path}, {{path: {chat_path}, weight: 3, name: talk}}]"])
    assert [(s.name, s.weight) for s in cfg.data.sources()] == [("math", 0.25), ("talk", 0.75)]


def test_preference_stages_refuse_a_mixture_in_one_line(files):
    from megatron_align.stages.rm import open_pairs

    _, math_path, chat_path = files
    with pytest.raises(ConfigError, match=r"a mixture of several datasets is read by sft only; the preference stage"):
        open_pairs([math_path, chat_path], DataConfig(), None)


def test_resume_with_another_mixture_is_refused():
    from megatron_align.stages.sft import SFTStage

    def stage(weights, seed=5):
        s = SFTStage(None)
        s._mixture = BlendedDataset([Toy(n, t) for t, n in enumerate(SIZES)], ["a", "b", "c"], weights, seed=seed)
        return s

    import json

    saved = json.loads(json.dumps(stage(WEIGHTS).state_dict()))  # as trainer_state.json holds it
    stage(WEIGHTS).load_state_dict(saved)
    for other in (stage([0.4, 0.4, 0.2]), stage(WEIGHTS, seed=6)):
        with pytest.raises(ConfigError, match="resuming would change which samples each step draws"):
            other.load_state_dict(saved)
