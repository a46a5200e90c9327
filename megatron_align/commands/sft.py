"""`megatron-align sft --config FILE.yaml [section.key=value ...]` (under torchrun or srun)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (sections: model, parallel, data, optim, train, output)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. parallel.tp=2 train.max_steps=10")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    from megatron_align.config.base import dump_yaml, load_config
    from megatron_align.config.sft import SFTConfig

    cfg = load_config(SFTConfig, args.config, args.overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    from megatron_align.stages.sft import run_sft

    run_sft(cfg)
    return 0
