#!/usr/bin/env python3
"""Token utilisation and speed of the SFT sample packer (megatron_align.data.packing).

    python tools/bench/bench_packing.py [--n 100000] [--seed 0] [--csv out.csv]

Lengths are lognormal (long-tailed, like real chat SFT data), clipped to [8, seq_length]. Reports:
  * whole-corpus packing: best-fit decreasing (the library's) and first-fit decreasing (a reference variant,
    O(n * bins)), utilisation = real tokens / (bins * seq_length), bins vs the lower bound ceil(tokens / S),
    and packing time per sample;
  * per-step packing as training does it: each global batch (GBS samples) split over DP ranks and each share
    packed on its own, through make_micro_batches (tensors included), utilisation and time per sample.
Target: >= 98% utilisation for whole-corpus packing.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megatron_align.data.batch import make_micro_batches  # noqa: E402
from megatron_align.data.packing import pack_lengths, token_utilization  # noqa: E402
from megatron_align.data.samples import Sample  # noqa: E402
from megatron_align.data.sampler import GlobalBatchSampler, shard_for_rank  # noqa: E402


def first_fit_decreasing(lengths, capacity):
    """Reference variant: first bin that fits, scanning bins in order (vectorised scan)."""
    free = np.empty(0, dtype=np.int64)
    n_bins = 0
    for length in sorted(lengths, reverse=True):
        hit = np.flatnonzero(free[:n_bins] >= length)
        if hit.size:
            free[hit[0]] -= length
        else:
            if n_bins == free.size:
                free = np.concatenate([free, np.zeros(max(16, free.size), dtype=np.int64)])
            free[n_bins] = capacity - length
            n_bins += 1
    return n_bins


def lognormal(n, median, sigma, seq, seed):
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(math.log(median), sigma, size=n)), 8, seq).astype(np.int64)


def per_step(lengths, seq, gbs, dp, mbs, steps, seed):
    """Training-style packing of `steps` global batches; returns (utilisation, seconds per sample)."""
    sampler = GlobalBatchSampler(len(lengths), gbs, seed=seed, max_steps=steps)
    real = slots = n = 0
    t = 0.0
    for ids in sampler:
        for r in range(dp):
            mine = shard_for_rank(ids, r, dp, lengths[ids])
            samples = [Sample(i, np.zeros(int(lengths[i]), np.int64), np.ones(int(lengths[i]), np.uint8))
                       for i in mine]
            t0 = time.perf_counter()
            out = make_micro_batches(samples, seq, mbs, packing=True)
            t += time.perf_counter() - t0
            real += sum(b.num_real_tokens for b in out)
            slots += sum(b.tokens.numel() for b in out if not b.is_padding)
            n += len(samples)
    return real / slots, t / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--csv", default=None)
    ap.add_argument("--no-ffd", action="store_true", help="skip the slower first-fit reference")
    args = ap.parse_args(argv)
    rows = []
    mixes = [(8192, 600, 1.0), (8192, 1500, 1.2), (4096, 300, 1.0), (4096, 800, 1.2)]
    head = (f"{'S':>5} {'median':>6} {'sigma':>5} {'mean':>6} {'bins':>7} {'lower':>7} {'BFD util':>8} "
            f"{'BFD us/smp':>10} {'FFD util':>8} {'FFD us/smp':>10} {'step util':>9} {'step us/smp':>11}")
    print(f"n={args.n} lognormal lengths clipped to [8, S]; per-step: GBS 512 over DP 8, mbs 1, 20 steps")
    print(head)
    for seq, median, sigma in mixes:
        lens = lognormal(args.n, median, sigma, seq, args.seed)
        t0 = time.perf_counter()
        bins = pack_lengths(lens, seq)
        t_bfd = (time.perf_counter() - t0) / args.n
        assert sorted(i for b in bins for i in b) == list(range(args.n))
        assert max(int(lens[b].sum()) for b in bins) <= seq
        util = token_utilization(lens, len(bins), seq)
        ffd_util = ffd_t = float("nan")
        if not args.no_ffd:
            t0 = time.perf_counter()
            n_ffd = first_fit_decreasing(lens.tolist(), seq)
            ffd_t = (time.perf_counter() - t0) / args.n
            ffd_util = token_utilization(lens, n_ffd, seq)
        step_util, step_t = per_step(lens, seq, 512, 8, 1, 20, args.seed)
        row = dict(seq_length=seq, median=median, sigma=sigma, mean=float(lens.mean()), bins=len(bins),
                   lower_bound=int(math.ceil(lens.sum() / seq)), bfd_util=util, bfd_us=t_bfd * 1e6,
                   ffd_util=ffd_util, ffd_us=ffd_t * 1e6, step_util=step_util, step_us=step_t * 1e6)
        rows.append(row)
        print(f"{seq:>5} {median:>6} {sigma:>5} {row['mean']:>6.0f} {len(bins):>7} {row['lower_bound']:>7} "
              f"{util:>8.2%} {row['bfd_us']:>10.2f} {ffd_util:>8.2%} {row['ffd_us']:>10.2f} "
              f"{step_util:>9.2%} {row['step_us']:>11.1f}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
