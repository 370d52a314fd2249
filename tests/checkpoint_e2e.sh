#!/usr/bin/env bash
# End-to-end tests of moe-train's checkpoints under mpirun: exact resume after SIGTERM, a rank killed
# in the middle of a save, resuming on other layouts, bad checkpoints, save-and-exit on a signal, and
# SIGTERM to mpirun itself.
#   checkpoint_e2e.sh CASE MOE_TRAIN MPIRUN SOURCE_DIR PROTOC
# Each case runs in a fresh temporary directory, removed afterwards. Manifests are read with
# `protoc --decode` (protoc builds the project, so it is always there).
set -u
case_name=$1 moe_train=$2 mpirun=$3 src=$4 protoc=$5
tiny=$src/configs/tiny.yaml
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1

fail() { echo "FAIL ($case_name): $*"; exit 1; }
mpirun_args=(--oversubscribe --timeout 240)
# run NP [args...]: runs moe-train on NP ranks in the foreground, output in out.txt; returns its status.
run() {
  local np=$1
  shift
  "$mpirun" "${mpirun_args[@]}" -np "$np" "$moe_train" "$@" >out.txt 2>&1
}
# start NP OUT [args...]: the same in the background, output in OUT; sets $job (mpirun's pid).
start() {
  local np=$1 out=$2
  shift 2
  "$mpirun" "${mpirun_args[@]}" -np "$np" "$moe_train" "$@" >"$out" 2>&1 &
  job=$!
}
# The last training step in a metrics.jsonl (0 if none yet); cheap enough to poll with.
last_step() {
  local s
  s=$(grep '"loss"' "$1" 2>/dev/null | tail -n 1 | sed -n 's/^{"step": \([0-9]*\),.*/\1/p')
  echo "${s:-0}"
}
# wait_for_step METRICS N: polls until the background job has logged step N; fails if it ends first.
wait_for_step() {
  local deadline=$((SECONDS + 60))
  while [ "$(last_step "$1")" -lt "$2" ]; do
    kill -0 "$job" 2>/dev/null || fail "the run ended before step $2"
    [ $SECONDS -lt $deadline ] || fail "no step $2 within 60 s"
    sleep 0.02
  done
}
# The rank processes of the background job: mpirun's children (never matched by name, so that other
# tests running beside this one are left alone).
rank_pids() { pgrep -P "$job"; }
# The manifest of checkpoint directory $1 as protobuf text (unsealed: tests/checkpoint_metadata.py).
metadata=$src/tests/checkpoint_metadata.py
manifest() {
  python3 "$metadata" unseal "$1/MANIFEST" |
    "$protoc" -I "$src" --decode=moe.checkpoint.Manifest core/checkpoint/checkpoint.proto
}
# The step after "stopped by a signal after step" in file $1.
stopped_step() { sed -n 's/.*stopped by a signal after step \([0-9]*\).*/\1/p' "$1" | head -1; }
step_dir() { printf '%s/step_%08d' "$1" "$2"; }
# stop_ranks OUT: SIGTERM to the background job's ranks; the job must exit 0 and say "stopped by a
# signal after step N" in OUT; sets n to N.
stop_ranks() {
  local status
  kill -TERM $(rank_pids)
  wait "$job"
  status=$?
  [ $status = 0 ] || { cat "$1"; fail "exit status $status after SIGTERM (expected 0)"; }
  n=$(stopped_step "$1")
  [ -n "$n" ] || { cat "$1"; fail "no 'stopped by a signal after step N' message"; }
}
# Every file under $1 with its size, modification time and checksum.
listing() { (cd "$1" && find . -type f -printf '%p %s %T@ ' -exec md5sum {} \; | sort); }
# Training metrics of a metrics.jsonl whose value does not depend on timing, one line per step, as
# the JSON text of each value (9 significant digits, all the log keeps; the final checkpoints are
# compared bit for bit through their CRCs).
det_metrics() { python3 - "$1" <<'PY'
import re, sys
keys = ["loss", "aux_loss", "z_loss", "lr", "grad_norm", "dropped_frac", "load_max_over_mean", "skipped_steps",
        "moe_layers"]
for line in open(sys.argv[1]):
    if '"loss"' not in line:
        continue
    step = re.match(r'\{"step": (\d+)', line).group(1)
    vals = [k + "=" + re.search(r'"%s": (\[.*\](?=\}$)|[^,}]+)' % k, line.strip()).group(1) for k in keys]
    print(step, " ".join(vals))
PY
}
# Losses by step of a metrics.jsonl: "step loss" lines.
losses() { python3 -c 'import json,sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if "loss" in m: print(m["step"], repr(m["loss"]))' "$1"; }

