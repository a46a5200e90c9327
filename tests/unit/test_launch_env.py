"""Launcher detection from torchrun and Slurm variables (including a fake srun environment)."""

import pytest

from megatron_align.runtime.launch_env import LaunchError, detect_launch_env, expand_nodelist


def test_expand_nodelist():
    assert expand_nodelist("gpu[01-03,07],login5") == ["gpu01", "gpu02", "gpu03", "gpu07", "login5"]
    assert expand_nodelist("n[8-10]") == ["n8", "n9", "n10"]
    assert expand_nodelist("127.0.0.1") == ["127.0.0.1"]


def test_torchrun_env_wins():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1234",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    e = detect_launch_env(env)
    assert (e.rank, e.world_size, e.local_rank, e.master_addr, e.master_port, e.launcher) == \
        (3, 8, 1, "h", 1234, "torchrun")


def test_slurm_env():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "node[003-004]"}
    e = detect_launch_env(env)
    assert (e.rank, e.world_size, e.local_rank, e.master_addr, e.launcher) == (5, 16, 5, "node003", "slurm")
    assert 20000 <= e.master_port < 40000
    assert detect_launch_env(dict(env, SLURM_PROCID="0")).master_port == e.master_port  # all tasks agree
    assert detect_launch_env(dict(env, MASTER_PORT="29999")).master_port == 29999


def test_bad_env_names_variable():
    with pytest.raises(LaunchError, match="SLURM_PROCID"):
        detect_launch_env({"SLURM_PROCID": "x", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "a"})
    with pytest.raises(LaunchError, match="SLURM_JOB_NODELIST"):
        detect_launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})


def test_single_process():
    e = detect_launch_env({})
    assert (e.rank, e.world_size, e.launcher) == (0, 1, "single")
