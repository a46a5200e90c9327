#!/usr/bin/env bash
# A two-node Slurm cluster on this one machine, in network namespaces: for testing what only crosses a node
# boundary (rendezvous from SLURM_*, name resolution, the gloo interface, requeue and failures across hosts).
#
#   tools/slurm_netns.sh start STATE [OWNER_PID]   build the cluster under the empty/new directory STATE,
#                                                 wait until both nodes are idle; print the subnet
#   tools/slurm_netns.sh exec STATE -- CMD ...     run CMD inside the controller's namespaces (every Slurm
#                                                 client: sbatch, srun, scontrol, squeue, sinfo, scancel)
#   tools/slurm_netns.sh stop STATE                tear everything down (idempotent)
#   tools/slurm_netns.sh check                     exit 0 when this machine can build it, else the reason
#
# Layout: three network namespaces, each with its own UTS (host name) and mount namespace:
#   ctl    slurmctld, the bridge br0 (10.213.N.10) and every Slurm client
#   node1  slurmd, eth0 10.213.N.11, a veth into ctl's bridge
#   node2  slurmd, eth0 10.213.N.12, a veth into ctl's bridge
# Node names resolve through a hosts file bind-mounted over /etc/hosts in each namespace; like Debian's
# default /etc/hosts it maps the node's own name to 127.0.1.1 (what makes gloo pick loopback unless
# GLOO_SOCKET_IFNAME is set, so the tests see that trap). A separate munged with its own key and socket
# (AuthInfo=socket=...) serves all of them; job processes inherit the namespaces of their node's slurmd.
#
# Network safety: the first thing `start` does is add `blackhole 10.213.N.0/24` to the root namespace's
# routing table (that route is also how a cluster claims its subnet: the first free N in 77..96, or
# SLURM_NETNS_SUBNET=10.213.N), so nothing in the root namespace can ever reach the subnet through its default
# gateway. The root namespace gets no interface on the subnet, no namespace gets a default route, and nothing
# here connects to the subnet from the root namespace. `stop` kills every process that lives in the cluster's
# namespaces (by pid) and munged, deletes the namespaces (with them the veths and the bridge), removes the
# blackhole route, and unmounts /run/netns when this script made it a mount point and it is empty.
# With OWNER_PID, a watchdog tears the cluster down once that process is gone (a killed test run).
#
# Needs root, iproute2, util-linux (nsenter, unshare), slurm-wlm + munge (installed with apt-get when
# missing). Exit codes: 0 ok; 1 error; 2 usage; 3 not root; 75 packages not downloadable; 76 this machine
# does not allow network namespaces (e.g. an unprivileged container).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_PREFIX=slurm_netns
# shellcheck source=tools/slurm_common.sh
source "$HERE/slurm_common.sh"

NODES=(node1 node2)
CPUS=${SLURM_NETNS_CPUS:-4}    # per node; more than nproc is allowed (config_overrides)
TIMEOUT=${SLURM_NETNS_TIMEOUT:-60}