# A tiny run with a log line every step and no evaluation (faster).
short=(run.log_every=1 run.eval_every=0)

case $case_name in
exact_resume)
  # The same config (same run.steps, so the same LR schedule) run straight through, and stopped by
  # SIGTERM part-way then resumed: every deterministic metric and every final tensor bit-identical.
  cfg=("${short[@]}" run.steps=100 checkpoint.every=25 checkpoint.keep=10 checkpoint.resume=auto)
  run 2 "$tiny" "${cfg[@]}" run.dir=full || { cat out.txt; fail "uninterrupted run failed"; }
  start 2 part1.txt "$tiny" "${cfg[@]}" run.dir=part
  wait_for_step part/metrics.jsonl 15
  stop_ranks part1.txt
  { [ "$n" -ge 15 ] && [ "$n" -lt 100 ]; } || fail "stopped after step $n"
  [ "$(last_step part/metrics.jsonl)" = "$n" ] || fail "metrics.jsonl does not end at step $n"
  [ -f "$(step_dir part/checkpoints "$n")/MANIFEST" ] || fail "no complete checkpoint for step $n"
  run 2 "$tiny" "${cfg[@]}" run.dir=part || { cat out.txt; fail "resumed run failed"; }
  grep -q "resumed from $(step_dir part/checkpoints "$n") at step $n" out.txt || { cat out.txt; fail "no resume message"; }
  # metrics.jsonl of the stopped-and-resumed run: every step once, each equal to the straight run's.
  det_metrics full/metrics.jsonl >full.txt
  det_metrics part/metrics.jsonl >part.txt
  [ "$(wc -l <full.txt)" = 100 ] || fail "the straight run logged $(wc -l <full.txt) steps"
  diff full.txt part.txt >diff.txt || { head -5 diff.txt; fail "metrics differ after resuming at step $n"; }
  # The final checkpoints agree on everything but the run id and the config text (which names run.dir):
  # every tensor's CRC32C, offsets, training state, routing counts.
  manifest "$(step_dir full/checkpoints 100)" | grep -v -e '^run_id:' -e '^config_yaml:' >full.manifest ||
    fail "cannot decode the straight run's final manifest"
  manifest "$(step_dir part/checkpoints 100)" | grep -v -e '^run_id:' -e '^config_yaml:' >part.manifest ||
    fail "cannot decode the resumed run's final manifest"
  grep -q crc32c full.manifest || fail "no tensor entries in the decoded manifest"
  diff full.manifest part.manifest >diff.txt || { head -20 diff.txt; fail "final checkpoints differ"; }
  echo "stopped after step $n, resumed; 100 steps of metrics and $(grep -c crc32c full.manifest) final tensors identical"
  ;;
