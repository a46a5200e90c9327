#!/usr/bin/env python3
"""Data-path scale benchmark: preprocess throughput and `sft` time to first step / RSS per rank vs corpus size.

    python tools/bench/data_scale.py --sizes 10000 100000 [--workers 1 2] [--nproc 2] [--work /tmp/data_scale]
    python tools/bench/data_scale.py --sizes 1000000 --skip-preprocess-types     # the 1M row (minutes)
    python tools/bench/data_scale.py --sizes 100000 --workers 1 --code /path/to/old/checkout   # a baseline

For each size N it writes N synthetic conversations (two user/assistant exchanges, ~500 tokens each with the
bundled tiny tokenizer; seeded, so every run sees the same corpus) and prints

1. ``preprocess`` conversations/s and peak RSS (the whole process tree) per file type (.jsonl; .jsonl.gz and
   .parquet where the reader accepts them) and per ``--workers`` value;
2. ``sft`` (tiny model, ``--nproc`` ranks under torchrun, data-parallel) time from launch to the first training step
   and peak RSS per rank, for: the JSONL file on its first launch (builds the tokenization cache), the JSONL file
   again (cached) and the indexed prefix written by ``preprocess``.

Each command is a subprocess; RSS and CPU time are sampled every 50 ms with psutil (peak RSS of each process). On a
shared machine the wall clock mostly measures the neighbours, so preprocess also prints its CPU seconds (all
processes, and the parent that reads and writes) and "idle conv/s": N / max(parent CPU, all CPU / workers), the
rate the same work reaches on ``workers`` free cores. Goals (issue 20):
first step < 10 s at 1M after the first launch, RSS per rank flat in N, preprocess >= 1.5x the one-core rate.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "examples", "configs", "tiny_cpu.yaml")
WORDS = ("river stone light table number seven reverse list python function returns value of the a and "
         "sum difference product quick brown fox jumps over lazy dog answer question please write explain "
         "why because first second third code data model train token step loss eval batch").split()


def conversation(rng: random.Random, i: int) -> dict:
    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n)) + f" {rng.randint(0, 99999)}."

    msgs = []
    for _ in range(2):
        msgs.append({"role": "user", "content": text(rng.randint(10, 30))})
        msgs.append({"role": "assistant", "content": text(rng.randint(30, 80))})
    return {"messages": msgs, "category": ("code", "math", "chat", "reverse")[i % 4]}


def write_corpus(n: int, work: str) -> str:
    path = os.path.join(work, f"conv_{n}.jsonl")
    if os.path.isfile(path):
        return path
    rng = random.Random(n)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps(conversation(rng, i)) + "\n")
    os.replace(tmp, path)
    return path


def other_types(path: str) -> Dict[str, str]:
    """The same corpus as .jsonl.gz and .parquet (written once)."""
    out = {}
    gz = path + ".gz"
    if not os.path.isfile(gz):
        with open(path, "rb") as src, gzip.open(gz + ".tmp", "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(gz + ".tmp", gz)
    out["jsonl.gz"] = gz
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return out
    pqf = path[:-len(".jsonl")] + ".parquet"
    if not os.path.isfile(pqf):
        writer = None
        with open(path, encoding="utf-8") as f:
            while True:
                rows = [json.loads(line) for _, line in zip(range(50_000), f)]
                if not rows:
                    break
                table = pa.Table.from_pylist(rows)
                writer = writer or pq.ParquetWriter(pqf + ".tmp", table.schema)
                writer.write_table(table)
        writer.close()
        os.replace(pqf + ".tmp", pqf)
    out["parquet"] = pqf
    return out


def run_measured(cmd: List[str], env: dict, until: Optional[str] = None, timeout: float = 3600
                 ) -> Tuple[float, int, Dict[int, int], str, Tuple[float, float]]:
    """Run ``cmd``; return (seconds until it exits or prints a line containing ``until``, return code (0 when
    stopped at ``until``), peak RSS per process of the tree in bytes, output, CPU seconds (user + system, as last
    sampled) of the root process and of the whole tree)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=CODE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    lines: List[str] = []
    seen = threading.Event()

    def reader() -> None:
        for line in proc.stdout:
            lines.append(line)
            if until and until in line:
                seen.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    peaks: Dict[int, int] = {}
    cpu: Dict[int, float] = {}
    root = psutil.Process(proc.pid)
    while not seen.is_set() and proc.poll() is None and time.perf_counter() - t0 < timeout:
        try:
            for p in [root] + root.children(recursive=True):
                try:
                    peaks[p.pid] = max(peaks.get(p.pid, 0), p.memory_info().rss)
                    t = p.cpu_times()
                    cpu[p.pid] = t.user + t.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        seen.wait(0.05)
    seconds = time.perf_counter() - t0
    found = seen.is_set()
    if proc.poll() is None:
        try:
            for p in root.children(recursive=True):
                p.kill()
        except psutil.Error:
            pass
        proc.kill()
    proc.wait()
    thread.join(5)
    cpu_times = (cpu.get(proc.pid, 0.0), sum(cpu.values()))
    return seconds, (0 if found else proc.returncode), peaks, "".join(lines), cpu_times


CODE = ROOT  # the tree whose code runs (--code: e.g. a checkout of the previous version, for a baseline)