usage() { sed -n '4,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

check() {
    local t
    need_root
    for t in ip nsenter unshare; do
        command -v "$t" >/dev/null || die "$t is not installed" 76
    done
    unshare --net --uts --mount true 2>/dev/null || die "cannot create network/UTS/mount namespaces here (unshare --net --uts --mount failed: no CAP_SYS_ADMIN?)" 76
    unshare --net bash -c 'ip link add mnt0 type bridge && ip link add mnt1 type veth peer name mnt2' 2>/dev/null \
        || die "cannot create a bridge and a veth pair inside a network namespace" 76
}

state_abs() { mkdir -p "$1" && (cd "$1" && pwd); }

claim_subnet() {  # echo the claimed prefix "10.213.N"
    local cands n
    if [[ -n ${SLURM_NETNS_SUBNET:-} ]]; then cands=("$SLURM_NETNS_SUBNET"); else
        cands=(); for n in $(seq 77 96); do cands+=("10.213.$n"); done
    fi
    for n in "${cands[@]}"; do
        # The kernel refuses a second identical route: adding it is an atomic claim of the subnet.
        if ip route add blackhole "$n.0/24" 2>/dev/null; then echo "$n"; return 0; fi
    done
    die "no free subnet among ${cands[*]} (each has a route in the root namespace already)"
}

ns_name() { echo "ma$(cat "$STATE/id")$1"; }  # short: namespace names show up in ip netns list

# Run a command in NAME's network namespace with a new UTS + mount namespace: host name set, hosts file
# bind-mounted. Not `ip netns exec`: that remounts /sys without the cgroup mounts and slurmd refuses to start.
in_new_node_ns() {  # name hostsfile cmd...
    local name=$1 hosts=$2; shift 2
    exec nsenter --net="/run/netns/$(ns_name "$name")" -- unshare --uts --mount --propagation private -- \
        bash -c 'hostname "$1" && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"' _ "$name" "$hosts" "$@"
}

write_files() {
    local p=$1 n
    mkdir -p "$STATE/ctld" "$STATE/log" "$STATE/munge" "$STATE/pids"
    for n in "${NODES[@]}"; do mkdir -p "$STATE/$n/spool"; done   # slurmd fails silently without it
    for n in ctl "${NODES[@]}"; do
        {
            echo "127.0.0.1 localhost"
            echo "127.0.1.1 $n"          # Debian's default line for the own host name
            echo "$p.10 ctl"
            echo "$p.11 node1"
            echo "$p.12 node2"
        } | awk -v self="$n" '!($2 == self && $1 != "127.0.1.1")' >"$STATE/hosts.$n"
    done
    cat >"$STATE/slurm.conf" <<EOF
# generated by megatron_align tools/slurm_netns.sh
ClusterName=netns$(cat "$STATE/id")
SlurmctldHost=ctl($p.10)
# Own munged (socket below); a requeued job becomes eligible cred_expire+1 s later.
AuthInfo=socket=$STATE/munge/munge.sock,cred_expire=5
$(slurm_conf_common)
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/%n/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/%n/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
JobCompLoc=$STATE/log/jobcomp.log
NodeName=node1 NodeAddr=$p.11 CPUs=$CPUS State=UNKNOWN
NodeName=node2 NodeAddr=$p.12 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
}

build_network() {
    local p=$1 ctl i n
    ctl=$(ns_name ctl)
    for n in ctl "${NODES[@]}"; do ip netns add "$(ns_name "$n")"; done
    ip -n "$ctl" link add br0 type bridge
    i=11
    for n in "${NODES[@]}"; do
        # Both ends are created inside the namespaces: the root namespace never holds one.
        ip link add eth0 netns "$(ns_name "$n")" type veth peer name "v$n" netns "$ctl"
        ip -n "$ctl" link set "v$n" master br0 up
        ip -n "$(ns_name "$n")" addr add "$p.$i/24" dev eth0
        ip -n "$(ns_name "$n")" link set lo up
        ip -n "$(ns_name "$n")" link set eth0 up
        i=$((i + 1))
    done
    ip -n "$ctl" addr add "$p.10/24" dev br0
    ip -n "$ctl" link set lo up
    ip -n "$ctl" link set br0 up
}

start_daemons() {
    local n
    munged --force --socket="$STATE/munge/munge.sock" --key-file="$STATE/munge/munge.key" \
        --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
        --seed-file="$STATE/munge/munged.seed" || die "munged failed to start; see $STATE/munge/munged.log"
    cp "$STATE/munge/munged.pid" "$STATE/pids/munged"
    export SLURM_CONF=$STATE/slurm.conf
    # Foreground daemons (-D) started in the background: $! is the daemon itself (nsenter, unshare and
    # bash all exec), recorded for stop. setsid: no signal from the caller's terminal reaches them.
    for n in ctl "${NODES[@]}"; do
        if [[ $n == ctl ]]; then
            setsid "$HERE/slurm_netns.sh" _node_exec "$STATE" ctl slurmctld -D -i -f "$SLURM_CONF" \
                >>"$STATE/log/slurmctld.stdout" 2>&1 </dev/null &
        else
            setsid "$HERE/slurm_netns.sh" _node_exec "$STATE" "$n" slurmd -D -N "$n" -f "$SLURM_CONF" \
                >>"$STATE/log/slurmd-$n.stdout" 2>&1 </dev/null &
        fi
        echo $! >"$STATE/pids/$n"
    done
}

wait_idle() {
    local states="" t
    for t in $(seq $(( TIMEOUT * 10 ))); do
        for n in ctl "${NODES[@]}"; do
            kill -0 "$(cat "$STATE/pids/$n")" 2>/dev/null && continue
            tail -n 20 "$STATE"/log/* >&2 || true
            die "the $n daemon exited; logs in $STATE/log"
        done
        states=$(run_in_ctl sinfo -h -N -o '%N %T' 2>/dev/null | sort | tr '\n' ' ' || true)
        [[ $states == "node1 idle node2 idle " ]] && return 0
        (( t % 50 == 0 )) && log "waiting for the nodes: ${states:-no answer from slurmctld}"
        sleep 0.1
    done
    tail -n 20 "$STATE"/log/* >&2 || true
    die "nodes not idle within ${TIMEOUT}s: ${states:-no answer from slurmctld}"
}

run_in_ctl() {  # cmd...: in the controller's network, UTS and mount namespaces (its hosts file), same cwd
    SLURM_CONF=$STATE/slurm.conf nsenter --target "$(cat "$STATE/pids/ctl")" --net --uts --mount --wd="$PWD" -- "$@"
}

watchdog() {  # owner pid: tear down once it is gone
    local owner=$1
    setsid bash -c 'while kill -0 "$1" 2>/dev/null && [[ -f $2/id ]]; do sleep 2; done
                    [[ -f $2/id ]] && WATCHDOG_SELF=$$ exec "$3" stop "$2"' _ "$owner" "$STATE" "$HERE/slurm_netns.sh" \
        >>"$STATE/log/watchdog.log" 2>&1 </dev/null &
    echo $! >"$STATE/pids/watchdog"
}

ns_pids() {  # pids of every process in the cluster's network namespaces
    local n
    for n in ctl "${NODES[@]}"; do
        [[ -e /run/netns/$(ns_name "$n") ]] && ip netns pids "$(ns_name "$n")" 2>/dev/null
    done
    return 0
}

kill_namespace_processes() {  # every process whose network namespace is one of ours, by pid
    local pids p sig alive
    for sig in TERM KILL; do
        mapfile -t pids < <(ns_pids)
        (( ${#pids[@]} )) || return 0
        [[ $sig == TERM ]] && log "stopping ${#pids[@]} process(es) in the cluster's namespaces"
        kill "-$sig" "${pids[@]}" 2>/dev/null || true
        for _ in $(seq 10); do   # nothing in there has state worth a graceful shutdown: 1 s, then KILL
            alive=0
            for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1 && break; done
            (( alive )) || break
            sleep 0.1
        done
    done
}

stop() {
    local n p
    [[ -f $STATE/id ]] || { log "no cluster in $STATE"; return 0; }
    [[ -f $STATE/pids/watchdog && $(cat "$STATE/pids/watchdog") != "${WATCHDOG_SELF:-}" ]] && \
        kill "$(cat "$STATE/pids/watchdog")" 2>/dev/null || true
    kill_namespace_processes
    for n in ctl "${NODES[@]}"; do
        [[ -f $STATE/pids/$n ]] && kill -KILL "$(cat "$STATE/pids/$n")" 2>/dev/null || true
    done
    stop_pidfile munged "$STATE/pids/munged" 5
    rm -f "$STATE/munge/munged.pid"
    for n in ctl "${NODES[@]}"; do
        [[ -e /run/netns/$(ns_name "$n") ]] && ip netns del "$(ns_name "$n")"
    done
    if [[ -f $STATE/subnet ]]; then
        p=$(cat "$STATE/subnet")
        ip route del blackhole "$p.0/24" 2>/dev/null || true
    fi
    # /run/netns became a mount point on the first `ip netns add`; undo that when nothing else uses it.
    if [[ -f $STATE/made_run_netns ]] && mountpoint -q /run/netns && [[ -z $(ls -A /run/netns 2>/dev/null) ]]; then
        umount /run/netns 2>/dev/null || true
    fi
    rm -f "$STATE/id" "$STATE/subnet" "$STATE/made_run_netns" "$STATE"/pids/*
    log "stopped"
}

start() {
    local p
    need_root
    install_packages
    check
    [[ -f $STATE/id ]] && die "$STATE already holds a cluster; stop it first"
    printf '%04x\n' $(( ($$ ^ RANDOM) & 0xffff )) >"$STATE/id"
    mountpoint -q /run/netns 2>/dev/null || touch "$STATE/made_run_netns"
    p=$(claim_subnet)                 # the blackhole route, before any address exists
    echo "$p" >"$STATE/subnet"
    # Any failure from here on (a command under set -e, or die) tears down what exists so far.
    trap 'rc=$?; if (( rc != 0 )); then log "start failed: tearing down"; stop; fi; exit $rc' EXIT
    write_files "$p"
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1 count=1024 status=none
    chmod 0700 "$STATE/munge"; chmod 0400 "$STATE/munge/munge.key"
    build_network "$p"
    start_daemons
    [[ -n ${OWNER:-} ]] && watchdog "$OWNER"
    wait_idle
    trap - EXIT
    log "two nodes idle on $p.0/24 (state $STATE)"
    echo "$p.0/24"
}

cmd=${1:-}
case $cmd in
    start)
        [[ $# -ge 2 ]] || usage
        STATE=$(state_abs "$2"); OWNER=${3:-}
        start ;;
    stop)
        [[ $# -ge 2 ]] || usage
        need_root
        STATE=$(state_abs "$2"); WATCHDOG_SELF=${WATCHDOG_SELF:-}
        stop ;;
    exec)
        [[ $# -ge 4 && $3 == -- ]] || usage
        STATE=$(state_abs "$2"); shift 3
        [[ -f $STATE/pids/ctl ]] || die "no cluster running in $STATE"
        run_in_ctl "$@" ;;
    check)
        check ;;
    _node_exec)  # internal: STATE NAME CMD... (the daemons' entry into their namespaces)
        STATE=$2; n=$3; shift 3
        in_new_node_ns "$n" "$STATE/hosts.$n" "$@" ;;
    *) usage ;;
esac
