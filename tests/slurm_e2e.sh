#!/usr/bin/env bash
# moe-submit end to end on a real single-node Slurm cluster of the test's own (tests/slurm_cluster.sh:
# installed when missing, started in a temporary directory, stopped on exit even when the test fails).
# One case per call:
#   slurm_e2e.sh CASE BUILD_DIR SOURCE_DIR
# Cases:
#   submit_tiny       submit the tiny config, wait for it: COMPLETED, exit 0, metrics up to the last
#                     step, a complete final checkpoint, the DONE marker
#   signal_requeue    submit; once a checkpoint exists, USR1 to the batch script (what Slurm sends
#                     before the time limit); the ranks save a checkpoint and stop, the job requeues
#                     itself, resumes and finishes with the same losses as an uninterrupted moe-run run
#   signal_resubmit   the same with scheduler.requeue=false: the job stops with a checkpoint and ends;
#                     submitting the same config again resumes from it and finishes with the same losses
#   time_limit        a 1-minute job with scheduler.signal_seconds_before_end=50: Slurm's own early
#                     signal (--signal=B:USR1@50) stops the run with a checkpoint before the time limit
#   srun_launcher     launch.launcher=srun (srun --mpi=pmix): the ranks get their local rank from
#                     Slurm, and srun passes the stop signal on to them
# Exit status 77 (skipped) when Slurm cannot be installed here; the message says why.
set -u
case_name=$1 build=$2 source_dir=$3
moe_submit=$build/moe-submit moe_run=$build/moe-run
tiny=$source_dir/configs/tiny.yaml
work=$(mktemp -d /tmp/moe_slurm_e2e.XXXXXX)
cluster=$work/cluster

source "$source_dir/tests/slurm_cluster.sh"
cleanup() {
  slurm_cluster_stop "$cluster"
  rm -rf "$work"
}
trap cleanup EXIT
slurm_cluster_start "$cluster"
status=$?
if [ "$status" -eq 77 ]; then
  echo "SKIP ($case_name): no Slurm on this machine (see above)"
  exit 77
fi
[ "$status" -eq 0 ] || { echo "FAIL ($case_name): the test cluster did not start"; exit 1; }
export SLURM_CONF=$cluster/slurm.conf
cd "$work" || exit 1

# Diagnostics for a failure: the job's output and the end of the daemons' logs.
fail() {
  echo "FAIL ($case_name): $*"
  for f in "$work"/*/slurm-*.out; do [ -e "$f" ] && { echo "== $f"; cat "$f"; }; done
  echo "== slurmctld.log (end)"
  tail -n 25 "$cluster/slurmctld.log"
  exit 1
}
started=$(date +%s)
elapsed() { echo $(($(date +%s) - started)); }

# submit ARGS...: moe-submit --scheduler slurm with ARGS; sets job_id.
submit() {
  local out
  # Bounded, so that an unresponsive controller ends the test with its logs, not a CTest timeout.
  out=$(timeout 120 "$moe_submit" "$tiny" --scheduler slurm "$@" 2>&1) || fail "moe-submit failed: $out"
  job_id=$(sed -n 's/^moe-submit: submitted Slurm job \([0-9]*\):.*/\1/p' <<<"$out")
  [ -n "$job_id" ] || fail "no job id in moe-submit's output: $out"
}
# field ID NAME: a field of `scontrol show job` (JobState, Restarts, ExitCode, Reason, ...).
field() { timeout 10 scontrol -o show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p"; }
# wait_end ID SECONDS: waits until the job has ended (any final state). Slurm holds a requeued job for
# about two minutes (its EligibleTime) before it may start again; the wait moves that to 3 s from
# the requeue, once per restart, which only shortens the test. (Not to "now": slurmd revokes the
# previous instance's credential with one-second resolution, and an instance started within that
# second is killed as "Job credential revoked".)
wait_end() {
  local id=$1 deadline=$(($(date +%s) + $2)) state reason restarts moved_for=-1
  while (($(date +%s) < deadline)); do
    state=$(field "$id" JobState)
    case $state in
    COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE | PREEMPTED) return 0 ;;
    PENDING)
      reason=$(field "$id" Reason)
      restarts=$(field "$id" Restarts)
      if [ "$reason" = BeginTime ] && [ "$restarts" != "$moved_for" ]; then
        scontrol update JobId="$id" StartTime=now+3 2>/dev/null && moved_for=$restarts
      fi
      ;;
    esac
    sleep 0.5
  done
  fail "job $id did not end within $2 s (state $(field "$id" JobState))"
}
# wait_checkpoint DIR SECONDS: waits for the first complete checkpoint (its MANIFEST) under DIR.
wait_checkpoint() {
  local deadline=$(($(date +%s) + $2))
  while (($(date +%s) < deadline)); do
    compgen -G "$1/checkpoints/step_*/MANIFEST" >/dev/null && return 0
    sleep 0.1
  done
  fail "no checkpoint in $1 within $2 s"
}
# The "step loss" pairs of a metrics.jsonl's training lines, one per line, losses as stored.
losses() { python3 -c 'import json,sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if "loss" in m: print(m["step"], repr(m["loss"]))' "$1"; }
# expect_state ID STATE RESTARTS: the job's final state, exit code 0:0 and number of restarts.
expect_state() {
  local state code restarts
  state=$(field "$1" JobState) code=$(field "$1" ExitCode) restarts=$(field "$1" Restarts)
  [ "$state" = "$2" ] && [ "$code" = 0:0 ] && [ "$restarts" = "$3" ] ||
    fail "job $1: JobState=$state ExitCode=$code Restarts=$restarts; expected $2, 0:0, $3"
}
# The run's output file (the job id names it).
output_of() { echo "$work/$1/slurm-$2.out"; }