def env_for() -> dict:
    return dict(os.environ, PYTHONPATH=CODE, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")


def is_baseline() -> bool:
    return os.path.abspath(CODE) != ROOT


def bench_preprocess(n: int, path: str, kind: str, workers: int, work: str) -> Tuple[str, Optional[str]]:
    prefix = os.path.join(work, f"idx_{n}_{kind.replace('.', '_')}_w{workers}")
    cmd = [sys.executable, "-m", "megatron_align", "preprocess", "--input", path, "--output-prefix", prefix,
           "--template", "llama3"] + ([] if is_baseline() else ["--workers", str(workers)])
    sec, rc, peaks, out, cpu = run_measured(cmd, env_for())
    if rc != 0:
        last = out.strip().splitlines()[-1] if out.strip() else f"exit {rc}"
        return f"{n:>9} {kind:>9} {workers:>7}   failed: {last[:120]}", None
    total = sum(peaks.values()) / 2**20
    biggest = max(peaks.values()) / 2**20
    # on a shared machine the wall clock measures the neighbours; the CPU seconds do not. With ``workers`` free
    # cores the run takes at least max(parent's CPU, all CPU / workers): the rate that bound gives
    root_cpu, all_cpu = cpu
    idle = n / max(root_cpu, all_cpu / workers)
    return (f"{n:>9} {kind:>9} {workers:>7} {n / sec:>11.0f} {sec:>8.1f} {all_cpu:>7.1f} {root_cpu:>8.1f} "
            f"{idle:>12.0f} {total:>13.0f} {biggest:>15.0f}", prefix)


def bench_sft(n: int, data_path: str, label: str, nproc: int, work: str) -> str:
    from megatron_align.runtime.distributed import _free_port

    out_dir = os.path.join(work, f"run_{n}_{label}")
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={_free_port()}",
           "-m", "megatron_align", "sft", "--config", CONFIG, "parallel.tp=1", f"data.path={data_path}",
           "data.eval_path=null", "data.template=llama3",
           *([] if is_baseline() else [f"data.cache_dir={os.path.join(work, 'cache')}"]),
           "train.max_steps=2", "train.log_interval=1", "train.eval_interval=0", "train.save_interval=0",
           "output.progress_bar=false", f"output_dir={out_dir}"]
    sec, rc, peaks, out, _ = run_measured(cmd, env_for(), until="step 1/")
    if rc != 0:
        return f"{n:>9} {label:>14}   failed: {out.strip().splitlines()[-1][:160] if out.strip() else rc}"
    # the ranks: the largest processes of the tree (torchrun's agent is small)
    ranks = sorted(peaks.values(), reverse=True)[:nproc]
    return f"{n:>9} {label:>14} {sec:>14.1f} " + " ".join(f"{r / 2**20:>8.0f}" for r in ranks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--nproc", type=int, default=2, help="ranks of the sft runs (data-parallel)")
    ap.add_argument("--work", default="/tmp/data_scale", help="corpora, indexed files, cache, run dirs")
    ap.add_argument("--skip-preprocess-types", action="store_true", help="preprocess the .jsonl only")
    ap.add_argument("--skip-sft", action="store_true")
    ap.add_argument("--code", default=ROOT, help="run the commands of this source tree (a baseline checkout); "
                                                "it gets no --workers and no data.cache_dir")
    args = ap.parse_args()
    global CODE
    CODE = args.code
    os.makedirs(args.work, exist_ok=True)
    print(f"# {datetime.date.today()} {platform.node()} {os.cpu_count()} cores "
          f"({len(os.sched_getaffinity(0))} usable), {psutil.virtual_memory().total / 2**30:.0f} GiB")
    rows_pre, rows_sft = [], []
    for n in args.sizes:
        t0 = time.perf_counter()
        path = write_corpus(n, args.work)
        print(f"# corpus {n}: {path} ({os.path.getsize(path) / 2**20:.0f} MiB, {time.perf_counter() - t0:.1f} s)",
              flush=True)
        types = {"jsonl": path}
        if not args.skip_preprocess_types:
            types.update(other_types(path))
        prefix = None
        for kind, p in types.items():
            for w in args.workers:
                row, pre = bench_preprocess(n, p, kind, w, args.work)
                prefix = prefix or pre
                rows_pre.append(row)
                print(row, flush=True)
        if args.skip_sft:
            continue
        shutil.rmtree(os.path.join(args.work, "cache"), ignore_errors=True)
        for label, data in (("jsonl first", path), ("jsonl cached", path), ("indexed", prefix)):
            if data is None:
                continue
            row = bench_sft(n, data, label, args.nproc, args.work)
            rows_sft.append(row)
            print(row, flush=True)
    print("\npreprocess")
    print(f"{'N':>9} {'type':>9} {'workers':>7} {'conv/s':>11} {'sec':>8} {'CPU-s':>7} {'parent':>8} "
          f"{'idle conv/s':>12} {'peak RSS MiB':>13} {'max proc MiB':>15}")
    print("\n".join(rows_pre))
    if rows_sft:
        print(f"\nsft, {args.nproc} ranks (tiny model, data-parallel): launch to first step, peak RSS per rank")
        print(f"{'N':>9} {'input':>14} {'first step s':>14} {'RSS MiB per rank'}")
        print("\n".join(rows_sft))
    return 0


if __name__ == "__main__":
    sys.exit(main())
