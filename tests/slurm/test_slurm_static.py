"""Fast checks of the Slurm files that need no cluster: syntax, the directives the requeue path relies on,
and that the 70B/72B example configs load and fit the default 4-node x 8-GPU allocation."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLURM_DIR = os.path.join(REPO, "examples", "slurm")
SBATCH_SCRIPT = os.path.join(SLURM_DIR, "sft.sbatch")
TRAIN_SBATCH = os.path.join(SLURM_DIR, "train.sbatch")
SLURM_LOCAL = os.path.join(REPO, "tools", "slurm_local.sh")
SHELL_FILES = [SBATCH_SCRIPT, TRAIN_SBATCH, os.path.join(SLURM_DIR, "submit.sh"), os.path.join(SLURM_DIR, "task_env.sh"),
               SLURM_LOCAL, *(os.path.join(REPO, "tools", f"slurm_{n}.sh") for n in ("netns", "common"))]
CONFIGS = ["llama3_70b.yaml", "qwen2_72b.yaml"]


@pytest.mark.parametrize("path", SHELL_FILES, ids=os.path.basename)
def test_shell_syntax(path):
    r = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", "-S", "error", path], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout


def _directives(path):
    with open(path) as f:
        return [m.group(1) for line in f if (m := re.match(r"#SBATCH\s+(\S+)", line))]


def test_sbatch_directives_for_requeue_and_logs():
    d = _directives(SBATCH_SCRIPT)
    for needed in ("--requeue", "--signal=B:USR1@120", "--open-mode=append", "--output=logs/%x-%j.out",
                   "--ntasks-per-node=8", "--gpus-per-node=8"):
        assert needed in d, f"{needed} missing from the #SBATCH header: {d}"


def test_sft_sbatch_has_the_directives_of_train_sbatch():
    # sft.sbatch execs train.sbatch, but Slurm reads the #SBATCH lines of the submitted file: keep them equal.
    assert _directives(SBATCH_SCRIPT) == ["--job-name=sft", *_directives(TRAIN_SBATCH)]


def test_train_sbatch_usage_errors():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    for args, message in ((["examples/configs/tiny_cpu.yaml"], "usage"),
                          (["examples/configs/tiny_cpu.yaml", "x=1"], "the first argument is the stage"),
                          (["sft", "examples/configs/tiny_cpu.yaml"], "not inside a Slurm job")):
        r = subprocess.run(["bash", TRAIN_SBATCH, *args], capture_output=True, text=True, env=env, cwd=REPO)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
    # Inside a job, a missing config is named.
    r = subprocess.run(["bash", TRAIN_SBATCH, "sft", "no/such.yaml"], capture_output=True, text=True,
                       env=dict(env, SLURM_JOB_ID="1", SLURM_SUBMIT_DIR=REPO), cwd=REPO)
    assert r.returncode == 2 and "config no/such.yaml not found" in r.stderr, r.stderr


def test_sbatch_refuses_to_run_outside_slurm():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    r = subprocess.run(["bash", SBATCH_SCRIPT, "examples/configs/tiny_cpu.yaml"], capture_output=True, text=True,
                       env=env, cwd=REPO)
    assert r.returncode == 2 and "not inside a Slurm job" in r.stderr
    r = subprocess.run(["bash", SBATCH_SCRIPT], capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 2 and "usage" in r.stderr


@pytest.mark.parametrize("name", CONFIGS)
def test_large_model_configs_fit_default_allocation(name):
    from megatron_align.config.base import load_config
    from megatron_align.config.sft import SFTConfig
    from megatron_align.models.families import preset
    from megatron_align.runtime.distributed import check_parallel_sizes

    cfg = load_config(SFTConfig, os.path.join(REPO, "examples", "configs", name))
    arch = preset(cfg.model.name)
    p = cfg.parallel
    assert (p.tp, p.pp, p.sp, p.distributed_optimizer) == (8, 4, True, True)
    assert cfg.model.recompute == "kblock"
    for nodes in (4, 8, 16):
        dp = check_parallel_sizes(p, nodes * 8, arch.num_attention_heads, arch.num_query_groups)
        assert dp == nodes // 4
    layers_per_stage = arch.num_layers // p.pp
    assert arch.num_layers % p.pp == 0 and layers_per_stage % cfg.model.recompute_k == 0
    assert cfg.data.seq_length % p.tp == 0  # sequence parallelism splits the sequence over TP


def test_task_env_keeps_a_chosen_interface_and_warns_when_it_cannot_derive_one():
    task_env = os.path.join(SLURM_DIR, "task_env.sh")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "GLOO_"))}

    def run(**env):
        r = subprocess.run(["bash", task_env, "sh", "-c", 'echo "ifname=${GLOO_SOCKET_IFNAME:-}"'],
                           capture_output=True, text=True, env=dict(base, **env))
        assert r.returncode == 0, r.stderr
        return r.stdout.strip(), r.stderr

    assert run(SLURM_JOB_NUM_NODES="2", GLOO_SOCKET_IFNAME="ib0")[0] == "ifname=ib0"  # the caller's choice wins
    assert run(SLURM_JOB_NUM_NODES="1")[0] == "ifname="                               # one node: nothing to do
    # Two nodes whose names do not resolve: no interface, a warning, and the command still runs.
    out, err = run(SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="nohost-a.invalid,nohost-b.invalid",
                   SLURMD_NODENAME="nohost-a.invalid")
    assert out == "ifname=" and "GLOO_SOCKET_IFNAME not derived" in err, err