# A run of 160 steps that a signal stops once its first checkpoint exists (about step 20).
long=(run.steps=160 run.log_every=10 run.eval_every=0 checkpoint.every=20 checkpoint.keep=2)
# The uninterrupted reference of such a run: moe-run on this machine, outside Slurm.
reference() {
  "$moe_run" "$tiny" "${long[@]}" run.dir=ref >ref.txt 2>&1 || { cat ref.txt; fail "the reference moe-run run failed"; }
  head -n 1 ref.txt | grep -q "^mpirun -np 2 " || fail "moe-run did not print its mpirun command first"
  [ -e ref/DONE ] || fail "the reference run has no DONE marker"
}
# same_losses DIR: DIR's logged losses equal the reference run's, every one, bit for bit.
same_losses() {
  [ "$(losses "$1/metrics.jsonl")" = "$(losses ref/metrics.jsonl)" ] ||
    fail "losses of $1 differ from the uninterrupted run: $(diff <(losses "$1/metrics.jsonl") <(losses ref/metrics.jsonl) | head -5)"
  [ "$(losses ref/metrics.jsonl | tail -n 1 | cut -d' ' -f1)" = 160 ] || fail "the reference run did not reach step 160"
  echo "final loss $(losses "$1/metrics.jsonl" | tail -n 1) equals the uninterrupted run's"
}
# stop_job ID DIR: once DIR has a checkpoint, USR1 to the job's batch script, as Slurm sends before
# the time limit (scancel --batch: the batch shell alone; the script passes it on to the ranks).
stop_job() {
  wait_checkpoint "$2" 200
  scancel --batch --signal=USR1 "$1" || fail "scancel --signal failed"
}
# stopped_run DIR ARGS...: submits with run.dir=DIR and ARGS, stops the job once DIR has a checkpoint
# (stop_job) and waits for its end; sets id and out (the job's output file).
stopped_run() {
  local dir=$1
  shift
  submit run.dir="$dir" "$@"
  id=$job_id
  stop_job "$id" "$dir"
  wait_end "$id" 300
  out=$(output_of "$dir" "$id")
}
# The step after which the run whose output is $out stopped on the signal (empty if it did not).
stopped_at() { sed -n 's/^stopped by a signal after step \([0-9]*\);.*/\1/p' "$out"; }
# expect_checkpoint DIR STEP: DIR holds a complete checkpoint of STEP.
expect_checkpoint() {
  [ -s "$1/checkpoints/step_$(printf %08d "$2")/MANIFEST" ] || fail "no checkpoint of step $2 in $1"
}

