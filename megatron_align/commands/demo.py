"""`megatron-align demo` / `make demo`: SFT of the tiny bundled model on the bundled chat data at TP=2
on CPU (two gloo processes), then a checkpoint, metrics.jsonl and a PNG of the curves."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "examples", "configs", "tiny_cpu.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="runs/demo", help="run directory (default runs/demo)")
    parser.add_argument("--nproc", type=int, default=2, help="processes (TP=2 needs 2)")
    parser.add_argument("overrides", nargs="*", help="extra dotted overrides for the SFT config")


def run(args: argparse.Namespace) -> int:
    import shutil

    from megatron_align.data.config import DEFAULT_EVAL_PATH
    from megatron_align.runtime.distributed import _free_port

    if os.path.isdir(args.output_dir):
        shutil.rmtree(args.output_dir)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc}",
           f"--master-port={_free_port()}", "-m", "megatron_align", "sft", "--config", CONFIG,
           f"output_dir={args.output_dir}", "output.progress_bar=false",
           f"data.eval_path={DEFAULT_EVAL_PATH}",  # the config's eval set, found from any working directory
           *args.overrides]
    print("$ " + " ".join(cmd[2:]), flush=True)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        return rc
    from megatron_align.commands.plot import plot_run
    from megatron_align.engine.metrics import read_metrics

    train = read_metrics(args.output_dir, "train")
    first, last = train[0]["loss"], train[-1]["loss"]
    png = plot_run(args.output_dir)
    with open(os.path.join(args.output_dir, "latest")) as f:
        ckpt = os.path.join(args.output_dir, f.read().strip())
    print(json.dumps({"first_loss": round(first, 4), "last_loss": round(last, 4), "steps": len(train),
                      "checkpoint": ckpt, "metrics": os.path.join(args.output_dir, "metrics.jsonl"),
                      "plot": png}, indent=2))
    if not last < first:
        print("demo: the loss did not fall", file=sys.stderr)
        return 1
    return 0