crash_during_save)
  # Rank 1 dies (SIGKILL) halfway through writing its shard of step 20; mpirun takes the job down.
  cfg=("${short[@]}" run.steps=30 checkpoint.every=10 checkpoint.keep=3 checkpoint.resume=auto run.dir=r)
  MOE_TEST_KILL_IN_SAVE=1:20 run 2 "$tiny" "${cfg[@]}" && { cat out.txt; fail "the job survived a killed rank"; }
  cat out.txt >crash.txt
  d10=$(step_dir r/checkpoints 10) d20=$(step_dir r/checkpoints 20)
  [ -f "$d10/MANIFEST" ] || { cat crash.txt; fail "no complete checkpoint for step 10"; }
  [ -d "$d20" ] || { cat crash.txt; fail "the save of step 20 never started"; }
  [ ! -e "$d20/MANIFEST" ] || fail "the interrupted save of step 20 has a MANIFEST"
  ls "$d20" | grep -q '^shard_00001\.bin\.tmp$' || { ls -l "$d20"; fail "rank 1's half-written shard is not there"; }
  [ "$(cat r/checkpoints/latest)" = step_00000010 ] || fail "latest names $(cat r/checkpoints/latest)"
  [ "$(last_step r/metrics.jsonl)" = 20 ] || fail "metrics.jsonl should end at step 20"
  before=$(listing "$d10")
  # Resume: the incomplete step 20 is reported and skipped; step 10 loads (which reads and checks the
  # CRC of every tensor) and training goes on to the end, saving step 20 again over the leftovers.
  run 2 "$tiny" "${cfg[@]}" || { cat out.txt; fail "the resumed run failed"; }
  grep -q "ignoring incomplete checkpoint $d20 (.*MANIFEST' is missing" out.txt || { cat out.txt; fail "no 'ignoring incomplete checkpoint' message"; }
  grep -q "resumed from $d10 at step 10" out.txt || { cat out.txt; fail "did not resume from step 10"; }
  grep -q "^done: 30 steps" out.txt || { cat out.txt; fail "did not train to step 30"; }
  [ "$(listing "$d10")" = "$before" ] || fail "the step 10 checkpoint changed"
  for s in 20 30; do [ -f "$(step_dir r/checkpoints $s)/MANIFEST" ] || fail "no complete checkpoint for step $s"; done
  [ -z "$(find r/checkpoints -name '*.tmp')" ] || { find r/checkpoints; fail "temporary files left behind"; }
  [ "$(cat r/checkpoints/latest)" = step_00000030 ] || fail "latest names $(cat r/checkpoints/latest)"
  # Steps 11..20 were logged twice; the resumed run truncated metrics.jsonl at step 10 first.
  [ "$(losses r/metrics.jsonl | cut -d' ' -f1 | tr '\n' ' ')" = "$(seq -s ' ' 1 30) " ] ||
    fail "metrics.jsonl steps: $(losses r/metrics.jsonl | cut -d' ' -f1 | tr '\n' ' ')"
  ;;
resharding)
  # Saved at ep=2 on 2 ranks, resumed at step 15 at ep=4 on 4 ranks and at ep=1 on 1 rank, each with
  # the same global batch of 16 sequences (so the same data order). Dropless routing and the global
  # aux-loss scope make the math independent of the layout.
  cfg=("${short[@]}" run.steps=30 moe.capacity_factor=0 moe.aux_loss_scope=global)
  run 2 "$tiny" "${cfg[@]}" parallel.ep=2 data.batch_size=8 checkpoint.every=15 run.dir=w2 ||
    { cat out.txt; fail "the 2-rank run failed"; }
  ck=$work/$(step_dir w2/checkpoints 15)
  [ -f "$ck/MANIFEST" ] || fail "no step 15 checkpoint"
  run 4 "$tiny" "${cfg[@]}" parallel.ep=4 data.batch_size=4 checkpoint.every=0 checkpoint.init_from="$ck" run.dir=w4 ||
    { cat out.txt; fail "the 4-rank resume failed"; }
  grep -q "resumed from $ck at step 15" out.txt || { cat out.txt; fail "4 ranks: no resume message"; }
  run 1 "$tiny" "${cfg[@]}" parallel.ep=1 data.batch_size=16 checkpoint.every=0 checkpoint.init_from="$ck" run.dir=w1 ||
    { cat out.txt; fail "the 1-rank resume failed"; }
  grep -q "resumed from $ck at step 15" out.txt || { cat out.txt; fail "1 rank: no resume message"; }
  python3 - <(losses w2/metrics.jsonl) <(losses w4/metrics.jsonl) <(losses w1/metrics.jsonl) <<'PY' || fail "loss curves differ"
import sys
def load(path):
    return {int(s): float(v) for s, v in (line.split() for line in open(path))}
