"""The DPO family on the trainer core: preference pairs packed as (chosen, rejected) documents of one row ->
per-sequence log-prob sums of the responses (``ops.packed_sequence_logprobs``, vocab-parallel, no [tokens, vocab]
fp32 temporaries) -> the loss of ``dpo.loss_type`` (TRL 1.16 definitions, losses/dpo.py), the mean over the pairs
of the global batch.

Reference log-probs: ``dpo.reference=online`` holds a frozen reference model at the policy's layout and runs it on
the same packed rows in the same step; ``cache`` reads them from a file written before training by
``megatron-align dpo --precompute-reference`` (keyed by the data, tokenizer, template and row settings: a cache of
other data is refused). SimPO and ORPO need no reference and load none.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Optional

import torch

from megatron_align.config.base import ConfigError
from megatron_align.config.dpo import DPOConfig
from megatron_align.data.errors import DataError
from megatron_align.engine.trainer import Stage, StageData, Trainer, run_trainer

CACHE_VERSION = 1


def _sha256(path: Optional[str]) -> Optional[str]:
    if not path:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class DPOStage(Stage):
    name = "dpo"

    def __init__(self, cfg: DPOConfig, *, read_cache: bool = True) -> None:
        super().__init__(cfg)
        self.ref_session = None
        self.needs_reference = cfg.dpo.loss_type not in ("simpo", "orpo")
        # the cache is read when training with dpo.reference=cache, never while writing it (--precompute-reference)
        self.read_cache = read_cache and self.needs_reference and cfg.dpo.reference == "cache"
        cached = ("ref_logp",) if self.read_cache else ()
        self.value_keys = cached + (("label",) if cfg.dpo.loss_type == "kto" else ())

    # ------------------------------------------------------------------------------------------- data
    def build_data(self, arch) -> StageData:
        from megatron_align.data.builder import tokenizer_and_template
        from megatron_align.stages.rm import open_pairs

        cfg = self.cfg
        if cfg.dpo.loss_type == "kto" and cfg.dpo.reference != "online":
            raise ConfigError("dpo.reference: KTO's KL term needs the reference on mismatched pairs of each batch; "
                              "use dpo.reference=online")
        tok, self.template = tokenizer_and_template(cfg.data, arch)
        opener = open_unpaired if cfg.dpo.loss_type == "kto" else open_pairs
        train = opener(cfg.data.path, cfg.data, self.template, arch.vocab_size)
        evalds = opener(cfg.data.eval_path, cfg.data, self.template, arch.vocab_size) if cfg.data.eval_path else None
        if self.read_cache:
            self._apply_cache(train, evalds, tok)
        cats = tuple(sorted({u.category for u in (evalds.units() if evalds else []) if u.category is not None}))
        st = train.stats
        unit = "examples" if cfg.dpo.loss_type == "kto" else "pairs"
        summary = (f"{len(train)} {unit} (truncated {st.n_truncated}, dropped {st.n_dropped}, identical responses "
                   f"skipped {st.n_identical}, skipped bad lines {st.n_skipped_bad}); loss {cfg.dpo.loss_type}, "
                   f"reference {cfg.dpo.reference if self.needs_reference else 'none'}")
        return StageData(tok, train, evalds, groups={"category": cats}, summary=summary)

    # ------------------------------------------------------------------------------------------- reference
    def cache_path(self) -> str:
        return self.cfg.dpo.reference_cache or os.path.join(self.cfg.output_dir, "reference_logps.jsonl")

    def reference_load(self) -> str:
        path = self.cfg.dpo.reference_load or self.cfg.train.load
        if not path:
            raise ConfigError("dpo.reference_load: the reference model is needed (set dpo.reference_load or "
                              "train.load, the checkpoint the policy starts from)")
        return path

    def cache_key(self, tokenizer) -> Dict[str, Any]:
        d = self.cfg.data
        return {"version": CACHE_VERSION, "data": os.path.abspath(d.path), "data_sha256": _sha256(d.path),
                "eval_data_sha256": _sha256(d.eval_path), "tokenizer_sha256": _sha256(tokenizer.file),
                "template": self.template.name, "system_prompt": self.template.system_prompt,
                "seq_length": d.seq_length, "overlong": d.overlong}

    def _apply_cache(self, train, evalds, tok) -> None:
        path = self.cache_path()
        if not os.path.isfile(path):
            raise DataError(path, None, "no reference cache: write it first with `megatron-align dpo --config ... "
                                        "--precompute-reference` (or set dpo.reference=online)")
        with open(path) as f:
            header = json.loads(f.readline())
            key = header.get("key", {})
            want = self.cache_key(tok)
            for k, v in want.items():
                if k != "data" and key.get(k) != v:
                    raise DataError(path, 1, f"stale reference cache: {k} is {key.get(k)!r} in the cache but "
                                             f"{v!r} for this run (other data, tokenizer, template or row "
                                             f"settings); recompute it with --precompute-reference")
            values = {(rec["split"], rec["doc"]): rec["ref_logp"] for rec in map(json.loads, f)}
        for split, ds in (("train", train), ("eval", evalds)):
            for u in (ds.units() if ds is not None else []):
                for d in u.docs:
                    if (split, d.sample_id) not in values:
                        raise DataError(path, None, f"stale reference cache: no value for {split} document "
                                                    f"{d.sample_id}; recompute it with --precompute-reference")
                    d.values["ref_logp"] = values[(split, d.sample_id)]

    def on_setup(self, trainer: Trainer) -> None:
        if not self.needs_reference or self.cfg.dpo.reference != "online":
            return
        self.ref_session = open_reference(self.reference_load(), trainer)

    def prepare_step(self, trainer: Trainer, micro_batches, inputs) -> None:
        if self.ref_session is None:
            return
        results = response_logps(self.ref_session, inputs)
        if results:  # else: not the last pipeline stage, where the objective does not run
            for x in inputs:
                if x.docs is not None:
                    x.docs.values["ref_logp"] = torch.tensor([results[s] for s in x.docs.sample_ids],
                                                             dtype=torch.float64, device=x.tokens.device)
        if self.cfg.dpo.loss_type == "kto":
            self.z0 = self._kto_z0(trainer)
            for obj in (trainer.objective, trainer.eval_obj):
                if obj is not None:
                    obj.z0 = self.z0

    def _kto_z0(self, trainer: Trainer) -> float:
        """max(0, mean over the global batch of log π(y'|x) − log π_ref(y'|x)) on the mismatched documents
        (TRL's rotation by one), computed on this DP rank's share and reduced over DP and PP."""
        import torch.distributed as dist
        from megatron.core import parallel_state

        from megatron_align.data.batch import make_micro_batches
        from megatron_align.data.sampler import shard_for_rank
        from megatron_align.engine.inputs import ModelInputs

        docs = trainer.step_dataset.mismatched(trainer.step_ids)
        mine = shard_for_rank(list(range(len(docs))), trainer.dp_rank, trainer.dp_size, [len(d) for d in docs])
        mbs = make_micro_batches([docs[i] for i in mine], self.cfg.data.seq_length, self.cfg.train.micro_batch_size,
                                 True, trainer.data.tokenizer.pad_id)
        inputs = [ModelInputs.from_micro_batch(mb).to(trainer.rt.device) for mb in mbs]
        pol, ref = response_logps(trainer.policy, inputs), response_logps(self.ref_session, inputs)
        total = torch.tensor([sum(pol[k] - ref[k] for k in pol), float(len(pol))], dtype=torch.float64,
                             device=trainer.rt.device)
        for group in (parallel_state.get_data_parallel_group(), parallel_state.get_pipeline_model_parallel_group()):
            dist.all_reduce(total, group=group)
        return max(0.0, float(total[0] / total[1].clamp(min=1)))

    # ------------------------------------------------------------------------------------------- objective
    def extra_counts(self, micro_batches) -> Dict[str, float]:
        response = full = 0.0
        for mb in micro_batches:
            flat_mask = mb.loss_mask.reshape(-1)
            for (start, n), role in zip(mb.doc_spans, mb.doc_roles):
                if role == 0:
                    response += float(flat_mask[start:start + n].sum())
                    full += n - 1
        return {"chosen_response_tokens": response, "chosen_tokens": full}

    def train_objective(self, data: StageData):
        from megatron_align.losses.dpo import KTOObjective, PreferenceObjective

        cls = KTOObjective if self.cfg.dpo.loss_type == "kto" else PreferenceObjective
        return cls(self.cfg.dpo)

    def eval_objective(self, data: StageData):
        from megatron_align.losses.dpo import KTOObjective, PreferenceObjective

        cls = KTOObjective if self.cfg.dpo.loss_type == "kto" else PreferenceObjective
        return cls(self.cfg.dpo, data.groups["category"])


def open_unpaired(path: str, cfg, template, vocab_size=None):
    from megatron_align.data.config import single_path
    from megatron_align.data.preference import UnpairedDataset

    path = single_path(path, "KTO")
    return UnpairedDataset(path, template, cfg.seq_length, cfg.overlong, cfg.on_bad_line, vocab_size, cfg.format)


def _summed_response_logps(inputs, output) -> Dict[int, float]:
    """{sample_id: Σ log p(response tokens)} of one micro-batch's documents (a PerDocument function)."""
    from megatron_align.losses.dpo import doc_logps

    return dict(zip(inputs.docs.sample_ids, doc_logps(inputs, output)[0].tolist()))


def response_logps(session, inputs) -> Dict[int, float]:
    """{sample_id: Σ log p(response tokens)} of every document of ``inputs`` under ``session`` (forward only;
    empty on pipeline stages other than the last)."""
    from megatron_align.engine.collect import PerDocument

    collector = PerDocument(_summed_response_logps)
    session.run(inputs, collector, forward_only=True)
    return collector.results


def open_reference(load: str, trainer: Trainer):
    """The frozen reference at the policy's layout; its architecture must be the policy's."""
    from megatron_align.checkpoint import layout
    from megatron_align.checkpoint.layout import CheckpointError
    from megatron_align.engine.session import frozen_from_checkpoint

    ckpt = layout.resolve(load)
    ref_arch, pol_arch = layout.read_arch(ckpt).to_dict(), trainer.arch.to_dict()
    for k in sorted(set(ref_arch) | set(pol_arch)):
        if k != "extra" and ref_arch.get(k) != pol_arch.get(k):
            raise CheckpointError(f"reference checkpoint {ckpt}: its architecture differs from the policy's "
                                  f"({k}: {ref_arch.get(k)!r} vs {pol_arch.get(k)!r})")
    cfg = trainer.cfg
    return frozen_from_checkpoint(ckpt, cfg.model, cfg.parallel, seq_length=cfg.data.seq_length,
                                  micro_batch_size=cfg.train.micro_batch_size)


class DPOTrainer(Trainer):
    def __init__(self, cfg: DPOConfig) -> None:
        super().__init__(cfg, DPOStage(cfg))


def run_dpo(cfg: DPOConfig):
    return run_trainer(DPOTrainer(cfg))


def precompute_reference(cfg: DPOConfig) -> Dict[str, Any]:
    """Reference log-probs of every train (and eval) document -> the keyed cache file (written by rank 0)."""
    from megatron_align.engine.collect import run_per_document
    from megatron_align.engine.session import resolve_arch_for
    from megatron_align.runtime import setup_runtime, teardown

    stage = DPOStage(cfg, read_cache=False)
    if not stage.needs_reference:
        raise ConfigError(f"dpo.loss_type={cfg.dpo.loss_type} uses no reference model: nothing to precompute")
    load = stage.reference_load()
    from megatron_align.checkpoint import layout

    arch = resolve_arch_for(cfg.model, layout.resolve(load))
    rt = setup_runtime(cfg.parallel, seed=cfg.train.seed, num_attention_heads=arch.num_attention_heads,
                       num_query_groups=arch.num_query_groups)
    try:
        data = stage.build_data(arch)
        from megatron_align.engine.session import frozen_from_checkpoint

        session = frozen_from_checkpoint(load, cfg.model, cfg.parallel, seq_length=cfg.data.seq_length,
                                         micro_batch_size=cfg.train.micro_batch_size)
        records: List[dict] = []
        for split, ds in (("train", data.train), ("eval", data.eval)):
            if ds is None:
                continue
            docs = [d for u in ds.units() for d in u.docs]
            merged = run_per_document(session, docs, _summed_response_logps, pad_id=data.tokenizer.pad_id,
                                      device=rt.device)
            if merged is not None:
                records += [{"split": split, "doc": d.sample_id, "ref_logp": merged[d.sample_id]} for d in docs]
        path = stage.cache_path()
        if rt.is_main:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(json.dumps({"key": stage.cache_key(data.tokenizer), "reference": load}) + "\n")
                f.writelines(json.dumps(r) + "\n" for r in records)
            os.replace(tmp, path)
            print(json.dumps({"reference_cache": path, "documents": len(records)}), flush=True)
        import torch.distributed as dist

        dist.barrier()
        return {"path": path, "documents": len(records)}
    finally:
        teardown()
