"""`megatron-align sft --config FILE.yaml [section.key=value ...]` (under torchrun or srun)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (sections: model, parallel, data, optim, train, output)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. parallel.tp=2 train.max_steps=10")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run_stage_command(args: argparse.Namespace, config_cls, runner) -> int:
    """Load ``config_cls`` from --config + overrides; print it (--print-config) or ``runner(cfg)``."""
    from megatron_align.config.base import dump_yaml, load_config

    cfg = load_config(config_cls, args.config, args.overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    runner(cfg)
    return 0


def run(args: argparse.Namespace) -> int:
    from megatron_align.config.sft import SFTConfig
    from megatron_align.stages.sft import run_sft

    return run_stage_command(args, SFTConfig, run_sft)
