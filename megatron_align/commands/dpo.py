"""`megatron-align dpo --config FILE.yaml [section.key=value ...]` (under torchrun or srun): the DPO family
(dpo, ipo, simpo, orpo, rpo; dpo.loss_type). ``--precompute-reference`` writes the reference log-prob cache
(dpo.reference=cache) and exits."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from megatron_align.commands.sft import add_arguments as common

    common(parser)
    parser.add_argument("--precompute-reference", action="store_true",
                        help="write the reference log-probs of the train/eval pairs to dpo.reference_cache and exit")


def run(args: argparse.Namespace) -> int:
    from megatron_align.commands.sft import run_stage_command
    from megatron_align.config.dpo import DPOConfig
    from megatron_align.stages.dpo import precompute_reference, run_dpo

    return run_stage_command(args, DPOConfig, precompute_reference if args.precompute_reference else run_dpo)
