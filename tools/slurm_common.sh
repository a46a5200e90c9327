# Shared by tools/slurm_local.sh (one node on loopback) and tools/slurm_netns.sh (two nodes in network
# namespaces): package installation, pid-file helpers and the slurm.conf lines both clusters use.
# Source it; set LOG_PREFIX first. Exit codes used by die(): 1 error; 3 not root; 75 (EX_TEMPFAIL) the
# packages could not be downloaded (no route to the package registry).
# shellcheck shell=bash

log() { echo "${LOG_PREFIX:-slurm}: $*" >&2; }
die() { log "error: $*"; exit "${2:-1}"; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (starts munged/slurmctld/slurmd as root)" 3
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return 0
    fi
    command -v apt-get >/dev/null || die "slurm is not installed and apt-get is not available" 1
    export DEBIAN_FRONTEND=noninteractive
    log "installing slurm-wlm and munge with apt-get (one-off, ~1 min)"
    local out
    if ! out=$(apt-get update -qq 2>&1); then
        echo "$out" >&2
        die "apt-get update failed (package registry unreachable?)" 75
    fi
    # apt-get update exits 0 even when every mirror failed; a fetch failure shows as W:/E: lines.
    if grep -qiE "^(W|E): (Failed to fetch|Some index files failed)" <<<"$out"; then
        echo "$out" >&2
    fi
    if ! out=$(apt-get install -y -qq --no-install-recommends slurm-wlm munge 2>&1); then
        echo "$out" >&2
        if grep -qiE "Unable to locate package|Failed to fetch|Temporary failure|Could not resolve|Connection (failed|timed out)|Unable to fetch" <<<"$out"; then
            die "apt-get install slurm-wlm munge failed: packages not downloadable (registry unreachable?)" 75
        fi
        die "apt-get install slurm-wlm munge failed" 1
    fi
    command -v slurmctld >/dev/null || die "slurm-wlm installed but slurmctld is not on PATH" 1
}

pid_alive() {  # pidfile
    [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_pidfile() {  # name pidfile [seconds to wait before SIGKILL, default 10]
    local pid tries
    [[ -f $2 ]] || return 0
    pid=$(cat "$2")
    tries=$(( ${3:-10} * 5 ))
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping $1 (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq "$tries"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$2"
}

# The slurm.conf settings of both test clusters (everything but names, addresses and paths).
slurm_conf_common() {
    cat <<'EOF'
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
# Finished jobs stay visible to 'scontrol show job' this long (the tests read their exit code there);
# the job-completion log keeps them after that.
MinJobAge=600
KillWait=30
InactiveLimit=0
Waittime=0
SlurmctldTimeout=60
SlurmdTimeout=60
# Short scheduling passes so a requeued job whose BeginTime passed starts within seconds.
SchedulerParameters=sched_interval=2,bf_interval=2,sched_min_interval=100000
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
EOF
}
