"""`megatron-align ppo --config FILE.yaml [section.key=value ...]` (under torchrun or srun): PPO with a critic
(GAE, value clipping, its own optimizer) on the same rollouts, rewards and KL options as GRPO."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from megatron_align.commands.sft import add_arguments as common

    common(parser)


def run(args: argparse.Namespace) -> int:
    from megatron_align.commands.sft import run_stage_command
    from megatron_align.config.rl_job import PPOJobConfig
    from megatron_align.stages.ppo import run_ppo

    return run_stage_command(args, PPOJobConfig, run_ppo)
