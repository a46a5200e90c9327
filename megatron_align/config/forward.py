"""Forward-only jobs (``logprobs``, ``score``): the dotted overrides they accept."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from megatron_align.config.base import help_field
from megatron_align.config.model import ModelConfig
from megatron_align.config.parallel import ParallelConfig


@dataclass
class ForwardJob:
    """``model.*`` (backends, precision) and ``parallel.*`` (TP/PP; DP = the rest) of a forward-only command."""

    model: ModelConfig = help_field(default_factory=ModelConfig, help="Model backends and precision.")
    parallel: ParallelConfig = help_field(default_factory=ParallelConfig, help="TP/PP layout (DP = the rest).")


def add_forward_arguments(parser: argparse.ArgumentParser, *, load_help: str, data_help: str) -> None:
    """The arguments every forward-only command takes (checkpoint, input/output JSONL, rows, layout overrides)."""
    parser.add_argument("--load", required=True, help=load_help)
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--out", required=True, help="output JSONL (written by global rank 0)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer for chat lines (default: the checkpoint's tokenizer/)")
    parser.add_argument("--template", default=None, help="chat template for chat lines (default: the family's)")
    parser.add_argument("--seq-length", type=int, default=2048, help="row length; sequences are packed into rows")
    parser.add_argument("--micro-batch-size", type=int, default=1, help="rows per micro-batch")
    parser.add_argument("--config", default=None, help="optional YAML with model/parallel sections")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. parallel.tp=2 parallel.pp=2")
