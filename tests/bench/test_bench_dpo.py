"""Smoke test of tools/bench/bench_dpo.py's loss-path memory measurement on a small CPU shape (one fresh
interpreter, both variants): the fused path's peak above the inputs is the logits' gradient alone, the plain
log_softmax + gather path holds about three [T, V] fp32 buffers, and the sums agree."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "tools", "bench")

CHILD = """
import json, torch
import bench_dpo as B
from bench_packed_logprobs import make_inputs
out = {v: B.memory_child(v, 512, 8192, 1) for v in ("fused", "torch")}
inp = make_inputs(512, 8192, torch.device("cpu"))
x = inp["make_logits"]()
f = B.loss_variants(inp["labels"], inp["cu"], inp["mask"])
out["max_abs_diff"] = (f["fused"](x).double() - f["torch"](x).double()).abs().max().item()
print(json.dumps(out))
"""


def test_loss_path_memory_measurement_small_shape():
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([BENCH, ROOT, os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    logits = 512 * 8192 * 4
    fused, plain = out["fused"], out["torch"]
    assert fused["logits_bytes"] == plain["logits_bytes"] == logits
    assert "clear_refs" in fused["method"], fused["method"]
    # fused: the [T, V] gradient (+ small per-row stats); plain: log_softmax, gather's dense grad, softmax grad
    assert 0.9 * logits <= fused["peak_bytes"] <= 1.5 * logits, fused
    assert 2.5 * logits <= plain["peak_bytes"] <= 4.5 * logits, plain
    assert fused["median_ms"] > 0 and plain["median_ms"] > 0
    assert out["max_abs_diff"] < 1e-2  # sums of ~256 log-probs of magnitude ~10, fp32
