#!/usr/bin/env bash
# moe-run and moe-submit end to end without a cluster. One case per call:
#   launch_e2e.sh CASE BUILD_DIR SOURCE_DIR
# Cases:
#   help            both have --help listing their keys
#   run_dry_run     moe-run --dry-run prints the expected mpirun commands (ranks, hosts, binding,
#                   threads, environment), copy-pastable, and starts nothing
#   run_tiny        moe-run runs the tiny config for a few steps: its command line first, then a
#                   complete run (metrics, DONE marker)
#   pbs_script      moe-submit --scheduler pbs --dry-run: the script's directives and commands, and
#                   bash -n accepts it (there is no PBS server here to submit to)
#   slurm_script    the same for --scheduler slurm --dry-run
#   bad_settings    bad launch settings fail with exit status 2 and a message naming the setting,
#                   before anything starts (no command run, no script or run directory written)
# Each case runs in a fresh temporary directory, removed afterwards.
set -u
case_name=$1 build=$2 source_dir=$3
moe_run=$build/moe-run moe_submit=$build/moe-submit moe_train=$build/moe-train
tiny=$source_dir/configs/tiny.yaml
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1

fail() { echo "FAIL ($case_name): $*"; exit 1; }
# has FILE TEXT...: every TEXT is a line of FILE, exactly.
has() {
  local file=$1 line
  shift
  for line in "$@"; do grep -qxF -- "$line" "$file" || { cat "$file"; fail "no line '$line' in $file"; }; done
}
# The --allow-run-as-root moe-run and moe-submit add as root.
root_flag=""
[ "$(id -u)" -ne 0 ] || root_flag=" --allow-run-as-root"

case $case_name in
help)
  "$moe_run" --help >run.txt || fail "moe-run --help failed"
  grep -q "^usage: moe-run CONFIG.yaml \[--dry-run\]" run.txt || fail "moe-run --help: no usage line"
  for key in launch.ranks launch.ranks_per_node launch.hosts launch.hostfile launch.bind launch.env \
    launch.launcher launch.oversubscribe run.threads_per_rank; do
    grep -q "^  $key " run.txt || fail "moe-run --help does not list $key"
  done
  "$moe_submit" --help >submit.txt || fail "moe-submit --help failed"
  grep -q "^usage: moe-submit CONFIG.yaml --scheduler slurm|pbs" submit.txt || fail "moe-submit --help: no usage line"
  for key in nodes tasks_per_node gpus_per_node cpus_per_task time_limit partition queue account job_name \
    output error signal_seconds_before_end requeue; do
    grep -q "^  scheduler.$key " submit.txt || fail "moe-submit --help does not list scheduler.$key"
  done
  ;;
run_dry_run)
  # The printed commands are compared word for word: they are what a user pastes into a shell.
  "$moe_run" "$tiny" --dry-run run.steps=5 >a.txt || fail "moe-run --dry-run failed"
  has a.txt "mpirun -np 2$root_flag --map-by slot --bind-to core -x OMP_NUM_THREADS=1 $moe_train $tiny run.steps=5"
  "$moe_run" "$tiny" --dry-run --cpus 8 launch.ranks=4 launch.ranks_per_node=2 launch.hosts=n1:2,n2:2 \
    run.threads_per_rank=2 'launch.env=OPENBLAS_CORETYPE=SKYLAKEX PATH' >b.txt || fail "moe-run --dry-run (hosts) failed"
  has b.txt "mpirun -np 4$root_flag --host n1:2,n2:2 --map-by ppr:2:node:PE=2 --bind-to core -x OMP_NUM_THREADS=2 -x OPENBLAS_CORETYPE=SKYLAKEX -x PATH $moe_train $tiny launch.ranks=4 launch.ranks_per_node=2 launch.hosts=n1:2,n2:2 run.threads_per_rank=2 'launch.env=OPENBLAS_CORETYPE=SKYLAKEX PATH'"
  printf 'n1 slots=2\nn2 slots=2\n' >hosts
  "$moe_run" "$tiny" --dry-run launch.hostfile=hosts launch.bind=socket >c.txt || fail "moe-run --dry-run (hostfile) failed"
  has c.txt "mpirun -np 2$root_flag --hostfile $work/hosts --map-by slot --bind-to socket -x OMP_NUM_THREADS=1 $moe_train $tiny launch.hostfile=hosts launch.bind=socket"
  "$moe_run" "$tiny" --dry-run launch.ranks=4 launch.oversubscribe=true >d.txt || fail "moe-run --dry-run (oversubscribe) failed"
  has d.txt "mpirun -np 4$root_flag --oversubscribe --map-by slot --bind-to none -x OMP_NUM_THREADS=1 $moe_train $tiny launch.ranks=4 launch.oversubscribe=true"
  "$moe_run" "$tiny" --dry-run launch.launcher=srun >e.txt || fail "moe-run --dry-run (srun) failed"
  has e.txt "srun --mpi=pmix --ntasks=2 --cpus-per-task=1 --cpu-bind=cores --export=ALL,OMP_NUM_THREADS=1 $moe_train $tiny launch.launcher=srun"
  [ ! -e runs ] || fail "a dry run wrote a run directory"
  # Copy-pastable: the shell splits the printed line back into the same words.
  words=$(bash -c 'printf "%s\n" '"$(sed 's/^mpirun/x/' b.txt)")
  grep -qx "launch.env=OPENBLAS_CORETYPE=SKYLAKEX PATH" <<<"$words" || fail "the printed command does not read back in a shell"
  ;;
