"""examples/slurm/sft.sbatch on a real single-node Slurm cluster (tools/slurm_local.sh), CPU/gloo, 2 tasks.

* an SFT job runs to the end: exit 0, the loss falls, a complete checkpoint is named by `latest`;
* SIGUSR1 to the batch shell (what `--signal=B:USR1@120` sends before the time limit): the trainer saves and
  exits 0, the script requeues the job, the requeued run resumes from that checkpoint and its losses equal those
  of the uninterrupted run (fp32 CPU);
* a rank that dies fails the whole job quickly (srun --kill-on-bad-exit) instead of hanging.

The cluster needs root (daemons run as root) and slurm-wlm + munge, which tools/slurm_local.sh installs with
apt-get when missing. Skipped, with the reason, when not root or when the packages cannot be downloaded; any
other failure to start the cluster fails the tests.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
import time
import uuid

import pytest
from slurm_jobs import (FAKE_SFT, REPO, SFT_SBATCH, TINY_CONFIG, Cluster, assert_completed, assert_dead_rank_fails_fast,
                        assert_saved_requeued_resumed, fake_config, latest_checkpoint, read, run_cluster_tool,
                        train_metrics)

pytestmark = [pytest.mark.slow]

SLURM_LOCAL = os.path.join(REPO, "tools", "slurm_local.sh")
STATE_DIR = os.environ.get("SLURM_LOCAL_STATE", "/var/lib/megatron_align_slurm")
JOBCOMP_LOG = os.path.join(STATE_DIR, "log", "jobcomp.log")

STEPS = 20  # per run; the tiny model takes ~0.25 s a step on 2 cores, start-up ~25 s
TAG = uuid.uuid4().hex[:6]


def _real_sft() -> bool:
    return importlib.util.find_spec("megatron_align.commands.sft") is not None and os.path.isfile(TINY_CONFIG)


def _daemons_running() -> bool:
    for name in ("slurmctld.pid", "slurmd.pid"):
        path = os.path.join(STATE_DIR, name)
        try:
            with open(path) as f:
                os.kill(int(f.read().strip()), 0)
        except (OSError, ValueError):
            return False
    return True


@pytest.fixture(scope="module")
def cluster():
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("needs root: tools/slurm_local.sh starts munged, slurmctld and slurmd as root")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("Slurm is not installed and apt-get is not available to install it")
    already = _daemons_running()
    run_cluster_tool(["bash", SLURM_LOCAL, "start"])
    cluster = Cluster(jobcomp_log=JOBCOMP_LOG)
    yield cluster
    cluster.cancel_all()
    if not already:  # leave a cluster that was up before the tests as it was
        subprocess.run(["bash", SLURM_LOCAL, "stop"], capture_output=True, timeout=120)


def _submit(cluster, tmp, name, config, overrides, *, cmd=None, sbatch_args=()):
    return cluster.submit(tmp, f"{name}-{TAG}", [config, *overrides], cmd=cmd, script=SFT_SBATCH,
                          sbatch_args=["--nodes=1", "--ntasks=2", "--ntasks-per-node=2", *sbatch_args])


def _sft_job(cluster, tmp, name):
    """Submit the SFT job of the tiny config (or the stand-in trainer while the real one is missing)."""
    if _real_sft():
        return _submit(cluster, tmp, name, TINY_CONFIG, [f"train.max_steps={STEPS}", "output.tensorboard=false"])
    return _submit(cluster, tmp, name, fake_config(tmp), [f"train.max_steps={STEPS}", "fake.step_seconds=0.3"],
                   cmd=f"{sys.executable} {FAKE_SFT}")


@pytest.fixture(scope="module")
def reference_run(cluster, tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("slurm_ref"))
    t0 = time.monotonic()
    job, out_dir, log = _sft_job(cluster, tmp, "sft-ref")
    info = cluster.wait(job, log, timeout=240)
    return dict(job=job, out_dir=out_dir, log=log, info=info, seconds=time.monotonic() - t0)


def test_sft_job_runs_to_completion(reference_run):
    info, out_dir, log = reference_run["info"], reference_run["out_dir"], reference_run["log"]
    text = read(log)
    assert_completed(info, log)
    recs = train_metrics(out_dir)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1)), text[-3000:]
    losses = [r["loss"] for r in recs]
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.1, f"loss did not fall: first steps {losses[:3]}, last steps {losses[-3:]}"
    ckpt = latest_checkpoint(out_dir)
    assert os.path.basename(ckpt) == f"step_{STEPS:08d}"
    assert "CPU/gloo" in text and "training step exited with status 0" in text


def test_usr1_saves_requeues_and_resumes_exactly(cluster, reference_run, tmp_path):
    job, out_dir, log = _sft_job(cluster, str(tmp_path), "sft-requeue")
    # Signal once a few steps are done, as --signal=B:USR1@120 would before the time limit.
    cluster.wait_for_step(job, out_dir, log, 3, timeout=180)
    r = cluster.run(["scancel", "--signal=USR1", "--batch", str(job)])
    assert r.returncode == 0, r.stderr
    info = cluster.wait(job, log, timeout=300)
    stop_step = assert_saved_requeued_resumed(info, log, STEPS)
    assert stop_step >= 3

    recs = train_metrics(out_dir)
    steps = [r["step"] for r in recs]
    # Steps continue after the checkpoint (a restart from 1 would repeat 1..stop_step).
    assert steps == list(range(1, STEPS + 1)), f"steps in metrics.jsonl: {steps}"
    ref = {r["step"]: r["loss"] for r in train_metrics(reference_run["out_dir"])}
    for rec in recs:
        a, b = rec["loss"], ref[rec["step"]]
        assert abs(a - b) <= 1e-6 * max(abs(b), 1e-12), \
            f"step {rec['step']}: loss {a!r} after resume vs {b!r} uninterrupted (stopped at {stop_step})"
    assert os.path.basename(latest_checkpoint(out_dir)) == f"step_{STEPS:08d}"


def test_dead_rank_fails_the_job_quickly(cluster, tmp_path):
    assert_dead_rank_fails_fast(cluster, str(tmp_path), f"sft-dead-rank-{TAG}", script_args=[], script=SFT_SBATCH,
                                sbatch_args=["--nodes=1", "--ntasks=2", "--ntasks-per-node=2"], max_seconds=90)


def test_time_limit_signal_requeues_and_resumes(cluster, tmp_path):
    # The real thing behind `#SBATCH --signal=B:USR1@120`: a 2-minute job warned 60 s before its limit (Slurm
    # checks limits every ~30 s, so the warning lands 30-90 s in). The stand-in needs ~80 s for 150 steps, so
    # the first run is cut short, requeued, and the second one finishes.
    steps = 150
    job, out_dir, log = _submit(cluster, str(tmp_path), "sft-timelimit", fake_config(str(tmp_path)),
                                [f"train.max_steps={steps}", "fake.step_seconds=0.5"],
                                cmd=f"{sys.executable} {FAKE_SFT}", sbatch_args=["--time=2", "--signal=B:USR1@60"])
    info = cluster.wait(job, log, timeout=360)
    text = read(log)
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", f"{info}\n{text[-4000:]}"
    assert int(info.get("Restarts", "0")) >= 1, f"not requeued: {info}\n{text[-4000:]}"
    assert "received SIGUSR1" in text and re.search(r"resumed from step \d+", text), text[-4000:]
    recs = train_metrics(out_dir)
    assert [r["step"] for r in recs] == list(range(1, steps + 1))
