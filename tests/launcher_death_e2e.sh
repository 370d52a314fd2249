#!/usr/bin/env bash
# End-to-end test: a SIGKILLed mpirun leaves no rank training. moe-train runs the tiny config with a
# checkpoint after every step; once a few are saved mpirun is killed with SIGKILL, and then
#   - within 2 s no rank of the job is left, and
#   - no checkpoint newer than the newest one begun at the kill, plus one, ever appears: a rank may
#     finish the save it had started (or the one it decided to start just before the kill), none
#     after. Without the ranks watching their launcher, they train on for tens of steps.
# Usage: launcher_death_e2e.sh MOE_TRAIN MPIRUN CONFIGS_DIR
set -u
moe_train=$1 mpirun=$2 configs=$3
work=$(mktemp -d)
mpirun_pid=
cleanup() {
  [ -n "$mpirun_pid" ] && kill -9 "$mpirun_pid" 2>/dev/null
  for p in ${ranks:-}; do kill -9 "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; cat "$work/log" 2>/dev/null | tail -20; exit 1; }
# Whether process $1 still runs: it exists and is not a zombie (an exited rank waits, re-parented,
# for a reaper that a container's init may not be).
running() { [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
# The newest step_* directory under the checkpoint root, complete or not (0 when none).
newest_step() { ls "$work/run/checkpoints" 2>/dev/null | sed -n 's/^step_0*\([0-9][0-9]*\)$/\1/p' | sort -n | tail -1; }

"$mpirun" --oversubscribe -np 2 "$moe_train" "$configs/tiny.yaml" run.steps=100000 run.log_every=1000 run.eval_every=0 \
  checkpoint.every=1 checkpoint.keep=100000 run.dir="$work/run" >"$work/log" 2>&1 &
mpirun_pid=$!
for _ in $(seq 600); do
  [ "$(newest_step)" ] && [ "$(newest_step)" -ge 5 ] && break
  kill -0 "$mpirun_pid" 2>/dev/null || fail "mpirun ended before the run saved 5 checkpoints"
  sleep 0.1
done
[ "$(newest_step)" ] && [ "$(newest_step)" -ge 5 ] || fail "no 5 checkpoints within 60 s"
ranks=$(pgrep -P "$mpirun_pid" -d ' ')
[ -n "$ranks" ] || fail "no rank process found under mpirun (pid $mpirun_pid)"
kill -9 "$mpirun_pid"
at_kill=$(newest_step)
mpirun_pid=
echo "killed mpirun with SIGKILL at step $at_kill; its ranks: $ranks"

left=
for _ in $(seq 20); do
  left=
  for p in $ranks; do running "$p" && left="$left $p"; done
  [ -z "$left" ] && break
  sleep 0.1
done
sleep 0.5  # anything still writing would show now
last=$(newest_step)
[ -z "$left" ] || fail "ranks still running 2 s after mpirun was killed:$left (newest checkpoint step $last; $(ps -o pid,ppid,stat,comm -p "${left// /,}" | tr '\n' ' '))"
[ "$last" -le $((at_kill + 1)) ] || fail "checkpoints went on after the kill: step $at_kill then, step $last now"
echo "PASS: no rank left, newest checkpoint step $last (at the kill: $at_kill)"
