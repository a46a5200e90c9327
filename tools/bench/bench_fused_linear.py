#!/usr/bin/env python3
"""LM head + CE, fwd+bwd: fused_linear (chunked, no [T, V] logits) vs materialised logits + fused CE.

    python tools/bench/bench_fused_linear.py [--tokens 1024,4096,16384] [--vocab 32000,152064] [--hidden 64]
                                             [--chunk 4096] [--dtype fp32|bf16] [--max-gb 6] [--reps 1]

Each (variant, T, V) runs in a fresh subprocess. Peak memory beyond the inputs: on CPU the rise of the
process's peak RSS (``ru_maxrss``) over the fwd+bwd (inputs, weights and a warm-up already resident), on
GPU ``torch.cuda.max_memory_allocated`` minus the allocated bytes before. The materialised variant is
skipped where its predicted bytes exceed ``--max-gb`` (the prediction is printed instead). Time: median
of ``--reps`` fwd+bwd. On GPU also TFLOP/s (model flops 6·T·V·h: the fused path computes 8·T·V·h, the
logits being recomputed in backward) and the ratio to a measured bf16 GEMM (8192³) on the same device.
CSV: docs/benchmarks/<device>_fused_linear.csv (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _one(variant: str, T: int, V: int, h: int, chunk: int, dtype_name: str, reps: int) -> dict:
    """Runs in the subprocess: build inputs, warm up on a small slice, measure one shape."""
    import torch

    from megatron_align import ops

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    g = torch.Generator(device=dev).manual_seed(0)
    hidden = (torch.randn(T, h, device=dev, generator=g) * 0.5).to(dtype).requires_grad_(True)
    weight = (torch.randn(V, h, device=dev, generator=g) * 0.05).to(dtype).requires_grad_(True)
    labels = torch.randint(0, V - 7, (T,), device=dev, generator=g)
    real_v = V - 7  # a few masked padding columns, as the model has

    def step(hs, ws, ys):
        if variant == "fused_linear":
            loss = ops.fused_linear_cross_entropy(hs, ws, ys, chunk_size=chunk, vocab_size=real_v)
        else:
            logits = (hs @ ws.t()).masked_fill(torch.arange(V, device=dev) >= real_v, float("-inf"))
            loss = ops.vocab_parallel_cross_entropy(logits, ys, vocab_size=real_v)
        loss.sum().backward()

    step(hidden[:8], weight, labels[:8])  # warm-up: kernels loaded, grads allocated
    hidden.grad = None
    weight.grad = torch.zeros_like(weight)  # resident like a training step's gradient buffer
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _peak_rss_bytes()
    times = []
    for _ in range(reps):
        hidden.grad = None
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(hidden, weight, labels)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda" else _peak_rss_bytes()) - base
    out = {"variant": variant, "T": T, "V": V, "h": h, "chunk": chunk, "dtype": dtype_name,
           "ms": 1e3 * statistics.median(times), "peak_extra_mib": peak / 2**20, "device": dev.type}
    if dev.type == "cuda":
        out["model_tflops"] = 6 * T * V * h / statistics.median(times) / 1e12
    return out


def gemm_peak_tflops() -> float:
    """Measured bf16 GEMM throughput (8192³) on this GPU: the ceiling the fused path is compared with."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * 10 / (time.perf_counter() - t0) / 1e12


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", default="1024,4096,16384")
    p.add_argument("--vocab", default="32000,152064")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--max-gb", type=float, default=6.0, help="skip a materialised run predicted above this")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = p.parse_args(argv)
    if args.one:
        v, T, V = args.one.split(":")
        print("RESULT " + json.dumps(_one(v, int(T), int(V), args.hidden, args.chunk, args.dtype, args.reps)))
        return 0
    from megatron_align.ops.fused_linear import fused_linear_bytes, materialised_logits_bytes

    import torch

    on_gpu = torch.cuda.is_available()
    peak = gemm_peak_tflops() if on_gpu else None
    if peak:
        print(f"bf16 GEMM 8192^3: {peak:.0f} TFLOP/s (the ceiling used for %-of-peak)")
    esize = 4 if args.dtype == "fp32" else 2
    rows = []
    for V in (int(x) for x in args.vocab.split(",")):
        for T in (int(x) for x in args.tokens.split(",")):
            for variant in ("materialised", "fused_linear"):
                predicted = (materialised_logits_bytes(T, V, dtype_bytes=esize) if variant == "materialised"
                             else fused_linear_bytes(T, V, args.hidden, chunk_size=args.chunk, dtype_bytes=esize))
                row = {"variant": variant, "T": T, "V": V, "h": args.hidden, "chunk": args.chunk, "dtype": args.dtype,
                       "predicted_mib": predicted / 2**20}
                if predicted > args.max_gb * 2**30:
                    row.update(ms="", peak_extra_mib="", note=f"skipped: predicted {predicted / 2**30:.1f} GiB")
                else:
                    cmd = [sys.executable, __file__, "--one", f"{variant}:{T}:{V}", "--hidden", str(args.hidden),
                           "--chunk", str(args.chunk), "--dtype", args.dtype, "--reps", str(args.reps)]
                    r = subprocess.run(cmd, capture_output=True, text=True)
                    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
                    if r.returncode != 0 or not line:
                        row.update(ms="", peak_extra_mib="", note=f"failed: {r.stderr.strip().splitlines()[-1:]}")
                    else:
                        row.update(json.loads(line[0][7:]))
                        if peak and "model_tflops" in row:
                            row["pct_of_gemm_peak"] = 100 * row["model_tflops"] / peak
                rows.append(row)
                print(json.dumps(row), flush=True)
    _summary(rows)
    _write_csv(rows, args.out, on_gpu)
    return 0


def _summary(rows) -> None:
    print(f"\n{'T':>6} {'V':>7} {'materialised MiB':>17} {'fused MiB':>10} {'ratio':>6} {'time fused/mat':>15}")
    by = {}
    for r in rows:
        by.setdefault((r["T"], r["V"]), {})[r["variant"]] = r
    for (T, V), d in by.items():
        m, f = d.get("materialised", {}), d.get("fused_linear", {})
        mm = m.get("peak_extra_mib") or m.get("predicted_mib")
        fm = f.get("peak_extra_mib") or f.get("predicted_mib")
        tr = (f["ms"] / m["ms"]) if m.get("ms") and f.get("ms") else float("nan")
        star = "" if m.get("peak_extra_mib") else "*"
        print(f"{T:>6} {V:>7} {mm:>16.0f}{star or ' '} {fm:>10.0f} {mm / fm:>6.1f} {tr:>15.2f}")
    print("* predicted (not run: above --max-gb)")


def _write_csv(rows, out, on_gpu) -> None:
    import csv

    out = out or os.path.join(ROOT, "docs", "benchmarks", f"{'gpu' if on_gpu else 'cpu'}_fused_linear.csv")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
