#!/usr/bin/env bash
# A private single-node Slurm cluster for the tests: Debian's slurm-wlm and munge (installed with
# apt-get when missing), run as root with their own munge key and socket, config, ports, state,
# spool, logs and pid files, all in one directory; and stopping it again.
#
# In a test (bash):
#   source tests/slurm_cluster.sh
#   slurm_cluster_start "$dir" || exit $?     # 77: cannot be had here (the tests' "skipped")
#   trap 'slurm_cluster_stop "$dir"' EXIT     # runs when the test passes, fails or is interrupted
#   export SLURM_CONF="$dir/slurm.conf"       # for sbatch, squeue, scontrol, scancel, sinfo
# By hand: tests/slurm_cluster.sh start DIR, then export SLURM_CONF=DIR/slurm.conf; later
# tests/slurm_cluster.sh stop DIR.
#
# The daemons run with MOE_SLURM_CLUSTER=DIR in their environment, and so do the slurmstepd
# processes they start: slurm_cluster_stop finds leftovers of this cluster (and only of this one)
# by it, and job processes by their SLURM_CONF=DIR/slurm.conf and SLURM_JOB_ID. DIR/owner.pid names
# the shell that started the cluster; a later start stops clusters whose owner is gone (a test
# killed by a timeout, which runs no EXIT trap).

# Prints "slurm_cluster: ..." on stderr.
_slurm_say() { echo "slurm_cluster: $*" >&2; }

