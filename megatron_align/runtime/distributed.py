"""Bring up torch.distributed + megatron parallel_state for a job, and take them down."""

from __future__ import annotations

import datetime
import random
import socket
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from megatron_align.config.base import ConfigError
from megatron_align.config.parallel import ParallelConfig
from megatron_align.runtime.launch_env import LaunchEnv, detect_launch_env


@dataclass(frozen=True)
class Runtime:
    env: LaunchEnv
    parallel: ParallelConfig
    backend: str  # "nccl" | "gloo"
    device: torch.device
    dp: int

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_parallel_sizes(parallel: ParallelConfig, world_size: int, num_attention_heads: Optional[int] = None,
                         num_query_groups: Optional[int] = None) -> int:
    """Validate the layout against the world size (and the model's heads); return DP."""
    dp = parallel.data_parallel_size(world_size)
    if num_attention_heads is not None and num_attention_heads % parallel.tp:
        raise ConfigError(f"parallel.tp={parallel.tp} does not divide num_attention_heads={num_attention_heads}")
    if num_query_groups is not None and num_query_groups % parallel.tp:
        raise ConfigError(f"parallel.tp={parallel.tp} does not divide num_query_groups={num_query_groups}")
    return dp


def init_distributed(timeout_minutes: int = 10, env: Optional[LaunchEnv] = None) -> LaunchEnv:
    """torch.distributed from torchrun/Slurm variables: NCCL with CUDA, gloo without."""
    env = env or detect_launch_env()
    if dist.is_initialized():
        return env
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    port = env.master_port or _free_port()
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{env.master_addr}:{port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )
    return env


def seed_everything(seed: int) -> None:
    """Same seed on every rank for data order; megatron's tracker gives TP ranks distinct streams."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    torch.manual_seed(seed)
    from megatron.core import tensor_parallel

    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def setup_runtime(parallel: ParallelConfig, *, seed: int = 1234, num_attention_heads: Optional[int] = None,
                  num_query_groups: Optional[int] = None, env: Optional[LaunchEnv] = None) -> Runtime:
    """Initialise torch.distributed, the CPU backend when there is no CUDA, parallel_state, seeds.

    Wrong sizes fail here, before any work, with a message naming the setting.
    """
    env = env or detect_launch_env()
    dp = check_parallel_sizes(parallel, env.world_size, num_attention_heads, num_query_groups)
    if not torch.cuda.is_available():
        from megatron_align.runtime import cpu_backend

        cpu_backend.install()
    init_distributed(parallel.timeout_minutes, env)
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.interleaved_vpp,
        context_parallel_size=parallel.cp,
        distributed_timeout_minutes=parallel.timeout_minutes,
        create_gloo_process_groups=False,  # NCCL on GPU, gloo world on CPU: nothing uses extra gloo groups
    )
    seed_everything(seed)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return Runtime(env=env, parallel=parallel, backend=dist.get_backend(), device=device, dp=dp)


def teardown() -> None:
    """Destroy megatron's groups and the process group (safe to call twice)."""
    try:
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
    except ImportError:  # pragma: no cover
        pass
    if dist.is_initialized():
        dist.destroy_process_group()
