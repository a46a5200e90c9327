"""`megatron-align prompts select --input prompts.jsonl --out selected.jsonl [--config F.yaml] [key=value ...]`

Prompt selection (the report's data pipeline, and PAS's prompt pool): quality cut, MinHash + embedding
deduplication, layered spherical k-means, diversity sampling to a target. Flags set the most used keys of
:class:`megatron_align.prompts.config.SelectConfig`; every key is settable in the YAML or as a dotted override
(``cluster.levels=[16,4] dedup.keep=quality``). Prints one JSON summary line on stdout. See docs/prompt-selection.md.
"""

from __future__ import annotations

import argparse
import json
import os

# flag -> dotted config key (flags win over --config and the positional overrides)
_FLAG_KEYS = {
    "embedding_model": "embedding.model",
    "embeddings": "embedding.embeddings",
    "embedding_backend": "embedding.backend",
    "target": "selection.target",
    "fraction": "selection.fraction",
    "dedup_threshold": "dedup.threshold",
    "min_quality": "quality.min_quality",
    "quality_fn": "quality.function",
    "on_bad_line": "on_bad_line",
    "seed": "selection.seed",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("select", help="deduplicate, cluster, score and sample prompts",
                       description="deduplicate, cluster, score and sample prompts (JSON summary on stdout)")
    p.add_argument("--input", required=True, help='prompt JSONL: "prompt", "messages" (first user turn) or "text"')
    p.add_argument("--out", required=True, help="selected JSONL: input lines + cluster, quality, dup_count")
    p.add_argument("--config", default=None, help="YAML with sections embedding, dedup, cluster, quality, selection")
    p.add_argument("--embedding-model", default=None, metavar="PATH",
                   help="local sentence-embedding model (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--embeddings", default=None, metavar="FILE.npy",
                   help="precomputed embeddings, row i = the i-th record (non-blank line, bad ones included)")
    p.add_argument("--embedding-backend", default=None,
                   help="auto | sentence-transformers | transformers | hashing")
    p.add_argument("--target", type=int, default=None, help="number of prompts to select")
    p.add_argument("--fraction", type=float, default=None, help="fraction of the deduplicated prompts to select")
    p.add_argument("--dedup-threshold", type=float, default=None, help="embedding cosine of near-duplicates (0.9)")
    p.add_argument("--min-quality", type=float, default=None, help="drop prompts scoring below this (0.5)")
    p.add_argument("--quality-fn", default=None, metavar="FILE.py:FN", help="user scorer fn(text, record) -> float")
    p.add_argument("--on-bad-line", default=None, help="error (file:line, exit 2) | skip (counted)")
    p.add_argument("--seed", type=int, default=None, help="seed of k-means and sampling")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. cluster.levels=[16,4] dedup.keep=quality")


def run(args: argparse.Namespace) -> int:
    from megatron_align.config.base import dump_yaml, load_config
    from megatron_align.prompts.config import SelectConfig
    from megatron_align.prompts.select import select_prompts

    overrides = list(args.overrides)
    if args.quality_fn and ":" in args.quality_fn:  # a flag's relative path is the shell's, not the config's
        path, _, fn = args.quality_fn.rpartition(":")
        args.quality_fn = f"{os.path.abspath(path)}:{fn}"
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    if args.no_progress:
        overrides.append("progress=false")
    cfg = load_config(SelectConfig, args.config, overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    base_dir = os.path.dirname(os.path.abspath(args.config)) if args.config else os.getcwd()
    summary = select_prompts(args.input, args.out, cfg, base_dir)
    print(json.dumps(summary.__dict__))
    return 0
