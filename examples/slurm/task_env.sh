#!/bin/bash
# Per-task environment of a multi-node job, run by srun in front of the trainer (examples/slurm/train.sbatch):
#
#   srun ... bash examples/slurm/task_env.sh CMD [ARGS ...]
#
# GLOO_SOCKET_IFNAME, when unset and the step spans several nodes: the interface that routes to another node
# of the step (its name resolved on this node, the route asked of the kernel with `ip route get`). Without it
# gloo binds the address its own host name resolves to, and with Debian's default `127.0.1.1 <hostname>` line
# in /etc/hosts that is loopback: the peers on other nodes cannot connect (one rank fails at once, the other
# waits for the rendezvous timeout). Where nothing usable is found (no `ip`, no peer, only loopback) it stays
# unset with a warning and gloo falls back to its own choice. Then execs CMD.
set -uo pipefail

derive_gloo_ifname() {
    local self peer addr dev nodes
    nodes=${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:-}}
    [[ -n $nodes ]] || return 1
    self=${SLURMD_NODENAME:-$(hostname -s)}
    peer=$(scontrol show hostnames "$nodes" 2>/dev/null | grep -vxF "$self" | head -n1)
    [[ -n $peer ]] || return 1
    addr=$(getent ahostsv4 "$peer" | awk 'NR == 1 {print $1}')
    [[ -n $addr ]] || { echo "task_env: cannot resolve node $peer" >&2; return 1; }
    command -v ip >/dev/null || { echo "task_env: no 'ip' command (iproute2) to find the route to $peer" >&2; return 1; }
    dev=$(ip -o route get "$addr" 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p')
    [[ -n $dev && $dev != lo ]] || { echo "task_env: the route to $peer ($addr) is via '${dev:-nothing}'" >&2; return 1; }
    echo "$dev"
}

if [[ -z ${GLOO_SOCKET_IFNAME:-} && ${SLURM_STEP_NUM_NODES:-${SLURM_JOB_NUM_NODES:-1}} -gt 1 ]]; then
    if dev=$(derive_gloo_ifname); then
        export GLOO_SOCKET_IFNAME=$dev
        [[ ${SLURM_PROCID:-0} == 0 ]] && echo "task_env: GLOO_SOCKET_IFNAME=$dev (the route to the other nodes)" >&2
    else
        echo "task_env: warning: GLOO_SOCKET_IFNAME not derived on $(hostname -s); set it to the interface between the nodes" >&2
    fi
fi
exec "$@"
