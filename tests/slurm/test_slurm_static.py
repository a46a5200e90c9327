"""Fast checks of the Slurm files that need no cluster: syntax, the directives the requeue path relies on,
and that the 70B/72B example configs load and fit the default 4-node x 8-GPU allocation."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SBATCH_SCRIPT = os.path.join(REPO, "examples", "slurm", "sft.sbatch")
SLURM_LOCAL = os.path.join(REPO, "tools", "slurm_local.sh")
CONFIGS = ["llama3_70b.yaml", "qwen2_72b.yaml"]


@pytest.mark.parametrize("path", [SBATCH_SCRIPT, SLURM_LOCAL, os.path.join(REPO, "examples", "slurm", "submit.sh")])
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
