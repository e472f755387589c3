#!/usr/bin/env bash
# A private one-node Slurm cluster (munged + slurmctld + slurmd) in a folder, for tests and trying
# the job scripts of docker/slurm/ on one machine. Debian packages; no systemd, no cgroups.
#
#   bash scripts/slurm_cluster.sh install          # apt-get install slurmctld slurmd munge slurm-client (root)
#   bash scripts/slurm_cluster.sh start DIR        # write DIR/slurm.conf, start the daemons, wait for the node
#   export SLURM_CONF=DIR/slurm.conf               # (start prints it) then sbatch/srun/squeue use this cluster
#   bash scripts/slurm_cluster.sh status DIR       # sinfo + squeue
#   bash scripts/slurm_cluster.sh stop DIR         # cancel its jobs, stop exactly the daemons start started (by PID)
#   bash scripts/slurm_cluster.sh reachable        # exit 0 if `sinfo` answers with the current environment
#
# The cluster: NodeName=$(hostname -s) CPUs=$(nproc), RealMemory = 90 % of the machine's,
# select/cons_tres with CR_CPU, proctrack/linuxproc, task/none, no accounting database
# (finished jobs stay visible to `scontrol show job` for an hour; completions are appended to
# DIR/log/jobcomp.log), requeue allowed (a requeued job may start again after 15 s),
# KillWait=10 s. Its own munge key and socket and free TCP ports: it never touches a
# system-wide munge or Slurm, and several can run side by side. The daemons run as the
# calling user (root here: slurmd must be root to start jobs as other users).
set -euo pipefail

PACKAGES=(slurmctld slurmd munge slurm-client)

die() { echo "slurm_cluster.sh: error: $*" >&2; exit 2; }

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

have_binaries() {
  local b
  for b in munged slurmctld slurmd sbatch srun squeue sinfo scontrol scancel; do
    command -v "$b" >/dev/null 2>&1 || { PATH="$PATH:/usr/sbin:/sbin" command -v "$b" >/dev/null 2>&1 || return 1; }
  done
}

cmd_install() {
  if have_binaries; then
    echo "slurm_cluster.sh: Slurm and munge are installed ($(PATH="$PATH:/usr/sbin" slurmctld -V))"
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install ${PACKAGES[*]} with this system's package manager"
  [ "$(id -u)" -eq 0 ] || die "installing ${PACKAGES[*]} needs root (run: sudo bash $0 install)"
  # Keep the packages' post-install scripts from starting system-wide daemons (the tests start their own).
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
  fi
  local status=0
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"; then
    apt-get update -q && apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" || status=$?
  fi
  if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi
  [ "$status" -eq 0 ] || die "apt-get install ${PACKAGES[*]} failed (exit $status)"
  have_binaries || die "installed ${PACKAGES[*]} but the daemons are still not on PATH"
  echo "slurm_cluster.sh: installed $(PATH="$PATH:/usr/sbin" slurmctld -V)"
}

port_is_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {  # a free TCP port in 20000-59999 that is not in $1 (space-separated)
  local port tries=0
  while [ "$tries" -lt 200 ]; do
    port=$((20000 + RANDOM % 40000))
    tries=$((tries + 1))
    case " $1 " in *" $port "*) continue ;; esac
    if port_is_free "$port"; then echo "$port"; return 0; fi
  done
  die "no free TCP port found"
}

pid_alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# pid_is NAME PID: PID is alive and runs the program NAME (guards against reused PIDs).
pid_is() {
  pid_alive "$2" || return 1
  local exe
  exe=$(tr '\0' ' ' <"/proc/$2/cmdline" 2>/dev/null | cut -d' ' -f1)
  [ "$(basename "$exe")" = "$1" ]
}

write_config() {
  local dir=$1 node cpus mem_mb ctld_port slurmd_port
  node=$(hostname -s)
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys OMP_NUM_THREADS; the node gets every CPU
  mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  ctld_port=$(free_port "")
  slurmd_port=$(free_port "$ctld_port")
  mkdir -p "$dir/state" "$dir/spool/slurmd-$node" "$dir/log" "$dir/munge"
  chmod 700 "$dir/munge"
  cat >"$dir/slurm.conf" <<EOF
# Written by scripts/slurm_cluster.sh: a private one-node test cluster.
ClusterName=brats-test
SlurmctldHost=${node}(127.0.0.1)
SlurmctldPort=${ctld_port}
SlurmdPort=${slurmd_port}
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=${dir}/munge/munge.socket,cred_expire=15
StateSaveLocation=${dir}/state
SlurmdSpoolDir=${dir}/spool/slurmd-%n
SlurmctldPidFile=${dir}/slurmctld.pid
SlurmdPidFile=${dir}/slurmd.pid
SlurmctldLogFile=${dir}/log/slurmctld.log
SlurmdLogFile=${dir}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=${dir}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=${dir}/log/jobcomp.log
JobRequeue=1
MinJobAge=3600
KillWait=10
InactiveLimit=0
ReturnToService=2
SlurmdTimeout=300
MessageTimeout=30
NodeName=${node} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  : >"$dir/plugstack.conf"
  if [ ! -s "$dir/munge/munge.key" ]; then
    (umask 077 && head -c 1024 /dev/urandom >"$dir/munge/munge.key")
  fi
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2 start=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $((SECONDS - start)) -ge "$limit" ]; then
      echo "slurm_cluster.sh: timed out after ${limit}s waiting for $what" >&2
      return 1
    fi
    sleep 0.5
  done
}

