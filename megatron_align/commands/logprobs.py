"""`megatron-align logprobs --load CKPT --data IN.jsonl --out OUT.jsonl [parallel.tp=2 parallel.pp=2 ...]`

Token log-probs of sequences under a checkpoint (how reference log-probs for DPO are precomputed).
Run under torchrun or srun at any TP/PP (DP = the rest). Input records: ``{"input_ids": [...]}`` or any chat
record format that ``sft`` reads (messages, sharegpt, alpaca, prompt/completion, query/response, text; tokenized
with the checkpoint's tokenizer/ or ``--tokenizer`` and ``--template`` or the family's chat template), read and
validated by the same reader as ``sft``. Output lines, in input order: ``{"token_logprobs": [log p(ids[i+1] | ids[:i+1]) for i < n-1],
"sum": float}``. Sequences are packed several per row (document ids isolate attention, positions
restart) and run forward-only through megatron's pipeline schedule; only global rank 0 writes.
"""

from __future__ import annotations

import argparse
import json
from typing import List, Optional

from megatron_align.errors import UserError
from megatron_align.config.forward import ForwardJob, add_forward_arguments



class LogprobsError(UserError, ValueError):
    """Bad input for `logprobs`; the message names the file and line."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_forward_arguments(parser, load_help='checkpoint root (with `latest`) or checkpoint directory',
                          data_help='JSONL: {"input_ids": [...]} or a chat record ({"messages": [...]}, ...) '
                                    'per line')


# -- input --------------------------------------------------------------------------------------------
def read_sequences(path: str, seq_length: int, template=None) -> List[List[int]]:
    """One id list per record, read by the same reader as training (:mod:`megatron_align.data.formats`): the
    ``tokens`` format (``input_ids``, on any line) or any chat format (one per file), which ``template`` encodes (the whole conversation, or
    a raw text document). The same records are refused as by ``sft``, with the same ``path:line: reason``."""
    from megatron_align.data.errors import DataError
    from megatron_align.data.formats import RecordReader
    from megatron_align.data.jsonl import iter_records
    from megatron_align.data.schema import Conversation, RecordError

    seqs: List[List[int]] = []
    for lineno, rec in iter_records(path, RecordReader(("tokens", "chat"), any_line=("tokens",)), "error"):
        if isinstance(rec, Conversation):
            if template is None:
                raise DataError(path, lineno, "a chat record needs a tokenizer (none in the checkpoint; pass "
                                              "--tokenizer)")
            try:
                ids = template.encode_conversation(rec).ids
            except RecordError as exc:
                raise DataError(path, lineno, str(exc)) from None
        else:
            ids = list(rec)
        if len(ids) > seq_length:
            raise DataError(path, lineno, f"sequence of {len(ids)} tokens is longer than --seq-length={seq_length}")
        seqs.append(ids)
    return seqs


def chat_template(tokenizer_path: str, template: Optional[str], family: str):
    """The template chat records are encoded with: ``--template`` or the family's built-in."""
    from megatron_align.data.templates import build_template, resolve_template_name
    from megatron_align.data.tokenizer import ChatTokenizer

    return build_template(resolve_template_name(template, family), ChatTokenizer(tokenizer_path))


# -- run --------------------------------------------------------------------------------------------------
def compute_logprobs(args: argparse.Namespace, job: ForwardJob) -> int:
    """Pack the sequences exactly like training (best-fit rows of isolated documents, positions restarting,
    ``cu_seqlens`` for the THD path) and run them forward-only through a frozen :class:`ModelSession`, i.e.
    through the same forward as training for the configured ``model.transformer_impl``."""
    import os

    import numpy as np
    import torch.distributed as dist

    from megatron_align.checkpoint import layout
    from megatron_align.data.samples import Sample
    from megatron_align.engine.collect import run_per_document, write_in_input_order
    from megatron_align.engine.session import check_layout, frozen_from_checkpoint
    from megatron_align.ops import token_logprobs
    from megatron_align.runtime import setup_runtime, teardown

    ckpt = layout.resolve(args.load)
    arch = layout.read_arch(ckpt)
    if (arch.extra or {}).get("reward_head") is not None:
        raise LogprobsError(f"{ckpt} has a scalar (reward) head, not a language-model head: no token log-probs")
    if args.seq_length < 2 or args.micro_batch_size < 1:
        raise LogprobsError("--seq-length must be >= 2 and --micro-batch-size >= 1")
    check_layout(arch, job.parallel)
    tok_path = args.tokenizer or os.path.join(ckpt, layout.TOKENIZER_DIR)
    template = None
    if os.path.exists(tok_path) and (os.path.isfile(tok_path) or os.path.isfile(os.path.join(tok_path, "tokenizer.json"))):
        template = chat_template(tok_path, args.template, arch.family)
    seqs = read_sequences(args.data, args.seq_length, template)
    bad = next(((i, max(s)) for i, s in enumerate(seqs) if max(s) >= arch.vocab_size or min(s) < 0), None)
    if bad is not None:
        raise LogprobsError(f"{args.data}: sequence {bad[0] + 1} has token id {bad[1]} outside the vocabulary "
                            f"[0, {arch.vocab_size})")
    samples = [Sample(i, np.asarray(s, dtype=np.int64), np.ones(len(s), dtype=np.uint8)) for i, s in enumerate(seqs)]

    rt = setup_runtime(job.parallel, seed=0)
    try:
        session = frozen_from_checkpoint(ckpt, job.model, job.parallel, seq_length=args.seq_length,
                                         micro_batch_size=args.micro_batch_size)
        from megatron_align.convert.inference import tp_group_or_none

        tp_group = tp_group_or_none()

        def per_token(inputs, logits):
            from megatron_align.ops.fused_linear import LMHeadInput

            if isinstance(logits, LMHeadInput):  # model.loss_backend=fused_linear
                lp = logits.logprobs(inputs.labels).float().cpu()
            else:
                lp = token_logprobs(logits.reshape(-1, logits.shape[-1]), inputs.labels.reshape(-1),
                                   tp_group=tp_group).float().cpu()
            docs = inputs.docs
            return {sid: lp[a:a + n - 1].tolist()
                    for sid, a, n in zip(docs.sample_ids, docs.start.tolist(), docs.length.tolist())}

        merged = run_per_document(session, samples, per_token, device=rt.device)
        if merged is not None:
            write_in_input_order(args.out, merged, len(seqs), lambda i, lp: {"token_logprobs": lp, "sum": float(sum(lp))},
                                 "log-probs")
            print(json.dumps({"out": args.out, "sequences": len(seqs), "tp": job.parallel.tp, "pp": job.parallel.pp,
                              "dp": rt.dp}))
        dist.barrier()
    finally:
        teardown()
    return 0


def run(args: argparse.Namespace) -> int:
    from megatron_align.config.base import load_config

    job = load_config(ForwardJob, args.config, args.overrides)
    return compute_logprobs(args, job)
