#!/usr/bin/env python3
"""SFT data-path benchmark: packer token utilisation on a long-tailed mix, and packing overhead vs step time.

    python tools/bench/bench_sft.py [--seq 8192] [--steps 20]

1. Utilisation of per-step packing (what training does: each global batch split over DP ranks, each share
   packed by best-fit decreasing) for a lognormal (long-tailed) length mix, as a function of the number of
   samples each rank packs per step; and whole-corpus packing as the upper bound. Target >= 98%.
2. Packing overhead: measured packing time per rank-step, against (a) the measured step time of the tiny
   model on this CPU (in-process SFT trainer) and (b) the step time an 8B model would need on one H100 at
   45% MFU for the same tokens (a FLOP estimate; no GPU here). Target < 2% of step time.
The GPU throughput comparison with TRL (tokens/s, MFU) needs a lent GPU; it is not run here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_packing import lognormal, per_step  # noqa: E402

from megatron_align.data.packing import pack_lengths, token_utilization  # noqa: E402


def utilisation_table(seq: int, steps: int) -> None:
    lengths = lognormal(200_000, 1200, 1.1, seq, seed=0)
    bins = pack_lengths(lengths, seq)
    print(f"length mix: lognormal median 1200, sigma 1.1, clipped to [8, {seq}]; mean {lengths.mean():.0f} tokens")
    print(f"whole-corpus best-fit decreasing: {100 * token_utilization(lengths, len(bins), seq):.2f}% utilisation")
    print(f"{'samples/rank/step':>18} {'utilisation':>12} {'pack us/sample':>15} {'pack ms/rank-step':>18}")
    for per_rank in (32, 64, 128, 256, 512, 1024):
        dp = 4
        util, sec = per_step(lengths, seq, per_rank * dp, dp, 1, steps, seed=1)
        print(f"{per_rank:>18} {100 * util:>11.2f}% {1e6 * sec:>15.1f} {1e3 * sec * per_rank:>18.1f}")


def overhead_cpu(steps: int) -> None:
    """Tiny model, one process: time of building micro-batches vs the whole train step."""
    from megatron_align.config.base import load_config
    from megatron_align.config.sft import SFTConfig
    from megatron_align.stages.sft import SFTTrainer

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    cfg = load_config(SFTConfig, os.path.join(root, "examples", "configs", "tiny_cpu.yaml"),
                      ["parallel.tp=1", f"train.max_steps={steps}", "output_dir=/tmp/bench_sft",
                       "output.tensorboard=false"])
    trainer = SFTTrainer(cfg)
    trainer.setup()
    pack_t = 0.0
    orig = trainer.micro_batches

    def timed(*a, **k):
        nonlocal pack_t
        t0 = time.perf_counter()
        out = orig(*a, **k)
        pack_t += time.perf_counter() - t0
        return out

    trainer.micro_batches = timed
    step_t = 0.0
    for i, ids in enumerate(trainer.sampler):
        t0 = time.perf_counter()
        trainer.train_step(ids)
        if i > 0:  # skip warm-up
            step_t += time.perf_counter() - t0
        else:
            pack_t = 0.0
    n = max(steps - 1, 1)
    print(f"tiny model on CPU: packing {1e3 * pack_t / n:.1f} ms/step of {1e3 * step_t / n:.0f} ms/step "
          f"= {100 * pack_t / max(step_t, 1e-9):.2f}% of step time")
    from megatron_align.runtime import teardown

    teardown()


def overhead_h100_estimate(seq: int) -> None:
    lengths = lognormal(50_000, 1200, 1.1, seq, seed=0)
    per_rank = 64
    util, sec = per_step(lengths, seq, per_rank, 1, 1, 10, seed=1)
    tokens = lengths.mean() * per_rank
    n_params = 8.0e9
    step = 6 * n_params * tokens / (0.45 * 989e12)
    pack = sec * per_rank
    print(f"8B on one H100 at 45% MFU (estimate): {tokens:.0f} tokens/rank-step -> {step:.2f} s/step; "
          f"packing {1e3 * pack:.1f} ms = {100 * pack / step:.3f}% of step time")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cpu-steps", type=int, default=6)
    args = ap.parse_args(argv)
    utilisation_table(args.seq, args.steps)
    overhead_h100_estimate(args.seq)
    overhead_cpu(args.cpu_steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