run_tiny)
  "$moe_run" "$tiny" run.steps=20 run.log_every=5 run.eval_every=10 checkpoint.every=10 run.dir=r >out.txt 2>&1 ||
    { cat out.txt; fail "moe-run exited $?"; }
  head -n 1 out.txt | grep -q "^mpirun -np 2 .*-x OMP_NUM_THREADS=1 $moe_train $tiny run.steps=20" ||
    fail "moe-run did not print its command first: $(head -n 1 out.txt)"
  grep -q "^rank 0: local rank 0 of 2 on node 0 (from OMPI_COMM_WORLD_LOCAL_RANK); CPU" out.txt ||
    { cat out.txt; fail "no placement line"; }
  grep -q "^done: 20 steps" out.txt || fail "the run did not finish"
  [ -e r/DONE ] || fail "no DONE marker"
  grep -q '"step": 20,' r/metrics.jsonl || fail "metrics.jsonl does not reach step 20"
  [ -s r/checkpoints/step_00000020/MANIFEST ] || fail "no checkpoint of step 20"
  ;;
pbs_script)
  "$moe_submit" "$tiny" --scheduler pbs --dry-run run.dir=p launch.ranks=4 launch.ranks_per_node=2 \
    run.threads_per_rank=2 scheduler.gpus_per_node=2 scheduler.queue=workq scheduler.account=proj1 \
    scheduler.time_limit=02:30:00 scheduler.job_name=moe-pbs >out.txt 2>err.txt || { cat out.txt err.txt; fail "exit $?"; }
  script=$work/p/job.pbs
  [ -x "$script" ] || fail "no executable $script"
  head -n 1 "$script" | grep -qx '#!/bin/bash' || fail "no bash shebang"
  has "$script" "#PBS -N moe-pbs" "#PBS -l select=2:ncpus=4:mpiprocs=2:ompthreads=2:ngpus=2" "#PBS -l place=scatter" \
    "#PBS -l walltime=02:30:00" "#PBS -q workq" "#PBS -A proj1" "#PBS -o $work/p/job.out" "#PBS -j oe" "#PBS -r y" \
    "cd $work || exit 1" "trap 'stop TERM' TERM" "qsub $script"
  grep -qF -- "--hostfile \"\$PBS_NODEFILE\"" "$script" || fail "mpirun does not take \$PBS_NODEFILE"
  grep -qF -- "--map-by ppr:2:node:PE=2" "$script" || fail "no mapping of 2 ranks per node with 2 cores each"
  grep -qF -- "$moe_train $tiny run.dir=p" "$script" || fail "no moe-train command"
  grep -qF -- "checkpoint.resume=auto &" "$script" || fail "moe-train does not resume automatically"
  grep -q "^# moe-submit: dry run: wrote $script; nothing submitted" out.txt || fail "no dry-run line"
  diff <(sed '$d' out.txt) "$script" >/dev/null || fail "the printed script differs from the file"
  bash -n "$script" || fail "bash -n rejects the script"
  grep -q "^#SBATCH" "$script" && fail "Slurm directives in a PBS script"
  ;;
