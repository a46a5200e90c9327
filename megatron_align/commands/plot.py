"""`megatron-align plot OUTPUT_DIR`: a PNG of loss and throughput from metrics.jsonl."""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", help="a run directory holding metrics.jsonl")
    parser.add_argument("--out", default=None, help="PNG path (default: OUTPUT_DIR/metrics.png)")


def plot_run(output_dir: str, out: str = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from megatron_align.engine.metrics import read_metrics

    train = read_metrics(output_dir, "train")
    if not train:
        raise ValueError(f"{output_dir}/metrics.jsonl has no training steps to plot")
    evals = [r for r in read_metrics(output_dir, "eval") if "eval_loss" in r]
    out = out or os.path.join(output_dir, "metrics.png")
    steps = [r["step"] for r in train]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(steps, [r["loss"] for r in train], label="train loss")
    if evals:
        ax1.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(steps, [r.get("tokens_per_sec", 0) for r in train], color="tab:green")
    ax2.set_xlabel("step")
    ax2.set_ylabel("tokens / s")
    ax2.grid(alpha=0.3)
    fig.suptitle(os.path.basename(os.path.abspath(output_dir)))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def run(args: argparse.Namespace) -> int:
    print(plot_run(args.output_dir, args.out))
    return 0