# Installs slurmctld, slurmd, the Slurm commands and munge when any is missing. Returns 77 when they
# are missing and cannot be installed (not root and no sudo, or apt-get fails).
_slurm_install() {
  local missing=0 p
  for p in slurmctld slurmd sbatch munged; do command -v "$p" >/dev/null 2>&1 || missing=1; done
  ((missing)) || return 0
  local sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! sudo -n true 2>/dev/null; then
      _slurm_say "SKIP: slurm-wlm and munge are not installed, and installing them needs root (or sudo)"
      return 77
    fi
    sudo_cmd=(sudo -n)
  fi
  _slurm_say "installing slurm-wlm and munge with apt-get"
  local apt=("${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -y -qq)
  if ! "${apt[@]}" install --no-install-recommends slurm-wlm munge >/dev/null 2>&1; then
    "${apt[@]}" update >/dev/null 2>&1
    if ! "${apt[@]}" install --no-install-recommends slurm-wlm munge >&2; then
      _slurm_say "SKIP: apt-get could not install slurm-wlm and munge (see above)"
      return 77
    fi
  fi
}

# The first TCP port from $1 on that nothing listens on and that is not in $2 (a space-separated list).
_slurm_free_port() {
  local port=$1 taken
  taken=$(ss -Hltn 2>/dev/null | awk '{print $4}' | sed 's/.*://')
  while grep -qx "$port" <<<"$taken" || [[ " $2 " == *" $port "* ]]; do port=$((port + 1)); done
  echo "$port"
}

# Waits up to $2 seconds for the pid in file $1 to be gone; kills it (KILL) after that.
_slurm_stop_pidfile() {
  local file=$1 wait_s=$2 pid i
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < wait_s * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
}

# The ids of processes whose environment holds every one of the given words: NAME=value exactly, or
# NAME= for any value. Skips this shell.
_slurm_pids_with_env() {
  local pid_dir pid env word all
  for pid_dir in /proc/[0-9]*; do
    pid=${pid_dir#/proc/}
    [ "$pid" != "$$" ] && [ "$pid" != "$BASHPID" ] || continue
    env=$(tr '\0' '\n' 2>/dev/null <"$pid_dir/environ") || continue
    all=1
    for word in "$@"; do
      if [[ "$word" == *= ]]; then
        grep -q "^$word" <<<"$env" || { all=0; break; }
      else
        grep -qxF "$word" <<<"$env" || { all=0; break; }
      fi
    done
    ((all)) && echo "$pid"
  done
}

# Starts the cluster in directory $1 (created if needed). Returns 0 when its node is idle and takes
# jobs, 77 when Slurm cannot be installed here, 1 when a daemon does not come up (its log is printed).
slurm_cluster_start() {
  local dir=$1
  _slurm_install || return $?
  _slurm_reap_orphans
  mkdir -p "$dir" && dir=$(cd "$dir" && pwd) || return 1
  chmod 700 "$dir"
  echo "${_slurm_owner:-$$}" >"$dir/owner.pid"  # by hand: the calling shell (below)
  mkdir -p "$dir/munge" "$dir/state" "$dir/spool"
  chmod 700 "$dir/munge"

  # munge: a key of our own, and a munged on a socket of our own (no system daemon is touched).
  # munged refuses to run as root unless forced; the key must be readable by its owner alone.
  head -c 1024 /dev/urandom >"$dir/munge/munge.key"
  chmod 400 "$dir/munge/munge.key"
  if ! MOE_SLURM_CLUSTER=$dir munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
      --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
      --seed-file="$dir/munge/munged.seed" 2>"$dir/munge/munged.stderr"; then
    _slurm_say "munged did not start:"
    cat "$dir/munge/munged.stderr" "$dir/munge/munged.log" >&2 2>/dev/null
    return 1
  fi

  local host cpus mem ctld_port slurmd_port
  host=$(hostname -s)
  cpus=$(nproc)
  ((cpus >= 2)) || cpus=2  # the tests' jobs take 2 ranks; SlurmdParameters=config_overrides trusts this
  mem=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
  ctld_port=$(_slurm_free_port 16817 "")
  slurmd_port=$(_slurm_free_port $((ctld_port + 1)) "$ctld_port")
  cat >"$dir/slurm.conf" <<EOF
# A private single-node test cluster (tests/slurm_cluster.sh); everything it writes is under $dir.
ClusterName=moetest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups here: processes are tracked through their parents, tasks are not confined.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=10
MinJobAge=600
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  if ! MOE_SLURM_CLUSTER=$dir slurmctld -f "$dir/slurm.conf" 2>"$dir/slurmctld.stderr"; then
    _slurm_say "slurmctld did not start:"
    cat "$dir/slurmctld.stderr" "$dir/slurmctld.log" >&2 2>/dev/null
    return 1
  fi
  if ! MOE_SLURM_CLUSTER=$dir slurmd -f "$dir/slurm.conf" 2>"$dir/slurmd.stderr"; then
    _slurm_say "slurmd did not start:"
    cat "$dir/slurmd.stderr" "$dir/slurmd.log" >&2 2>/dev/null
    return 1
  fi
  # A deadline in wall-clock time, and each query bounded: an unresponsive slurmctld makes sinfo wait
  # for its message timeout on every call.
  local state="" deadline=$(($(date +%s) + 30))
  while (($(date +%s) < deadline)); do
    state=$(SLURM_CONF=$dir/slurm.conf timeout 5 sinfo -h -o %T 2>/dev/null)
    [ "$state" = idle ] && break
    sleep 0.1
  done
  if [ "$state" != idle ]; then
    _slurm_say "the node did not become idle within 30 s (state '$state'); logs:"
    tail -n 30 "$dir/slurmctld.log" "$dir/slurmd.log" >&2
    return 1
  fi
  _slurm_say "up: $host, $cpus CPUs, slurmctld port $ctld_port, slurmd port $slurmd_port, in $dir"
}

# Stops the cluster of directory $1: cancels its jobs (waiting up to 20 s for them to end), stops
# slurmd, slurmctld and munged by their pid files, then kills anything of this cluster still left
# (also when the directory is gone).
slurm_cluster_stop() {
  local dir=$1 i pids
  [ ! -d "$dir" ] || dir=$(cd "$dir" && pwd)
  if [ -s "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
    SLURM_CONF=$dir/slurm.conf scancel --quiet --full --user="$(id -un)" 2>/dev/null
    for ((i = 0; i < 200; i++)); do
      [ -z "$(SLURM_CONF=$dir/slurm.conf squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
  _slurm_stop_pidfile "$dir/slurmd.pid" 10
  _slurm_stop_pidfile "$dir/slurmctld.pid" 10
  _slurm_stop_pidfile "$dir/munge/munged.pid" 10
  # Job steps and job processes a failed test may have left behind, and daemons without pid files.
  pids=$( (_slurm_pids_with_env "MOE_SLURM_CLUSTER=$dir"; _slurm_pids_with_env "SLURM_CONF=$dir/slurm.conf" "SLURM_JOB_ID=") | sort -u)
  [ -z "$pids" ] || kill -KILL $pids 2>/dev/null
}

# Stops the clusters of tests that were killed before their EXIT trap could run (a test runner's
# timeout): every cluster whose owner (the shell that started it, DIR/owner.pid) is gone.
_slurm_reap_orphans() {
  local dirs dir owner
  dirs=$(for f in /proc/[0-9]*/environ; do tr '\0' '\n' 2>/dev/null <"$f" | sed -n 's/^MOE_SLURM_CLUSTER=//p'; done | sort -u)
  for dir in $dirs; do
    owner=$(cat "$dir/owner.pid" 2>/dev/null)
    [ -n "$owner" ] && kill -0 "$owner" 2>/dev/null && continue
    _slurm_say "stopping the cluster of a test that was killed: $dir"
    slurm_cluster_stop "$dir"
  done
}

# By hand: tests/slurm_cluster.sh start|stop DIR.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case ${1:-} in
  start) _slurm_owner=$PPID slurm_cluster_start "${2:?usage: $0 start DIR}" ;;
  stop) slurm_cluster_stop "${2:?usage: $0 stop DIR}" ;;
  *)
    echo "usage: $0 start DIR | stop DIR" >&2
    exit 2
    ;;
  esac
fi
