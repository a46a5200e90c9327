"""Peak memory and time of `megatron-align merge` with 3 inputs of a ~1 GB model, against the model size.

Generates four random Llama-style HF checkpoints (default ~1.0 GB fp32 each: a base and three models), converts
three of them to megatron_align checkpoints, then runs each merge in a fresh subprocess and reports the
process's peak RSS (VmHWM) minus its RSS after imports, and the wall time:

- linear of 3 HF models -> HF;  task_arithmetic and model_stock of 2 HF models + HF base -> HF;
- linear of 3 Megatron checkpoints -> Megatron (dist-checkpoint in, dist-checkpoint out);
- model_stock of 2 Megatron checkpoints + HF base -> HF (mixed inputs).

Streaming means the delta is a few copies of the largest tensor (the embedding), not 3 models.

    python tools/bench/bench_merge.py [--layers 16 --hidden 1024 --ffn 2816 --vocab 32000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from bench_convert import _status_kb, make_model  # noqa: E402

SHARD = "500MB"


def child(argv) -> None:
    import megatron_align.convert.hf_to_mcore  # noqa: F401 - imports before the baseline
    import megatron_align.convert.mcore_to_hf  # noqa: F401
    import megatron_align.merging.merge  # noqa: F401
    import torch.distributed.checkpoint  # noqa: F401
    from megatron_align.cli import main

    base = _status_kb("VmRSS")
    t = time.perf_counter()
    rc = main(["merge"] + list(argv))
    assert rc == 0, rc
    print(json.dumps({"seconds": time.perf_counter() - t, "rss_base_kb": base, "rss_peak_kb": _status_kb("VmHWM")}))


def run_child(argv) -> dict:
    # A fixed mmap threshold makes glibc return freed tensor buffers to the OS at once (see bench_convert.py).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=os.environ.get("MALLOC_MMAP_THRESHOLD_", "1048576"),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    out = subprocess.run([sys.executable, __file__, "--child", *argv], check=True, capture_output=True, text=True,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--ffn", type=int, default=2816)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child", nargs=argparse.REMAINDER, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child)
        return
    import torch

    from megatron_align.convert.api import convert

    work = args.workdir or tempfile.mkdtemp(prefix="bench_merge_")
    try:
        p = {n: os.path.join(work, n) for n in ("base", "m0", "m1", "m2")}
        for seed, name in enumerate(p):
            if not os.path.isdir(p[name]):
                torch.manual_seed(seed)
                size = make_model(p[name], args.layers, args.hidden, args.ffn, args.vocab, args.heads, args.groups)
        size = sum(os.path.getsize(os.path.join(p["m0"], f)) for f in os.listdir(p["m0"]) if f.endswith(".safetensors"))
        for name in ("m0", "m1", "m2"):
            if not os.path.isdir(p[name] + "_mcore"):
                convert(p[name], p[name] + "_mcore")
        emb = 4 * args.vocab * args.hidden
        print(f"model: {size / 1e9:.3f} GB fp32 ({args.layers} layers, embedding and lm_head {emb / 1e6:.1f} MB each)")
        out = os.path.join(work, "out")
        cases = [
            ("linear, 3 HF -> HF", ["--method", "linear", "--models", p["m0"], p["m1"], p["m2"]]),
            ("task_arithmetic, 2 HF + base -> HF", ["--method", "task_arithmetic", "--models", p["m0"], p["m1"],
                                                    "--base", p["base"]]),
            ("model_stock, 2 HF + base -> HF", ["--method", "model_stock", "--models", p["m0"], p["m1"],
                                                "--base", p["base"]]),
            ("linear, 3 Megatron -> Megatron", ["--method", "linear", "--models", p["m0"] + "_mcore",
                                                p["m1"] + "_mcore", p["m2"] + "_mcore"]),
            ("model_stock, 2 Megatron + HF base -> HF", ["--method", "model_stock", "--models", p["m0"] + "_mcore",
                                                         p["m1"] + "_mcore", "--base", p["base"], "--to", "hf"]),
        ]
        for label, argv in cases:
            r = run_child(argv + ["--max-shard-size", SHARD, "--force", out])
            delta = (r["rss_peak_kb"] - r["rss_base_kb"]) * 1024
            print(f"{label:42s}: peak RSS delta {delta / 1e6:7.1f} MB = {100 * delta / size:5.1f}% of one model "
                  f"({delta / emb:.1f}x the embedding), {r['seconds']:.1f} s", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
