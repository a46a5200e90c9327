"""Preference pairs: formats, masks on the response only, bad input (file:line or counts), over-long pairs, and
that a pair is one unit in one row of one micro-batch."""

import json

import numpy as np
import pytest

from megatron_align.data.batch import make_micro_batches
from megatron_align.data.errors import DataError
from megatron_align.data.preference import PreferenceDataset
from megatron_align.data.templates import build_template


def _write(tmp_path, recs, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs))
    return str(path)


@pytest.fixture
def tmpl(tok):
    return build_template("llama3", tok)


def _response_text(tok, sample):
    return tok.decode(sample.input_ids[sample.target_mask.astype(bool)].tolist())


def test_formats_give_the_same_pair_and_mask_only_the_response(tmp_path, tok, tmpl):
    msgs = {"prompt": [{"role": "user", "content": "What is 2 + 2?"}],
            "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}
    text = {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}
    implicit = {"chosen": msgs["prompt"] + msgs["chosen"], "rejected": msgs["prompt"] + msgs["rejected"]}
    ds = PreferenceDataset(_write(tmp_path, [msgs, text, implicit]), tmpl)
    units = ds.get_units(range(3))
    for u in units[1:]:
        for a, b in zip(units[0].docs, u.docs):
            assert np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.target_mask, b.target_mask)
    c, r = units[0].docs
    assert (c.role, r.role) == (0, 1) and units[0].dataset == "p"
    assert _response_text(tok, c) == "4<|eot_id|>" and _response_text(tok, r) == "5<|eot_id|>"
    prompt_len = int(np.argmax(c.target_mask))
    assert np.array_equal(c.input_ids[:prompt_len], r.input_ids[:prompt_len])


def test_pretokenized_pairs_and_scores(tmp_path, tmpl):
    rec = {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10], "chosen_score": 7, "dataset": "d",
           "category": "c"}
    (u,) = PreferenceDataset(_write(tmp_path, [rec]), tmpl).get_units([0])
    c, r = u.docs
    assert c.input_ids.tolist() == [5, 6, 7, 8, 9] and c.target_mask.tolist() == [0, 0, 0, 1, 1]
    assert r.input_ids.tolist() == [5, 6, 7, 10] and r.target_mask.tolist() == [0, 0, 0, 1]
    assert c.values["score"] == 7.0 and np.isnan(r.values["score"]) and (u.dataset, u.category) == ("d", "c")


@pytest.mark.parametrize("line,reason", [
    ({"prompt": "q", "chosen": "a"}, "p.jsonl:2: missing 'rejected'"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "chosen_score": "high"}, "'chosen_score' must be a finite number"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "'chosen' must hold only assistant"),
    ({"prompt_ids": [1], "chosen_ids": [2]}, "missing 'rejected_ids'"),
    ({"prompt_ids": [1], "chosen_ids": [2.5], "rejected_ids": [3]}, "'chosen_ids' must be a list of non-negative"),
    ("{not json", "malformed JSON"),
])
def test_bad_lines_name_file_and_line(tmp_path, tmpl, line, reason):
    path = _write(tmp_path, [{"prompt": "q", "chosen": "a", "rejected": "b"}, line])
    with pytest.raises(DataError, match=reason):
        PreferenceDataset(path, tmpl)
    ds = PreferenceDataset(path, tmpl, on_bad_line="skip")
    assert len(ds) == 1 and ds.stats.n_skipped_bad == 1


def test_identical_responses_are_counted_and_skipped(tmp_path, tmpl):
    ds = PreferenceDataset(_write(tmp_path, [{"prompt": "q", "chosen": "same", "rejected": "same"},
                                             {"prompt": "q", "chosen": "a", "rejected": "b"}]), tmpl)
    assert len(ds) == 1 and ds.stats.n_identical == 1


