"""The trainer core every stage drives.

config -> runtime -> the stage's data (units: samples, pairs, groups) -> global-batch sampler -> this DP rank's
packed micro-batches -> megatron schedule over the policy's :class:`ModelSession` with the stage's
:class:`Objective` -> optimizer -> metrics / checkpoints.

The loop owns: the resume decision (the run's own ``latest`` wins over ``train.load``), exact resume (model,
optimizer, LR schedule, sampler position, RNG and the stage's own state), atomic checkpoints, SIGUSR1/SIGTERM
save-and-exit, the non-finite stop, metrics.jsonl + TensorBoard + the progress bar, periodic evaluation, and one
collective pair per step for all metrics. A stage (:class:`Stage`) says where units come from, which objective
trains and which evaluates, what else a metrics record holds and what extra state it checkpoints.
"""

from __future__ import annotations

import abc
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from megatron_align.config.base import ConfigError, dump_yaml
from megatron_align.engine.inputs import ModelInputs
from megatron_align.engine.objective import MetricSpec, Objective, StepCounts, finalize, neutral


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step."""


@dataclass
class StageData:
    """What a stage hands the loop: a tokenizer (written next to checkpoints), the datasets of units, and the
    names of the groups (categories, datasets) that grouped eval metrics report."""

    tokenizer: Any
    train: Any  # ChatDataset-like: len, lengths (tokens per unit), get_units(ids), stats
    eval: Any = None
    groups: Optional[Dict[str, Tuple[str, ...]]] = None  # e.g. {"category": ("code", "math")}
    summary: str = ""


class Stage(abc.ABC):
    """One training stage on the shared loop. ``cfg`` has the sections model, parallel, data, optim, train,
    output and output_dir (see config/stage.py)."""

    name = "stage"
    #: per-document values (Sample.values) the objective reads, moved to the device with each micro-batch
    value_keys: Tuple[str, ...] = ()
    #: what one item of the sampler's global batch is called in the log (None: from the objective's unit)
    batch_unit: Optional[str] = None
    #: metrics the log line shows after the loss (when a record has them)
    log_keys: Tuple[str, ...] = ()

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    @abc.abstractmethod
    def build_data(self, arch) -> StageData:
        """Tokenizer, template and datasets (validated, with counts of what was skipped or truncated)."""

    @abc.abstractmethod
    def train_objective(self, data: StageData) -> Objective:
        """The loss that trains."""

    def eval_objective(self, data: StageData) -> Optional[Objective]:
        """The loss (and metrics) on ``data.eval``; None: no evaluation."""
        return None

    def on_setup(self, trainer: "Trainer") -> None:
        """After the policy, optimizer and resume: build frozen models (reference, reward) the stage needs."""

    def extra_counts(self, micro_batches) -> Dict[str, float]:
        """Stage-specific counts of this rank's share of a step (e.g. chosen-response tokens), summed over DP
        into :attr:`StepCounts.extra` before the first forward (for secondary loss terms of another unit)."""
        return {}

    def prepare_step(self, trainer: "Trainer", micro_batches, inputs: List[ModelInputs]) -> None:
        """Before the policy's pass over a step's (or eval batch's) micro-batches: e.g. a frozen reference
        model's forward on the same rows, stored into each micro-batch's ``docs.values``."""

    def record(self, metrics: Dict[str, float]) -> Dict[str, float]:
        """Derived metrics from the reduced ones (e.g. a std from a mean and a mean square)."""
        return metrics

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def save_extra(self, trainer: "Trainer", ckpt_dir: str) -> None:
        """Every rank, while a step checkpoint is written (``ckpt_dir`` is its directory before the commit):
        extra model state the stage owns (e.g. a critic and its optimizer)."""

    def load_extra(self, trainer: "Trainer", ckpt_dir: str) -> None:
        """On a full resume, after the policy's state: read back what :meth:`save_extra` wrote."""


def _all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM, group=None) -> torch.Tensor:
    dist.all_reduce(t, op=op, group=group)
    return t


