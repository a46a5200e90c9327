"""A stand-in for `python -m megatron_align sft` that keeps the trainer's contract with examples/slurm/sft.sbatch,
without megatron (starts in about a second). The Slurm tests use it where the contract itself is under test
(a rank that dies) and in place of the real command while that does not exist.

    python tests/slurm/fake_sft.py --config CONFIG [key=value ...]

Contract (the same as megatron_align.stages.sft):
  * rank / world size / master from megatron_align.runtime.launch_env (torchrun or Slurm variables); gloo.
  * ``<output_dir>/metrics.jsonl``: one JSON object per step with ``step`` and ``loss``; on resume, lines after
    the checkpoint's step are dropped first.
  * checkpoints ``<output_dir>/step_XXXXXXXX/`` with a ``COMPLETE`` file, then ``<output_dir>/latest`` naming it
    (atomic replace); the run resumes from ``latest`` when it exists and prints ``resumed from step N``.
  * the final checkpoint's ``trainer_state.json`` has ``"finished": true`` (sft.sbatch then does not requeue on a
    late SIGUSR1);
  * SIGUSR1/SIGTERM: every rank stops at the next step boundary (ranks agree with an all-reduce), saves, exits 0.
Keys understood: train.max_steps, train.save_interval, train.seed, output_dir, optim.lr, and for tests
fake.step_seconds (sleep per step), fake.fail_rank + fake.fail_step (that rank exits 3 at that step).
The model is a linear regression on fixed data, so losses fall and a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

# Run as a script (sys.path[0] is tests/slurm): make the repository importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from megatron_align.runtime.launch_env import detect_launch_env


def parse(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = {"train.max_steps": 20, "train.save_interval": 0, "train.seed": 1234, "output_dir": "runs/fake",
           "optim.lr": 0.05, "fake.step_seconds": 0.0, "fake.fail_rank": -1, "fake.fail_step": -1}
    if args.config and os.path.isfile(args.config):
        import yaml

        with open(args.config) as f:
            data = yaml.safe_load(f) or {}

        def flat(d, prefix=""):
            for k, v in d.items():
                if isinstance(v, dict):
                    yield from flat(v, f"{prefix}{k}.")
                else:
                    yield f"{prefix}{k}", v

        for k, v in flat(data):
            if k in cfg and v is not None:
                cfg[k] = v
    for item in args.overrides:
        key, _, value = item.partition("=")
        if key in cfg:
            cfg[key] = type(cfg[key])(value) if not isinstance(cfg[key], str) else value
    return cfg


def main(argv=None) -> int:
    cfg = parse(sys.argv[1:] if argv is None else argv)
    env = detect_launch_env()
    dist.init_process_group("gloo", init_method=f"tcp://{env.master_addr}:{env.master_port}", rank=env.rank,
                            world_size=env.world_size, timeout=datetime.timedelta(minutes=2))
    rank, world = env.rank, env.world_size
    out = cfg["output_dir"]
    stop = {"sig": None}

    def on_signal(signum, _frame):
        stop["sig"] = signum

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    g = torch.Generator().manual_seed(int(cfg["train.seed"]))
    x = torch.randn(64, 8, generator=g, dtype=torch.float64)
    y = x @ torch.randn(8, 1, generator=g, dtype=torch.float64)
    w = torch.zeros(8, 1, dtype=torch.float64)
    start = 0
    latest = os.path.join(out, "latest")
    if os.path.isfile(latest):
        with open(latest) as f:
            ckpt = os.path.join(out, f.read().strip())
        state = torch.load(os.path.join(ckpt, "state.pt"))
        w, start = state["w"], state["step"]
        if rank == 0:
            print(f"[fake-sft] resumed from step {start} ({ckpt})", flush=True)
            path = os.path.join(out, "metrics.jsonl")
            if os.path.isfile(path):
                with open(path) as f:
                    keep = [ln for ln in f if json.loads(ln)["step"] <= start]
                with open(path, "w") as f:
                    f.writelines(keep)

    def save(step, finished=False):
        if rank == 0:
            name = f"step_{step:08d}"
            tmp, final = os.path.join(out, name + ".tmp"), os.path.join(out, name)
            os.makedirs(tmp, exist_ok=True)
            torch.save({"w": w, "step": step}, os.path.join(tmp, "state.pt"))
            with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
                json.dump({"step": step, "finished": finished}, f)
            open(os.path.join(tmp, "COMPLETE"), "w").close()
            os.replace(tmp, final)
            with open(latest + ".tmp", "w") as f:
                f.write(name)
            os.replace(latest + ".tmp", latest)
        dist.barrier()
        return os.path.join(out, f"step_{step:08d}")

    os.makedirs(out, exist_ok=True)
    metrics = open(os.path.join(out, "metrics.jsonl"), "a") if rank == 0 else None
    max_steps = int(cfg["train.max_steps"])
    lr = float(cfg["optim.lr"])
    step = start
    stopped = False
    shard = slice(rank, None, world)
    for step in range(start + 1, max_steps + 1):
        if step == int(cfg["fake.fail_step"]) and rank == int(cfg["fake.fail_rank"]):
            print(f"[fake-sft] rank {rank} dies at step {step}", flush=True)
            os._exit(3)
        xs, ys = x[shard], y[shard]
        grad = 2 * xs.T @ (xs @ w - ys) / len(x)
        loss = ((xs @ w - ys) ** 2).sum() / len(x)
        dist.all_reduce(grad)
        dist.all_reduce(loss)
        w = w - lr * grad
        time.sleep(float(cfg["fake.step_seconds"]))
        if metrics:
            metrics.write(json.dumps({"step": step, "loss": loss.item()}) + "\n")
            metrics.flush()
            print(f"[fake-sft] step {step}/{max_steps} loss {loss.item():.6f}", flush=True)
        save_every = int(cfg["train.save_interval"])
        if save_every and step % save_every == 0 and step < max_steps:
            save(step)
        flag = torch.tensor([1 if stop["sig"] else 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item():
            path = save(step)
            if rank == 0:
                print(f"[fake-sft] stop signal received: saved {path} at step {step}; exiting", flush=True)
            stopped = True
            break
    if not stopped and step > start:
        save(step, finished=step >= max_steps)
        if rank == 0:
            print(f"[fake-sft] saved step {step}", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
