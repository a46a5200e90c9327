"""Distributed runtime: launcher detection (torchrun / Slurm), parallel_state, CPU backend."""

from megatron_align.runtime.distributed import (  # noqa: F401
    Runtime,
    check_parallel_sizes,
    init_distributed,
    seed_everything,
    setup_runtime,
    teardown,
)
from megatron_align.runtime.launch_env import LaunchEnv, LaunchError, detect_launch_env, expand_nodelist  # noqa: F401
