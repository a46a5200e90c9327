"""Helpers of the data tests: write JSONL files, build conversation records."""

import json

import numpy as np


def write_jsonl(path, records):
    """Records are dicts (dumped as JSON) or raw strings (written as they are)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def conv(*turns, system=None, category=None):
    msgs = [{"role": "system", "content": system}] if system is not None else []
    for k, text in enumerate(turns):
        msgs.append({"role": "user" if k % 2 == 0 else "assistant", "content": text})
    rec = {"messages": msgs}
    if category is not None:
        rec["category"] = category
    return rec


def assert_same_samples(a, b):
    """Two datasets hold the same samples: lengths, ids, loss masks, categories, in the same order."""
    assert len(a) == len(b) and a.lengths.tolist() == b.lengths.tolist()
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x.sample_id == y.sample_id == i and x.category == y.category
        np.testing.assert_array_equal(x.input_ids, y.input_ids)
        np.testing.assert_array_equal(x.target_mask, y.target_mask)
