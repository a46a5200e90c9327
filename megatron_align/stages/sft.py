"""Supervised fine-tuning: config -> runtime -> data -> packed micro-batches -> megatron schedule
-> fused CE loss (token-level mean over the global batch) -> optimizer -> checkpoints/metrics.

Resume is exact: the checkpoint holds model, optimizer, LR schedule, sampler position and RNG,
and a run whose output_dir already has a `latest` checkpoint continues from it (Slurm requeue).
SIGUSR1/SIGTERM make every rank save at the next step boundary and exit 0.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from megatron_align.config.base import dump_yaml
from megatron_align.config.sft import SFTConfig
from megatron_align.engine.inputs import ModelInputs


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step."""


@dataclass
class StepStats:
    loss: float
    tokens: int
    loss_tokens: int
    slots: int
    grad_norm: float
    seconds: float


def _peak_flops_per_gpu() -> float:
    env = os.environ.get("MEGATRON_ALIGN_PEAK_TFLOPS")
    if env:
        return float(env) * 1e12
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    table = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12}
    return next((v for k, v in table.items() if k in name), 0.0)


class SFTTrainer:
    def __init__(self, cfg: SFTConfig) -> None:
        self.cfg = cfg
        self._stop_signal: Optional[int] = None

    # ---------------------------------------------------------------- set-up
    def setup(self) -> None:
        from megatron.core import parallel_state

        from megatron_align.checkpoint import layout
        from megatron_align.checkpoint.model_io import load_model
        from megatron_align.checkpoint.training import find_resume, has_training_state
        from megatron_align.data.builder import build_data
        from megatron_align.data.sampler import GlobalBatchSampler
        from megatron_align.engine.optimizer import build_optimizer, build_scheduler
        from megatron_align.engine.wrap import wrap_ddp
        from megatron_align.models.builder import build_model, compute_dtype
        from megatron_align.models.families import resolve_arch
        from megatron_align.runtime import setup_runtime

        cfg = self.cfg
        self.resume_from, own_run = find_resume(cfg.output_dir, cfg.train.load)
        if cfg.model.name is None and cfg.model.hf_config is None and self.resume_from:
            arch = layout.read_arch(self.resume_from)
        else:
            arch = resolve_arch(cfg.model.name, cfg.model.hf_config, cfg.model.family, cfg.model.num_layers)
        self.rt = setup_runtime(cfg.parallel, seed=cfg.train.seed, num_attention_heads=arch.num_attention_heads,
                                num_query_groups=arch.num_query_groups)
        self.is_main = self.rt.is_main
        self.data = build_data(cfg.data, family=arch.family)
        if self.data.tokenizer.vocab_size > arch.vocab_size:
            raise ValueError(f"data.tokenizer has {self.data.tokenizer.vocab_size} tokens but the model's vocab_size "
                             f"is {arch.vocab_size}; pick a matching model or tokenizer")
        built = build_model(cfg.model, cfg.parallel, arch=arch, seq_length=cfg.data.seq_length)
        self.arch, self.mconfig, self.impl = arch, built.config, built.transformer_impl
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.sampler = GlobalBatchSampler(len(self.data.train), cfg.train.global_batch_size, seed=cfg.data.seed,
                                          shuffle=cfg.data.shuffle, epochs=cfg.train.epochs,
                                          max_steps=cfg.train.max_steps)
        # train.finetune applies to train.load; the run's own checkpoints always resume fully.
        full_resume = bool(self.resume_from) and has_training_state(self.resume_from) and \
            (own_run or not cfg.train.finetune)
        if self.resume_from and not full_resume:  # weights only (e.g. converted from HF), before the optimizer
            load_model(built.chunks, os.path.join(self.resume_from, layout.MODEL_DIR))
        self.chunks = wrap_ddp(built.chunks, use_distributed_optimizer=cfg.parallel.distributed_optimizer)
        self.optimizer = build_optimizer(cfg.optim, self.chunks, params_dtype=compute_dtype(cfg.model.precision),
                                         distributed=cfg.parallel.distributed_optimizer)
        self.scheduler = build_scheduler(cfg.optim, self.optimizer, len(self.sampler))
        self.start_step = 0
        if full_resume:
            from megatron_align.checkpoint.training import load_training

            state = load_training(self.resume_from, self.chunks, self.optimizer, self.scheduler)
            self.sampler.load_state_dict(state["sampler"])
            self.start_step = int(state["step"])
        self.eval_categories = self._eval_categories()
        self._install_signal_handlers()

    def _eval_categories(self) -> List[str]:
        if self.data.eval is None:
            return []
        samples = self.data.eval.get_samples(range(len(self.data.eval)))
        return sorted({s.category for s in samples if s.category is not None})

    def _install_signal_handlers(self) -> None:
        def request_stop(signum, frame):
            self._stop_signal = signum

        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, request_stop)

    # ---------------------------------------------------------------- collectives
    def _all_reduce(self, t: torch.Tensor, op=dist.ReduceOp.SUM, group=None) -> torch.Tensor:
        dist.all_reduce(t, op=op, group=group)
        return t

    def _global_report(self, totals: Dict[str, torch.Tensor], key: str, like: torch.Tensor) -> torch.Tensor:
        """A report summed over DP ranks and made available on every pipeline stage (only the last stage
        has it; the others contribute zeros)."""
        value = totals[key].to(like) if key in totals else torch.zeros_like(like)
        return self._sum_dp_pp(value)

    def _sum_dp_pp(self, value: torch.Tensor) -> torch.Tensor:
        from megatron.core import parallel_state

        self._all_reduce(value, group=parallel_state.get_data_parallel_group())
        self._all_reduce(value, group=parallel_state.get_pipeline_model_parallel_group())
        return value

    def _micro_batches(self, dataset, global_ids, categories: Optional[List[str]] = None):
        from megatron.core import parallel_state

        from megatron_align.data.batch import pad_micro_batches
        from megatron_align.data.builder import rank_micro_batches
        from megatron_align.engine.eval_loss import category_groups

        cfg = self.cfg
        mbs = rank_micro_batches(dataset, global_ids, self.dp_rank, self.dp_size, cfg.data,
                                 cfg.train.micro_batch_size, self.data.tokenizer.pad_id)
        n = torch.tensor([len(mbs)], dtype=torch.long, device=self.rt.device)
        self._all_reduce(n, op=dist.ReduceOp.MAX, group=parallel_state.get_data_parallel_group())
        count = int(n.item())
        pp = cfg.parallel.pp
        if cfg.parallel.interleaved_vpp and count % pp:  # interleaved schedule: multiple of pp
            count += pp - count % pp
        mbs = pad_micro_batches(mbs, count, cfg.data.seq_length, cfg.train.micro_batch_size,
                                self.data.tokenizer.pad_id)
        inputs = []
        for mb in mbs:
            x = ModelInputs.from_micro_batch(mb)
            if categories is not None:
                x.groups = category_groups(mb, categories)
            inputs.append(x.to(self.rt.device))
        return mbs, inputs

    def _schedule_shape(self) -> Dict[str, int]:
        """Activation shape between pipeline stages: [S, mbs] rows, or one THD row of mbs*S tokens (TE)."""
        s, b = self.cfg.data.seq_length, self.cfg.train.micro_batch_size
        return {"seq_length": s * b, "micro_batch_size": 1} if self.impl == "te" else \
            {"seq_length": s, "micro_batch_size": b}

    # ---------------------------------------------------------------- steps
    def train_step(self, global_ids: List[int]) -> StepStats:
        from megatron_align.engine.forward_backward import forward_backward

        cfg = self.cfg
        t0 = time.perf_counter()
        mbs, inputs = self._micro_batches(self.data.train, global_ids)
        for chunk in self.chunks:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        totals = forward_backward(self.chunks, inputs, **self._schedule_shape(), loss_backend=cfg.model.loss_backend,
                                  transformer_impl=self.impl)
        _, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(increment=1)
        # One collective pair for [loss_sum, loss_tokens, real_tokens, slots]: the last pipeline stage
        # contributes everything (fp64 keeps token counts exact), the other stages zeros.
        stats = torch.zeros(4, dtype=torch.float64, device=self.rt.device)
        if "lm_loss" in totals:
            stats[:2] = totals["lm_loss"].to(stats)
            stats[2] = sum(m.num_real_tokens for m in mbs)
            stats[3] = len(mbs) * cfg.train.micro_batch_size * cfg.data.seq_length
        loss_sum, loss_tokens, tokens, slots = self._sum_dp_pp(stats).tolist()
        loss = loss_sum / max(loss_tokens, 1.0)
        return StepStats(loss=loss, tokens=int(tokens), loss_tokens=int(loss_tokens), slots=int(slots),
                         grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                         seconds=time.perf_counter() - t0)

    def evaluate(self) -> Dict[str, float]:
        from megatron_align.engine.eval_loss import grouped_lm_loss
        from megatron_align.engine.forward_backward import forward_backward

        cfg = self.cfg
        if self.data.eval is None:
            return {}
        cats = self.eval_categories
        for chunk in self.chunks:
            chunk.eval()
        sums = torch.zeros(2, device=self.rt.device)
        groups = torch.zeros(max(len(cats), 1), 2, device=self.rt.device)
        n = len(self.data.eval)
        step = max(cfg.train.global_batch_size, 1)
        loss_fn = functools.partial(grouped_lm_loss, max(len(cats), 1), cfg.model.loss_backend)
        with torch.no_grad():
            for start in range(0, n, step):
                ids = list(range(start, min(n, start + step)))
                _, inputs = self._micro_batches(self.data.eval, ids, categories=cats)
                totals = forward_backward(self.chunks, inputs, **self._schedule_shape(),
                                          loss_backend=cfg.model.loss_backend, forward_only=True, loss_fn=loss_fn,
                                          transformer_impl=self.impl)
                sums += self._global_report(totals, "lm_loss", sums)
                groups += self._global_report(totals, "groups", groups)
        for chunk in self.chunks:
            chunk.train()
        out = {"eval_loss": (sums[0] / sums[1].clamp(min=1)).item()}
        for i, c in enumerate(cats):
            if groups[i, 1] > 0:
                out[f"eval_loss/{c}"] = (groups[i, 0] / groups[i, 1]).item()
        return out

    def save(self, step: int) -> str:
        from megatron_align.checkpoint.training import save_training

        state = {"sampler": self.sampler.state_dict(), "consumed_tokens": self.consumed_tokens,
                 "finished": step >= len(self.sampler)}  # a requeue of a finished run has nothing to do
        src_dir = os.path.dirname(self.data.tokenizer.file)
        tokenizer_files = [os.path.join(src_dir, n) for n in ("tokenizer.json", "tokenizer_config.json",
                                                               "special_tokens_map.json")
                           if os.path.isfile(os.path.join(src_dir, n))]
        return save_training(self.cfg.output_dir, step, self.chunks, self.optimizer, self.scheduler, state,
                             self.arch, keep_last=self.cfg.output.keep_last, tokenizer_files=tokenizer_files)

    def _stop_requested(self) -> bool:
        flag = torch.tensor([1 if self._stop_signal is not None else 0], dtype=torch.long, device=self.rt.device)
        self._all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    # ---------------------------------------------------------------- loop
    def run(self) -> Dict[str, float]:
        from megatron_align.engine.metrics import MetricsWriter
        from megatron_align.engine.mfu import step_mfu

        cfg = self.cfg
        self.setup()
        log = self._log
        total = len(self.sampler)
        if self.is_main:
            os.makedirs(cfg.output_dir, exist_ok=True)
            with open(os.path.join(cfg.output_dir, "config.yaml"), "w") as f:
                f.write(dump_yaml(cfg))
            st = self.data.train.stats
            log(f"data: {len(self.data.train)} samples (truncated {st.n_truncated}, dropped {st.n_dropped}, "
                f"skipped bad lines {st.n_skipped_bad}); {total} steps of {cfg.train.global_batch_size} samples; dp={self.dp_size} tp={cfg.parallel.tp} "
                f"pp={cfg.parallel.pp}{' vpp=' + str(cfg.parallel.vpp) if cfg.parallel.vpp else ''} sp={cfg.parallel.sp}")
        if self.start_step:
            log(f"resumed from step {self.start_step} ({self.resume_from})")
        elif self.resume_from:
            log(f"loaded weights from {self.resume_from}")
        writer = MetricsWriter(cfg.output_dir, enabled=self.is_main, tensorboard=cfg.output.tensorboard,
                               resume_step=self.start_step)
        self.consumed_tokens = 0
        bar = None
        if self.is_main and cfg.output.progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.start_step, desc="sft", unit="step", file=sys.stderr,
                       dynamic_ncols=True, mininterval=1.0)
        n_params = self.arch.num_parameters()
        peak = _peak_flops_per_gpu()
        last: Dict[str, float] = {}
        step = self.start_step
        stopped = False
        for global_ids in self.sampler:
            step = self.sampler.step
            stats = self.train_step(global_ids)
            if not math.isfinite(stats.loss):
                raise TrainingDivergedError(f"loss is {stats.loss} at step {step}: stopping (lower optim.lr, check data)")
            self.consumed_tokens += stats.tokens
            record = {"step": step, "loss": stats.loss, "lr": self.optimizer.param_groups[0]["lr"],
                      "grad_norm": stats.grad_norm, "tokens": stats.tokens, "loss_tokens": stats.loss_tokens,
                      "token_utilization": stats.tokens / max(stats.slots, 1),
                      "tokens_per_sec": stats.tokens / max(stats.seconds, 1e-9), "step_time": stats.seconds,
                      "consumed_samples": step * cfg.train.global_batch_size, "epoch": self.sampler.epoch}
            mfu = step_mfu(self.arch, self.data.train.lengths[global_ids], stats.seconds, self.rt.world_size,
                           seq_length=cfg.data.seq_length)  # None: unknown peak (e.g. CPU)
            record.update({} if mfu is None else {"mfu": mfu})
            if step % cfg.train.log_interval == 0 or step == total:
                writer.log(record)
            last = record
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{stats.loss:.4f}", tok_s=f"{record['tokens_per_sec']:.0f}")
            elif self.is_main and step % cfg.train.log_interval == 0:
                log(f"step {step}/{total} loss {stats.loss:.4f} lr {record['lr']:.3g} grad_norm {stats.grad_norm:.3f}")
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

    def _log(self, msg: str) -> None:
        if self.is_main:
            print(f"[megatron-align sft] {msg}", flush=True)


def run_sft(cfg: SFTConfig) -> Dict[str, float]:
    from megatron_align.runtime import teardown

    trainer = SFTTrainer(cfg)
    try:
        return trainer.run()
    finally:
        teardown()