def test_overlong_pairs_truncate_the_responses_or_drop(tmp_path, tmpl):
    rec = {"prompt_ids": [1, 2, 3], "chosen_ids": list(range(10, 30)), "rejected_ids": list(range(40, 46))}
    short = {"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}
    path = _write(tmp_path, [rec, short])
    ds = PreferenceDataset(path, tmpl, seq_length=20, overlong="truncate")
    c, r = ds.get_units([0])[0].docs
    assert len(c) + len(r) == 20 and ds.stats.n_truncated == 1
    assert c.input_ids[:3].tolist() == [1, 2, 3] and r.input_ids.tolist() == [1, 2, 3] + list(range(40, 46))
    dropped = PreferenceDataset(path, tmpl, seq_length=20, overlong="drop")
    assert len(dropped) == 1 and dropped.stats.n_dropped == 1
    tiny = PreferenceDataset(path, tmpl, seq_length=6, overlong="truncate")  # prompt leaves no room: dropped
    assert tiny.stats.n_dropped == 1 and len(tiny) == 1


def test_a_pair_is_never_split_across_rows_or_micro_batches(tmp_path, tmpl):
    rng = np.random.default_rng(0)
    recs = [{"prompt_ids": rng.integers(1, 100, rng.integers(2, 9)).tolist(),
             "chosen_ids": rng.integers(1, 100, rng.integers(1, 12)).tolist(),
             "rejected_ids": rng.integers(100, 200, rng.integers(1, 12)).tolist()} for _ in range(40)]
    ds = PreferenceDataset(_write(tmp_path, recs), tmpl)
    for packing in (True, False):
        mbs = make_micro_batches(ds.get_units(range(len(ds))), 48, 2, packing)
        seen = []
        for mb in mbs:
            for k, uid in enumerate(mb.unit_ids):
                docs = [i for i, u in enumerate(mb.doc_units) if u == k]
                assert sorted(mb.doc_roles[i] for i in docs) == [0, 1]
                rows = {mb.doc_spans[i][0] // 48 for i in docs}
                assert len(rows) == 1  # both documents in one row
                for i in docs:  # each document is its own attention segment
                    a, n = mb.doc_spans[i]
                    flat = mb.sample_index.reshape(-1)[a:a + n]
                    assert (flat == i).all() and mb.position_ids.reshape(-1)[a] == 0
                seen.append(uid)
        assert sorted(seen) == list(range(len(ds)))


def test_rm_stage_data_scores_alpha_and_warning(tmp_path):
    from megatron_align.config.base import load_config
    from megatron_align.config.rm import RMConfig
    from megatron_align.stages.rm import RMStage

    recs = [{"prompt": "q", "chosen": "a", "rejected": "b", "dataset": "r", "chosen_score": 10, "rejected_score": 1},
            {"prompt": "q", "chosen": "c", "rejected": "d", "dataset": "r", "chosen_score": 6, "rejected_score": 4},
            {"prompt": "q", "chosen": "e", "rejected": "f", "dataset": "plain"}]
    path = _write(tmp_path, recs)
    cfg = load_config(RMConfig, None, [f"data.path={path}", "data.eval_path=null", "rm.mse_alpha.r=0.5",
                                       "rm.mse_alpha.ghost=1", "rm.score_normalization=zscore"])
    stage = RMStage(cfg)
    from megatron_align.models.families import resolve_arch

    data = stage.build_data(resolve_arch("tiny-llama", None, None, None))
    units = data.train.get_units(range(3))
    scores = [d.values["score"] for u in units[:2] for d in u.docs]
    assert np.isclose(np.mean(scores), 0.0) and np.isclose(np.std(scores), 1.0)
    assert [d.values["alpha"] for d in units[0].docs] == [0.5, 0.5] and units[2].docs[0].values["alpha"] == 0.0
    assert any("'ghost'" in w for w in stage.warnings) and not any("'r'" in w for w in stage.warnings)


def test_rm_config_errors():
    from megatron_align.config.base import ConfigError, load_config
    from megatron_align.config.rm import RMConfig

    with pytest.raises(ConfigError, match="model.head"):
        load_config(RMConfig, None, ["model.head=lm"])
    with pytest.raises(ConfigError, match="rm.score_range"):
        load_config(RMConfig, None, ["rm.score_normalization=range"])
    with pytest.raises(ConfigError, match="rm.mse_alpha.x"):
        load_config(RMConfig, None, ["rm.mse_alpha.x=-1"])


def test_unpaired_kto_examples_and_mismatched_documents(tmp_path, tok, tmpl):
    from megatron_align.data.preference import UnpairedDataset

    recs = [{"prompt": "Name a fruit.", "completion": "apple", "label": True},
            {"prompt_ids": [5, 6], "completion_ids": [7, 8, 9], "label": False},
            {"prompt": [{"role": "user", "content": "Name a color."}],
             "completion": [{"role": "assistant", "content": "tiger"}], "label": False, "category": "color"}]
    ds = UnpairedDataset(_write(tmp_path, recs), tmpl)
    d0, d1, d2 = (u.docs[0] for u in ds.get_units(range(3)))
    assert _response_text(tok, d0) == "apple<|eot_id|>" and d0.values["label"] == 1.0 and d2.values["label"] == 0.0
    assert d1.input_ids.tolist() == [5, 6, 7, 8, 9] and d1.target_mask.tolist() == [0, 0, 1, 1, 1]
    kl = ds.mismatched([0, 1, 2])  # example k's prompt + example k-1's completion (TRL's rotation)
    assert kl[1].input_ids.tolist() == [5, 6] + d0.input_ids[int(d0.values["prompt_len"]):].tolist()
    assert _response_text(tok, kl[0]) == "tiger<|eot_id|>" and kl[0].input_ids[0] == d0.input_ids[0]
    bad = _write(tmp_path, [{"prompt": "q", "completion": "a", "label": "yes"}], "bad.jsonl")
    with pytest.raises(DataError, match="bad.jsonl:1: 'label' must be true or false"):
        UnpairedDataset(bad, tmpl)
