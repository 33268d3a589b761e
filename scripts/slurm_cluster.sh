#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests marked `slurm` (tests/test_slurm.py).
#
#   eval "$(bash scripts/slurm_cluster.sh start DIR)"   # install if missing, start, wait; prints the exports
#   bash scripts/slurm_cluster.sh stop DIR              # stop munged, slurmctld and slurmd by their pids
#
# DIR holds everything: slurm.conf, the daemons' pid files, logs, state and spool, and jobs.txt
# (jobcomp/filetxt: one line per finished job, with its state, exit code and requeue count; sacct
# needs slurmdbd and a database, which a test cluster does without). The node is this machine with
# its CPUs, named localhost so that a job's node list resolves to the loopback address; JobRequeue=1
# lets jobs requeue, and cred_expire=5 (the least SLURM takes; its default: 120) holds a requeued job
# 5 s before it starts again (the credential of its previous start must expire first); jobs submitted
# with --oversubscribe share CPUs, up to 8 to a CPU; proctrack/linuxproc and task/none need no cgroups.
# Needs root (apt-get, munged and slurmd run as root), as CI and the developers' machines have.
set -euo pipefail
action=${1:?usage: slurm_cluster.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: slurm_cluster.sh start|stop DIR}")

stop() {
    if [ -f "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
        SLURM_CONF="$dir/slurm.conf" scancel --full --signal=KILL --user=root 2>/dev/null || true
        SLURM_CONF="$dir/slurm.conf" scancel --user=root 2>/dev/null || true
        for _ in $(seq 50); do
            [ -z "$(SLURM_CONF="$dir/slurm.conf" squeue -h -t R,CG 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    local pids=()
    for daemon in slurmd slurmctld munged; do  # stopped together: each takes 1-2 s to shut down
        pidfile="$dir/$daemon.pid"
        [ -f "$pidfile" ] || continue
        pids+=("$(cat "$pidfile")")
        kill "${pids[-1]}" 2>/dev/null || true
        rm -f "$pidfile"
    done
    for _ in $(seq 50); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    pkill -KILL -x slurmstepd 2>/dev/null || true  # a job step the daemons left behind
}

install() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return
    echo "installing slurm-wlm and munge" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >&2
}

start() {
    install
    stop
    mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
    node=$(hostname -s)
    cpus=$(nproc)
    port=${SLURM_TEST_PORT:-$((20000 + RANDOM % 20000))}
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    chown munge:munge "$dir/munge"
    cat > "$dir/slurm.conf" <<EOF
ClusterName=ddpmkit
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobs.txt
MinJobAge=3600
KillWait=30
SchedulerParameters=sched_interval=1
NodeName=localhost NodeHostname=$node NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES:8
EOF
    munged --force --socket="$dir/munge/munge.socket" --pid-file="$dir/munged.pid" \
        --log-file="$dir/munged.log" --seed-file="$dir/munge/seed" 2>>"$dir/munged.log"
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF" -i
    slurmd -f "$SLURM_CONF" -N localhost
    for _ in $(seq 120); do
        state=$(sinfo -h -N -o %t 2>/dev/null || true)
        [ "$state" = idle ] && { echo "export SLURM_CONF=$SLURM_CONF"; return 0; }
        sleep 0.5
    done
    echo "the SLURM node did not come up within 60 s (state: ${state:-none}); logs in $dir" >&2
    stop
    return 1
}

case "$action" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: slurm_cluster.sh start|stop DIR" >&2; exit 2 ;;
esac
