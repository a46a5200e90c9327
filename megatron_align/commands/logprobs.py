"""`megatron-align logprobs --load CKPT --data IN.jsonl --out OUT.jsonl [parallel.tp=2 parallel.pp=2 ...]`

Token log-probs of sequences under a checkpoint (how reference log-probs for DPO are precomputed).
Run under torchrun or srun at any TP/PP (DP = the rest). Input lines: ``{"input_ids": [...]}`` or
``{"messages": [...]}`` (tokenized with the checkpoint's tokenizer/ or ``--tokenizer`` and the family's chat
template). Output lines, in input order: ``{"token_logprobs": [log p(ids[i+1] | ids[:i+1]) for i < n-1],
"sum": float}``. Sequences are packed several per row (document ids isolate attention, positions
restart) and run forward-only through megatron's pipeline schedule; only global rank 0 writes.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from megatron_align.config.base import ConfigError, help_field
from megatron_align.errors import UserError
from megatron_align.config.model import ModelConfig
from megatron_align.config.parallel import ParallelConfig

IGNORE_INDEX = -100


@dataclass
class LogprobsJob:
    """The dotted overrides a logprobs run accepts (``model.*``, ``parallel.*``)."""

    model: ModelConfig = help_field(default_factory=ModelConfig, help="Model backends and precision.")
    parallel: ParallelConfig = help_field(default_factory=ParallelConfig, help="TP/PP layout (DP = the rest).")


class LogprobsError(UserError, ValueError):
    """Bad input for `logprobs`; the message names the file and line."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--load", required=True, help="checkpoint root (with `latest`) or checkpoint directory")
    parser.add_argument("--data", required=True, help='JSONL: {"input_ids": [...]} or {"messages": [...]} per line')
    parser.add_argument("--out", required=True, help="output JSONL (written by global rank 0)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer for `messages` lines (default: CKPT's tokenizer/)")
    parser.add_argument("--template", default=None, help="chat template for `messages` (default: the family's)")
    parser.add_argument("--seq-length", type=int, default=2048, help="row length; sequences are packed into rows")
    parser.add_argument("--micro-batch-size", type=int, default=1, help="rows per micro-batch")
    parser.add_argument("--config", default=None, help="optional YAML with model/parallel sections")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. parallel.tp=2 parallel.pp=2")


# -- input --------------------------------------------------------------------------------------------
def read_sequences(path: str, seq_length: int, encode_messages=None) -> List[List[int]]:
    """One id list per line; errors name ``path:line``."""
    seqs: List[List[int]] = []
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise LogprobsError(f"--data {path} does not exist") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise LogprobsError(f"{where}: not valid JSON ({e})") from None
            if isinstance(rec, dict) and "input_ids" in rec:
                ids = rec["input_ids"]
                if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                    raise LogprobsError(f"{where}: input_ids must be a list of integers")
            elif isinstance(rec, dict) and "messages" in rec:
                if encode_messages is None:
                    raise LogprobsError(f"{where}: `messages` needs a tokenizer (none in the checkpoint; pass --tokenizer)")
                ids = encode_messages(rec["messages"], where)
            else:
                raise LogprobsError(f"{where}: expected an object with `input_ids` or `messages`")
            if not ids:
                raise LogprobsError(f"{where}: empty sequence")
            if len(ids) > seq_length:
                raise LogprobsError(f"{where}: sequence of {len(ids)} tokens is longer than --seq-length={seq_length}")
            seqs.append(ids)
    return seqs


def messages_encoder(tokenizer_path: str, template: Optional[str], family: str):
    from megatron_align.data.templates import build_template, resolve_template_name
    from megatron_align.data.tokenizer import ChatTokenizer

    tmpl = build_template(resolve_template_name(template, family), ChatTokenizer(tokenizer_path))

    def encode(messages, where: str) -> List[int]:
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m and "content" in m
                                                     for m in messages):
            raise LogprobsError(f"{where}: messages must be a list of {{role, content}} objects")
        return tmpl.encode([(m["role"], m["content"]) for m in messages]).ids

    return encode


# -- packing --------------------------------------------------------------------------------------------
@dataclass
class Row:
    spans: List[Tuple[int, int, int]] = field(default_factory=list)  # (sequence index, start, length)
    used: int = 0


def pack_rows(lengths: Sequence[int], seq_length: int) -> List[Row]:
    """Next-fit packing in input order (sequences stay contiguous; each row <= seq_length tokens)."""
    rows: List[Row] = []
    for idx, n in enumerate(lengths):
        if not rows or rows[-1].used + n > seq_length:
            rows.append(Row())
        rows[-1].spans.append((idx, rows[-1].used, n))
        rows[-1].used += n
    return rows