ref, four, one = (load(p) for p in sys.argv[1:4])
steps = list(range(16, 31))
for name, other in (("4 ranks, ep=4", four), ("1 rank, ep=1", one)):
    assert sorted(other) == steps, f"{name}: steps {sorted(other)}"
    worst = max(abs(other[s] - ref[s]) / abs(ref[s]) for s in steps)
    # The layouts sum in other orders (GEMM row blocks, all-reduces over 1, 2 or 4 ranks): rounding of
    # ~1e-7 relative that grows over 15 AdamW steps. A wrong expert, a lost optimizer moment or a
    # shifted data position changes the loss at the 1e-2 level within a step or two.
    assert worst < 1e-4, f"{name}: worst relative difference {worst:.2e}"
    print(f"{name}: steps 16..30 within {worst:.2e} of the 2-rank run")
PY
  ;;
bad_checkpoint_for_trainer)
  # A checkpoint of a smaller model (d_model 32), and damaged copies of it.
  run 2 "$tiny" "${short[@]}" model.d_model=32 run.steps=2 checkpoint.every=2 run.dir=small ||
    { cat out.txt; fail "the d_model=32 run failed"; }
  ck=$work/$(step_dir small/checkpoints 2)
  before=$(listing "$ck")
  load=("$tiny" "${short[@]}" run.steps=4 checkpoint.every=0 run.dir=big)
  # refused COPY WHAT PATTERN: the damaged copy $work/COPY of $ck is refused by a d_model=32 run with a
  # message matching PATTERN, and left as it was.
  refused() {
    local copy=$1 what=$2 pattern=$3 copy_before
    copy_before=$(listing "$copy")
    run 2 "$tiny" "${short[@]}" model.d_model=32 run.steps=4 checkpoint.every=0 run.dir="run_$copy" \
      checkpoint.init_from="$work/$copy" && fail "a $what checkpoint was loaded"
    grep -q "$pattern" out.txt || { cat out.txt; fail "no message for the $what checkpoint"; }
    [ "$(listing "$copy")" = "$copy_before" ] || fail "loading modified the $what checkpoint"
  }
  # (a) another model shape: the tensor and both shapes named, once (rank 0), exit status 2.
  run 2 "${load[@]}" checkpoint.init_from="$ck" && fail "a checkpoint of another model shape was loaded"
  grep -q "tensor '[^']*' has shape ([0-9, ]*32[0-9, ]*) in checkpoint '$ck' but ([0-9, ]*64[0-9, ]*) in this model" out.txt ||
    { cat out.txt; fail "shape message"; }
  [ "$(grep -c 'has shape' out.txt)" = 1 ] || { cat out.txt; fail "expected the message once"; }
  # (b) a truncated shard.
  cp -a "$ck" trunc
  truncate -s -100 trunc/shard_00001.bin
  refused trunc truncated "shard file '$work/trunc/shard_00001.bin' has [0-9]* bytes, the manifest says [0-9]* (truncated"
  # (c) a flipped byte in a tensor only rank 1 reads (an expert it holds): the message still shows.
  cp -a "$ck" flipped
  manifest flipped >flipped.txt || fail "cannot decode the manifest"
  python3 - flipped flipped.txt <<'PY' || fail "cannot damage the copy"
import sys
d, text = sys.argv[1], open(sys.argv[2]).read()
entries, cur = [], None
for line in text.splitlines():
    if line == "tensors {": cur = {"expert": "0", "offset": "0"}
    elif line == "}" and cur is not None: entries.append(cur); cur = None
    elif cur is not None: k, v = line.strip().split(": ", 1); cur[k] = v.strip('"')
# On 2 ranks at ep=2, rank 1 holds experts 2 and 3; its slice of the first expert tensor.
e = next(e for e in entries if e["expert"] == "3" and e["name"] == "layers.0.moe.w_in")
with open(d + "/" + e["file"], "r+b") as f:
    f.seek(int(e["offset"]) + 7)
    b = f.read(1)
    f.seek(int(e["offset"]) + 7)
    f.write(bytes([b[0] ^ 0x10]))
