"""examples/slurm/train.sbatch on a real two-node Slurm cluster: two slurmd "hosts" in their own network, UTS
and mount namespaces on a bridge, slurmctld in a third (tools/slurm_netns.sh). CPU/gloo, one task per node.

What only crosses a node boundary:
1. `srun -N2` places rank 0 on node1 and rank 1 on node2; each resolves the other's name to its address on the
   bridge (its own name to 127.0.1.1, as Debian's /etc/hosts does); both derive the same rendezvous from SLURM_*
   and the gloo interface eth0 (examples/slurm/task_env.sh).
2. Each stage's tiny config as a two-node job, TP=2 across the nodes and DP=2 across the nodes: the step losses
   and grad norms equal (==, fp32 on CPU) those of the same job on one node, and the traffic crossed the bridge
   (node2's eth0 byte counters grow by more than a megabyte). A new stage is one entry in STAGES.
3. SIGUSR1 -> save -> requeue -> resume with the ranks on two hosts: every step logged exactly once, the curve
   equal to the uninterrupted two-node run.
4. A rank that dies on node2 fails the whole job within seconds (not at the collective timeout); not requeued.

Skipped, with the reason, where the machine does not let us create namespaces (not root, an unprivileged
container) or the Slurm packages cannot be installed. One cluster per module (bring-up ~1 s, teardown ~1 s).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import uuid

import pytest
from slurm_jobs import (REPO, TINY_CONFIG, TRAIN_SBATCH, Cluster, assert_completed, assert_dead_rank_fails_fast,
                        assert_saved_requeued_resumed, latest_checkpoint, read, run_cluster_tool, train_metrics)

pytestmark = [pytest.mark.slow]

SLURM_NETNS = os.path.join(REPO, "tools", "slurm_netns.sh")
TASK_ENV = os.path.join(REPO, "examples", "slurm", "task_env.sh")
STEPS = 8
TAG = uuid.uuid4().hex[:6]

# (stage, tiny config, stage-specific overrides): adding a stage to the two-node checks is one entry here. The
# stage takes train.max_steps / parallel.tp overrides and writes <output_dir>/metrics.jsonl (step, loss) and
# step_XXXXXXXX/ + latest checkpoints, as sft does (docs/slurm.md, "Trainer contract").
_PAIRS = os.path.join(REPO, "megatron_align", "assets", "tiny", "pairs_{}.jsonl")
STAGES = [
    pytest.param("sft", TINY_CONFIG, ["output.tensorboard=false"], id="sft"),
    pytest.param("rm", os.path.join(REPO, "examples", "configs", "rm_tiny_cpu.yaml"),
                 ["output.tensorboard=false", f"data.path={_PAIRS.format('train')}",
                  f"data.eval_path={_PAIRS.format('eval')}", "train.eval_interval=0", "train.log_interval=1"], id="rm"),
    pytest.param("grpo", os.path.join(REPO, "examples", "configs", "grpo_tiny_cpu.yaml"),
                 ["output.tensorboard=false", "train.eval_interval=0", "train.log_interval=1", "rl.eval_prompts=null",
                  f"rl.prompts={os.path.join(REPO, 'megatron_align', 'assets', 'tiny', 'rl_prompts_train.jsonl')}",
                  f"rl.rewards=[{{name: vowels, type: function, params: {{path: "
                  f"{os.path.join(REPO, 'examples', 'rewards', 'tiny_rewards.py')}:vowel_share}}}}]"], id="grpo"),
]
# Two ranks: tensor parallel across the two nodes, or data parallel across them.
LAYOUTS = {"tp2": ["parallel.tp=2"], "dp2": ["parallel.tp=1"]}
SFT_LAYOUT_LINE = {"tp2": "dp=1 tp=2 pp=1", "dp2": "dp=2 tp=1 pp=1"}  # what the sft command logs
ONE_NODE = ["--nodes=1", "--ntasks=2", "--ntasks-per-node=2"]
TWO_NODES = ["--nodes=2", "--ntasks=2", "--ntasks-per-node=1"]


class NetnsCluster(Cluster):
    def __init__(self, state: str, subnet: str):
        super().__init__(jobcomp_log=os.path.join(state, "log", "jobcomp.log"),
                         prefix=[SLURM_NETNS, "exec", state, "--"])
        self.state = state
        self.subnet = subnet  # "10.213.N.0/24"
        self.runs: dict = {}  # (stage, layout, nodes) -> finished job, shared by the tests

    def prefix24(self) -> str:
        return self.subnet.rsplit(".", 1)[0]

    def node_bytes(self, node: str = "node2") -> int:
        """rx + tx bytes of the node's eth0, read from its slurmd's /proc/PID/net/dev (no namespace entered)."""
        with open(os.path.join(self.state, "pids", node)) as f:
            pid = f.read().strip()
        for line in read(f"/proc/{pid}/net/dev").splitlines():
            name, _, rest = line.partition(":")
            if name.strip() == "eth0":
                fields = rest.split()
                return int(fields[0]) + int(fields[8])
        raise AssertionError(f"no eth0 in /proc/{pid}/net/dev")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, and munged/slurmctld/slurmd run as root")
    run_cluster_tool([SLURM_NETNS, "check"], timeout=60)
    state = str(tmp_path_factory.mktemp("netns_cluster"))
    out = run_cluster_tool([SLURM_NETNS, "start", state, str(os.getpid())])
    c = NetnsCluster(state, out.strip().splitlines()[-1])
    try:
        yield c
    finally:
        c.cancel_all()
        r = subprocess.run([SLURM_NETNS, "stop", state], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"teardown failed: {r.stderr}"


def test_root_namespace_is_fenced_off(cluster):
    # The subnet is a blackhole in the root namespace, which has no address on it.
    routes = subprocess.run(["ip", "route", "show", cluster.subnet], capture_output=True, text=True).stdout
    assert routes.split()[:2] == ["blackhole", cluster.subnet], routes
    addrs = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    assert f" {cluster.prefix24()}." not in addrs, addrs
    # Inside: no default route anywhere (the controller's namespace, where the clients run, and both nodes).
    r = cluster.run(["ip", "route", "show", "default"])
    assert r.returncode == 0 and r.stdout.strip() == "", ("ctl", r.stdout, r.stderr)
    for node in ("node1", "node2"):
        r = cluster.run(["srun", "-w", node, "-N1", "-n1", "ip", "route", "show", "default"])
        assert r.returncode == 0 and r.stdout.strip() == "", (node, r.stdout, r.stderr)


def test_srun_places_ranks_and_resolves_names(cluster):
    probe = ("echo rank=$SLURM_PROCID host=$(hostname) node1=$(getent ahostsv4 node1 | awk 'NR==1{print $1}') "
             "node2=$(getent ahostsv4 node2 | awk 'NR==1{print $1}') "
             f"gloo=$(bash {TASK_ENV} printenv GLOO_SOCKET_IFNAME) "
             f"launch=$({sys.executable} -c 'from megatron_align.runtime.launch_env import detect_launch_env as d; "
             "e = d(); print(e.rank, e.world_size, e.master_addr, e.master_port, sep=\",\")')")
    r = cluster.run(["srun", "-N2", "-n2", "--ntasks-per-node=1", "--label", "bash", "-c", probe],
                    env=dict(os.environ, PYTHONPATH=REPO), cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = dict(ln.split(": ", 1) for ln in r.stdout.strip().splitlines())
    got = {int(k): dict(kv.split("=", 1) for kv in v.split()) for k, v in lines.items()}
    p = cluster.prefix24()
    assert got[0]["host"] == "node1" and got[1]["host"] == "node2", got
    assert got[0]["node2"] == f"{p}.12" and got[1]["node1"] == f"{p}.11", got
    assert got[0]["node1"] == "127.0.1.1" and got[1]["node2"] == "127.0.1.1", got  # Debian's own-name line
    assert got[0]["gloo"] == got[1]["gloo"] == "eth0", got
    launch = [got[i]["launch"].split(",") for i in (0, 1)]
    assert launch[0][0] == "0" and launch[1][0] == "1" and launch[0][1] == launch[1][1] == "2", launch
    assert launch[0][2] == launch[1][2] == "node1" and launch[0][3] == launch[1][3], launch


def _run_job(cluster, tmp, stage, config, overrides, layout, sbatch_args, name):
    return cluster.submit(tmp, f"{name}-{TAG}", [stage, config, f"train.max_steps={STEPS}", *overrides,
                                                  *LAYOUTS[layout]], sbatch_args=sbatch_args)


def _stage_available(stage):
    return importlib.util.find_spec(f"megatron_align.commands.{stage}") is not None


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("stage,config,overrides", STAGES)
def test_two_node_job_equals_one_node_job(cluster, tmp_path, stage, config, overrides, layout):
    if not _stage_available(stage):
        pytest.skip(f"stage {stage} is not implemented yet")
    tmp = str(tmp_path)
    before = cluster.node_bytes()
    # The one-node job runs at the same time on one node (loopback only: it adds nothing to eth0's counters).
    two = _run_job(cluster, tmp, stage, config, overrides, layout, TWO_NODES, f"{stage}-{layout}-2n")
    one = _run_job(cluster, tmp, stage, config, overrides, layout, ONE_NODE, f"{stage}-{layout}-1n")
    infos = [cluster.wait(job, log, timeout=300) for job, _, log in (two, one)]
    crossed = cluster.node_bytes() - before
    for info, (_, _, log) in zip(infos, (two, one)):
        assert_completed(info, log)
    assert infos[0].get("NodeList") == "node[1-2]", infos[0]
    text = read(two[2])
    assert "GLOO_SOCKET_IFNAME=eth0" in text, text[-4000:]
    if stage == "sft":
        assert SFT_LAYOUT_LINE[layout] in text, text[-4000:]
    runs = [train_metrics(out_dir) for _, out_dir, _ in (two, one)]
    assert [r["step"] for r in runs[0]] == list(range(1, STEPS + 1)), text[-4000:]
    assert [r["step"] for r in runs[1]] == list(range(1, STEPS + 1))
    for a, b in zip(*runs):
        assert a["loss"] == b["loss"], f"step {a['step']}: two nodes {a['loss']!r} vs one node {b['loss']!r}"
        if "reward" in b:  # RL: the rollouts (sampled on every rank from the same seed) and their rewards agree
            assert a["reward"] == b["reward"], (a["step"], a["reward"], b["reward"])
        if "grad_norm" in b:
            assert a["grad_norm"] == b["grad_norm"], (a["step"], a["grad_norm"], b["grad_norm"])
    assert crossed > 1_000_000, f"only {crossed} bytes crossed node2's eth0"
    assert os.path.basename(latest_checkpoint(two[1])) == f"step_{STEPS:08d}"
    cluster.runs[(stage, layout)] = two


def test_usr1_requeue_resume_across_nodes(cluster, tmp_path, tmp_path_factory):
    if not _stage_available("sft"):
        pytest.skip("the sft stage is not implemented")
    stage, config, overrides = STAGES[0].values
    ref = cluster.runs.get((stage, "tp2"))
    if ref is None:  # the parity test did not run first (-k): the uninterrupted run
        ref_tmp = str(tmp_path_factory.mktemp("netns_ref"))
        ref = _run_job(cluster, ref_tmp, stage, config, overrides, "tp2", TWO_NODES, f"{stage}-tp2-2n")
        assert_completed(cluster.wait(ref[0], ref[2], timeout=300), ref[2])
    job, out_dir, log = _run_job(cluster, str(tmp_path), stage, config, overrides, "tp2", TWO_NODES,
                                 f"{stage}-requeue-2n")
    cluster.wait_for_step(job, out_dir, log, 2, timeout=240)
    r = cluster.run(["scancel", "--signal=USR1", "--batch", str(job)])
    assert r.returncode == 0, r.stderr
    info = cluster.wait(job, log, timeout=300)
    stop_step = assert_saved_requeued_resumed(info, log, STEPS)
    text = read(log)
    # Each step once in metrics.jsonl and once in the log (the resumed run starts after the checkpoint).
    recs = train_metrics(out_dir)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1)), f"stopped at {stop_step}: {recs}"
    for s in range(1, STEPS + 1):
        n = len(re.findall(rf"\] step {s}/{STEPS} ", text))
        assert n == 1, f"step {s} logged {n} times (stopped at {stop_step}):\n{text[-6000:]}"
    assert text.count("restart 1: 2 node(s) [node[1-2]]") == 1, text[-6000:]
    ref_recs = train_metrics(ref[1])
    assert [r["loss"] for r in recs] == [r["loss"] for r in ref_recs], \
        f"stopped at {stop_step}: {[r['loss'] for r in recs]} vs uninterrupted {[r['loss'] for r in ref_recs]}"
    assert os.path.basename(latest_checkpoint(out_dir)) == f"step_{STEPS:08d}"


def test_rank_dying_on_node2_fails_the_job_quickly(cluster, tmp_path):
    # Rank 1 runs on node2 (one task per node); rank 0 on node1 must be killed within seconds.
    text = assert_dead_rank_fails_fast(cluster, str(tmp_path), f"dead-rank-2n-{TAG}", script_args=["sft"],
                                       script=TRAIN_SBATCH, sbatch_args=TWO_NODES, max_seconds=40)
    assert "1: [fake-sft] rank 1 dies at step 3" in text, text[-4000:]
    # The step on node1 was killed by srun, not by the collective timeout.
    assert "timed out" not in text.lower() and "Timeout" not in text, text[-4000:]
