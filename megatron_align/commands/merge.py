"""`megatron-align merge --method M --models A B [...] [--base BASE] OUT`: merge checkpoints, streamed.

Inputs are HF model directories or megatron_align checkpoints (run directory, ``step_*`` or ``release``),
mixed when their architectures match. The output is written in the form of the base (else of the first
model) unless ``--to`` says otherwise: an HF directory, or a checkpoint root ``OUT/{release,latest}``.
Formulas: docs/merging.md and :mod:`megatron_align.merging.methods`.
"""

from __future__ import annotations

import argparse
import json


class _List(argparse.Action):
    """``nargs="+"`` that remembers it came last: ``--models A B OUT`` then gives OUT back to the positional."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, list(values))
        namespace.last_list = self.dest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from megatron_align.merging.methods import METHODS

    parser.add_argument("output", nargs="?", help="output directory (an HF model directory, or a checkpoint root)")
    parser.add_argument("--method", required=True, choices=list(METHODS), help="merge method")
    parser.add_argument("--models", nargs="+", action=_List, required=True, metavar="CKPT",
                        help="the models to merge (HF directories or megatron_align checkpoints)")
    parser.add_argument("--base", default=None, metavar="CKPT",
                        help="the model the others were fine-tuned from (task_arithmetic, model_stock, ties, dare_*)")
    parser.add_argument("--weights", nargs="+", action=_List, default=None, metavar="W",
                        help="one weight per --models entry (default 1 each)")
    parser.add_argument("--lambda", dest="lam", type=float, default=None, metavar="L",
                        help="scale of the combined task vector (task_arithmetic, ties, dare_*; default 1)")
    parser.add_argument("--density", type=float, default=None,
                        help="fraction of each task vector kept (ties, dare_*; default 1)")
    norm = parser.add_mutually_exclusive_group()
    norm.add_argument("--normalize", dest="normalize", action="store_true", default=None,
                      help="divide by the sum of the weights (default on for linear and ties)")
    norm.add_argument("--no-normalize", dest="normalize", action="store_false")
    parser.add_argument("--filter-wise", action="store_true", help="model_stock: one ratio per output row")
    parser.add_argument("--seed", type=int, default=0, help="seed of the DARE drop masks")
    parser.add_argument("--to", choices=("hf", "mcore"), default=None,
                        help="output form (default: the form of the base, else of the first model)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                        help="output dtype (default: the first model's)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (HF output)")
    parser.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")


def run(args: argparse.Namespace) -> int:
    from megatron_align.convert.api import DTYPES
    from megatron_align.convert.hf_io import parse_size
    from megatron_align.errors import UserError
    from megatron_align.merging.merge import MergeSpec, merge

    if args.output is None and getattr(args, "last_list", None) and len(getattr(args, args.last_list)) > 1:
        args.output = getattr(args, args.last_list).pop()
    if args.output is None:
        raise UserError("the output directory is missing (megatron-align merge ... OUTPUT)")
    try:
        weights = None if args.weights is None else [float(w) for w in args.weights]
    except ValueError as exc:
        raise UserError(f"--weights: {exc}") from None
    spec = MergeSpec(method=args.method, models=list(args.models), output=args.output, base=args.base,
                     weights=weights, lam=args.lam, density=args.density, normalize=args.normalize,
                     filter_wise=args.filter_wise, seed=args.seed, to=args.to,
                     dtype=DTYPES[args.dtype] if args.dtype else None, force=args.force,
                     max_shard_size=parse_size(args.max_shard_size))
    summary = merge(spec)
    print(json.dumps(summary))
    return 0