PY
  refused flipped damaged \
    "tensor 'layers.0.moe.w_in' (expert 3) in '$work/flipped/shard_00001.bin' is damaged: CRC32C [0-9a-f]*, the manifest says [0-9a-f]*"
  # (d) a manifest without per-rank state and with an empty expert_usage, sealed again with a correct
  # CRC (it once ended training in MPI_ERR_TRUNCATE): refused naming the file and the field.
  cp -a "$ck" crafted
  manifest crafted >crafted.txt || fail "cannot decode the manifest"
  python3 - crafted.txt <<'PY' || fail "cannot edit the manifest"
import re, sys
text = open(sys.argv[1]).read()
text, n = re.subn(r"(?m)^(rank_states|expert_usage) \{\n(  .*\n)*\}\n", "", text)
assert n == 4, n  # 2 ranks, 2 MoE layers
open(sys.argv[1], "w").write(text)
PY
  "$protoc" -I "$src" --encode=moe.checkpoint.Manifest core/checkpoint/checkpoint.proto <crafted.txt |
    python3 "$metadata" seal crafted/MANIFEST || fail "cannot seal the crafted manifest"
  refused crafted "crafted (no per-rank state or expert usage)" \
    "'$work/crafted/MANIFEST': has 0 rank_states (per-rank state) but layout.world_size = 2"
  # (e) a directory that does not exist.
  run 2 "${load[@]}" checkpoint.init_from="$work/nothere" && fail "a missing checkpoint directory was accepted"
  grep -q "checkpoint directory '$work/nothere' does not exist" out.txt || { cat out.txt; fail "missing-directory message"; }
  [ "$(listing "$ck")" = "$before" ] || fail "the checkpoint directory was modified"
  ;;