case $case_name in
submit_tiny)
  submit run.dir=a run.steps=60 run.log_every=10 run.eval_every=30 checkpoint.every=20
  id=$job_id
  [ -x a/job.sbatch ] || fail "no job script a/job.sbatch"
  wait_end "$id" 300
  expect_state "$id" COMPLETED 0
  out=$(output_of a "$id")
  grep -q "moe-submit job: the run is complete" "$out" || fail "no completion line in $out"
  [ -e a/DONE ] || fail "no DONE marker"
  [ "$(losses a/metrics.jsonl | tail -n 1 | cut -d' ' -f1)" = 60 ] || fail "metrics.jsonl does not reach step 60"
  grep -q '"split": "eval"' a/metrics.jsonl || fail "no evaluation in metrics.jsonl"
  [ -s a/checkpoints/step_00000060/MANIFEST ] || fail "no complete checkpoint of step 60"
  [ "$(cat a/checkpoints/latest)" = step_00000060 ] || fail "latest is not step 60: $(cat a/checkpoints/latest)"
  [ -s a/routing_report.txt ] || fail "no routing report"
  ;;
signal_requeue)
  reference
  stopped_run b "${long[@]}"
  expect_state "$id" COMPLETED 1
  grep -q "moe-submit job: got USR1" "$out" || fail "the batch script did not get USR1"
  stopped=$(stopped_at)
  [ -n "$stopped" ] || fail "the ranks did not stop on the signal"
  ((stopped < 160)) || fail "stopped only at step $stopped"
  grep -q "moe-submit job: stopped early with a checkpoint; requeueing" "$out" || fail "the job did not requeue itself"
  grep -q "^resumed from b/checkpoints/step_0*$stopped at step $stopped$" "$out" ||
    fail "the requeued job did not resume from the checkpoint of step $stopped"
  [ -e b/DONE ] || fail "no DONE marker after the requeued run"
  same_losses b
  ;;
signal_resubmit)
  reference
  stopped_run c "${long[@]}" scheduler.requeue=false
  grep -q "^#SBATCH --no-requeue" c/job.sbatch || fail "requeue=false did not give --no-requeue"
  expect_state "$id" COMPLETED 0
  stopped=$(stopped_at)
  [ -n "$stopped" ] && ((stopped < 160)) || fail "the ranks did not stop early on the signal"
  grep -q "stopped early with a checkpoint; submit again to resume" "$out" || fail "no 'submit again' line"
  [ ! -e c/DONE ] || fail "a DONE marker after a stopped run"
  expect_checkpoint c "$stopped"
  submit run.dir=c "${long[@]}" scheduler.requeue=false
  id2=$job_id
  wait_end "$id2" 300
  expect_state "$id2" COMPLETED 0
  grep -q "^resumed from c/checkpoints/step_0*$stopped at step $stopped$" "$(output_of c "$id2")" ||
    fail "the resubmitted job did not resume from the checkpoint of step $stopped"
  [ -e c/DONE ] || fail "no DONE marker after the resubmitted run"
  same_losses c
  ;;
time_limit)
  # Slurm checks time limits about every 30 s, so the signal comes 50 to about 80 s before the
  # end; the run is far longer than the 1-minute limit (6000 steps took under 30 s on an idle
  # 2-core machine and finished before the signal), so only the signal can stop it.
  submit run.dir=d run.steps=200000 run.log_every=1000 run.eval_every=0 checkpoint.every=1000 \
    scheduler.time_limit=00:01:00 scheduler.signal_seconds_before_end=50 scheduler.requeue=false
  id=$job_id
  grep -q "^#SBATCH --signal=B:USR1@50$" d/job.sbatch || fail "no --signal=B:USR1@50 in the script"
  wait_end "$id" 300
  out=$(output_of d "$id")
  expect_state "$id" COMPLETED 0
  grep -q "moe-submit job: got USR1" "$out" || fail "Slurm's early signal did not reach the batch script"
  stopped=$(stopped_at)
  [ -n "$stopped" ] || fail "the ranks did not stop on the signal"
  expect_checkpoint d "$stopped"
  ;;
srun_launcher)
  stopped_run e "${long[@]}" launch.launcher=srun scheduler.requeue=false
  grep -q "^srun --mpi=pmix --ntasks=2" e/job.sbatch || fail "the script does not start the ranks with srun"
  expect_state "$id" COMPLETED 0
  grep -q "^rank 0: local rank 0 of 2 on node 0 (from SLURM_LOCALID)" "$out" || fail "no local rank from Slurm"
  stopped=$(stopped_at)
  [ -n "$stopped" ] && ((stopped < 160)) || fail "srun did not pass the stop signal on to the ranks"
  expect_checkpoint e "$stopped"
  ;;
*)
  fail "unknown case"
  ;;
esac
echo "PASS ($case_name) in $(elapsed) s"
