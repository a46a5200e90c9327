"""`megatron-align rm --config FILE.yaml [section.key=value ...]` (under torchrun or srun): reward-model training."""

from __future__ import annotations

import argparse

from megatron_align.commands.sft import add_arguments, run_stage_command  # noqa: F401  (same arguments as sft)


def run(args: argparse.Namespace) -> int:
    from megatron_align.config.rm import RMConfig
    from megatron_align.stages.rm import run_rm

    return run_stage_command(args, RMConfig, run_rm)
