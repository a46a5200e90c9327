"""Run a function on N real processes over gloo and collect each rank's return value.

The function must be importable (defined at module top level). Each worker gets the
torchrun-style environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), or with
``launcher="slurm"`` the variables srun sets (SLURM_PROCID, SLURM_NTASKS, ...), and
calls ``fn(*args)``; results come back indexed by rank. Any failure on any rank raises
with that rank's traceback.
"""

from __future__ import annotations

import os
import queue
import socket
import traceback
from typing import Any, Callable, Dict, List, Optional

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher_env(launcher, rank, world_size, port):
    if launcher == "slurm":  # what srun gives each task (no torchrun variables)
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR"):
            os.environ.pop(key, None)
        return {"SLURM_PROCID": str(rank), "SLURM_NTASKS": str(world_size), "SLURM_LOCALID": str(rank),
                "SLURM_JOB_ID": "777", "SLURM_JOB_NODELIST": "127.0.0.1", "MASTER_PORT": str(port),
                "OMP_NUM_THREADS": "1"}
    return {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1"}


def _worker(fn, rank, world_size, port, q, args, env, launcher="torchrun"):
    os.environ.update(_launcher_env(launcher, rank, world_size, port))
    if env:
        os.environ.update(env)
    import torch

    torch.set_num_threads(1)
    try:
        out = fn(*args)
        q.put((rank, "ok", _detach(out)))
    except BaseException:  # noqa: BLE001 - report everything to the parent
        q.put((rank, "error", traceback.format_exc()))
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:
            pass


def _detach(obj):
    """Tensors travel as numpy arrays: a tensor put on a queue is shared through a file descriptor
    that dies with the worker, so the parent could fail to read it (FileNotFoundError)."""
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        return _TensorBox((t.float() if t.dtype == torch.bfloat16 else t).numpy().copy(), str(t.dtype))
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detach(v) for v in obj)
    return obj


class _TensorBox:
    def __init__(self, array, dtype):
        self.array, self.dtype = array, dtype


def _attach(obj):
    import torch

    if isinstance(obj, _TensorBox):
        return torch.from_numpy(obj.array).to(getattr(torch, obj.dtype.split(".")[-1]))
    if isinstance(obj, dict):
        return {k: _attach(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_attach(v) for v in obj)
    return obj


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 600.0,
    env: Optional[Dict[str, str]] = None,
    launcher: str = "torchrun",
) -> List[Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(fn, r, world_size, port, q, args, env, launcher), daemon=False)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: Dict[int, Any] = {}
    errors: List[str] = []
    try:
        for _ in range(world_size):
            try:
                rank, status, payload = q.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"distributed run of {fn.__name__} timed out after {timeout}s")
            if status == "ok":
                results[rank] = _attach(payload)
            else:
                errors.append(f"--- rank {rank} ---\n{payload}")
                break
    finally:
        for p in procs:
            p.join(timeout=5 if errors else 60)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise RuntimeError(f"distributed run of {fn.__name__} failed:\n" + "\n".join(errors))
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if bad:
        raise RuntimeError(f"distributed run of {fn.__name__}: workers exited with {bad}")
    return [results[r] for r in range(world_size)]
