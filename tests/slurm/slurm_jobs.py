"""Submitting examples/slurm/*.sbatch jobs and reading their results, for the one-node cluster
(tools/slurm_local.sh, clients run directly) and the two-node cluster in network namespaces
(tools/slurm_netns.sh, clients run inside the controller's namespaces)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_SBATCH = os.path.join(REPO, "examples", "slurm", "train.sbatch")
SFT_SBATCH = os.path.join(REPO, "examples", "slurm", "sft.sbatch")
TINY_CONFIG = os.path.join(REPO, "examples", "configs", "tiny_cpu.yaml")
FAKE_SFT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_sft.py")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED"}


@dataclass
class Cluster:
    """How to reach one test cluster: ``prefix`` goes in front of every Slurm client command."""

    jobcomp_log: str
    prefix: List[str] = field(default_factory=list)
    jobs: List[int] = field(default_factory=list)

    def run(self, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 120)
        return subprocess.run([*self.prefix, *argv], **kw)

    def submit(self, tmp: str, name: str, script_args: Sequence[str], *, sbatch_args: Sequence[str],
               cmd: Optional[str] = None, script: str = TRAIN_SBATCH, env: Optional[Dict[str, str]] = None):
        """sbatch SCRIPT SCRIPT_ARGS... output_dir=<tmp>/<name>; returns (job id, output dir, log file)."""
        out_dir = os.path.join(tmp, name)
        log = os.path.join(tmp, f"{name}.log")
        full_env = dict(os.environ, PYTHON=sys.executable, MEGATRON_ALIGN_CPU="1")
        full_env.pop("MEGATRON_ALIGN_TRAIN_CMD", None)
        full_env.update(env or {})
        if cmd:
            full_env["MEGATRON_ALIGN_TRAIN_CMD"] = cmd
        argv = ["sbatch", "--parsable", "-J", name, "--gpus-per-node=0", "--cpus-per-task=1", "--time=15",
                f"--output={log}", f"--chdir={REPO}", *sbatch_args, script, *script_args, f"output_dir={out_dir}"]
        r = self.run(argv, env=full_env, timeout=60)
        assert r.returncode == 0, f"sbatch failed: {r.stderr}"
        job = int(r.stdout.strip().split(";")[0])
        self.jobs.append(job)
        return job, out_dir, log

    def job_info(self, job: int) -> Dict[str, str]:
        r = self.run(["scontrol", "show", "job", "-o", str(job)])
        line = r.stdout.strip()
        if r.returncode != 0 or not line:  # aged out of slurmctld: the job-completion log has it
            line = ""
            if os.path.isfile(self.jobcomp_log):
                with open(self.jobcomp_log) as f:
                    for ln in f:
                        if ln.startswith(f"JobId={job} "):
                            line = ln
        return dict(re.findall(r"(\w+)=(\S*)", line))

    def wait(self, job: int, log: str, timeout: float) -> Dict[str, str]:
        deadline = time.monotonic() + timeout
        info: Dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job_info(job)
            if info.get("JobState") in TERMINAL:
                return info
            time.sleep(0.5)
        self.run(["scancel", str(job)])
        pytest.fail(f"job {job} not finished after {timeout}s (state {info.get('JobState')}); "
                    f"log:\n{read(log)[-6000:]}")

    def wait_for_step(self, job: int, out_dir: str, log: str, step: int, timeout: float) -> None:
        """Until metrics.jsonl has a step >= ``step`` (fails when the job ends first)."""
        deadline = time.monotonic() + timeout
        while True:
            if logged_steps(out_dir) and max(logged_steps(out_dir)) >= step:
                return
            state = self.job_info(job).get("JobState")
            if state in TERMINAL or time.monotonic() > deadline:
                pytest.fail(f"job {job} ({state}) never reached step {step}; log:\n{read(log)[-6000:]}")
            time.sleep(0.1)

    def cancel_all(self) -> None:
        for job in self.jobs:
            self.run(["scancel", str(job)])


def read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def logged_steps(out_dir: str) -> List[int]:
    steps = []
    for ln in read(os.path.join(out_dir, "metrics.jsonl")).splitlines():
        try:
            steps.append(json.loads(ln).get("step", 0))
        except ValueError:  # a line being written
            pass
    return steps


def train_metrics(out_dir: str) -> List[dict]:
    recs = []
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                if rec.get("kind", "train") == "train":
                    recs.append(rec)
    return recs


def latest_checkpoint(out_dir: str) -> str:
    marker = os.path.join(out_dir, "latest")
    assert os.path.isfile(marker), f"no {marker}"
    with open(marker) as f:
        ckpt = os.path.join(out_dir, f.read().strip())
    assert os.path.isfile(os.path.join(ckpt, "COMPLETE")), f"{ckpt} has no COMPLETE file"
    return ckpt


def fake_config(tmp: str) -> str:
    """A config file for the stand-in trainer tests/slurm/fake_sft.py."""
    path = os.path.join(tmp, "fake_sft.yaml")
    with open(path, "w") as f:
        f.write("# config of tests/slurm/fake_sft.py\noptim:\n  lr: 0.05\n")
    return path


def assert_completed(info: Dict[str, str], log: str) -> None:
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", \
        f"job ended {info.get('JobState')} exit {info.get('ExitCode')}; log:\n{read(log)[-6000:]}"


def assert_saved_requeued_resumed(info: Dict[str, str], log: str, max_steps: int) -> int:
    """The log and job record of a run that got SIGUSR1 once: saved at step N, requeued, resumed from N.
    Returns N."""
    text = read(log)
    assert_completed(info, log)
    assert int(info.get("Restarts", "0")) >= 1, f"job was not requeued: {info}\n{text[-6000:]}"
    assert "received SIGUSR1" in text and "requeueing job" in text, text[-6000:]
    saved = re.findall(r"stop signal received: saved (\S+) at step (\d+)", text)
    assert saved, f"the trainer did not report a save on the signal; log:\n{text[-6000:]}"
    stop_step = int(saved[0][1])
    assert 1 <= stop_step < max_steps, f"stopped at step {stop_step}"
    resumed = re.findall(r"resumed from step (\d+)", text)
    assert resumed and int(resumed[0]) == stop_step, f"no 'resumed from step {stop_step}' in the log:\n{text[-6000:]}"
    # The requeued run opened the same log (append) and announced the resume before starting srun.
    assert "restart 1" in text and "(resuming from step_" in text
    return stop_step


def assert_dead_rank_fails_fast(cluster: Cluster, tmp: str, name: str, *, script_args: Sequence[str],
                                sbatch_args: Sequence[str], script: str, max_seconds: float) -> str:
    """The stand-in trainer whose rank 1 exits 3 at step 3 while rank 0 would wait in a collective for its
    2-minute timeout: the job must end FAILED, not requeued, within ``max_seconds`` of submission (srun's
    --kill-on-bad-exit). Returns the job log."""
    t0 = time.monotonic()
    job, _, log = cluster.submit(tmp, name, [*script_args, fake_config(tmp), "train.max_steps=200",
                                             "fake.step_seconds=0.2", "fake.fail_rank=1", "fake.fail_step=3"],
                                 cmd=f"{sys.executable} {FAKE_SFT}", script=script, sbatch_args=sbatch_args)
    info = cluster.wait(job, log, timeout=150)
    elapsed = time.monotonic() - t0
    text = read(log)
    assert info.get("JobState") == "FAILED" and info.get("ExitCode") != "0:0", f"{info}\n{text[-4000:]}"
    assert "rank 1 dies at step 3" in text, text[-4000:]
    assert int(info.get("Restarts", "0")) == 0, "a failed job must not be requeued"
    assert elapsed < max_seconds, f"took {elapsed:.0f}s: the surviving rank was not killed by --kill-on-bad-exit"
    return text


# Exit codes of tools/slurm_local.sh and tools/slurm_netns.sh that mean "this machine cannot", not "broken".
SKIP_CODES = {3: "needs root", 75: "slurm-wlm/munge could not be installed (package registry unreachable)",
              76: "this machine does not allow network namespaces"}


def run_cluster_tool(argv: Sequence[str], timeout: float = 900) -> str:
    """Run a cluster script; skip the tests (with the reason) on the exit codes that mean the machine cannot
    host the cluster, fail them on any other error. Returns stdout."""
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    out = (r.stdout + r.stderr)[-4000:]
    name = os.path.basename(argv[0] if argv[0] != "bash" else argv[1])
    if r.returncode in SKIP_CODES:
        pytest.skip(f"{name}: {SKIP_CODES[r.returncode]}:\n{out}")
    assert r.returncode == 0, f"{' '.join(argv)} failed (exit {r.returncode}):\n{out}"
    return r.stdout