sigterm)
  # SIGTERM to the ranks with periodic checkpoints off: the step finishes, a checkpoint is saved, exit 0.
  cfg=("${short[@]}" run.steps=100000 checkpoint.every=0 checkpoint.resume=auto run.dir=r)
  start 2 run1.txt "$tiny" "${cfg[@]}"
  wait_for_step r/metrics.jsonl 5
  # Every thread of every rank blocks SIGTERM and SIGUSR1 but the one that takes them with sigwait
  # (the kernel shows the signals a thread waits for as unblocked while it waits): a handler running
  # on a thread inside a oneDNN GEMM kernel corrupts the heap (see launch/moe_train.cpp).
  for pid in $(rank_pids); do
    open=0
    for status in /proc/"$pid"/task/*/status; do
      blocked=$(sed -n 's/^SigBlk:[[:space:]]*//p' "$status")
      (( (16#$blocked & 0x4200) == 0x4200 )) || open=$((open + 1))  # bits of signals 10 and 15
    done
    [ "$open" = 1 ] || fail "$open threads of rank process $pid take SIGTERM or SIGUSR1 (expected 1, the sigwait thread)"
  done
  stop_ranks run1.txt
  grep -q "saved checkpoint $(step_dir r/checkpoints "$n")$" run1.txt || { cat run1.txt; fail "no 'saved checkpoint' line"; }
  grep -q "^done: $n steps" run1.txt || { cat run1.txt; fail "no final line"; }
  [ "$(last_step r/metrics.jsonl)" = "$n" ] || fail "metrics.jsonl does not end at step $n"
  [ "$(cat r/checkpoints/latest)" = "$(basename "$(step_dir . "$n")")" ] || fail "latest does not name step $n"
  manifest "$(step_dir r/checkpoints "$n")" >m.txt || fail "the step $n manifest does not decode"
  grep -q "^step: $n$" m.txt || fail "the manifest is not of step $n"
  # Complete: each shard file has the size the manifest records.
  python3 - m.txt "$(step_dir r/checkpoints "$n")" <<'PY' || fail "shard sizes differ from the manifest"
import os, re, sys
text, d = open(sys.argv[1]).read(), sys.argv[2]
shards = re.findall(r'shards \{\n(?:  rank: \d+\n)?  file: "([^"]+)"\n  bytes: (\d+)\n\}', text)
assert len(shards) == 2, shards
for f, b in shards:
    assert os.path.getsize(os.path.join(d, f)) == int(b), (f, b)
PY
  # SIGUSR1 to mpirun (what Slurm sends before the time limit): forwarded to every rank, same result.
  start 2 run2.txt "$tiny" "${cfg[@]}"
  wait_for_step r/metrics.jsonl $((n + 5))
  kill -USR1 "$job"
  wait "$job"
  status=$?
  [ $status = 0 ] || { cat run2.txt; fail "exit status $status after SIGUSR1 (expected 0)"; }
  grep -q "resumed from $(step_dir r/checkpoints "$n") at step $n" run2.txt || { cat run2.txt; fail "no resume"; }
  m=$(stopped_step run2.txt)
  [ -n "$m" ] && [ "$m" -gt "$n" ] || { cat run2.txt; fail "no stop after SIGUSR1"; }
  [ -f "$(step_dir r/checkpoints "$m")/MANIFEST" ] || fail "no complete checkpoint for step $m"
  ;;
mpirun_sigterm)
  # SIGTERM to mpirun itself (docs/launch.md, "Stopping a run by hand"): OpenMPI's mpirun takes it as
  # an abort and exits 1 whatever the ranks do (CONT, 1 s, TERM, 1 s, KILL to the ranks), so whether
  # they save a checkpoint is luck and not checked here; what they did save must resume, and USR1
  # to mpirun, the signal to send instead, saves one and gives exit status 0.
  cfg=("${short[@]}" run.steps=100000 checkpoint.every=0 checkpoint.resume=auto run.dir=r)
  start 2 run1.txt "$tiny" "${cfg[@]}"
  wait_for_step r/metrics.jsonl 5
  ranks=$(rank_pids)
  kill -TERM "$job"
  wait "$job"
  status=$?
  [ $status = 1 ] || { cat run1.txt; fail "mpirun's exit status $status after SIGTERM (expected 1, as docs/launch.md says)"; }
  # The ranks are gone too (KILLed, or exited; zombies until reaped count as gone).
  for pid in $ranks; do
    deadline=$((SECONDS + 30))
    while [ -e /proc/"$pid" ] && [ "$(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null)" != Z ]; do
      [ $SECONDS -lt $deadline ] || fail "rank process $pid still runs 30 s after mpirun exited"
      sleep 0.1
    done
  done
  n=$(stopped_step run1.txt)
  if [ -n "$n" ]; then echo "after SIGTERM to mpirun: a checkpoint of step $n"; else echo "after SIGTERM to mpirun: no checkpoint"; fi
  # USR1 to mpirun: resumes from the checkpoint above if there is one (one cut short is skipped).
  # Its progress is read from its own output: without a checkpoint, metrics.jsonl still holds the
  # first run's steps until the second one logs over them.
  start 2 run2.txt "$tiny" "${cfg[@]}"
  deadline=$((SECONDS + 120))
  until grep -q "^step $((${n:-0} + 5))/" run2.txt; do
    kill -0 "$job" 2>/dev/null || { cat run2.txt; fail "the second run ended before step $((${n:-0} + 5))"; }
    [ $SECONDS -lt $deadline ] || { cat run2.txt; fail "no step $((${n:-0} + 5)) of the second run within 120 s"; }
    sleep 0.1
  done
  kill -USR1 "$job"
  wait "$job"
  status=$?
  [ $status = 0 ] || { cat run2.txt; fail "mpirun's exit status $status after SIGUSR1 (expected 0)"; }
  if [ -n "$n" ]; then
    grep -q "resumed from $(step_dir r/checkpoints "$n") at step $n" run2.txt || { cat run2.txt; fail "no resume"; }
  fi
  m=$(stopped_step run2.txt)
  [ -n "$m" ] && [ "$m" -gt "${n:-0}" ] || { cat run2.txt; fail "no stop after SIGUSR1"; }
  grep -q "saved checkpoint $(step_dir r/checkpoints "$m")$" run2.txt || { cat run2.txt; fail "no 'saved checkpoint' line"; }
  [ -f "$(step_dir r/checkpoints "$m")/MANIFEST" ] || fail "no complete checkpoint for step $m"
  [ "$(cat r/checkpoints/latest)" = "$(basename "$(step_dir . "$m")")" ] || fail "latest does not name step $m"
  ;;
*)
  fail "unknown case"
  ;;
esac
echo "PASS ($case_name)"
