"""PPO's critic: a value model (``model.head=value``) trained next to the policy with its own optimizer.

It is built at the policy's layout (same TP/PP/DP groups, its own ``TransformerConfig`` and DDP buffers) from a
checkpoint of the policy's architecture: a reward-model checkpoint (its ``reward_head`` becomes the value head,
the usual PPO start) or an LM checkpoint, the policy's start (the value head is then freshly initialised, fp32,
N(0, model.init_std)). The RL stage calls, per rollout batch::

    old = critic.values(inputs)                         # {sample_id: fp32 [response tokens]} on every rank
    # rewards -> GAE per document (losses.rl.gae on stack(old, ids)) -> returns
    set_token_values(inputs, "old_values", old)
    set_token_values(inputs, "returns", returns)
    metrics = critic.update(inputs)                     # one optimizer step, global token mean
    ...
    save_training(..., extras=[critic.save])            # <step>/critic: model, optimizer, LR schedule
    critic.load(step_dir)                               # on resume

A value at position p is the value of the prefix ending at token p, read at the positions that predict a
response token (``loss_mask`` set): exactly the states GAE needs, one per response token.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from megatron_align.config.model import ModelConfig
from megatron_align.config.optim import OptimizerConfig
from megatron_align.config.parallel import ParallelConfig
from megatron_align.engine.inputs import ModelInputs
from megatron_align.engine.objective import StepCounts, finalize, neutral
from megatron_align.losses.value import ValueObjective, explained_variance
from megatron_align.models.arch import ArchSpec

CRITIC_DIR = "critic"


class Critic:
    def __init__(self, model_cfg: ModelConfig, parallel: ParallelConfig, arch: ArchSpec, optim_cfg: OptimizerConfig,
                 *, seq_length: int, micro_batch_size: int, total_steps: int, value_clip: Optional[float],
                 load: Optional[str] = None) -> None:
        """The runtime (process groups) must be set up. ``load``: the initial weights (see the module
        docstring); None keeps the fresh initialisation of every weight. ``total_steps``: critic updates
        the LR schedule spans."""
        from megatron_align.engine.optimizer import build_optimizer, build_scheduler
        from megatron_align.engine.session import ModelSession
        from megatron_align.models.builder import compute_dtype

        self.model_cfg = dataclasses.replace(model_cfg, head="value")
        self.arch = arch.replace(extra=dict(arch.extra or {}, reward_head={"num_labels": 1}))
        self.session = ModelSession(self.model_cfg, parallel, self.arch, seq_length=seq_length,
                                    micro_batch_size=micro_batch_size, trainable=True)
        self.head_init, self.loaded_from = "fresh", None
        if load:
            self.head_init = self._load_initial(load)
        self.session.wrap_for_training(use_distributed_optimizer=parallel.distributed_optimizer)
        self.optimizer = build_optimizer(optim_cfg, self.session.chunks,
                                         params_dtype=compute_dtype(self.model_cfg.precision),
                                         distributed=parallel.distributed_optimizer)
        self.scheduler = build_scheduler(optim_cfg, self.optimizer, total_steps)
        self.objective = ValueObjective(value_clip)
        self.updates = 0

    @classmethod
    def from_config(cls, cfg, arch: ArchSpec, total_steps: int, load: Optional[str] = None) -> "Critic":
        """From an RL stage config (sections model, parallel, data, train, optim, rl): weights from ``load``, else
        ``rl.ppo.critic_load``, else ``train.load``; optimizer ``rl.ppo.critic_optim`` or ``optim`` at
        ``rl.ppo.critic_lr``."""
        ppo = cfg.rl.ppo
        return cls(cfg.model, cfg.parallel, arch, ppo.critic_optimizer(cfg.optim), seq_length=cfg.data.seq_length,
                   micro_batch_size=cfg.train.micro_batch_size, total_steps=total_steps, value_clip=ppo.value_clip,
                   load=load or ppo.critic_load or cfg.train.load)

    def _load_initial(self, load: str) -> str:
        from megatron_align.checkpoint import layout
        from megatron_align.checkpoint.layout import CheckpointError

        ckpt = layout.resolve(load)
        theirs = layout.read_arch(ckpt)
        a, b = theirs.to_dict(), self.arch.to_dict()
        diff = sorted(k for k in set(a) | set(b) if k != "extra" and a.get(k) != b.get(k))
        if diff:
            raise CheckpointError(f"critic checkpoint {ckpt}: its architecture differs from the policy's "
                                  f"({diff[0]}: {a.get(diff[0])!r} vs {b.get(diff[0])!r})")
        self.session.load_weights(ckpt)
        self.loaded_from = ckpt
        return "checkpoint" if (theirs.extra or {}).get("reward_head") else "fresh"

    # ------------------------------------------------------------------------------------------- values
    def values(self, inputs: Sequence[ModelInputs]) -> Dict[int, torch.Tensor]:
        """Forward only: ``{sample_id: fp32 [n_response_tokens]}`` for every document of ``inputs``, the value at
        each position whose ``loss_mask`` is set, in order. Collective over the model's TP/PP group; every rank
        of it gets the values of its own (DP rank's) documents."""
        from megatron_align.engine.collect import PerDocument

        collector = PerDocument(_document_token_values)
        self.session.eval()
        try:
            self.session.run(list(inputs), collector, forward_only=True)
        finally:
            self.session.train()
        return _share_from_last_stage(inputs, collector.results)

    # ------------------------------------------------------------------------------------------- update
    def step_counts(self, inputs: Sequence[ModelInputs]) -> StepCounts:
        """Global response tokens and documents of one update (one all-reduce over DP)."""
        from megatron.core import parallel_state

        dev = inputs[0].tokens.device if inputs else torch.device("cpu")
        docs = sum(len(x.docs.sample_ids) if x.docs is not None else 0 for x in inputs)
        local = torch.tensor([sum(float((x.loss_mask > 0).sum()) for x in inputs), float(docs)],
                             dtype=torch.float64, device=dev)
        dist.all_reduce(local, group=parallel_state.get_data_parallel_group())
        tokens, sequences = local.tolist()
        return StepCounts(tokens=tokens, sequences=sequences, units=sequences)

    def update(self, inputs: Sequence[ModelInputs], counts: Optional[StepCounts] = None) -> Dict[str, float]:
        """One optimizer step of the value loss over ``inputs`` (this DP rank's micro-batches of the step, with
        ``extra["returns"]`` and, when clipping, ``extra["old_values"]``): the token mean over the global step.
        Returns the globally reduced metrics (value_loss, value_clipfrac, values_mean, returns_mean,
        value_explained_var, value_grad_norm, value_lr, value_tokens). Collective over every rank: each DP rank
        passes at least one micro-batch (pad with ``data.batch.empty_micro_batch`` rows to the DP maximum, as the
        trainer does), the ranks of a TP/PP group the same ones."""
        counts = counts if counts is not None else self.step_counts(inputs)
        self.objective.begin_step(counts)
        self.optimizer.zero_grad()
        totals = self.session.run(list(inputs), self.objective)
        ok, grad_norm, _ = self.optimizer.step()
        if ok:  # an fp16 overflow skips the step: the schedule does not advance either
            self.scheduler.step(increment=1)
        self.updates += 1
        reduced = self._reduce(totals, inputs[0].tokens.device if inputs else torch.device("cpu"))
        out = {"value_loss": reduced.get("loss", float("nan")), "value_clipfrac": reduced.get("value_clipfrac"),
               "values_mean": reduced.get("values_mean"), "returns_mean": reduced.get("returns_mean"),
               "value_explained_var": explained_variance(reduced) if "returns_sq" in reduced else float("nan"),
               "value_grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
               "value_lr": self.optimizer.param_groups[0]["lr"], "value_tokens": int(counts.tokens)}
        return {k: v for k, v in out.items() if v is not None}

    def _reduce(self, totals: Dict[str, torch.Tensor], device) -> Dict[str, float]:
        """Every metric of the value objective is a token mean: one SUM over DP, then over PP (stages without
        the loss contribute zeros)."""
        from megatron.core import parallel_state

        specs = self.objective.all_specs()
        flat = torch.cat([(totals[k].to(device=device, dtype=torch.float64) if k in totals
                           else neutral(s, device)).reshape(-1) for k, s in specs.items()])
        for group in (parallel_state.get_data_parallel_group(), parallel_state.get_pipeline_model_parallel_group()):
            dist.all_reduce(flat, group=group)
        return finalize(specs, {k: v.reshape(2) for k, v in zip(specs, flat.split(2))})

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> Dict:
        return {"updates": self.updates, "scheduler": self.scheduler.state_dict(), "head_init": self.head_init,
                "loaded_from": self.loaded_from}

    def save(self, step_dir: str) -> str:
        """Model, optimizer and LR schedule into ``<step_dir>/critic`` (collective); pass it to
        ``save_training(..., extras=[critic.save])`` to write it inside a step checkpoint before its commit."""
        from megatron_align.checkpoint.training import save_component

        directory = os.path.join(step_dir, CRITIC_DIR)
        state = {k: v for k, v in self.state_dict().items() if k != "scheduler"}
        save_component(directory, self.session.chunks, self.optimizer, self.scheduler, self.arch, state)
        return directory

    def load(self, step_dir: str) -> None:
        """Restore what :meth:`save` wrote into ``step_dir`` (exact resume: weights, Adam state, schedule)."""
        from megatron_align.checkpoint.training import load_component

        state = load_component(os.path.join(step_dir, CRITIC_DIR), self.session.chunks, self.optimizer,
                               self.scheduler)
        self.updates = int(state.get("updates", 0))
        self.head_init, self.loaded_from = state.get("head_init", self.head_init), state.get("loaded_from")


# ----------------------------------------------------------------------------------------------- per-token data
def _response_positions(inputs: ModelInputs) -> List[Tuple[int, torch.Tensor]]:
    """(sample_id, flat positions of its loss-mask tokens) per document of a micro-batch."""
    docs = inputs.docs
    if docs is None:
        return []
    flat = inputs.loss_mask.reshape(-1) > 0
    out = []
    for sid, start, n in zip(docs.sample_ids, docs.start.tolist(), docs.length.tolist()):
        pos = torch.arange(start, start + n, device=flat.device)
        out.append((sid, pos[flat[start:start + n]]))
    return out


def _document_token_values(inputs: ModelInputs, output: torch.Tensor) -> Dict[int, torch.Tensor]:
    flat = output.reshape(-1).float()
    return {sid: flat[pos].clone() for sid, pos in _response_positions(inputs)}


def _share_from_last_stage(inputs: Sequence[ModelInputs], local: Dict[int, torch.Tensor]) -> Dict[int, torch.Tensor]:
    """The last pipeline stage's per-document values on every stage: one broadcast of a flat tensor whose layout
    every stage knows from ``inputs``."""
    from megatron.core import parallel_state

    layout = [(sid, int(pos.numel())) for x in inputs for sid, pos in _response_positions(x)]
    ids = [sid for sid, _ in layout]
    if len(set(ids)) != len(ids):
        raise ValueError("Critic.values: sample ids repeat across the documents of the micro-batches")
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return local
    dev = inputs[0].tokens.device if inputs else torch.device("cpu")
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        flat = torch.cat([local[sid] for sid in ids]) if ids else torch.zeros(0, device=dev)
    else:
        flat = torch.zeros(sum(n for _, n in layout), dtype=torch.float32, device=dev)
    dist.broadcast(flat, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                   group=parallel_state.get_pipeline_model_parallel_group())
    return dict(zip(ids, flat.split([n for _, n in layout])))


def set_token_values(inputs: Sequence[ModelInputs], name: str, per_doc: Dict[int, torch.Tensor]) -> None:
    """Write per-document per-token numbers (``{sample_id: [n_response_tokens]}``, the shape :meth:`Critic.values`
    returns) into ``inputs[i].extra[name]`` as ``[b, s]`` fp32 aligned with the loss mask (0 elsewhere)."""
    for x in inputs:
        dense = torch.zeros(x.loss_mask.numel(), dtype=torch.float32, device=x.loss_mask.device)
        for sid, pos in _response_positions(x):
            if sid not in per_doc:
                raise KeyError(f"set_token_values({name!r}): no values for document {sid}")
            v = per_doc[sid]
            if v.numel() != pos.numel():
                raise ValueError(f"set_token_values({name!r}): document {sid} has {pos.numel()} response tokens "
                                 f"but {v.numel()} values")
            dense[pos] = v.to(dense)
        x.extra[name] = dense.reshape(x.loss_mask.shape)


def stack(per_doc: Dict[int, torch.Tensor], ids: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``{sample_id: [n_i]}`` -> right-padded ``[len(ids), max n]`` and its mask (the layout of ``losses.rl.gae``)."""
    rows = [per_doc[i] for i in ids]
    width = max((r.numel() for r in rows), default=0)
    out = torch.zeros(len(rows), width, dtype=rows[0].dtype if rows else torch.float32,
                      device=rows[0].device if rows else None)
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=out.device)
    for k, r in enumerate(rows):
        out[k, :r.numel()], mask[k, :r.numel()] = r, True
    return out, mask


def unstack(padded: torch.Tensor, mask: torch.Tensor, ids: Sequence[int]) -> Dict[int, torch.Tensor]:
    """Inverse of :func:`stack`."""
    return {i: padded[k][mask[k]] for k, i in enumerate(ids)}