def build_micro_batches(seqs: List[List[int]], rows: List[Row], seq_length: int, mbs: int, device):
    """Rows -> TaggedInputs of ``mbs`` rows (padded with empty rows): tokens, restarting positions,
    document ids (padding is a document of its own), next-token labels within each sequence."""
    import torch

    from megatron_align.convert.inference import TaggedInputs

    out = []
    for b in range(0, len(rows), mbs):
        group = rows[b:b + mbs]
        tokens = torch.zeros(mbs, seq_length, dtype=torch.long)
        pos = torch.arange(seq_length).repeat(mbs, 1)
        labels = torch.full((mbs, seq_length), IGNORE_INDEX, dtype=torch.long)
        docs = torch.zeros(mbs, seq_length, dtype=torch.long)
        for r, row in enumerate(group):
            for d, (idx, start, n) in enumerate(row.spans):
                ids = torch.tensor(seqs[idx], dtype=torch.long)
                tokens[r, start:start + n] = ids
                pos[r, start:start + n] = torch.arange(n)
                labels[r, start:start + n - 1] = ids[1:]
                docs[r, start:start + n] = d
            pad_from = row.used
            pos[r, pad_from:] = torch.arange(seq_length - pad_from)
            docs[r, pad_from:] = len(row.spans)
        mask = (labels != IGNORE_INDEX).float()
        out.append(TaggedInputs(tokens.to(device), pos.to(device), labels.to(device), mask.to(device),
                                docs.to(device), batch_id=b // mbs))
    return out


# -- run --------------------------------------------------------------------------------------------------
def compute_logprobs(args: argparse.Namespace, job: LogprobsJob) -> int:
    import os

    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_align.checkpoint import layout
    from megatron_align.convert.inference import build_and_load, forward_only, tp_group_or_none
    from megatron_align.convert.mapping import reward_head
    from megatron_align.models.builder import check_arch_parallel
    from megatron_align.ops import token_logprobs
    from megatron_align.runtime import setup_runtime, teardown

    ckpt = layout.resolve(args.load)
    arch = layout.read_arch(ckpt)
    if reward_head(arch) is not None:
        raise LogprobsError(f"{ckpt} has a scalar (reward) head, not a language-model head: no token log-probs")
    check_arch_parallel(arch, job.parallel)
    if args.seq_length < 2 or args.micro_batch_size < 1:
        raise LogprobsError("--seq-length must be >= 2 and --micro-batch-size >= 1")
    tok_path = args.tokenizer or os.path.join(ckpt, layout.TOKENIZER_DIR)
    encoder = None
    if os.path.exists(tok_path) and (os.path.isfile(tok_path) or os.path.isfile(os.path.join(tok_path, "tokenizer.json"))):
        encoder = messages_encoder(tok_path, args.template, arch.family)
    seqs = read_sequences(args.data, args.seq_length, encoder)
    bad = next(((i, max(s)) for i, s in enumerate(seqs) if max(s) >= arch.vocab_size or min(s) < 0), None)
    if bad is not None:
        raise LogprobsError(f"{args.data}: sequence {bad[0] + 1} has token id {bad[1]} outside the vocabulary "
                            f"[0, {arch.vocab_size})")

    rt = setup_runtime(job.parallel, seed=0)
    try:
        built = build_and_load(ckpt, arch, job.model, job.parallel, args.seq_length)
        rows = pack_rows([len(s) for s in seqs], args.seq_length)
        dp, dp_rank = rt.dp, parallel_state.get_data_parallel_rank()
        all_mbs = build_micro_batches(seqs, rows, args.seq_length, args.micro_batch_size, rt.device)
        mine = all_mbs[dp_rank::dp]
        tp_group = tp_group_or_none()

        def per_token(inputs, logits):
            b, s = inputs.labels.shape
            lp = token_logprobs(logits.reshape(b * s, -1), inputs.labels.reshape(-1), tp_group=tp_group)
            return lp.reshape(b, s).float().cpu()

        outs = forward_only(built.chunks, mine, seq_length=args.seq_length, micro_batch_size=args.micro_batch_size,
                            fn=per_token)
        local: Dict[int, List[float]] = {}
        if outs and parallel_state.get_tensor_model_parallel_rank() == 0:
            for batch_id, lp in outs.items():
                for r, row in enumerate(rows[batch_id * args.micro_batch_size:(batch_id + 1) * args.micro_batch_size]):
                    for idx, start, n in row.spans:
                        local[idx] = lp[r, start:start + n - 1].tolist()
        gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(local, gathered, dst=0)
        if dist.get_rank() == 0:
            merged: Dict[int, List[float]] = {}
            for part in gathered:
                merged.update(part)
            missing = [i for i in range(len(seqs)) if i not in merged]
            if missing:
                raise RuntimeError(f"internal error: no log-probs came back for sequences {missing[:5]}")
            tmp = f"{args.out}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                for i in range(len(seqs)):
                    f.write(json.dumps({"token_logprobs": merged[i], "sum": float(sum(merged[i]))}) + "\n")
            os.replace(tmp, args.out)
            print(json.dumps({"out": args.out, "sequences": len(seqs), "rows": len(rows),
                              "tp": job.parallel.tp, "pp": job.parallel.pp, "dp": dp}))
        dist.barrier()
    finally:
        teardown()
    return 0


def run(args: argparse.Namespace) -> int:
    from megatron_align.config.base import load_config

    job = load_config(LogprobsJob, args.config, args.overrides)
    return compute_logprobs(args, job)