node_ready() {
  local state
  state=$(SLURM_CONF="$1/slurm.conf" sinfo -h -N -o '%T' 2>/dev/null | head -n1)
  case "$state" in idle* | mixed* | allocated*) return 0 ;; *) return 1 ;; esac
}

cmd_start() {
  local dir=${1:-}
  [ -n "$dir" ] || die "start needs a folder: $0 start DIR"
  have_binaries || die "Slurm/munge are not installed; run: bash $0 install"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd -P)
  if [ -f "$dir/pids" ]; then
    local name pid
    while read -r name pid; do
      pid_is "$name" "$pid" && die "$dir already runs a cluster ($name PID $pid); stop it first: $0 stop $dir"
    done <"$dir/pids"
  fi
  export PATH="$PATH:/usr/sbin:/sbin"
  write_config "$dir"
  : >"$dir/pids"
  munged -F --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" \
    </dev/null >"$dir/log/munged.out" 2>&1 &
  echo "munged $!" >>"$dir/pids"
  wait_for 30 "munged's socket" test -S "$dir/munge/munge.socket" || { cmd_stop "$dir"; die "munged did not start: $(tail -n 5 "$dir/log/munged.log" 2>/dev/null)"; }
  slurmctld -D -f "$dir/slurm.conf" </dev/null >"$dir/log/slurmctld.out" 2>&1 &
  echo "slurmctld $!" >>"$dir/pids"
  wait_for 60 "slurmctld" env SLURM_CONF="$dir/slurm.conf" scontrol ping \
    || { cmd_stop "$dir"; die "slurmctld did not start: $(tail -n 5 "$dir/log/slurmctld.log" 2>/dev/null)"; }
  slurmd -D -f "$dir/slurm.conf" </dev/null >"$dir/log/slurmd.out" 2>&1 &
  echo "slurmd $!" >>"$dir/pids"
  if ! wait_for 60 "the node to be idle" node_ready "$dir"; then
    SLURM_CONF="$dir/slurm.conf" scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    wait_for 30 "the node to be idle" node_ready "$dir" \
      || { cmd_stop "$dir"; die "slurmd did not register: $(tail -n 5 "$dir/log/slurmd.log" 2>/dev/null)"; }
  fi
  echo "export SLURM_CONF=$dir/slurm.conf" >"$dir/env.sh"
  echo "slurm_cluster.sh: one-node cluster up in $dir ($(awk -F'CPUs=' '/^NodeName/ {split($2, a, " "); print a[1]}' "$dir/slurm.conf") CPUs; logs in $dir/log). Use it with:"
  echo "export SLURM_CONF=$dir/slurm.conf"
}

stop_pid() {  # stop_pid NAME PID: SIGTERM, then SIGKILL after 20 s
  local name=$1 pid=$2 waited=0
  pid_is "$name" "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  while pid_alive "$pid" && [ "$waited" -lt 40 ]; do sleep 0.5; waited=$((waited + 1)); done
  if pid_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

cmd_stop() {
  local dir=${1:-}
  [ -n "$dir" ] || die "stop needs the folder given to start"
  [ -f "$dir/pids" ] || { echo "slurm_cluster.sh: no cluster started in $dir"; return 0; }
  dir=$(cd "$dir" && pwd -P)
  local ctld_pid slurmd_pid munged_pid
  ctld_pid=$(awk '$1 == "slurmctld" {print $2}' "$dir/pids")
  slurmd_pid=$(awk '$1 == "slurmd" {print $2}' "$dir/pids")
  munged_pid=$(awk '$1 == "munged" {print $2}' "$dir/pids")
  if pid_is slurmctld "$ctld_pid"; then
    # Cancel this cluster's jobs and let their steps end, so no slurmstepd outlives slurmd.
    local jobs
    jobs=$(SLURM_CONF="$dir/slurm.conf" squeue -h -o '%A' 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      # shellcheck disable=SC2086  # one argument per job id
      SLURM_CONF="$dir/slurm.conf" scancel $jobs 2>/dev/null || true
      wait_for 60 "cancelled jobs to end" no_jobs_left "$dir" || true
    fi
  fi
  stop_pid slurmd "$slurmd_pid"
  stop_pid slurmctld "$ctld_pid"
  stop_pid munged "$munged_pid"
  rm -f "$dir/pids"
  echo "slurm_cluster.sh: stopped the cluster in $dir"
}

no_jobs_left() {
  [ -z "$(SLURM_CONF="$1/slurm.conf" squeue -h -o '%A' 2>/dev/null)" ] \
    && ! ls "$1"/spool/slurmd-*/*_* >/dev/null 2>&1
}

cmd_status() {
  local dir=${1:-}
  [ -n "$dir" ] || die "status needs the folder given to start"
  SLURM_CONF="$dir/slurm.conf" sinfo
  SLURM_CONF="$dir/slurm.conf" squeue
}

cmd_reachable() {
  command -v sinfo >/dev/null 2>&1 && timeout 20 sinfo -h >/dev/null 2>&1
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start "${2:-}" ;;
  stop) cmd_stop "${2:-}" ;;
  status) cmd_status "${2:-}" ;;
  reachable) cmd_reachable ;;
  -h | --help | help) usage 0 ;;
  "") usage 2 ;;
  *) echo "slurm_cluster.sh: error: unknown command '$1' (install, start DIR, stop DIR, status DIR, reachable)" >&2; exit 2 ;;
esac
