"""Shared pieces of the kernel micro-benchmarks: device facts, timing, variants, CSV.

Timing: CUDA events on GPU, perf_counter on CPU; warm-up, then median and p20/p80 of forward+backward.
Throughput counts the minimal traffic of a fused fwd+bwd: read logits (fwd), read logits + write the
gradient (bwd) = 3·T·V·element_size bytes, compared with the device's measured copy bandwidth.
"""

from __future__ import annotations

import csv
import datetime
import os
import re
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
OUT_DIR = os.path.join(ROOT, "docs", "benchmarks")

GPU_T = (4096, 16384, 65536)
GPU_V = (16032, 19008, 152064)
CPU_T = (256, 1024)
CPU_V = (1031, 16032)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    return f"CPU {cpu} x{torch.get_num_threads()} threads"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def shapes(dev: torch.device, quick: bool):
    if dev.type == "cuda":
        return [(t, v) for t in GPU_T for v in GPU_V] if not quick else [(4096, 152064)]
    return [(t, v) for t in CPU_T for v in CPU_V] if not quick else [(256, 16032)]


def dtype_for(dev: torch.device) -> torch.dtype:
    return torch.bfloat16 if dev.type == "cuda" else torch.float32


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_fn(fn: Callable[[], None], dev: torch.device, warmup: int = 3, reps: int = 10) -> Dict[str, float]:
    """Median, p20, p80 of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    _sync(dev)
    times: List[float] = []
    for _ in range(reps):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10) if len(times) > 1 else times * 9
    return {"median_ms": statistics.median(times), "p20_ms": q[1], "p80_ms": q[7]}


def copy_bandwidth_gbs(dev: torch.device) -> float:
    """Measured device copy bandwidth (read + write bytes / time) of a large clone."""
    n = (256 if dev.type == "cuda" else 32) * 2**20
    src = torch.empty(n, dtype=torch.uint8, device=dev).fill_(1)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), dev, warmup=2, reps=10)
    return 2 * n / (t["median_ms"] * 1e-3) / 1e9


def peak_extra_mib(fn: Callable[[], None], dev: torch.device) -> float:
    """Peak memory above the current allocation during fn() (CUDA only; nan on CPU)."""
    if dev.type != "cuda":
        return float("nan")
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    fn()
    torch.cuda.synchronize(dev)
    return (torch.cuda.max_memory_allocated(dev) - base) / 2**20


def fwd_bwd(loss_fn: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor) -> Callable[[], None]:
    """A closure running loss_fn forward + backward on a fresh leaf view of logits."""

    def run():
        x = logits.detach().requires_grad_(True)
        loss_fn(x).sum().backward()

    return run


def init_megatron_tp1() -> bool:
    """Single-process gloo group + megatron parallel_state (TP=1) so megatron's CE can run."""
    try:
        import torch.distributed as dist
        from megatron.core import parallel_state

        if not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29533")
            dist.init_process_group("gloo", rank=0, world_size=1)
        if not parallel_state.model_parallel_is_initialized():
            parallel_state.initialize_model_parallel(tensor_model_parallel_size=1)
        return True
    except Exception as e:  # noqa: BLE001 - a missing baseline is reported, not fatal
        print(f"  megatron baseline unavailable: {e}")
        return False


def optional_baselines() -> Dict[str, Callable]:
    """TE / Liger cross-entropy when importable: name -> fn(logits[T,V], labels[T]) -> [T] loss."""
    out: Dict[str, Callable] = {}
    try:
        from transformer_engine.pytorch.cross_entropy import parallel_cross_entropy

        out["te"] = lambda x, y: parallel_cross_entropy(x[:, None], y[:, None], 0.0, False, None).squeeze(1)
    except Exception:  # noqa: BLE001
        pass
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy

        out["liger"] = lambda x, y: liger_cross_entropy(x, y, reduction="none")
    except Exception:  # noqa: BLE001
        pass
    return out


def compiled(fn: Callable) -> Optional[Callable]:
    try:
        return torch.compile(fn, dynamic=False)
    except Exception as e:  # noqa: BLE001
        print(f"  torch.compile unavailable: {e}")
        return None


def run_variants(op: str, variants: Dict[str, Callable[[torch.Tensor], torch.Tensor]], make_logits,
                 dev: torch.device, bw: float, T: int, V: int, rows: List[dict], reps: int) -> None:
    """Time every variant on one shape, append a row per variant (failures are reported and skipped)."""
    logits = make_logits()
    nbytes = 3 * T * V * logits.element_size()
    for name, fn in variants.items():
        if fn is None:
            continue
        run = fwd_bwd(fn, logits)
        try:
            t = time_fn(run, dev, warmup=2, reps=reps)
            mem = peak_extra_mib(run, dev)
        except Exception as e:  # noqa: BLE001 - e.g. torch.compile without a C++ toolchain
            print(f"  {op} {name} T={T} V={V}: skipped ({type(e).__name__}: {str(e).splitlines()[0][:100]})")
            continue
        gbs = nbytes / (t["median_ms"] * 1e-3) / 1e9
        row = dict(op=op, variant=name, T=T, V=V, dtype=str(logits.dtype).replace("torch.", ""),
                   median_ms=round(t["median_ms"], 4), p20_ms=round(t["p20_ms"], 4), p80_ms=round(t["p80_ms"], 4),
                   gbs=round(gbs, 2), pct_copy_bw=round(100 * gbs / bw, 1), peak_extra_mib=round(mem, 1))
        rows.append(row)
        print(f"  {op:14s} {name:12s} T={T:6d} V={V:6d}  median {row['median_ms']:9.3f} ms "
              f"[{row['p20_ms']:.3f}, {row['p80_ms']:.3f}]  {gbs:8.2f} GB/s  {row['pct_copy_bw']:5.1f}% of copy BW"
              f"  peak +{mem:.1f} MiB")


def write_csv(op: str, rows: List[dict], dev: torch.device, bw: float) -> str:
    os.makedirs(OUT_DIR, exist_ok=True)
    name = device_name(dev)
    path = os.path.join(OUT_DIR, f"{slug(name)}_{op}.csv")
    date = datetime.date.today().isoformat()
    with open(path, "w", newline="") as f:
        fields = ["date", "device", "copy_bw_gbs"] + list(rows[0].keys()) if rows else ["date", "device"]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({"date": date, "device": name, "copy_bw_gbs": round(bw, 1), **r})
    return path


def main_for(op: str, build_variants, make_inputs, argv=None) -> List[dict]:
    """Shared driver: parse --quick/--reps, measure copy bandwidth, time each shape, write the CSV."""
    import argparse

    ap = argparse.ArgumentParser(description=f"micro-benchmark of {op}")
    ap.add_argument("--quick", action="store_true", help="one small shape (smoke)")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    dev = device()
    bw = copy_bandwidth_gbs(dev)
    from megatron_align.ops import active_backend

    print(f"{op}: device {device_name(dev)}, copy bandwidth {bw:.1f} GB/s, ops backend {active_backend(dev)}")
    rows: List[dict] = []
    for T, V in shapes(dev, args.quick):
        inputs = make_inputs(T, V, dev)
        run_variants(op, build_variants(inputs, dev), inputs["make_logits"], dev, bw, T, V, rows, args.reps)
    print(f"  -> {write_csv(op, rows, dev, bw)}")
    return rows
