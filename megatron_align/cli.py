"""`megatron-align <command>`: the one place where commands are registered.

Each command lives in a module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their command runs, so ``--help`` stays fast and light.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional


@dataclass(frozen=True)
class Command:
    module: str
    help: str


COMMANDS: Dict[str, Command] = {
    "info": Command("megatron_align.commands.info", "versions, CUDA, and the backends a model would use"),
    "demo": Command("megatron_align.commands.demo", "run the main job on the tiny bundled default (CPU)"),
    "sft": Command("megatron_align.commands.sft", "supervised fine-tuning with sample packing"),
    "rm": Command("megatron_align.commands.rm", "reward model: Bradley-Terry + alpha * MSE to absolute scores"),
    "dpo": Command("megatron_align.commands.dpo", "DPO family on packed preference pairs (dpo, ipo, simpo, orpo, rpo)"),
    "score": Command("megatron_align.commands.score", "rewards of prompt/response lines under a reward model"),
    "preprocess": Command("megatron_align.commands.preprocess", "tokenize chat JSONL into megatron indexed binary files"),
    "convert": Command("megatron_align.commands.convert", "convert checkpoints Hugging Face <-> Megatron"),
    "logprobs": Command("megatron_align.commands.logprobs", "token log-probs of sequences under a checkpoint"),
    "plot": Command("megatron_align.commands.plot", "plot loss and throughput of a run directory"),
    "plan": Command("megatron_align.commands.plan", "memory and parallelism planner"),
    "merge": Command("megatron_align.commands.merge", "merge checkpoints: linear, task arithmetic, Model Stock, TIES, DARE"),
    "evaluate": Command("megatron_align.commands.evaluate", "eval loss of checkpoints, overall and per category"),
    "grpo": Command("megatron_align.commands.grpo", "online GRPO: rollouts, rewards (rules, functions, a reward model), top-k KL"),
    "ppo": Command("megatron_align.commands.ppo", "online PPO with a critic (GAE, value clipping) on the GRPO rollouts"),
    "data": Command("megatron_align.commands.data", "preview: rendered samples with the trained spans marked"),
    "prompts": Command("megatron_align.commands.prompts", "prompt selection: dedup, layered clustering, quality, sampling"),
    "pas": Command("megatron_align.commands.pas", "PAS: generate complements (teacher + critic), augment prompts, serve"),
}


def _available() -> Dict[str, Command]:
    out = {}
    for name, cmd in COMMANDS.items():
        if importlib.util.find_spec(cmd.module) is not None:
            out[name] = cmd
    return out


def build_parser(commands: Dict[str, Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megatron-align",
        description="Alignment of large language models on Megatron-core (SFT, RM, GRPO/PPO, DPO, merging, PAS).",
    )
    from megatron_align import __version__

    parser.add_argument("--version", action="version", version=f"megatron-align {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, cmd in commands.items():
        sub.add_parser(name, help=cmd.help, description=cmd.help, add_help=False)
    return parser


def main(argv: Optional[List[str]] = None) -> int:

    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _available()
    if not argv or argv[0].startswith("-") or argv[0] not in commands:
        parser = build_parser(commands)
        if argv and not argv[0].startswith("-"):
            parser.error(f"unknown command {argv[0]!r}; choose from: {', '.join(commands)}")
        parser.parse_args(argv or ["--help"])
        return 0
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(commands[name].module)
    parser = argparse.ArgumentParser(prog=f"megatron-align {name}", description=commands[name].help)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    from megatron_align.errors import UserError

    try:
        return int(module.run(args) or 0)
    except UserError as exc:  # the user's to fix: one line, exit 2; anything else is a bug (traceback)
        print(f"megatron-align {name}: error: {exc}", file=sys.stderr, flush=True)
        return 2
