"""`megatron-align prompts select` as a user runs it: summary line, file:line errors with exit 2, skip + count."""

import json

import numpy as np
import pytest

from megatron_align.cli import main

GOOD = [
    {"prompt": "How do I read a large CSV file in Python without running out of memory?"},
    {"messages": [{"role": "user", "content": "Explain how to bake crusty French baguettes at home."}]},
    {"text": "What causes the northern lights?", "category": "space"},
    {"prompt": "Plan a three day itinerary for Rome in autumn."},
]


def _write(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return str(path)


@pytest.mark.parametrize("bad, reason", [
    ('{"prompt": "unterminated', "malformed JSON"),
    ('{"other": 1}', "no prompt: expected one of 'prompt', 'messages', 'text'"),
    ('{"messages": [{"role": "assistant", "content": "x"}]}', "'messages' has no user turn"),
    ('{"prompt": "   "}', "'prompt' is empty"),
    ('[1, 2]', "record must be a JSON object"),
])
def test_malformed_line_is_file_line_and_exit_2(tmp_path, capsys, bad, reason):
    src = _write(tmp_path / "in.jsonl", GOOD[:2] + [bad] + GOOD[2:])
    rc = main(["prompts", "select", "--input", src, "--out", str(tmp_path / "o.jsonl"), "--no-progress",
               "embedding.backend=hashing"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"megatron-align prompts: error: {src}:3: ") and reason in err[0]
    assert not (tmp_path / "o.jsonl").exists()


def test_skip_counts_bad_lines_and_keeps_embedding_rows_aligned(tmp_path, capsys):
    """With on_bad_line=skip a bad line is counted; row i of --embeddings stays the i-th non-blank line."""
    src = _write(tmp_path / "in.jsonl", [GOOD[0], "not json", "", GOOD[1], GOOD[2], GOOD[3]])
    emb = np.zeros((5, 8), dtype=np.float32)
    emb[[0, 2, 3, 4], [0, 1, 2, 1]] = 1.0  # line 4 (GOOD[1]) and line 6 (GOOD[3]) share a direction
    np.save(tmp_path / "e.npy", emb)
    out = tmp_path / "o.jsonl"
    rc = main(["prompts", "select", "--input", src, "--out", str(out), "--embeddings", str(tmp_path / "e.npy"),
               "--on-bad-line", "skip", "--no-progress", "--min-quality", "0.4"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert {k: summary[k] for k in ("read", "malformed", "low_quality", "exact_dups", "near_dups", "selected")} == \
        {"read": 5, "malformed": 1, "low_quality": 0, "exact_dups": 0, "near_dups": 1, "selected": 3}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("category") for r in rows] == [None, None, "space"]
    assert rows[1]["messages"][0]["content"].startswith("Explain how to bake") and rows[1]["dup_count"] == 1
    assert set(rows[0]) == {"prompt", "cluster", "quality", "dup_count"}


def test_config_errors_are_one_line(tmp_path, capsys):
    src = _write(tmp_path / "in.jsonl", GOOD)
    rc = main(["prompts", "select", "--input", src, "--out", str(tmp_path / "o.jsonl"),
               "dedup.lsh_threshold=0.9", "dedup.jaccard_threshold=0.8"])
    assert rc == 2 and "dedup.lsh_threshold (0.9) must be <= dedup.jaccard_threshold" in capsys.readouterr().err
    rc = main(["prompts", "select", "--input", src, "--out", str(tmp_path / "o.jsonl"), "--target", "3",
               "--fraction", "0.5"])
    assert rc == 2 and "exclusive" in capsys.readouterr().err
    rc = main(["prompts", "select", "--input", src, "--out", str(tmp_path / "o.jsonl"), "--quality-fn", "nope.py:f"])
    assert rc == 2 and "nope.py does not exist" in capsys.readouterr().err
    rc = main(["prompts", "select", "--input", src, "--out", str(tmp_path / "o.jsonl"),
               "--embedding-model", str(tmp_path)])
    assert rc == 2 and "no config.json" in capsys.readouterr().err


def test_print_config_lists_every_section(capsys):
    assert main(["prompts", "select", "--input", "x", "--out", "y", "--print-config", "--target", "7"]) == 0
    text = capsys.readouterr().out
    for key in ("embedding:", "dedup:", "cluster:", "quality:", "selection:", "target: 7"):
        assert key in text


def test_yaml_config_and_flags(tmp_path, capsys):
    """Keys from --config, overridden by dotted overrides, overridden by flags; 'prompt' as chat messages."""
    lines = GOOD + [{"prompt": [{"role": "system", "content": "s"},
                                {"role": "user", "content": "Explain Python decorators with a short example."}]}]
    src = _write(tmp_path / "in.jsonl", lines)
    cfg = tmp_path / "sel.yaml"
    cfg.write_text("embedding:\n  backend: hashing\ncluster:\n  levels: [2]\nselection:\n  target: 1\n")
    out = tmp_path / "o.jsonl"
    rc = main(["prompts", "select", "--input", src, "--out", str(out), "--config", str(cfg), "--no-progress",
               "selection.target=4", "--target", "3"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["selected"] == 3 and summary["clusters"] == [2] and summary["embedder"] == "hashing"
    assert len(out.read_text().splitlines()) == 3


def test_benchmark_script_runs(tmp_path):
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "bench", "prompt_select.py")
    res = subprocess.run([sys.executable, script, "--sizes", "600", "--no-embedders", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    row = json.loads(res.stdout.strip().splitlines()[-1])
    s = row["summary"]
    assert row["n"] == 600 and row["prompts_per_s"] > 0 and row["peak_rss_over_imports_mb"] >= 0
    assert s["read"] == s["low_quality"] + s["exact_dups"] + s["near_dups"] + s["candidates"]
    assert s["exact_dups"] > 20 and s["near_dups"] > 5 and s["selected"] == round(0.5 * s["candidates"])
