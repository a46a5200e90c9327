"""`megatron-align plan`: text and --json output, and errors that name what was wrong."""

import json

from megatron_align.cli import main


def test_json_output_parses(capsys):
    rc = main(["plan", "--model", "llama3-8b", "--seq-length", "8192", "--gpu-memory", "80", "--max-gpus", "64",
               "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert set(out["min_gpus"]) == {"none", "selective", "full", "kblock"}
    assert out["min_gpus"]["kblock"] <= out["min_gpus"]["full"] <= out["min_gpus"]["none"]
    best = out["best"]["kblock"]
    assert best["memory_gib"]["total"] <= out["assumptions"]["budget_gib"]
    assert out["kblock"]["detailed_best_k"] >= 1 and out["feasible"]


def test_text_output_names_the_three_cases(capsys):
    rc = main(["plan", "--model", "llama3-70b", "--seq-length", "16384", "--gpus-per-node", "8",
               "--gpu-memory", "80", "--max-gpus", "64", "--top", "3"])
    text = capsys.readouterr().out
    assert rc == 0
    for needle in ("no recompute", "per-layer (full) recompute", "k-block recompute", "k* = sqrt(L/n)",
                   "10% reserve", "feasible configurations"):
        assert needle in text


def test_hf_config(tmp_path, capsys):
    from megatron_align.models.families import arch_to_hf_config, preset

    (tmp_path / "config.json").write_text(json.dumps(arch_to_hf_config(preset("qwen2-7b"))))
    rc = main(["plan", "--hf-config", str(tmp_path / "config.json"), "--seq-length", "4096", "--max-gpus", "16",
               "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["model"]["num_layers"] == 28


def test_unknown_preset_is_named(capsys):
    rc = main(["plan", "--model", "llama9-1t", "--seq-length", "4096"])
    err = capsys.readouterr().err
    assert rc == 2 and "llama9-1t" in err and "llama3-70b" in err


def test_nothing_fits_is_reported(capsys):
    rc = main(["plan", "--model", "llama3-70b", "--seq-length", "16384", "--max-gpus", "8", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["min_gpus"]["kblock"] is None and out["best"]["kblock"] is None


def test_measure_errors_are_one_line(capsys):
    rc = main(["plan", "--model", "llama3-8b", "--seq-length", "4096", "--measure", "--attention", "flex"])
    assert rc == 2 and "sdpa" in capsys.readouterr().err
    rc = main(["plan", "--model", "llama3-8b", "--seq-length", "4096", "--measure", "--loss-backend", "te"])
    assert rc == 2 and "fused, megatron" in capsys.readouterr().err
    rc = main(["plan", "--model", "llama3-8b", "--seq-length", "4096", "--measure", "--recompute", "some"])
    assert rc == 2 and "'some'" in capsys.readouterr().err


def test_measure_prints_predicted_vs_measured(tmp_path):
    """`plan --measure` in its own process (it initialises megatron): a table per mode, errors small."""
    import os
    import re
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    out = subprocess.run([sys.executable, "-m", "megatron_align", "plan", "--model", "qwen2-7b", "--seq-length", "4096",
                          "--measure", "--recompute", "none,kblock", "--measure-layers", "3", "--measure-seq", "256",
                          "--precision", "fp32"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "the shape of qwen2-7b" in text and "tp1 none fp32" in text and "tp1 kblock(k=2) fp32" in text
    errors = [float(e) for e in re.findall(r"^  (?:saved_total|allocator_peak)\s+\S+\s+\S+\s+([+-]\d+\.\d)%", text,
                                           re.MULTILINE)]
    assert len(errors) == 4 and max(abs(e) for e in errors) < 10, text
