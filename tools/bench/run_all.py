#!/usr/bin/env python3
"""Run every kernel micro-benchmark (small shapes on CPU, the full grid on GPU; `--quick` for one shape).

    python tools/bench/run_all.py [--quick] [--reps N]

CSVs go to docs/benchmarks/<device>_<op>.csv; see docs/benchmarks.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_cross_entropy  # noqa: E402
import bench_packed_logprobs  # noqa: E402
import bench_topk_kl  # noqa: E402
import common  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    for op, mod in (("cross_entropy", bench_cross_entropy), ("packed_logprobs", bench_packed_logprobs),
                    ("topk_kl", bench_topk_kl)):
        common.main_for(op, mod.build_variants, mod.make_inputs, argv)
