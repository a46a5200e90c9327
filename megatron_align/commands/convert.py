"""`megatron-align convert SRC DST [--to hf|mcore]`: checkpoints Hugging Face <-> Megatron, streamed.

HF -> Megatron writes ``DST/release/{arch.json, model/, tokenizer/}`` + ``DST/latest`` (loadable at any
TP/PP/VPP); Megatron -> HF writes config.json, safetensors shards + index and the tokenizer files.
"""

from __future__ import annotations

import argparse
import json
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="HF model directory, or a megatron_align checkpoint (root with `latest` "
                                    "or a checkpoint directory)")
    parser.add_argument("dst", help="output: a checkpoint root (to mcore) or an HF model directory (to hf)")
    parser.add_argument("--to", choices=("hf", "mcore"), default=None,
                        help="direction (default: inferred from SRC)")
    parser.add_argument("--family", choices=("llama", "qwen2", "baichuan2"), default=None,
                        help="expected model family; a checkpoint of another family is an error")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                        help="cast weights (default: keep the stored dtype)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (to hf), e.g. 5GB, 500MB")
    parser.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                        help="vocabulary padding of the stored embedding (to mcore); loads at any TP regardless")


def run(args: argparse.Namespace) -> int:
    from megatron_align.convert.api import convert
    from megatron_align.convert.hf_io import parse_size

    start = time.perf_counter()
    out = convert(args.src, args.dst, to=args.to, family=args.family, dtype=args.dtype,
                  max_shard_size=parse_size(args.max_shard_size),
                  make_vocab_size_divisible_by=args.make_vocab_size_divisible_by)
    print(json.dumps({"src": args.src, "output": out, "seconds": round(time.perf_counter() - start, 2)}))
    return 0
