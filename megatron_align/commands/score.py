"""`megatron-align score --load RM --data IN.jsonl --out OUT.jsonl [parallel.tp=2 ...]` (under torchrun or srun)

The reward of each line under a reward model, at any TP/PP (DP = the rest). Input lines:
``{"prompt": [messages] | "text", "response": [assistant message(s)] | "text", ...}`` (rendered with the
checkpoint's tokenizer and the family's chat template, exactly as the RM stage renders a pair's side), or
pre-tokenized ``{"input_ids": [...]}``. Output lines, in input order: the input's other fields plus
``"reward"`` (the scalar head at the sequence's last token). Used for data filtering and by the RL stage.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import List

from megatron_align.config.forward import ForwardJob, add_forward_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_forward_arguments(parser, load_help='reward-model checkpoint (run directory, step or release/)',
                          data_help='JSONL: {"prompt": ..., "response": ...} or {"input_ids": [...]}')


def read_scoring_lines(path: str, template, seq_length: int, vocab_size: int):
    """(records, samples): one document per line; errors name path:line."""
    import numpy as np

    from megatron_align.data.errors import DataError
    from megatron_align.data.jsonl import iter_records
    from megatron_align.data.preference import PairRecord, _encode_side, _ids, _messages
    from megatron_align.data.samples import Sample

    def parse(obj):
        if not isinstance(obj, dict):
            raise ValueError(f"record must be a JSON object, got {type(obj).__name__}")
        if "input_ids" in obj:
            ids = _ids(obj["input_ids"], "input_ids")
            if not ids:
                raise ValueError("'input_ids' is empty")
            return obj, PairRecord(None, None, None, (), ids, ids)
        for f in ("prompt", "response"):
            if f not in obj:
                raise ValueError(f"missing '{f}' (expected prompt + response, or input_ids)")
        if template is None:
            raise ValueError("a prompt/response line needs a tokenizer (none in the checkpoint; pass --tokenizer)")
        resp = _messages(obj["response"], "response", "assistant")
        return obj, PairRecord(_messages(obj["prompt"], "prompt", "user"), resp, resp)

    records, samples = [], []
    for lineno, (obj, rec) in iter_records(path, parse):
        ids, mask = _encode_side(template, rec, "chosen")
        if len(ids) > seq_length:
            raise DataError(path, lineno, f"sequence of {len(ids)} tokens is longer than --seq-length={seq_length}")
        if int(ids.max()) >= vocab_size:
            raise DataError(path, lineno, f"token id {int(ids.max())} is outside the vocabulary [0, {vocab_size})")
        samples.append(Sample(len(records), ids, np.ones_like(mask)))
        records.append(obj)
    return records, samples


def run(args: argparse.Namespace) -> int:
    from megatron_align.checkpoint import layout
    from megatron_align.config.base import load_config
    from megatron_align.errors import UserError

    job = load_config(ForwardJob, args.config, args.overrides)
    if args.seq_length < 2 or args.micro_batch_size < 1:
        raise UserError("--seq-length must be >= 2 and --micro-batch-size >= 1")
    ckpt = layout.resolve(args.load)
    arch = layout.read_arch(ckpt)
    if not (arch.extra or {}).get("reward_head"):
        raise UserError(f"{ckpt} has a language-model head, not a reward head: train one with `megatron-align rm`")
    from megatron_align.engine.session import check_layout

    check_layout(arch, job.parallel)
    template = _template(args, ckpt, arch)
    records, samples = read_scoring_lines(args.data, template, args.seq_length, arch.vocab_size)
    return _score(args, job, records, samples)


def _template(args, ckpt: str, arch):
    from megatron_align.checkpoint import layout
    from megatron_align.data.templates import build_template, resolve_template_name
    from megatron_align.data.tokenizer import load_tokenizer

    tok_path = args.tokenizer or os.path.join(ckpt, layout.TOKENIZER_DIR)
    if not (os.path.isfile(tok_path) or os.path.isfile(os.path.join(tok_path, "tokenizer.json"))):
        return None
    return build_template(resolve_template_name(args.template, arch.family), load_tokenizer(tok_path))


def _score(args, job, records: List[dict], samples) -> int:
    import torch.distributed as dist

    from megatron_align.engine.collect import run_per_document, write_in_input_order
    from megatron_align.engine.session import frozen_from_checkpoint
    from megatron_align.runtime import setup_runtime, teardown

    rt = setup_runtime(job.parallel, seed=0)
    try:
        session = frozen_from_checkpoint(args.load, job.model, job.parallel, seq_length=args.seq_length,
                                         micro_batch_size=args.micro_batch_size)

        def rewards(inputs, values):
            r = values.reshape(-1).float()[inputs.docs.last].tolist()
            return dict(zip(inputs.docs.sample_ids, r))

        merged = run_per_document(session, samples, rewards, device=rt.device)
        if merged is not None:
            write_in_input_order(args.out, merged, len(records), lambda i, r: {**records[i], "reward": r}, "reward")
            print(json.dumps({"out": args.out, "lines": len(records), "tp": job.parallel.tp, "pp": job.parallel.pp,
                              "dp": rt.dp}))
        dist.barrier()
    finally:
        teardown()
    return 0