class Trainer:
    def __init__(self, cfg, stage: Stage) -> None:
        self.cfg = cfg
        self.stage = stage
        self._stop_signal: Optional[int] = None
        self.consumed_tokens = 0

    # ---------------------------------------------------------------- set-up
    def setup(self) -> None:
        from megatron.core import parallel_state

        from megatron_align.checkpoint.training import find_resume, has_training_state
        from megatron_align.engine.optimizer import build_optimizer, build_scheduler
        from megatron_align.engine.session import ModelSession, resolve_arch_for
        from megatron_align.models.builder import compute_dtype
        from megatron_align.runtime import setup_runtime

        cfg = self.cfg
        self.resume_from, own_run = find_resume(cfg.output_dir, cfg.train.load)
        arch = resolve_arch_for(cfg.model, self.resume_from)
        if cfg.model.head != "lm":
            arch = arch.replace(extra=dict(arch.extra or {}, reward_head={"num_labels": 1}))
        self.rt = setup_runtime(cfg.parallel, seed=cfg.train.seed, num_attention_heads=arch.num_attention_heads,
                                num_query_groups=arch.num_query_groups)
        self.is_main = self.rt.is_main
        self.data = self.stage.build_data(arch)
        if self.data.tokenizer.vocab_size > arch.vocab_size:
            raise ConfigError(f"data.tokenizer has {self.data.tokenizer.vocab_size} tokens but the model's "
                              f"vocab_size is {arch.vocab_size}; pick a matching model or tokenizer")
        self.arch = arch
        self.policy = ModelSession(cfg.model, cfg.parallel, arch, seq_length=cfg.data.seq_length,
                                   micro_batch_size=cfg.train.micro_batch_size, trainable=True)
        self.impl = self.policy.impl
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.sampler = self.build_sampler()
        # train.finetune applies to train.load; the run's own checkpoints always resume fully.
        full_resume = bool(self.resume_from) and has_training_state(self.resume_from) and \
            (own_run or not cfg.train.finetune)
        if self.resume_from and not full_resume:  # weights only (e.g. converted from HF), before the optimizer
            self.policy.load_weights(self.resume_from)
        self.policy.wrap_for_training(use_distributed_optimizer=cfg.parallel.distributed_optimizer)
        self.optimizer = build_optimizer(cfg.optim, self.policy.chunks, params_dtype=compute_dtype(cfg.model.precision),
                                         distributed=cfg.parallel.distributed_optimizer)
        self.scheduler = build_scheduler(cfg.optim, self.optimizer, len(self.sampler) * self.updates_per_step)
        self.objective = self.stage.train_objective(self.data)
        self.eval_obj = self.stage.eval_objective(self.data) if self.data.eval is not None else None
        self.start_step = 0
        if full_resume:
            from megatron_align.checkpoint.training import load_training

            state = load_training(self.resume_from, self.policy.chunks, self.optimizer, self.scheduler)
            self.sampler.load_state_dict(state["sampler"])
            self.stage.load_state_dict(state.get("stage", {}))
            self.consumed_tokens = int(state.get("consumed_tokens", 0))
            self.start_step = int(state["step"])
            self.stage.load_extra(self, self.resume_from)
        self.stage.on_setup(self)
        self._install_signal_handlers()

    #: optimizer steps per loop step (an RL step runs several updates on one rollout batch); sizes the LR schedule
    updates_per_step = 1

    def build_sampler(self):
        """The loop's sampler of global batches (of units: samples, pairs, prompts); ``state_dict`` resumes it."""
        from megatron_align.data.sampler import GlobalBatchSampler

        cfg = self.cfg
        try:  # train.max_steps overrides train.epochs: epochs repeat until max_steps
            return GlobalBatchSampler(len(self.data.train), cfg.train.global_batch_size, seed=cfg.data.seed,
                                      shuffle=cfg.data.shuffle, epochs=None if cfg.train.max_steps else cfg.train.epochs,
                                      max_steps=cfg.train.max_steps)
        except ValueError as exc:
            raise ConfigError(f"train.global_batch_size: {exc}") from None

    def _install_signal_handlers(self) -> None:
        def request_stop(signum, frame):
            self._stop_signal = signum

        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, request_stop)

    # ---------------------------------------------------------------- data -> micro-batches
    def micro_batches(self, dataset, global_ids: Sequence[int]):
        """This DP rank's packed micro-batches of ``global_ids`` (units), padded with empty micro-batches to the
        same count on every DP rank (and to a multiple of PP under the interleaved schedule)."""
        from megatron.core import parallel_state

        from megatron_align.data.batch import pad_micro_batches
        from megatron_align.data.builder import rank_micro_batches

        cfg = self.cfg
        mbs = rank_micro_batches(dataset, global_ids, self.dp_rank, self.dp_size, cfg.data,
                                 cfg.train.micro_batch_size, self.data.tokenizer.pad_id)
        n = torch.tensor([len(mbs)], dtype=torch.long, device=self.rt.device)
        _all_reduce(n, op=dist.ReduceOp.MAX, group=parallel_state.get_data_parallel_group())
        count = int(n.item())
        pp = cfg.parallel.pp
        if cfg.parallel.interleaved_vpp and count % pp:  # interleaved schedule: multiple of pp
            count += pp - count % pp
        mbs = pad_micro_batches(mbs, count, cfg.data.seq_length, cfg.train.micro_batch_size,
                                self.data.tokenizer.pad_id)
        group_index = {name: {g: i for i, g in enumerate(groups)} for name, groups in (self.data.groups or {}).items()}
        inputs = [ModelInputs.from_micro_batch(mb, self.stage.value_keys, group_index).to(self.rt.device)
                  for mb in mbs]
        return mbs, inputs

    def step_counts(self, mbs) -> StepCounts:
        """Global [loss tokens, documents, units] of one step (fp64, one all-reduce over DP)."""
        from megatron.core import parallel_state

        extra = self.stage.extra_counts(mbs)
        local = torch.tensor([sum(m.num_loss_tokens for m in mbs), sum(len(m.sample_ids) for m in mbs),
                              sum(len(m.unit_ids) for m in mbs), *extra.values()], dtype=torch.float64,
                             device=self.rt.device)
        _all_reduce(local, group=parallel_state.get_data_parallel_group())
        t, s, u, *rest = local.tolist()
        return StepCounts(tokens=t, sequences=s, units=u, extra=dict(zip(extra, rest)))

    # ---------------------------------------------------------------- reductions
    def reduce_reports(self, objective: Objective, totals: Dict[str, torch.Tensor],
                       extra_sums: Optional[torch.Tensor] = None) -> Tuple[Dict[str, float], Optional[torch.Tensor]]:
        """Reports of this rank (last PP stage) -> global metrics, in one SUM and one MAX collective pair
        (DP then PP; pipeline stages without the loss contribute neutral values). ``extra_sums`` (fp64, any
        length) rides along in the SUM."""
        from megatron.core import parallel_state

        specs = objective.all_specs()
        dev = self.rt.device
        sums, maxes = [], []
        for name, spec in specs.items():
            v = totals[name].to(device=dev, dtype=torch.float64) if name in totals else neutral(spec, dev)
            if spec.reduction in ("mean", "sum"):
                sums.append(v.reshape(-1))
            else:
                maxes.append((v if spec.reduction == "max" else -v).reshape(-1))
        extra = extra_sums.to(device=dev, dtype=torch.float64) if extra_sums is not None else \
            torch.zeros(0, dtype=torch.float64, device=dev)
        flat_sum = torch.cat(sums + [extra])
        groups = (parallel_state.get_data_parallel_group(), parallel_state.get_pipeline_model_parallel_group())
        for g in groups:
            _all_reduce(flat_sum, group=g)
        flat_max = torch.cat(maxes) if maxes else None
        if flat_max is not None:
            for g in groups:
                _all_reduce(flat_max, op=dist.ReduceOp.MAX, group=g)
        values: Dict[str, torch.Tensor] = {}
        i = j = 0
        for name, spec in specs.items():
            n = int(torch.Size(spec.shape).numel())
            if spec.reduction in ("mean", "sum"):
                values[name] = flat_sum[i:i + n].reshape(spec.shape)
                i += n
            else:
                v = flat_max[j:j + n].reshape(spec.shape)
                values[name] = v if spec.reduction == "max" else -v
                j += n
        return finalize(specs, values), (flat_sum[i:] if extra_sums is not None else None)

    # ---------------------------------------------------------------- steps
    def train_step(self, global_ids: List[int]) -> Dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()
        mbs, inputs = self.micro_batches(self.data.train, global_ids)
        self.objective.begin_step(self.step_counts(mbs))
        self.step_dataset, self.step_ids = self.data.train, list(global_ids)
        self.stage.prepare_step(self, mbs, inputs)
        self.optimizer.zero_grad()
        totals = self.policy.run(inputs, self.objective)
        update_successful, grad_norm, _ = self.optimizer.step()
        if update_successful:  # an fp16 overflow skips the step: the schedule does not advance either
            self.scheduler.step(increment=1)
        from megatron.core import parallel_state

        last = parallel_state.is_pipeline_last_stage()
        host = torch.tensor([sum(m.num_real_tokens for m in mbs) if last else 0,
                             len(mbs) * cfg.train.micro_batch_size * cfg.data.seq_length if last else 0],
                            dtype=torch.float64)
        metrics, extra = self.reduce_reports(self.objective, totals, host)
        tokens, slots = extra.tolist()
        seconds = time.perf_counter() - t0
        metrics = self.stage.record(metrics)
        mfu = self._mfu(mbs, seconds)
        if mfu:
            metrics["mfu"] = mfu
        metrics.update(grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                       tokens=int(tokens), token_utilization=tokens / max(slots, 1.0),
                       tokens_per_sec=tokens / max(seconds, 1e-9), step_time=seconds)
        metrics["loss_tokens" if self.objective.unit.value == "token" else f"{self.objective.unit.value}s"] = \
            int(self.objective.counts.of(self.objective.unit))
        return metrics

    def evaluate(self) -> Dict[str, float]:
        if self.eval_obj is None:
            return {}
        cfg = self.cfg
        self.policy.eval()
        acc: Dict[str, torch.Tensor] = {}
        n = len(self.data.eval)
        step = max(cfg.train.global_batch_size, 1)
        from megatron_align.engine.objective import combine_reports

        for start in range(0, n, step):
            ids = list(range(start, min(n, start + step)))
            mbs, inputs = self.micro_batches(self.data.eval, ids)
            self.eval_obj.begin_step(self.step_counts(mbs))
            self.step_dataset, self.step_ids = self.data.eval, ids
            self.stage.prepare_step(self, mbs, inputs)
            totals = self.policy.run(inputs, self.eval_obj, forward_only=True)
            acc = combine_reports(self.eval_obj, [acc, totals]) if acc else totals
        self.policy.train()
        metrics, _ = self.reduce_reports(self.eval_obj, acc)
        return {f"eval_{k}": v for k, v in self.stage.record(metrics).items()}

    def save(self, step: int) -> str:
        from megatron_align.checkpoint.training import save_training

        state = {"sampler": self.sampler.state_dict(), "consumed_tokens": self.consumed_tokens,
                 "stage": self.stage.state_dict(),
                 "finished": step >= len(self.sampler)}  # a requeue of a finished run has nothing to do
        tokenizer_files = self.data.tokenizer.files()  # tokenizer, its config and chat template, next to the weights
        return save_training(self.cfg.output_dir, step, self.policy.chunks, self.optimizer, self.scheduler, state,
                             self.arch, keep_last=self.cfg.output.keep_last, tokenizer_files=tokenizer_files,
                             extras=(lambda d: self.stage.save_extra(self, d),))

    def _stop_requested(self) -> bool:
        flag = torch.tensor([1 if self._stop_signal is not None else 0], dtype=torch.long, device=self.rt.device)
        _all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _mfu(self, micro_batches, seconds: float) -> Optional[float]:
        """MFU from the planner's FLOPs model over this DP replica's documents (per-document causal attention)
        and the device's exact peak (None on CPU or an unknown device)."""
        if not torch.cuda.is_available():
            return None
        from megatron_align.engine.mfu import step_mfu

        lengths = [n for mb in micro_batches for _, n in mb.doc_spans]
        return step_mfu(self.arch, lengths, seconds, self.rt.world_size // max(self.dp_size, 1),
                        seq_length=self.cfg.data.seq_length, padded_vocab=self.policy.padded_vocab_size)

    # ---------------------------------------------------------------- loop
    def run(self) -> Dict[str, Any]:
        from megatron_align.engine.metrics import MetricsWriter

        cfg = self.cfg
        self.setup()
        log = self.log
        total = len(self.sampler)
        if self.is_main:
            os.makedirs(cfg.output_dir, exist_ok=True)
            with open(os.path.join(cfg.output_dir, "config.yaml"), "w") as f:
                f.write(dump_yaml(cfg))
            unit = self.stage.batch_unit or ('samples' if self.objective.unit.value == 'token'
                                             else self.objective.unit.value + 's')
            log(f"data: {self.data.summary}; {total} steps of {self.sampler.global_batch_size} {unit}; "
                f"dp={self.dp_size} tp={cfg.parallel.tp} pp={cfg.parallel.pp}"
                f"{' vpp=' + str(cfg.parallel.vpp) if cfg.parallel.vpp else ''} sp={cfg.parallel.sp}")
        if self.start_step:
            log(f"resumed from step {self.start_step} ({self.resume_from})")
        elif self.resume_from:
            log(f"loaded weights from {self.resume_from}")
        writer = MetricsWriter(cfg.output_dir, enabled=self.is_main, tensorboard=cfg.output.tensorboard,
                               resume_step=self.start_step)
        bar = None
        if self.is_main and cfg.output.progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.start_step, desc=self.stage.name, unit="step", file=sys.stderr,
                       dynamic_ncols=True, mininterval=1.0)
        last: Dict[str, Any] = {}
        step = self.start_step
        stopped = False
        for global_ids in self.sampler:
            step = self.sampler.step
            m = self.train_step(global_ids)
            m.setdefault("loss", float("nan"))
            if not math.isfinite(m["loss"]):
                raise TrainingDivergedError(f"loss is {m['loss']} at step {step}: stopping (lower optim.lr, check data)")
            self.consumed_tokens += m["tokens"]
            record = {"step": step, "loss": m.pop("loss"), "lr": self.optimizer.param_groups[0]["lr"], **m,
                      "consumed_samples": step * self.sampler.global_batch_size, "epoch": self.sampler.epoch}
            if step % cfg.train.log_interval == 0 or step == total:
                writer.log(record)
            last = record
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_sec']:.0f}")
            elif self.is_main and step % cfg.train.log_interval == 0:
                extra = "".join(f" {k} {record[k]:.4g}" for k in self.stage.log_keys if k in record)
                log(f"step {step}/{total} loss {record['loss']:.4f}{extra} lr {record['lr']:.3g} "
                    f"grad_norm {record['grad_norm']:.3f}")
            if cfg.train.eval_interval and step % cfg.train.eval_interval == 0 and step < total:
                writer.log({"step": step, "kind": "eval", **self.evaluate()})
            if cfg.train.save_interval and step % cfg.train.save_interval == 0 and step < total:
                self.save(step)
            if self._stop_requested():
                path = self.save(step)
                log(f"stop signal received: saved {path} at step {step}; exiting")
                stopped = True
                break
        if bar is not None:
            bar.close()
        summary = dict(last)
        if not stopped:
            ev = self.evaluate()
            if ev:
                writer.log({"step": step, "kind": "eval", **ev})
                summary.update(ev)
            if step > self.start_step or not self.resume_from:
                path = self.save(step)
                log(f"saved {path}")
        writer.close()
        summary["stopped_by_signal"] = stopped
        return summary

    def log(self, msg: str) -> None:
        if self.is_main:
            print(f"[megatron-align {self.stage.name}] {msg}", flush=True)


def run_trainer(trainer: Trainer) -> Dict[str, Any]:
    """Run a trainer to the end (or a stop signal) and tear the process groups down, also on error."""
    from megatron_align.runtime import teardown

    try:
        return trainer.run()
    finally:
        teardown()


def metric(reduction: str, groups: Sequence[str] = ()) -> MetricSpec:
    return MetricSpec(reduction, tuple(groups))
