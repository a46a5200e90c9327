"""`megatron-align grpo --config FILE.yaml [section.key=value ...]` (under torchrun or srun): online GRPO with
rollouts from megatron-core's engine, rule / function / reward-model rewards and the report's top-k KL."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from megatron_align.commands.sft import add_arguments as common

    common(parser)


def run(args: argparse.Namespace) -> int:
    from megatron_align.commands.sft import run_stage_command
    from megatron_align.config.rl_job import GRPOJobConfig
    from megatron_align.stages.grpo import run_grpo

    return run_stage_command(args, GRPOJobConfig, run_grpo)
