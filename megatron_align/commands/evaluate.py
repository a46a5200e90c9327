"""`megatron-align evaluate --config FILE --load CKPT [CKPT ...] [section.key=value ...]`: eval loss, per category.

Each checkpoint (a megatron_align checkpoint, or an HF directory, converted to a temporary one first) is
loaded into the model the config describes at its parallel sizes (any TP/PP; run under torchrun for more
than one process) and scored on ``data.eval_path`` with the SFT trainer's own evaluation: the token-mean
loss overall and per ``category`` of the eval samples. The architecture comes from the checkpoint's
``arch.json``. Output: a table (categories x checkpoints) and one JSON line per checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Dict, List


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config of the run (model, parallel, data, train)")
    parser.add_argument("--load", nargs="+", required=True, metavar="CKPT",
                        help="checkpoints to score: megatron_align run/checkpoint directories or HF directories")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.eval_path=FILE parallel.tp=2")


def evaluate_checkpoint(config: str, overrides: List[str], load: str, scratch: str) -> Dict[str, float]:
    """One checkpoint through ``SFTTrainer(cfg).setup()`` + ``.evaluate()`` (weights only; nothing is written)."""
    from megatron_align.config.base import load_config
    from megatron_align.config.sft import SFTConfig
    from megatron_align.convert.api import detect_direction
    from megatron_align.stages.sft import SFTTrainer

    if detect_direction(load) == "mcore":  # an HF directory: the trainer loads dist-checkpoints
        from megatron_align.convert.api import convert

        load = convert(load, os.path.join(scratch, f"hf{len(os.listdir(scratch))}"), to="mcore")
    forced = [f"train.load={load}", "train.finetune=true", "model.name=null", "model.hf_config=null",
              f"output_dir={os.path.join(scratch, 'run')}"]
    cfg = load_config(SFTConfig, config, list(overrides) + forced)
    if cfg.data.eval_path is None:
        from megatron_align.errors import UserError

        raise UserError(f"{config}: data.eval_path is null; nothing to evaluate")
    trainer = SFTTrainer(cfg)
    trainer.setup()
    return trainer.evaluate()


def format_table(results: Dict[str, Dict[str, float]]) -> str:
    """Rows: overall then each category; columns: the checkpoints."""
    names = list(results)
    keys = ["eval_loss"] + sorted({k for r in results.values() for k in r if k.startswith("eval_loss/")})
    width = max(len(k) for k in keys)
    cols = [max(10, len(os.path.basename(os.path.normpath(n)))) for n in names]
    lines = [" " * width + "  " + "  ".join(os.path.basename(os.path.normpath(n)).rjust(c) for n, c in zip(names, cols))]
    for k in keys:
        cells = [(f"{results[n][k]:.4f}" if k in results[n] else "-").rjust(c) for n, c in zip(names, cols)]
        lines.append(k.ljust(width) + "  " + "  ".join(cells))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from megatron_align.runtime import teardown
    from megatron_align.runtime.launch_env import detect_launch_env

    # `--load A B key=value`: the overrides land in the --load list; give them back
    loads = [x for x in args.load if "=" not in x or os.path.exists(x)]
    overrides = [x for x in args.load if x not in loads] + list(args.overrides)
    results: Dict[str, Dict[str, float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="megatron-align-eval-") as scratch:
            for load in loads:
                results[load] = evaluate_checkpoint(args.config, overrides, load, scratch)
    except FileNotFoundError as exc:
        from megatron_align.errors import UserError

        raise UserError(str(exc)) from None
    finally:
        teardown()
    if detect_launch_env().rank == 0:
        print(format_table(results), file=sys.stderr)
        for load, r in results.items():
            print(json.dumps({"checkpoint": load, **r}))
    return 0
