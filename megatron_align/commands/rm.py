"""`megatron-align rm --config FILE.yaml [section.key=value ...]` (under torchrun or srun): reward-model training."""

from __future__ import annotations

import argparse

from megatron_align.commands.sft import add_arguments  # noqa: F401  (same arguments as sft)


def run(args: argparse.Namespace) -> int:
    from megatron_align.config.base import dump_yaml, load_config
    from megatron_align.config.rm import RMConfig

    cfg = load_config(RMConfig, args.config, args.overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    from megatron_align.stages.rm import run_rm

    run_rm(cfg)
    return 0
