"""`megatron-align preprocess`: tokenize chat JSONL into megatron indexed binary files (.bin/.idx/.docs.npy/.meta.json)
on ``--workers`` processes (default: every core this process may use; the output is identical for any number)."""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from megatron_align.data.config import DEFAULT_TOKENIZER, ON_BAD_LINE_CHOICES, OVERLONG_CHOICES, TEMPLATE_CHOICES

    parser.add_argument("--input", required=True,
                        help="chat data: any path data.path reads (JSONL, .gz/.zst, JSON array, Parquet/Arrow, a "
                             "save_to_disk directory, a directory or glob of shards)")
    parser.add_argument("--output-prefix", required=True,
                        help="writes <prefix>.bin, .idx, .docs.npy, .meta.json (a data-file suffix such as "
                             ".jsonl is dropped); train with data.path=<prefix>")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                        help="directory with tokenizer.json, or the file (default: bundled tiny tokenizer)")
    parser.add_argument("--template", choices=TEMPLATE_CHOICES, default=None,
                        help="chat template (default: the --family default)")
    parser.add_argument("--family", default=None, help="model family picking the default template (llama, qwen2, baichuan2)")
    parser.add_argument("--system-prompt", default="default",
                        help="system prompt for conversations without one: 'default' (the template's own, as "
                             "data.system_prompt's default), 'none', or the text")
    parser.add_argument("--seq-length", type=int, default=None, help="apply the over-long policy at this length")
    parser.add_argument("--overlong", choices=OVERLONG_CHOICES, default="truncate",
                        help="samples longer than --seq-length: truncate or drop (default: truncate)")
    parser.add_argument("--on-bad-line", choices=ON_BAD_LINE_CHOICES, default="error",
                        help="malformed records: stop with file:line (error) or count and skip them")
    from megatron_align.data.config import FORMAT_CHOICES

    parser.add_argument("--format", choices=FORMAT_CHOICES, default="auto",
                        help="record format of the input (default: detected from its first valid record)")
    parser.add_argument("--workers", type=int, default=None,
                        help="tokenizer processes (default: the cores this process may use, os.sched_getaffinity); "
                             "the output is identical for any number")


def run(args: argparse.Namespace) -> int:
    from megatron_align.data.indexed import preprocess
    from megatron_align.data.templates import resolve_template_name
    from megatron_align.errors import UserError

    try:
        template = resolve_template_name(args.template, args.family)
    except ValueError as exc:
        raise UserError(f"--template/--family: {exc}") from None
    if args.seq_length is not None and args.seq_length < 2:
        raise UserError(f"--seq-length must be >= 2, got {args.seq_length}")
    from megatron_align.data.parallel import default_workers

    workers = default_workers() if args.workers is None else args.workers
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    system_prompt = None if args.system_prompt.lower() in ("none", "null") else args.system_prompt
    prefix = output_prefix(args.output_prefix)
    stats = preprocess(args.input, prefix, args.tokenizer, template, seq_length=args.seq_length,
                       overlong=args.overlong, on_bad_line=args.on_bad_line, system_prompt=system_prompt,
                       workers=workers, record_format=args.format)
    print(json.dumps({"output_prefix": prefix, "data_path": prefix, "template": template, **stats.as_dict()}))
    print(f"wrote {prefix}.bin, {prefix}.idx, {prefix}.docs.npy, {prefix}.meta.json; train with data.path={prefix}",
          file=sys.stderr)
    return 0


def output_prefix(given: str) -> str:
    """``--output-prefix`` without a data-file suffix (``out/x.jsonl`` -> ``out/x``): the prefix names the
    .bin/.idx/.meta.json trio, and ``data.path=out/x`` (or ``out/x.jsonl``) then finds it."""
    from megatron_align.data.sources import strip_data_suffix
    from megatron_align.errors import UserError

    prefix = strip_data_suffix(given)
    if not prefix or given.endswith(("/", os.sep)) or os.path.isdir(prefix):
        raise UserError(f"--output-prefix {given!r}: expected a file prefix such as out/train (writes "
                        f"out/train.bin, .idx, .meta.json), not a directory")
    return prefix