slurm_script)
  "$moe_submit" "$tiny" --scheduler slurm --dry-run --cpus 4 run.dir=s launch.ranks=4 launch.ranks_per_node=2 \
    scheduler.gpus_per_node=2 scheduler.partition=gpu scheduler.account=proj1 scheduler.time_limit=02:30:00 \
    scheduler.signal_seconds_before_end=300 >out.txt 2>&1 || { cat out.txt; fail "exit $?"; }
  script=$work/s/job.sbatch
  [ -x "$script" ] || fail "no executable $script"
  has "$script" "#SBATCH --job-name=tiny" "#SBATCH --nodes=2" "#SBATCH --ntasks-per-node=2" "#SBATCH --cpus-per-task=1" \
    "#SBATCH --gres=gpu:2" "#SBATCH --time=02:30:00" "#SBATCH --partition=gpu" "#SBATCH --account=proj1" \
    "#SBATCH --output=$work/s/slurm-%j.out" "#SBATCH --open-mode=append" "#SBATCH --signal=B:USR1@300" \
    "#SBATCH --requeue" "trap 'stop USR1' USR1" "scontrol requeue \"\$SLURM_JOB_ID\""
  grep -qF -- "checkpoint.resume=auto &" "$script" || fail "moe-train does not resume automatically"
  bash -n "$script" || fail "bash -n rejects the script"
  ;;
bad_settings)
  # expect STATUS TEXT COMMAND...: COMMAND exits STATUS and its stderr holds TEXT.
  # The commands run in w/, which must stay empty; their output goes next to it.
  mkdir w && cd w || exit 1
  expect() {
    local want=$1 text=$2 got
    shift 2
    "$@" >../stdout.txt 2>../stderr.txt
    got=$?
    [ "$got" -eq "$want" ] || { cat ../stdout.txt ../stderr.txt; fail "'$*' exited $got, expected $want"; }
    grep -qF -- "$text" ../stderr.txt || { cat ../stderr.txt; fail "'$*': no '$text' in the message"; }
    [ ! -s ../stdout.txt ] || { cat ../stdout.txt; fail "'$*' printed a command or script though it failed"; }
  }
  expect 2 "launch.ranks_per_node = 4 is more ranks per node than a node has cores (2, from --cpus)" \
    "$moe_run" "$tiny" --cpus 2 launch.ranks=4 launch.ranks_per_node=4
  expect 2 "launch.ranks = 4 (all on one node: launch.ranks_per_node = 0) is more ranks per node than a node has cores (2, from --cpus)" \
    "$moe_run" "$tiny" --cpus 2 launch.ranks=4
  expect 2 "x run.threads_per_rank = 2 needs 4 cores per node" "$moe_run" "$tiny" --cpus 2 run.threads_per_rank=2
  expect 2 "launch.hostfile = '/nonexistent/hostfile' does not exist" \
    "$moe_run" "$tiny" launch.hostfile=/nonexistent/hostfile
  expect 2 "parallel.ep = 3 does not divide launch.ranks = 2" "$moe_run" "$tiny" parallel.ep=3
  expect 2 "parallel.ep = 3 does not divide launch.ranks = 2" "$moe_submit" "$tiny" --scheduler slurm --dry-run parallel.ep=3
  expect 2 "--scheduler 'lsf' is not known; accepted: slurm, pbs" "$moe_submit" "$tiny" --scheduler lsf
  expect 2 "missing --scheduler" "$moe_submit" "$tiny" --dry-run
  expect 2 'scheduler.time_limit = "90min" is not valid; accepted: HH:MM:SS' \
    "$moe_submit" "$tiny" --scheduler slurm --dry-run scheduler.time_limit=90min
  expect 2 "launch.ranks_per_node = 4 is more ranks per node than a node has cores (2, from --cpus)" \
    "$moe_submit" "$tiny" --scheduler slurm --dry-run --cpus 2 launch.ranks=4 launch.ranks_per_node=4
  expect 2 "scheduler.nodes = 2 x scheduler.tasks_per_node = 2 gives 4 ranks, but launch.ranks = 2" \
    "$moe_submit" "$tiny" --scheduler pbs --dry-run scheduler.nodes=2 scheduler.tasks_per_node=2
  expect 2 "unknown key 'launch.rank'; did you mean launch.ranks?" "$moe_run" "$tiny" launch.rank=2
  expect 2 "unknown option '--bogus'" "$moe_run" "$tiny" --bogus
  expect 2 "missing CONFIG.yaml" "$moe_submit" --scheduler slurm
  [ -z "$(ls -A)" ] || { ls -A; fail "a failed launch left files behind"; }
  # Without qsub on PATH (an empty PATH): the script is written, nothing submitted, exit 1 naming qsub.
  mkdir ../empty
  PATH=$work/empty "$moe_submit" "$tiny" --scheduler pbs run.dir=q >../out.txt 2>&1
  [ $? -eq 1 ] || { cat ../out.txt; fail "moe-submit without qsub did not exit 1"; }
  grep -q "qsub is not on PATH" ../out.txt || { cat ../out.txt; fail "no message about qsub"; }
  [ -s q/job.pbs ] || fail "no script written when qsub is missing"
  ;;
*)
  fail "unknown case"
  ;;
esac
echo "PASS ($case_name)"
