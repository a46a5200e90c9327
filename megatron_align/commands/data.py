"""`megatron-align data preview [--config FILE.yaml] [--stage sft|rm|dpo] [--n N] [--ids] [section.key=value ...]`

What a stage trains on, before it runs: the chat template chosen (the checkpoint's own or a built-in), the first N
samples rendered as text with the trained spans marked ``[[...]]`` (``--ids``: one line per token with its id and
flag), and the data summary (samples, tokens, trained-token share, truncated / dropped / skipped counts). Runs on
CPU, tokenizes only ``data.path`` (never ``data.eval_path``).
"""

from __future__ import annotations

import argparse
from typing import List

OPEN, CLOSE = "[[", "]]"
STAGES = ("sft", "rm", "dpo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("preview", help="rendered samples with the trained spans marked, and the data summary")
    p.add_argument("--config", default=None, help="the stage's YAML config (default: the bundled tiny demo data)")
    p.add_argument("--stage", choices=STAGES, default="sft",
                   help="which stage's data format and config to read (default: sft)")
    p.add_argument("--n", type=int, default=3, help="samples (or pairs) to print (default 3)")
    p.add_argument("--ids", action="store_true", help="print each token's position, id, text and trained flag")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.template=chatml data.system_prompt=null")


def _config_class(stage: str):
    if stage == "rm":
        from megatron_align.config.rm import RMConfig
        return RMConfig
    if stage == "dpo":
        from megatron_align.config.dpo import DPOConfig
        return DPOConfig
    from megatron_align.config.sft import SFTConfig
    return SFTConfig


def _arch_or_family(model_cfg):
    """The model's ArchSpec when the config names one (it picks llama3.1 for 3.1 presets), else its family."""
    from megatron_align.models.families import resolve_arch

    if model_cfg.name is None and model_cfg.hf_config is None:
        return model_cfg.family
    return resolve_arch(model_cfg.name, model_cfg.hf_config, model_cfg.family, model_cfg.num_layers)


def render_marked(tok, ids, mask) -> str:
    """Decoded text with each run of trained tokens wrapped in [[ ]]."""
    out: List[str] = []
    k = 0
    while k < len(ids):
        j = k
        while j < len(ids) and bool(mask[j]) == bool(mask[k]):
            j += 1
        text = tok.decode([int(i) for i in ids[k:j]])
        out.append(OPEN + text + CLOSE if mask[k] else text)
        k = j
    return "".join(out)


def render_ids(tok, ids, mask) -> str:
    return "\n".join(f"{k:6d} {int(i):8d} {'T' if m else '.'} {tok.decode([int(i)])!r}"
                     for k, (i, m) in enumerate(zip(ids, mask)))


def _docs(dataset, n: int):
    """(title, Sample) of the first ``n`` units."""
    for u in dataset.get_units(range(min(n, len(dataset)))):
        roles = {0: "chosen", 1: "rejected"} if len(u.docs) == 2 else {}
        for d in u.docs:
            name = f"unit {u.unit_id}" + (f" {roles[d.role]}" if d.role in roles else "")
            yield name + (f", category {u.category}" if u.category else ""), d


def _summary(dataset) -> str:
    tokens = trained = 0
    for u in dataset.get_units(range(len(dataset))):
        for d in u.docs:
            tokens += len(d)
            trained += int(d.target_mask[1:].sum())  # position 0 is never a label
    st = dataset.stats
    return (f"{len(dataset)} units, {tokens} tokens, {trained} trained ({trained / max(tokens, 1):.1%}); "
            f"truncated {st.n_truncated}, dropped {st.n_dropped}, skipped bad lines {st.n_skipped_bad}"
            + (f", nothing to train {st.n_nothing_to_train}" if st.n_nothing_to_train else "")
            + (f", identical pairs skipped {st.n_identical}" if st.n_identical else ""))


def run(args: argparse.Namespace) -> int:
    from megatron_align.config.base import load_config
    from megatron_align.data.builder import tokenizer_and_template
    from megatron_align.errors import UserError

    if args.n < 0:
        raise UserError(f"--n must be >= 0, got {args.n}")
    cfg = load_config(_config_class(args.stage), args.config, args.overrides)
    model = _arch_or_family(cfg.model)
    tok, template = tokenizer_and_template(cfg.data, model)
    data = cfg.data
    if args.stage == "sft":
        from megatron_align.data.builder import open_data
        dataset = open_data(data.path, data, tok, template)
    elif args.stage == "dpo" and cfg.dpo.loss_type == "kto":
        from megatron_align.stages.dpo import open_unpaired
        dataset = open_unpaired(data.path, data, template)
    else:
        from megatron_align.stages.rm import open_pairs
        dataset = open_pairs(data.path, data, template)
    print(f"template: {template.describe()}; system prompt: {template.system_text!r}")
    print(f"tokenizer: {tok.file} ({tok.kind}, {tok.vocab_size} ids); data: {data.path}; "
          f"seq_length {data.seq_length}, overlong {data.overlong}")
    for title, doc in _docs(dataset, args.n):
        print(f"\n--- {title}: {len(doc)} tokens, {int(doc.target_mask.sum())} trained {OPEN}...{CLOSE} ---")
        print(render_ids(tok, doc.input_ids, doc.target_mask) if args.ids
              else render_marked(tok, doc.input_ids, doc.target_mask))
    print(f"\nsummary: {_summary(dataset)}")
    return 0
